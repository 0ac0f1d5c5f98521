"""Bounded channels between threads: one inbox per consuming thread, one lane per feed.

Lanes carry batches (lists), never single messages. A full lane blocks its sender (which
pauses its Kafka partition meanwhile): that is the back-pressure that keeps memory flat.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import msgspec

if TYPE_CHECKING:
    from unifeed.checkpoint.store import FeedCheckpoint
    from unifeed.core.stages import DeadLetter

#: What a lane carries: `Accepted` input messages, `Mapping` records or `Emitted` output.
R = TypeVar("R")


class Batch(msgspec.Struct, Generic[R], gc=False):
    """What one feed's producer hands on: messages plus what it knows about progress.

    ``records``: the feed's messages in order (their type is the lane's); ``dead``: dead
    letters found while reading them; ``marker``: nothing below it will follow;
    ``caught_up``: the reader is at the end of its log; ``closed``: the feed has ended.
    ``positions``: how far the producer's own input got, by partition key, when that is
    not one input message per record.
    """

    records: list[R]
    dead: list[DeadLetter] = msgspec.field(default_factory=list)
    marker: int | None = None
    caught_up: bool = False
    closed: bool = False
    positions: dict[str, FeedCheckpoint] | None = None


class Inbox(Generic[R]):
    """Per-feed bounded lanes of batches, read by one thread.

    >>> stop = threading.Event()
    >>> box = Inbox(["a", "b"], max_batches=2, stop=stop)
    >>> box.put("a", Batch([1, 2]))
    True
    >>> [(lane, b.records) for lane, b in box.take(["a", "b"], timeout_s=0)]
    [('a', [1, 2])]
    """

    def __init__(self, lanes: Sequence[str], max_batches: int, stop: threading.Event) -> None:
        if max_batches < 1:
            raise ValueError("max_batches must be >= 1")
        self._lanes: dict[str, deque[Batch[R]]] = {name: deque() for name in lanes}
        self._max = max_batches
        self._cond = threading.Condition()
        self._stop = stop

    def put(self, lane: str, batch: Batch[R], timeout_s: float = 0.1) -> bool:
        """Queue ``batch``; wait at most ``timeout_s`` for room. False: still full (or stopping)."""
        q = self._lanes[lane]
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(q) >= self._max:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(min(left, 0.05))
            q.append(batch)
            self._cond.notify_all()
        return True

    def put_blocking(self, lane: str, batch: Batch[R], max_wait_s: float = 3600.0) -> bool:
        """`put` until it succeeds or the stop event is set (False then)."""
        deadline = time.monotonic() + max_wait_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.put(lane, batch, 0.1):
                return True
        return False

    def take(self, lanes: Iterable[str], timeout_s: float) -> list[tuple[str, Batch[R]]]:
        """Every queued batch of ``lanes`` (waiting up to ``timeout_s`` for the first)."""
        wanted = [(name, self._lanes[name]) for name in lanes]
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not any(q for _, q in wanted):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return []
                self._cond.wait(min(left, 0.05))
            out = [(name, q.popleft()) for name, q in wanted for _ in range(len(q))]
            self._cond.notify_all()
        return out

    def depth(self, lane: str) -> int:
        return len(self._lanes[lane])
