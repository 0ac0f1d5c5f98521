"""The reorder buffer: hold messages for a window of feed time, then release them
sorted by another timestamp, such as ``clock``.

A feed is ordered by ``pitr``, the time a message was received; the time an aircraft
emitted a position (``clock``) arrives out of order. Holding each message for a window
and sorting what is due by ``clock`` restores that order for every message that was
less than the window late, at the price of delaying everything by the window.

The buffer measures time in ``pitr`` (the caller passes the feed time it has reached),
never in wall-clock time, so it releases exactly the same batches live and in catch-up.

>>> buf = ReorderBuffer(window_ms=1000)
>>> for pitr, clock in [(5000, 4800), (5200, 4300), (5900, 5500)]:
...     buf.push(pitr, clock, f"pos@{clock}")
>>> buf.release(5400)          # only clock 4300 is due: 4300 + 1000 <= 5400
['pos@4300']
>>> buf.release(6000)
['pos@4800']
>>> buf.flush()
['pos@5500']
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from typing import Any, Final, Generic, TypeVar

import msgspec
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from unifeed.core.errors import BadRecordError
from unifeed.core.records import TOO_DEEP

__all__ = ["ReorderBuffer", "ReorderStats", "reorder_lines"]

T = TypeVar("T")

_AFTER_EVERY_SEQ: Final = math.inf  # sorts after (key, any seq): bisects past equal keys


class ReorderStats(msgspec.Struct, frozen=True, gc=False):
    """A snapshot of a `ReorderBuffer`'s counters.

    ``late`` counts released items whose key is below a key released before them: the
    items that came too late (or too early) for the window to put them in order.
    """

    held: int
    pushed: int
    released: int
    late: int


class ReorderBuffer(Generic[T]):
    """Holds items for a window of feed time and releases them sorted by a key.

    An item is pushed with its arrival time ``pitr`` (epoch ms, the feed's own order)
    and a sort ``key`` in the same unit (for a position, its ``clock``). It is *due* once
    the feed time passed to `release` reaches ``min(key, pitr) + window_ms``; for the
    usual key at or before its ``pitr`` that is ``key + window_ms``. So no item is held
    more than ``window_ms`` past its own arrival, whatever its key says. `release`
    returns every due item sorted by ``(key, push order)``.

    **When the output is sorted.** If ``pitr`` never decreases from push to push, every
    item has ``0 <= pitr - key < window_ms`` (it is less than the window late), and
    ``release`` is called with the latest ``pitr`` pushed so far (after each push or
    now and then), then everything released, across all calls and `flush`, is sorted by
    key. An item later than the window, or with a key ahead of its ``pitr``, can come
    out after items with larger keys; it is still released, never dropped, and counted
    in ``stats().late``.

    State: the held items, in a `sortedcontainers.SortedList` by ``(key, seq)`` (plus a
    small heap for items whose key is ahead of their ``pitr``). Memory grows with the
    number of items received in one window.

    >>> buf = ReorderBuffer(window_ms=10)
    >>> buf.push(100, 95, "a"); buf.push(101, 92, "b"); buf.push(103, 93, "c")
    >>> len(buf), buf.next_due()
    (3, 102)
    >>> buf.release(103)
    ['b', 'c']
    >>> buf.stats()
    ReorderStats(held=1, pushed=3, released=2, late=0)
    """

    __slots__ = ("_ahead", "_held", "_last_key", "_late", "_released", "_seq", "_window")

    def __init__(self, window_ms: int) -> None:
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        self._window = window_ms
        # (key, seq, pitr, item) of items with key <= pitr: due at key + window.
        self._held: Any = SortedList()
        # Heap of (pitr, seq, key, item) of items with key > pitr: due at pitr + window.
        self._ahead: list[tuple[int, int, float, T]] = []
        self._seq = 0
        self._released = 0
        self._late = 0
        self._last_key = -math.inf  # the largest key released so far

    @property
    def window_ms(self) -> int:
        return self._window

    def __len__(self) -> int:
        """The number of items held.

        Runtime complexity: O(1).
        """
        return len(self._held) + len(self._ahead)

    def push(self, pitr: int, key: float, item: T) -> None:
        """Hold ``item``, received at ``pitr``, to be released in ``key`` order.

        Raises `ValueError` when ``key`` is NaN (it would sort nowhere).
        Runtime complexity: O(log(n)).

        >>> buf = ReorderBuffer(window_ms=5)
        >>> buf.push(10, 7, "x"); buf.push(10, 7, "y")   # equal keys keep push order
        >>> buf.flush()
        ['x', 'y']
        """
        if key != key:
            raise ValueError(f"key of the item received at pitr {pitr} is NaN")
        self._seq += 1
        if key <= pitr:
            self._held.add((key, self._seq, pitr, item))
        else:
            heapq.heappush(self._ahead, (pitr, self._seq, key, item))

    def next_due(self) -> float | None:
        """The smallest feed time at which `release` returns something (None when empty).

        A live caller can sleep until the feed reaches it. Runtime complexity: O(1).
        """
        due: float | None = None
        if self._held:
            due = self._held[0][0] + self._window
        if self._ahead:
            ahead = self._ahead[0][0] + self._window
            due = ahead if due is None else min(due, ahead)
        return due

    def release(self, now: int) -> list[T]:
        """Release, sorted by ``(key, push order)``, every item due at feed time ``now``.

        ``now`` is a ``pitr``: normally the latest one pushed, or a keepalive's.
        Runtime complexity: O(k·log(n)) for k items released out of n held.

        >>> buf = ReorderBuffer(window_ms=100)
        >>> buf.push(1000, 950, "late"); buf.push(1000, 990, "fresh")
        >>> buf.release(1060), buf.release(1090)
        (['late'], ['fresh'])
        """
        watermark = now - self._window
        held = self._held
        count = held.bisect_left((watermark, _AFTER_EVERY_SEQ))
        due: list[tuple[float, int, int, T]] = held[:count]
        if count:
            del held[:count]
        ahead = self._ahead
        if ahead and ahead[0][0] <= watermark:
            while ahead and ahead[0][0] <= watermark:
                pitr, seq, key, item = heapq.heappop(ahead)
                due.append((key, seq, pitr, item))
            due.sort(key=_by_key_and_seq)
        return self._hand_out(due)

    def flush(self) -> list[T]:
        """Release every held item, sorted by ``(key, push order)``: the end of the input.

        Runtime complexity: O(n·log(n)).
        """
        due: list[tuple[float, int, int, T]] = list(self._held)
        self._held.clear()
        if self._ahead:
            due.extend((key, seq, pitr, item) for pitr, seq, key, item in self._ahead)
            self._ahead.clear()
            due.sort(key=_by_key_and_seq)
        return self._hand_out(due)

    def _hand_out(self, due: list[tuple[float, int, int, T]]) -> list[T]:
        if not due:
            return []
        last = self._last_key
        late = 0
        while late < len(due) and due[late][0] < last:
            late += 1
        self._late += late
        self._last_key = max(last, due[-1][0])
        self._released += len(due)
        return [entry[3] for entry in due]

    def stats(self) -> ReorderStats:
        """Counters: items held now, pushed, released and released late."""
        return ReorderStats(
            held=len(self), pushed=self._seq, released=self._released, late=self._late
        )

    def _check(self) -> None:
        """Assert every invariant of the buffer (tests call it after each operation)."""
        self._held._check()
        seqs: set[int] = set()
        for key, seq, pitr, _ in self._held:
            assert key <= pitr, f"held item {seq} has key {key} ahead of pitr {pitr}"
            seqs.add(seq)
        for i, (pitr, seq, key, _) in enumerate(self._ahead):
            assert key > pitr, f"ahead item {seq} has key {key} not ahead of pitr {pitr}"
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(self._ahead):
                    assert self._ahead[child][:2] >= (pitr, seq), "ahead heap out of order"
            seqs.add(seq)
        assert len(seqs) == len(self), "an item is held twice"
        assert all(0 < s <= self._seq for s in seqs), "a sequence number was never issued"
        assert self._released + len(self) == self._seq, "items lost or duplicated"
        assert 0 <= self._late <= self._released


def _by_key_and_seq(entry: tuple[float, int, int, Any]) -> tuple[float, int]:
    return entry[0], entry[1]


def reorder_lines(lines: Iterable[bytes], window_ms: int, field: str = "clock") -> Iterator[bytes]:
    """Reorder a JSON-lines feed by ``field`` (epoch ms, like ``pitr``) with a `ReorderBuffer`.

    Each line is held ``window_ms`` of feed time (its ``pitr``) and the lines come out
    by ``field``; a line without that field (a keepalive, a flightplan) or with ``null``
    there uses its ``pitr`` as key. Lines are yielded exactly as given (newline and
    all); blank lines are skipped. Only ``pitr`` and ``field`` are decoded. The output
    is no longer ordered by ``pitr``, so it is for consumers, not for `Combiner` inputs.

    Raises `BadRecordError` (naming the 1-based line) for a line that is not a JSON
    object with an integer ``pitr`` and a numeric or absent ``field``.

    >>> feed = [b'{"type":"position","pitr":1000,"clock":900}',
    ...         b'{"type":"position","pitr":1100,"clock":700}',
    ...         b'{"type":"keepalive","pitr":1200}']
    >>> [line[-12:] for line in reorder_lines(feed, window_ms=500)]
    [b'"clock":700}', b'"clock":900}', b'"pitr":1200}']
    """
    buffer: ReorderBuffer[bytes] = ReorderBuffer(window_ms)  # checks window_ms now
    if not field:
        raise ValueError("field must name a JSON field, like clock")
    if field == "pitr":
        return _reorder(lines, buffer, msgspec.json.Decoder(_Pitr))
    stamp = msgspec.defstruct(
        "_Stamp",
        [("pitr", int), ("key", int | float | None, None)],
        rename={"key": field},
        gc=False,
    )
    return _reorder(lines, buffer, msgspec.json.Decoder(stamp))


def _reorder(
    lines: Iterable[bytes], buffer: ReorderBuffer[bytes], decoder: msgspec.json.Decoder[Any]
) -> Iterator[bytes]:
    decode = decoder.decode
    push, release = buffer.push, buffer.release
    now = -(2**63)
    for number, line in enumerate(lines, start=1):
        if not line or line.isspace():
            continue
        try:
            record: Any = decode(line)
        except msgspec.DecodeError as exc:
            raise BadRecordError("input", f"line {number}: {exc}") from None
        except RecursionError:
            raise BadRecordError("input", f"line {number}: {TOO_DEEP}") from None
        pitr = record.pitr
        key = getattr(record, "key", None)
        push(pitr, pitr if key is None else key, line)
        if pitr > now:
            now = pitr
        yield from release(now)
    yield from buffer.flush()


class _Pitr(msgspec.Struct, frozen=True, gc=False):
    pitr: int
