"""``unifeed broker``'s foreground run, the same for the embedded broker and Apache Kafka."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import IO, TypeVar

from unifeed.core.closing import Closing

B = TypeVar("B", bound=Closing)


def run_until_signal(
    open_broker: Callable[[], B],
    describe: Callable[[B], tuple[str, str]],
    check: Callable[[B], int | None],
    out: IO[str] | None = None,
) -> int:
    """Start a broker (``open_broker``; ``with`` it), print its address, run until SIGINT or
    SIGTERM, then stop it.

    ``describe(broker)`` gives its address and a note for people: the first line of ``out``
    (stdout) is the address alone, flushed, so a script can read it; the note goes to
    stderr. ``check(broker)`` runs every 0.5 s: an exit code ends the run early. Returns
    the exit code (0 when stopped by a signal).
    """
    stream = sys.stdout if out is None else out
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    code: int | None = None
    try:
        with open_broker() as broker:
            address, note = describe(broker)
            stream.write(address + "\n")
            stream.flush()
            print(note, file=sys.stderr, flush=True)
            while code is None and not stop.wait(0.5):
                code = check(broker)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("unifeed broker: stopped", file=sys.stderr, flush=True)
    return code or 0
