"""The stop signals of a Kafka run (`signals_stop`): inside the run SIGTERM and SIGINT
finish it, and the program's own handlers come back afterwards (a program that runs
unifeed from its main thread keeps them); outside the main thread nothing changes."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

from unifeed.runtime.supervisor import signals_stop


class _Run:
    def __init__(self) -> None:
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()


def test_a_signal_during_the_run_stops_it_and_the_handlers_before_come_back() -> None:
    got: list[int] = []

    def mine(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    before = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        run = _Run()
        with signals_stop(run):  # type: ignore[arg-type]
            assert signal.getsignal(signal.SIGTERM) is not mine
            os.kill(os.getpid(), signal.SIGTERM)
            assert run.stopped.wait(5)
        assert got == []  # the run's handler took it, not the program's
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is mine
        os.kill(os.getpid(), signal.SIGINT)
        deadline = threading.Event()
        for _ in range(50):
            if got:
                break
            deadline.wait(0.01)
        assert got == [signal.SIGINT]
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_outside_the_main_thread_nothing_changes() -> None:
    seen: dict[str, Any] = {}

    def body() -> None:
        with signals_stop(_Run()):  # type: ignore[arg-type]
            seen["during"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=body)
    t.start()
    t.join(5)
    assert seen["during"] is before
    assert signal.getsignal(signal.SIGTERM) is before
