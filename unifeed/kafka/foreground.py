"""``unifeed broker``'s foreground run, the same for the embedded broker and Apache Kafka,
and the stop signals' handling it shares with ``unifeed demo`` (`stop_signals`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO, Final, TypeVar

from unifeed.core.closing import Closing

B = TypeVar("B", bound=Closing)

#: What stops a foreground command: Ctrl-C and SIGTERM.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """``handler`` takes SIGINT and SIGTERM inside the block (SIGINT even when the process
    started with it ignored, as a background job of a script does); the previous handlers
    come back on the way out. Outside the main thread, where Python takes no signal (and
    `signal.signal` refuses), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


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

    code: int | None = None
    with stop_signals(on_signal), open_broker() as broker:
        address, note = describe(broker)
        stream.write(address + "\n")
        stream.flush()
        print(note, file=sys.stderr, flush=True)
        while code is None and not stop.wait(0.5):
            code = check(broker)
    print("unifeed broker: stopped", file=sys.stderr, flush=True)
    return code or 0
