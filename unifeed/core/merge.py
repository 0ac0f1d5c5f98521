"""The general merge of F feeds (`unifeed merge`): content-agnostic, ordered by ``pitr``.

A message needs only an integer ``pitr`` (a JSON object); ``{"type":"keepalive",...}``
is progress and is not forwarded; every other message is written byte for byte. Each
input (a feed, or one partition of a feed) is a FIFO queue whose ``pitr`` never
decreases; a message that breaks that, or has no usable ``pitr``, is a dead letter.
Ties are broken by input rank (the order of the inputs), then partition, then position
in the input. The combining rule is the `Combiner`'s, through the same intake and merge
stage as the unified feed's writer (docs/guarantees.md, "Merge").
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Final

import msgspec

from unifeed.core.combine import DEFAULT_REALTIME_THRESHOLD_MS, Emitted, Feed
from unifeed.core.records import Keepalive, StampedDecoder
from unifeed.core.stages import Accepted, DeadLetter, FeedIntake, Intake, MergeStage, Where
from unifeed.core.unify import CATCHUP_CLOCK, run_files

#: One merge input: a feed's name, or ``(name, partition)`` for one partition of it.
Source = str | tuple[str, int]


class MergeFeedStats(msgspec.Struct, frozen=True, gc=False):
    """One feed's counters (its partitions summed)."""

    name: str
    accepted: int
    keepalives: int
    dead_letters: int
    #: Valid messages outside ``[start, stop_at]``: read, not written.
    skipped: int


class MergeStats(msgspec.Struct, frozen=True, gc=False):
    """What a merge did: messages written, late ones (real time only), per-feed counters,
    and the dead letters not taken by the caller (`merge_lines` takes none: all of them,
    in the order they were found)."""

    output: int
    late: int
    feeds: tuple[MergeFeedStats, ...]
    dead_letters: tuple[DeadLetter, ...]

    def feed(self, name: str) -> MergeFeedStats:
        for f in self.feeds:
            if f.name == name:
                return f
        raise KeyError(f"no feed {name!r} in this merge")


def source_key(source: Source) -> str:
    """The queue name of an input: the feed's name, or ``NAME[PARTITION]``."""
    if isinstance(source, str):
        return source
    name, partition = source
    return f"{name}[{partition}]"


