"""Inputs of the benchmarks: synthetic feeds, built once per session, outside every timing.

* `two_feed_merge_input`: pre-decoded messages of two feeds for the combining rule alone;
* `busy_airport_dir`: the busy-airport JSON-lines files for the file pipeline;
* `drive_annotate_stage`: an `AnnotateStage` fed batch by batch, as its thread feeds it;
* `KafkaTraffic`: simulated controlstream and surfacestream for the Kafka runs, either in
  memory as they are (`materialize`) or as an endless cycle of a pool whose ``pitr`` moves
  forward on every lap (`cycle`), for runs longer than is worth simulating.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from unifeed.core.combine import Emitted
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM, SURFACESTREAM
from unifeed.core.stages import AnnotateStage
from unifeed.sim.traffic import iter_traffic, write_simulation

REPO: Final = Path(__file__).resolve().parent.parent
#: Far in the future of every simulated ``pitr``: every candidate is in catch-up.
FAR_FUTURE_MS: Final = 2**62
FEEDS: Final = (CONTROLSTREAM, SURFACESTREAM)


def drive_annotate_stage(
    mappings: Sequence[list[Any]],
    surface: Sequence[list[Any]],
    emit: Callable[[list[Emitted]], Any],
) -> None:
    """A new `AnnotateStage` (catch-up) fed as the annotator thread feeds it: a batch of
    mappings, a batch of accepted surface messages, a drain given to ``emit``; then both
    feeds closed and a last drain."""
    stage = AnnotateStage(clock=lambda: FAR_FUTURE_MS)
    empty: list[Any] = []
    for maps, batch in itertools.zip_longest(mappings, surface, fillvalue=empty):
        stage.push_mappings(maps)
        stage.push_surface(batch)
        emit(stage.drain())
    stage.combiner.close(SURFACESTREAM)
    stage.combiner.close(MAPPINGSTREAM)
    emit(stage.drain())


class _Pitr(msgspec.Struct, gc=False):
    pitr: int


decode_pitr: Final = msgspec.json.Decoder(_Pitr).decode


# --- the combining rule alone ------------------------------------------------------


@dataclass(frozen=True)
class TwoFeedInput:
    """The same messages in the shape each contender takes.

    ``batches[feed]``: ``(pitrs, payloads)`` lists of ``batch`` messages, as a reader hands
    them to `Combiner.push_many`; ``tuples[feed]``: ``(pitr, rank, payload)`` per message,
    as `heapq.merge` takes them (rank breaks ties between feeds; within a feed the merge
    keeps arrival order by itself).
    """

    count: int
    batch: int
    batches: dict[str, list[tuple[list[int], list[bytes]]]]
    tuples: dict[str, list[tuple[int, int, bytes]]]


def two_feed_merge_input(
    count: int, *, batch: int, rates: tuple[float, float] = (2000.0, 1000.0), seed: int = 2024
) -> TwoFeedInput:
    """``count`` messages of controlstream and surfacestream arriving at ``rates`` (per second).

    Arrival times are Poisson processes in milliseconds, so equal ``pitr`` within and across
    feeds happen as they do in real feeds. Payloads are real simulated lines, reused: the
    merge never looks inside them.
    """
    rng = random.Random(seed)
    pool = [line for _, _, line in itertools.islice(iter_traffic(seed=seed, minutes=1), 4096)]
    start = 1_700_000_000_000.0
    clocks = [start, start]
    pitrs: dict[str, list[int]] = {CONTROLSTREAM: [], SURFACESTREAM: []}
    for _ in range(count):
        rank = 0 if clocks[0] <= clocks[1] else 1
        pitrs[FEEDS[rank]].append(int(clocks[rank]))
        clocks[rank] += rng.expovariate(rates[rank] / 1000.0)
    batches: dict[str, list[tuple[list[int], list[bytes]]]] = {}
    tuples: dict[str, list[tuple[int, int, bytes]]] = {}
    n = 0
    for rank, feed in enumerate(FEEDS):
        ps = pitrs[feed]
        payloads = [pool[(n + i) % len(pool)] for i in range(len(ps))]
        n += len(ps)
        batches[feed] = [
            (ps[i : i + batch], payloads[i : i + batch]) for i in range(0, len(ps), batch)
        ]
        tuples[feed] = [(p, rank, x) for p, x in zip(ps, payloads, strict=True)]
    return TwoFeedInput(count=count, batch=batch, batches=batches, tuples=tuples)


# --- the file pipeline ---------------------------------------------------------------


def busy_airport_dir(tmp: Path) -> tuple[Path, Path, str]:
    """``(controlstream, surfacestream, where from)`` of the busy-airport scenario.

    The golden files when they exist; else the same simulation written to ``tmp``.
    """
    golden = REPO / "golden" / "busy-airport"
    for suffix in (".jsonl.gz", ".jsonl"):
        control = golden / f"{CONTROLSTREAM}{suffix}"
        surface = golden / f"{SURFACESTREAM}{suffix}"
        if control.exists() and surface.exists():
            return control, surface, f"golden/busy-airport/*{suffix}"
    write_simulation(tmp, seed=2024, minutes=3, airports=2)
    return (
        tmp / f"{CONTROLSTREAM}.jsonl",
        tmp / f"{SURFACESTREAM}.jsonl",
        "simulate(seed=2024, minutes=3, airports=2)",
    )


# --- Kafka traffic ---------------------------------------------------------------------

_PITR: Final = re.compile(rb'"pitr":(\d+)')


def keepalive(pitr: int) -> bytes:
    return b'{"type":"keepalive","pitr":%d}' % pitr


@dataclass
class FeedLines:
    """One feed's messages in order: raw lines and their ``pitr``."""

    lines: list[bytes]
    pitrs: list[int]

    def __len__(self) -> int:
        return len(self.lines)


