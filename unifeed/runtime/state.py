"""What every thread of one run shares (`RunState`) and the thread that reports its failure to it (`Worker`)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("unifeed")

# --- shared run state ------------------------------------------------------


class RunState:
    """What every thread of one run shares: the stop event, the first failure, counters."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.lag_pitr: dict[str, int] = {}
        self.mode = "starting"

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = exc
        self.stop.set()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n


class Worker(threading.Thread):
    """A thread that reports its failure to the run instead of dying quietly."""

    def __init__(self, name: str, state: RunState) -> None:
        super().__init__(name=name, daemon=True)
        self.state = state

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:
            log.debug("%s failed", self.name, exc_info=True)
            self.state.fail(exc)

    def work(self) -> None:
        raise NotImplementedError
