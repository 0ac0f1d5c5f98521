"""The combining rule: one FIFO queue per feed, emitted by ``(pitr, rank)``
(docs/guarantees.md, "Ordering").

Pure: no I/O, no threads, the clock is injected. Everything that reads Kafka or files
drives a `Combiner` from the outside.
"""

from __future__ import annotations

import enum
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice, repeat
from operator import attrgetter
from typing import Any, Final, TypedDict

import msgspec

from unifeed.core.errors import FeedOrderError

_NO_MARKER: Final = -(2**63)
#: Messages younger than this (by the clock) are real time, by default.
DEFAULT_REALTIME_THRESHOLD_MS: Final = 30_000


class Mode(enum.Enum):
    """How a candidate is judged: by its age against the real-time threshold."""

    REALTIME = "realtime"
    CATCHUP = "catchup"


@dataclass(frozen=True, slots=True)
class Feed:
    """One input of a `Combiner`.

    ``capacity`` bounds the queue: once it holds that many messages, `Combiner.push`
    returns False and the reader should pause until `Combiner.room` is positive again.
    """

    name: str
    required_realtime: bool = True
    required_catchup: bool = True
    capacity: int = 100_000

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Feed name must not be empty")
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")


class Emitted(msgspec.Struct, frozen=True, gc=False):
    """One message leaving the combiner: its feed, its ``pitr`` and the item pushed with it."""

    feed: str
    pitr: int
    item: Any


class FeedStats(msgspec.Struct, frozen=True, gc=False):
    name: str
    queued: int
    pushed: int
    marker: int | None
    closed: bool
    caught_up: bool


class CombinerStats(msgspec.Struct, frozen=True, gc=False):
    """A snapshot of a combiner's counters."""

    emitted: int
    late: int
    feeds: tuple[FeedStats, ...]


class _FeedState:
    __slots__ = (
        "capacity",
        "caught_up",
        "closed",
        "marker",
        "name",
        "pushed",
        "queue",
        "rank",
        "req_catchup",
        "req_realtime",
    )

    def __init__(self, feed: Feed, rank: int) -> None:
        self.name = feed.name
        self.rank = rank
        self.req_realtime = feed.required_realtime
        self.req_catchup = feed.required_catchup
        self.capacity = feed.capacity
        self.queue: deque[Emitted] = deque()
        # Every future message of this feed has pitr >= marker (max of pushes and advances).
        self.marker = _NO_MARKER
        self.closed = False
        self.caught_up = False
        self.pushed = 0


_PITR: Final = attrgetter("pitr")
_FEED: Final = attrgetter("feed")


_POPLEFT: Final = deque.popleft


def _belongs(label: str, feed: str) -> bool:
    """An entry labelled ``label`` may be queued as ``feed``'s: its own, or one partition
    of it (``feed[N]``, a feed read from several partitions and merged before this
    combiner); the label is kept, so that the output's bookkeeping can tell partitions
    apart."""
    return label == feed or (label.startswith(feed) and label[len(feed) : len(feed) + 1] == "[")


def _take(q: deque[Emitted], n: int) -> list[Emitted]:
    """Remove and return the first ``n`` entries of ``q``, in C.

    A small head is popped (touching only the entries taken: a queue holds up to a
    stage's capacity of cold objects, and the annotator took a few thousand at a time
    from tens of thousands); a large one is copied out, and the short rest put back.
    """
    rest = len(q) - n
    if rest == 0:
        taken = list(q)
        q.clear()
        return taken
    if n <= rest:
        return list(map(_POPLEFT, repeat(q, n)))
    taken = list(islice(q, n))
    tail = list(islice(q, n, None))
    q.clear()
    q.extend(tail)
    return taken


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class CombinerOptions(TypedDict, total=False):
    """The keywords of `Combiner` after its feeds (defaults there), for the stages that
    make one and pass them on."""

    realtime_threshold_ms: int
    clock: Callable[[], int] | None


