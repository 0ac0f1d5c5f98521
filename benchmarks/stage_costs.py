"""CPU cost per message of each step of the Kafka runtime, measured one step at a time.

    python -m benchmarks.stage_costs [--messages 200000] [--repeat 5]

Runs the pure stages the runtime's threads run, on the busy-airport golden feeds (or a
simulation of the same shape), in batches of 5,000 as the readers hand them on, and prints
the best of ``--repeat`` process-CPU times per message. The Kafka client calls are measured
against a producer with no reachable broker (records only queue), so they show the Python
side of a call and none of the network. Not a pass/fail benchmark: a budget, to see where
the per-message microseconds of a catch-up go and what a change would save.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import time
from collections.abc import Callable
from typing import Any

import msgspec
from confluent_kafka import Producer

from benchmarks._data import REPO, drive_annotate_stage
from unifeed.core.mapping import MappingDeriver
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM, Head, Mapping
from unifeed.core.stages import FeedIntake, WriterStage
from unifeed.sim.traffic import iter_traffic

_BATCH = 5000


def _lines(feed: str, limit: int) -> list[bytes]:
    path = REPO / "golden" / "busy-airport" / f"{feed}.jsonl.gz"
    if path.exists():
        with gzip.open(path, "rb") as f:
            return [line.rstrip(b"\n") for line in itertools.islice(f, limit) if line.strip()]
    traffic = iter_traffic(seed=2024, minutes=3, airports=2)
    return [line for name, _, line in itertools.islice(traffic, 2 * limit) if name == feed][:limit]


def _best(step: Callable[[], Any], repeat: int, reset: Callable[[], Any] | None) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        step()
        best = min(best, time.process_time() - started)
        if reset is not None:
            reset()
    return best


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + _BATCH] for i in range(0, len(items), _BATCH)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stage_costs")
    parser.add_argument("--messages", type=int, default=200_000, help="per feed, at most")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    control = _lines(CONTROLSTREAM, args.messages)
    surface = _lines(SURFACESTREAM, args.messages)
    rows: list[tuple[str, str, float]] = []

    def measure(thread: str, what: str, n: int, step: Callable[[], Any], reset: Any = None) -> None:
        rows.append((thread, what, _best(step, args.repeat, reset) / n * 1e6))

    raw_control = _batches(list(enumerate(control)))
    raw_surface = _batches(list(enumerate(surface)))
    head = msgspec.json.Decoder(Head).decode
    measure(
        "reader",
        "decode type+pitr only (msgspec Head)",
        len(control),
        lambda: [head(line) for line in control],
    )

    def read_all(feed: str, raw: list[list[tuple[int, bytes]]]) -> list[Any]:
        reader_intake = FeedIntake(feed, where="offset")
        return [reader_intake.process(b) for b in raw]

    for feed, raw in ((CONTROLSTREAM, raw_control), (SURFACESTREAM, raw_surface)):
        measure(
            f"reader-{feed}",
            "FeedIntake.process (full decode, checks)",
            sum(map(len, raw)),
            functools.partial(read_all, feed, raw),
        )
    intake = FeedIntake(CONTROLSTREAM, where="offset")
    good_control = [intake.process(b)[0] for b in raw_control]
    intake = FeedIntake(SURFACESTREAM, where="offset")
    good_surface = [intake.process(b)[0] for b in raw_surface]
    n_control = sum(map(len, good_control))
    n_surface = sum(map(len, good_surface))

    def derive() -> list[list[Any]]:
        deriver = MappingDeriver()
        out = []
        for batch in good_control:
            records: list[Any] = []
            for a in batch:
                records.extend(deriver.process(a.rec))
            out.append([m for m in records if type(m) is Mapping])
        return out

    measure("reader-controlstream", "mapping derivation (per control message)", n_control, derive)
    mappings = derive()

    def annotate() -> list[Any]:
        out: list[Any] = []
        drive_annotate_stage(mappings, good_surface, out.append)
        return out

    measure("annotator", "combine mappings + surface, annotate (per surface)", n_surface, annotate)
    annotated = annotate()

    def write() -> list[Any]:
        stage = WriterStage(clock=lambda: 2**62)
        out: list[Any] = []
        empty: list[Any] = []
        for ctl, ann in itertools.zip_longest(good_control, annotated, fillvalue=empty):
            stage.push_control(ctl)
            stage.push_annotated(ann)
            out.append(stage.drain())
        stage.combiner.close(CONTROLSTREAM)
        stage.combiner.close(SURFACESTREAM)
        out.append(stage.drain())
        return out

    total = n_control + n_surface
    measure("writer", "combine control + annotated (per output)", total, write)
    emitted = [e for batch in write() for e in batch]
    measure(
        "writer",
        "[(feed, pitr, item) for e in out]",
        len(emitted),
        lambda: [(e.feed, e.pitr, e.item) for e in emitted],
    )
    producer = Producer(
        {
            "bootstrap.servers": "127.0.0.1:9",
            "log_level": 0,
            "queue.buffering.max.messages": 10_000_000,
            "queue.buffering.max.kbytes": 4_000_000,
        }
    )
    produce = producer.produce

    def produce_with_timestamp() -> None:
        for e in emitted:
            produce("out", e.item, partition=0, timestamp=e.pitr)

    def produce_plain() -> None:
        for e in emitted:
            produce("out", e.item, partition=0)

    measure(
        "writer",
        "produce(value, partition, timestamp=pitr), queue only",
        len(emitted),
        produce_with_timestamp,
        producer.purge,
    )
    measure(
        "peer", "produce(value, partition), queue only", len(emitted), produce_plain, producer.purge
    )
    producer.purge()
    producer.flush(1)
    width = max(len(f"{t}: {w}") for t, w, _ in rows)
    print(
        f"CPU per message (best of {args.repeat}), {n_control:,} control + "
        f"{n_surface:,} surface messages"
    )
    for thread, what, us in rows:
        print(f"  {f'{thread}: {what}':<{width}}  {us:6.2f} us")


if __name__ == "__main__":
    main()