class Merger:
    """Intake and merge of F inputs, driven by one caller (no threads, no I/O).

    ``sources`` are feed names, or ``(name, partition)`` pairs for a feed spread over
    partitions; the merge's tie-break is feed rank (order of first appearance), then
    partition. Every input is required in catch-up; in real time only the feeds named
    in ``live_required`` (default: all) are waited for. Messages with ``pitr`` below
    ``start`` or above ``stop_at`` are read (and checked) but not written.

    >>> m = Merger(["radar", "adsb"], clock=CATCHUP_CLOCK)
    >>> m.feed("radar", [(1, b'{"pitr":5,"src":"r"}'), (2, b'{"type":"keepalive","pitr":9}')])
    >>> m.feed("adsb", [(1, b'{"pitr":5,"src":"a"}'), (2, b'{"pitr":4}')])
    >>> m.close("radar"); m.close("adsb")
    >>> [line.decode() for line in m.drain()]
    ['{"pitr":5,"src":"r"}', '{"pitr":5,"src":"a"}']
    >>> m.stats().dead_letters[0].reason[:26]
    'pitr 4 is lower than 5, th'
    """

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        live_required: Collection[str] | None = None,
        where: Where = "line",
        realtime_threshold_ms: int = DEFAULT_REALTIME_THRESHOLD_MS,
        clock: Callable[[], int] | None = None,
        start: int | None = None,
        stop_at: int | None = None,
        capacity: int = 1_000_000,
    ) -> None:
        if not sources:
            raise ValueError("a merge needs at least one input")
        names: list[str] = []
        for s in sources:
            name = s if isinstance(s, str) else s[0]
            if not isinstance(name, str) or not name:
                raise ValueError(f"an input's name must be a non-empty string, got {name!r}")
            if not isinstance(s, str) and (type(s[1]) is not int or s[1] < 0):
                raise ValueError(f"a partition must be an integer >= 0, got {s[1]!r} for {name!r}")
            if name not in names:
                names.append(name)
        keys = [source_key(s) for s in sources]
        if len(set(keys)) != len(keys):
            raise ValueError(f"inputs must be unique, got {keys}")
        plain = {s for s in sources if isinstance(s, str)}
        split = {s[0] for s in sources if not isinstance(s, str)}
        if plain & split:
            raise ValueError(f"feed {sorted(plain & split)[0]!r} is given whole and by partition")
        if isinstance(live_required, str):
            raise ValueError("live_required must be a collection of input names, not a string")
        required = set(names) if live_required is None else set(live_required)
        unknown = sorted(required - set(names))
        if unknown:
            raise ValueError(f"live_required names {unknown}, which are not inputs {names}")
        if start is not None and stop_at is not None and stop_at < start:
            raise ValueError(f"stop_at {stop_at} is before start {start}")
        # Rank, then partition: the order of the combiner's queues is the tie-break.
        ordered = sorted(
            sources,
            key=lambda s: (names.index(s), -1) if isinstance(s, str) else (names.index(s[0]), s[1]),
        )
        self.names: tuple[str, ...] = tuple(names)
        self.keys: tuple[str, ...] = tuple(source_key(s) for s in ordered)
        self._name_of = {source_key(s): s if isinstance(s, str) else s[0] for s in ordered}
        self._intakes = {
            source_key(s): FeedIntake(
                self._name_of[source_key(s)],
                where=where,
                decoder=StampedDecoder(self._name_of[source_key(s)]),
                partition=None if isinstance(s, str) else s[1],
                queue=source_key(s),
            )
            for s in ordered
        }
        self.stage = MergeStage(
            [Feed(key, self._name_of[key] in required, True, capacity) for key in self.keys],
            realtime_threshold_ms=realtime_threshold_ms,
            clock=clock,
        )
        self.start = start
        self.stop_at = stop_at
        #: Dead letters found and not yet taken (a caller that writes them clears it).
        self.dead_letters: list[DeadLetter] = []
        self._keepalives = dict.fromkeys(self.keys, 0)
        self._skipped = dict.fromkeys(self.keys, 0)
        self.output_count = 0

    def intake(self, key: str) -> FeedIntake:
        try:
            return self._intakes[key]
        except KeyError:
            raise ValueError(f"no input {key!r} in this merge; inputs: {list(self.keys)}") from None

    def feed(self, key: str, batch: Iterable[tuple[int, bytes]]) -> None:
        """Give the merge a batch of ``(line or offset, raw message)`` of one input."""
        good, dead = self.intake(key).process(batch)
        self.dead_letters.extend(dead)
        self._keepalives[key] += len(good.keepalive_at) if type(good) is Intake else 0
        if self.start is not None or self.stop_at is not None:
            good = self._window(key, good)
        self.stage.push(key, good)

    def _window(self, key: str, good: list[Accepted]) -> list[Accepted]:
        """Messages outside ``[start, stop_at]`` stay progress (a keepalive), unwritten."""
        low = -1 if self.start is None else self.start
        high = 2**63 if self.stop_at is None else self.stop_at
        kept: list[Accepted] = []
        skipped = 0
        for a in good:
            if type(a.rec) is not Keepalive and not low <= a.pitr <= high:
                skipped += 1
                a = Accepted(a.feed, a.pitr, a.item, Keepalive(a.pitr))
            kept.append(a)
        self._skipped[key] += skipped
        return kept

    def close(self, key: str) -> None:
        """The input has ended."""
        self.intake(key)
        self.stage.combiner.close(key)

    def drain_emitted(self) -> list[Emitted]:
        out = self.stage.drain()
        self.output_count += len(out)
        return out

    def drain(self) -> list[bytes]:
        """Every message that can be written now, in order."""
        return [e.item for e in self.drain_emitted()]

    def stats(self) -> MergeStats:
        per_name: dict[str, list[int]] = {n: [0, 0, 0, 0] for n in self.names}
        for key, intake in self._intakes.items():
            row = per_name[self._name_of[key]]
            row[0] += intake.accepted - self._keepalives[key] - self._skipped[key]
            row[1] += self._keepalives[key]
            row[2] += intake.dead
            row[3] += self._skipped[key]
        return MergeStats(
            output=self.output_count,
            late=self.stage.combiner.late,
            feeds=tuple(MergeFeedStats(n, *per_name[n]) for n in self.names),
            dead_letters=tuple(self.dead_letters),
        )


_CHUNK: Final = 4096


def merge_lines(
    inputs: dict[str, Iterable[bytes]],
    *,
    live_required: Collection[str] | None = None,
    start: int | None = None,
    stop_at: int | None = None,
    chunk: int = _CHUNK,
) -> tuple[list[bytes], MergeStats]:
    """The merge of complete JSON-lines inputs, by name in rank order, and its statistics.

    Complete inputs are merged by the catch-up rule, so ``live_required`` (checked
    against the names) does not change the output: every input is required in catch-up.

    >>> out, stats = merge_lines({"a": [b'{"pitr":2}', b'{"pitr":1}'], "b": [b'{"pitr":2,"b":1}']})
    >>> out
    [b'{"pitr":2}', b'{"pitr":2,"b":1}']
    >>> stats.feed("a").dead_letters, stats.dead_letters[0].line
    (1, 2)
    """
    merger = Merger(
        list(inputs), live_required=live_required, clock=CATCHUP_CLOCK, start=start, stop_at=stop_at
    )
    output: list[bytes] = []
    run_files(merger, inputs, output.extend, chunk=chunk)
    return output, merger.stats()