class Combiner:
    """Merge feeds into one stream ordered by ``(pitr, feed rank)``, live and in catch-up alike.

    Rank is the order in which the feeds are declared. A candidate (the smallest queued
    head) is emitted once every feed required in its mode is *settled* for it: it has a
    queued message, is closed, has a progress marker past the candidate, or (catch-up
    only) its reader has reported the end of its log.

    >>> c = Combiner([Feed("a"), Feed("b")], clock=lambda: 10**12)
    >>> c.push("a", 5, "a5"); c.push("b", 3, "b3"); c.push("a", 7, "a7")
    True
    True
    True
    >>> [e.item for e in c.drain()]    # a5 waits: b may still send something before it
    ['b3']
    >>> c.close("b")
    >>> [e.item for e in c.drain()]
    ['a5', 'a7']
    """

    def __init__(
        self,
        feeds: Sequence[Feed],
        *,
        realtime_threshold_ms: int = DEFAULT_REALTIME_THRESHOLD_MS,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if not feeds:
            raise ValueError("a Combiner needs at least one Feed")
        names = [f.name for f in feeds]
        if len(set(names)) != len(names):
            raise ValueError(f"feed names must be unique, got {names}")
        if realtime_threshold_ms < 0:
            raise ValueError("realtime_threshold_ms must be >= 0")
        self._feeds = [_FeedState(f, rank) for rank, f in enumerate(feeds)]
        self._by_name = {st.name: st for st in self._feeds}
        self._threshold = realtime_threshold_ms
        self._clock = clock if clock is not None else _wall_clock_ms
        self._last_key: tuple[int, int] = (_NO_MARKER, -1)
        self._emitted = 0
        self._late = 0
        self.last_mode: Mode | None = None

    # -- inputs -------------------------------------------------------------

    def _state(self, feed: str) -> _FeedState:
        try:
            return self._by_name[feed]
        except KeyError:
            raise KeyError(f"unknown feed {feed!r}; declared: {list(self._by_name)}") from None

    def push(self, feed: str, pitr: int, item: Any) -> bool:
        """Queue one message; return False when the queue is full (the reader should pause).

        Raises `FeedOrderError`, leaving the queue untouched, when ``pitr`` is below the
        feed's previous ``pitr`` or its last `advance` marker.
        Runtime complexity: O(1).
        """
        return self.push_emitted(feed, (Emitted(feed, pitr, item),))

    def push_many(self, feed: str, pitrs: Sequence[int], items: Sequence[Any]) -> bool:
        """Queue a batch (all or nothing); same rules and return value as `push`.

        Runtime complexity: O(len(batch)).
        """
        if len(pitrs) != len(items):
            raise ValueError("pitrs and items must have the same length")
        return self._enqueue(feed, pitrs, map(Emitted, repeat(feed, len(pitrs)), pitrs, items))

    def push_emitted(
        self, feed: str, entries: Sequence[Emitted], *, labelled: bool = False
    ) -> bool:
        """Queue ready-made `Emitted` entries of ``feed`` (all or nothing), without copying
        them: the one way messages enter a combiner (`push` and `push_many` build entries
        and come here). Same rules and return value as `push`.

        Each entry's label (``Emitted.feed``) must be ``feed`` or one of its partitions
        (``feed[N]``); with ``labelled``, the caller vouches for that (the batch was made
        for this queue: `unifeed.core.stages.FeedIntake`'s, a feed's merge of its
        partitions) and only the batch's two ends are checked. Their order is always
        checked.

        Runtime complexity: O(len(batch)).
        """
        if entries and (
            entries[0].feed != feed
            or entries[-1].feed != feed
            or (not labelled and len(entries) > 2 and set(map(_FEED, entries)) != {feed})
        ):
            labels = {entries[0].feed, entries[-1].feed} if labelled else set(map(_FEED, entries))
            other = [f for f in labels if not _belongs(f, feed)]
            if other:
                raise ValueError(f"an entry of feed {other[0]!r} cannot be pushed to {feed!r}")
        return self._enqueue(feed, list(map(_PITR, entries)), entries)

    def _enqueue(self, feed: str, pitrs: Sequence[int], entries: Iterable[Emitted]) -> bool:
        """The one path into a feed's queue: order check, late count, bookkeeping."""
        st = self._state(feed)
        if not pitrs:
            return len(st.queue) < st.capacity
        if st.closed:
            raise ValueError(f"feed {feed!r} is closed; nothing can be pushed to it")
        # In order? Checked in C (an in-order list sorts in one linear pass); the loop below
        # only runs to name the offending pitr.
        if pitrs[0] < st.marker or list(pitrs) != sorted(pitrs):
            prev = st.marker
            for p in pitrs:
                if p < prev:
                    why = "the feed's progress" if prev == st.marker else "the batch's previous pitr"
                    raise FeedOrderError(feed, p, prev, why)
                prev = p
        last_pitr, last_rank = self._last_key
        if pitrs[0] < last_pitr or (pitrs[0] == last_pitr and st.rank < last_rank):
            # Late: queued behind a message already emitted (real time only).
            bound = last_pitr if st.rank < last_rank else last_pitr - 1
            self._late += bisect_left(pitrs, bound + 1)
        st.marker = pitrs[-1]
        st.caught_up = False
        st.pushed += len(pitrs)
        st.queue.extend(entries)
        return len(st.queue) < st.capacity

    def advance(self, feed: str, pitr: int) -> None:
        """Progress marker: nothing earlier than ``pitr`` will come from ``feed``.

        A marker below the current one is ignored. Runtime complexity: O(1).
        """
        st = self._state(feed)
        if pitr > st.marker:
            st.marker = pitr

    def caught_up(self, feed: str, at_end: bool = True) -> None:
        """The feed's reader has reached the end of its log (cleared by its next push)."""
        self._state(feed).caught_up = at_end

    def close(self, feed: str) -> None:
        """The feed has ended (finite input): it never holds back another feed again."""
        self._state(feed).closed = True

    # -- queries ------------------------------------------------------------

    def room(self, feed: str) -> int:
        """How many more messages ``feed``'s queue takes before it is full (may be negative)."""
        st = self._state(feed)
        return st.capacity - len(st.queue)

    def queued(self, feed: str) -> int:
        return len(self._state(feed).queue)

    def progress(self, feed: str) -> int | None:
        """Lower bound of every ``pitr`` ``feed`` can still emit: its queue head, else its
        marker; None when nothing is known (no push, no advance)."""
        st = self._state(feed)
        if st.queue:
            return st.queue[0].pitr
        return None if st.marker == _NO_MARKER else st.marker

    def is_closed(self, feed: str) -> bool:
        return self._state(feed).closed

    def exhausted(self) -> bool:
        """Every feed is closed and every queue is empty."""
        return all(st.closed and not st.queue for st in self._feeds)

    @property
    def late(self) -> int:
        """Messages that arrived after a later message had already been emitted."""
        return self._late

    def stats(self) -> CombinerStats:
        return CombinerStats(
            emitted=self._emitted,
            late=self._late,
            feeds=tuple(
                FeedStats(
                    name=st.name,
                    queued=len(st.queue),
                    pushed=st.pushed,
                    marker=None if st.marker == _NO_MARKER else st.marker,
                    closed=st.closed,
                    caught_up=st.caught_up,
                )
                for st in self._feeds
            ),
        )

    # -- outputs ------------------------------------------------------------

    def _blocked(self, cand: _FeedState, pitr: int, now: int) -> bool:
        """True when a feed required in the candidate's mode is not settled for it."""
        rank = cand.rank
        if now - pitr <= self._threshold:
            self.last_mode = Mode.REALTIME
            for st in self._feeds:
                if st is cand or not st.req_realtime or st.queue or st.closed:
                    continue
                m = st.marker
                if m > pitr or (m == pitr and st.rank > rank):
                    continue
                return True
        else:
            self.last_mode = Mode.CATCHUP
            for st in self._feeds:
                if st is cand or not st.req_catchup or st.queue or st.closed or st.caught_up:
                    continue
                m = st.marker
                if m > pitr or (m == pitr and st.rank > rank):
                    continue
                return True
        return False

    def _candidate(self) -> _FeedState | None:
        best: _FeedState | None = None
        best_pitr = 0
        for st in self._feeds:
            q = st.queue
            if q:
                p = q[0].pitr
                if best is None or p < best_pitr:
                    best = st
                    best_pitr = p
        return best

    def _emit(self, st: _FeedState) -> Emitted:
        e = st.queue.popleft()
        self._last_key = (e.pitr, st.rank)
        self._emitted += 1
        return e

    def pop(self) -> Emitted | None:
        """The next message if it can be emitted now, else None. Runtime: O(feeds)."""
        cand = self._candidate()
        if cand is None or self._blocked(cand, cand.queue[0].pitr, self._clock()):
            return None
        return self._emit(cand)

    def drain(self) -> Iterator[Emitted]:
        """Everything emittable now, in order (reads the clock once)."""
        return iter(self.drain_list())

    def drain_list(self) -> list[Emitted]:
        """Like `drain`, as a list: the hot loop of every pipeline."""
        out: list[Emitted] = []
        append = out.append
        feeds = self._feeds
        now = self._clock()
        emitted = 0
        while True:
            if len(feeds) == 2:
                # Fast path: while both queues hold messages every candidate is settled.
                qa = feeds[0].queue
                qb = feeds[1].queue
                if qa and qb:
                    # Everything up to the end of the queue that ends first, merged in C:
                    # all of that queue, and of the other what sorts before its last entry
                    # (on equal pitr, feed 0 first). A stable sort of the two runs, feed 0's
                    # run first, is exactly the (pitr, rank) merge.
                    la = qa[-1].pitr
                    lb = qb[-1].pitr
                    if la <= lb:
                        run_a = list(qa)
                        qa.clear()
                        run_b = _take(qb, bisect_left(qb, la, key=_PITR))
                    else:
                        run_a = _take(qa, bisect_right(qa, lb, key=_PITR))
                        run_b = list(qb)
                        qb.clear()
                    merged = sorted(run_a + run_b, key=_PITR) if run_a and run_b else run_a or run_b
                    out.extend(merged)
                    emitted += len(merged)
                    # The last entry is the end of the queue that ended first: all of
                    # feed 0's run when la <= lb, else all of feed 1's.
                    self._last_key = (merged[-1].pitr, 0 if la <= lb else 1)
                elif qa or qb:
                    # Fast path: one queue is empty; its feed's progress marker (or its
                    # end) settles every message of the other queue up to a bound, in
                    # either mode. What lies beyond it takes the general path below.
                    st, other = (feeds[0], feeds[1]) if qa else (feeds[1], feeds[0])
                    q = st.queue
                    if other.closed:
                        bound = q[-1].pitr
                    else:
                        bound = other.marker if other.rank > st.rank else other.marker - 1
                    if q[0].pitr <= bound:
                        if q[-1].pitr <= bound:
                            # All of it (the usual case): in one C call.
                            n = len(q)
                            out.extend(q)
                            q.clear()
                        else:
                            n = bisect_right(q, bound, key=_PITR)
                            out.extend(_take(q, n))
                        emitted += n
                        last_pitr = out[-1].pitr
                        self._last_key = (last_pitr, st.rank)
                        self.last_mode = (
                            Mode.REALTIME if now - last_pitr <= self._threshold else Mode.CATCHUP
                        )
            else:
                emitted += self._drain_settled(out, now)
            cand = self._candidate()
            if cand is None or self._blocked(cand, cand.queue[0].pitr, now):
                break
            append(self._emit(cand))
        self._emitted += emitted
        return out

    def _drain_settled(self, out: list[Emitted], now: int) -> int:
        """The fast path of any number of feeds: moves to ``out`` every queued entry
        that sorts at or below the lowest ``(marker, rank)`` among the feeds that can
        still send (every one of those is settled for it, in either mode), merged in C;
        returns how many. A feed that can no longer send: a closed one, and one caught
        up with an empty queue when every entry in question is catch-up. What lies
        beyond the bound takes the per-message path."""
        feeds = self._feeds
        top = max((st.queue[-1].pitr for st in feeds if st.queue), default=None)
        if top is None:
            return 0
        bound = self._bound(skip_caught_up=True)
        if bound is not None and bound[0] < top:
            top = bound[0]
        if now - top <= self._threshold:
            # Real time for some of them: a caught-up feed still holds them back.
            bound = self._bound(skip_caught_up=False)
        runs: list[list[Emitted]] = []
        last_pitr = _NO_MARKER
        last_rank = 0
        for st in feeds:
            q = st.queue
            if not q:
                continue
            if bound is None:
                n = len(q)
            else:
                limit = bound[0] if st.rank <= bound[1] else bound[0] - 1
                if q[0].pitr > limit:
                    continue
                n = len(q) if q[-1].pitr <= limit else bisect_right(q, limit, key=_PITR)
            run = _take(q, n)
            runs.append(run)
            # The merge's last entry: the highest-ranked run's among those ending highest.
            if run[-1].pitr >= last_pitr:
                last_pitr = run[-1].pitr
                last_rank = st.rank
        if not runs:
            return 0
        # A stable sort of the runs in rank order is the (pitr, rank) merge; Timsort
        # merges the sorted runs it finds, in C.
        merged = runs[0] if len(runs) == 1 else sorted(chain.from_iterable(runs), key=_PITR)
        out.extend(merged)
        self._last_key = (last_pitr, last_rank)
        self.last_mode = Mode.REALTIME if now - last_pitr <= self._threshold else Mode.CATCHUP
        return len(merged)

    def _bound(self, *, skip_caught_up: bool) -> tuple[int, int] | None:
        """The lowest ``(marker, rank)`` among the feeds that can still send (None: none
        can): not closed, and with ``skip_caught_up`` not caught up with an empty queue."""
        best: tuple[int, int] | None = None
        for st in self._feeds:
            if st.closed or (skip_caught_up and st.caught_up and not st.queue):
                continue
            if best is None or st.marker < best[0]:
                best = (st.marker, st.rank)
        return best

    # -- checking -----------------------------------------------------------

    def _check(self) -> None:
        """Assert every invariant (tests call it after each operation)."""
        for st in self._feeds:
            prev = _NO_MARKER
            for e in st.queue:
                assert _belongs(e.feed, st.name), (e.feed, st.name)
                assert e.pitr >= prev, f"{st.name}: queue goes backwards at {e.pitr} < {prev}"
                prev = e.pitr
            assert st.marker >= prev, f"{st.name}: marker {st.marker} below last queued {prev}"
            assert st.pushed >= len(st.queue)
            if st.queue:
                assert not st.caught_up or st.queue, "caught_up is cleared by a push"
        assert self._emitted >= 0 and self._late >= 0