@dataclass
class KafkaTraffic:
    """Both feeds of a simulation, in memory, plus the ``pitr`` range they span."""

    feeds: dict[str, FeedLines]
    start_ms: int
    end_ms: int

    @classmethod
    def simulate(
        cls, count: int, *, seed: int = 2024, airports: int = 4, rate: float = 1000.0
    ) -> KafkaTraffic:
        """The first ``count`` messages (both feeds) of a simulation busy enough to reach it."""
        feeds = {feed: FeedLines([], []) for feed in FEEDS}
        minutes = count / (2 * rate * airports * 60) * 1.5 + 1
        last = 0
        for feed, pitr, line in itertools.islice(
            iter_traffic(seed=seed, minutes=minutes, airports=airports, rate=rate), count
        ):
            f = feeds[feed]
            f.lines.append(line)
            f.pitrs.append(pitr)
            last = pitr
        if sum(len(f) for f in feeds.values()) < count:
            raise ValueError(f"the simulation ended before {count} messages")
        start = min(f.pitrs[0] for f in feeds.values())
        return cls(feeds, start, last)

    def thinned(self, feed: str, keep_every: int) -> KafkaTraffic:
        """A copy in which ``feed`` keeps every ``keep_every``-th message and its keepalives."""
        f = self.feeds[feed]
        kept = [
            i
            for i, line in enumerate(f.lines)
            if i % keep_every == 0 or line.startswith(b'{"type":"keepalive"')
        ]
        feeds = dict(self.feeds)
        feeds[feed] = FeedLines([f.lines[i] for i in kept], [f.pitrs[i] for i in kept])
        return KafkaTraffic(feeds, self.start_ms, self.end_ms)


_KEEPALIVE: Final = b'{"type":"keepalive"'


@dataclass
class Chunk:
    """Records the loader produces in one call, with what it counts about them: built
    before the run when the input is in memory, so the loader does less while it runs."""

    records: list[dict[str, bytes]]  # produce_batch's form
    size: int  # bytes of the values
    keepalives: int

    @classmethod
    def of(cls, values: list[bytes]) -> Chunk:
        return cls(
            [{"value": v} for v in values],
            sum(map(len, values)),
            sum(1 for v in values if v.startswith(_KEEPALIVE)),
        )


class FeedSource:
    """One feed's records for the loader, in chunks.

    ``total`` records, then a keepalive past ``stop_at`` so that a run with
    ``--stop-at stop_at`` ends (its readers see a ``pitr`` beyond it).
    """

    def __init__(self, chunks: Iterator[Chunk], total: int, stop_at: int) -> None:
        self._chunks = chunks
        self.total = total + 1
        self.stop_at = stop_at
        self._tail_sent = False

    def next_chunk(self) -> Chunk | None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            return chunk
        if self._tail_sent:
            return None
        self._tail_sent = True
        return Chunk.of([keepalive(self.stop_at + 1000)])


def _chunked(lines: list[bytes], size: int) -> Iterator[Chunk]:
    for i in range(0, len(lines), size):
        yield Chunk.of(lines[i : i + size])


def materialize(traffic: KafkaTraffic, chunk: int = 2000) -> dict[str, FeedSource]:
    """Each feed's lines as they are, in chunks prepared now (before any timing)."""
    return {
        feed: FeedSource(iter(list(_chunked(f.lines, chunk))), len(f), traffic.end_ms)
        for feed, f in traffic.feeds.items()
    }


def cycle(traffic: KafkaTraffic, total: int, chunk: int = 2000) -> dict[str, FeedSource]:
    """About ``total`` records (both feeds) by replaying ``traffic`` lap after lap.

    Each lap moves every ``pitr`` forward by the span of the pool plus one second, so both
    feeds stay in order and in step; the rest of each line is unchanged (flights repeat).
    The feeds keep their relative rates. Chunks are built as the loader asks for them
    (a whole run would not fit in memory).
    """
    pool = sum(len(f) for f in traffic.feeds.values())
    laps = max(1, -(-total // pool))
    span = traffic.end_ms - traffic.start_ms + 1000
    sources: dict[str, FeedSource] = {}
    for feed, f in traffic.feeds.items():
        n = round(len(f) * total / pool)
        sources[feed] = FeedSource(
            map(Chunk.of, _shifted(f, span, n, chunk)), n, traffic.end_ms + (laps - 1) * span
        )
    return sources


def _shifted(f: FeedLines, span: int, n: int, chunk: int) -> Iterator[list[bytes]]:
    pieces = []
    for line in f.lines:
        m = _PITR.search(line)
        assert m is not None
        pieces.append((line[: m.start(1)], int(m.group(1)), line[m.end(1) :]))
    sent = 0
    lap = 0
    while sent < n:
        shift = lap * span
        for i in range(0, len(pieces), chunk):
            part = pieces[i : min(i + chunk, i + n - sent)]
            if not part:
                return
            yield [b"%s%d%s" % (head, pitr + shift, tail) for head, pitr, tail in part]
            sent += len(part)
            if sent >= n:
                return
        lap += 1
