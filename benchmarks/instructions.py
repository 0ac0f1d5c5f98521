"""The threads' per-record work in one thread, for counting instructions with callgrind.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m benchmarks.instructions 30000            # setup + run
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m benchmarks.instructions 30000 --setup-only
    # instructions a record = (first "Collected" - second) / (2 * 30000)

Runs, batch by batch as the runtime hands them on, what the Kafka runtime's threads do for
each record: the readers' intake (`FeedIntake.process_values`), the mapping derivation,
the annotator stage, the writer stage and the writer's produce loop, with ``produce``
replaced by a no-op (``--produce`` keeps a real producer with no reachable broker, whose
background threads make the count vary). Wall time on a shared machine moves by tens of
percent between runs; the instruction count of this replica is the same every time, so a
change to a hot loop can be judged by it before the Kafka benchmark (which is what counts).
Without valgrind it prints CPU time per record (best of 7).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

from benchmarks.stage_costs import _batches, _lines
from unifeed.core.mapping import MappingDeriver
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM, SURFACESTREAM, Mapping
from unifeed.core.stages import AnnotateStage, FeedIntake, WriterStage
from unifeed.runtime.inbox import Batch

_FAR_FUTURE = 2**62  # every message is old: catch-up mode throughout


def _noop(*_args: Any) -> None:
    return None


def run(control: list[list[bytes]], surface: list[list[bytes]], produce: Callable[..., Any]) -> int:
    """One pass over both feeds; the number of records written."""
    control_intake = FeedIntake(CONTROLSTREAM, where="offset")
    surface_intake = FeedIntake(SURFACESTREAM, where="offset")
    deriver = MappingDeriver()
    annotator = AnnotateStage(clock=lambda: _FAR_FUTURE)
    writer = WriterStage(clock=lambda: _FAR_FUTURE)
    written = 0

    def write(out: list[Any]) -> None:
        nonlocal written
        for e in out:
            produce("out", e.item, None, 0, None, None, e.pitr)
        written += len(out)

    empty: list[bytes] = []
    for values_c, values_s in itertools.zip_longest(control, surface, fillvalue=empty):
        # reader-controlstream: intake, mappings for the annotator, the batch for the writer
        good, dead = control_intake.process_values(values_c, int)
        mappings = [m for m in deriver.process_many([a.rec for a in good]) if type(m) is Mapping]
        marker = good[-1].pitr if good else None
        to_writer = Batch(good, dead, marker)
        to_annotator = Batch(mappings, [], marker)
        # reader-surfacestream
        good_s, dead_s = surface_intake.process_values(values_s, int)
        from_surface = Batch(good_s, dead_s)
        # annotator
        annotator.push_mappings(to_annotator.records)
        if to_annotator.marker is not None:
            annotator.combiner.advance(MAPPINGSTREAM, to_annotator.marker)
        annotator.push_surface(from_surface.records)
        annotated = annotator.drain()
        # writer
        writer.push_control(to_writer.records)
        if to_writer.marker is not None:
            writer.combiner.advance(CONTROLSTREAM, to_writer.marker)
        writer.push_annotated(annotated)
        write(writer.drain())
    annotator.combiner.close(SURFACESTREAM)
    annotator.combiner.close(MAPPINGSTREAM)
    writer.push_annotated(annotator.drain())
    writer.combiner.close(CONTROLSTREAM)
    writer.combiner.close(SURFACESTREAM)
    write(writer.drain())
    return written


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("messages", type=int, nargs="?", default=30_000, help="per feed, at most")
    parser.add_argument("--setup-only", action="store_true", help="load the inputs, run nothing")
    parser.add_argument("--produce", action="store_true", help="a real producer, no broker")
    parser.add_argument("--timed", action="store_true", help="print CPU time per record")
    args = parser.parse_args()
    control = _batches(_lines(CONTROLSTREAM, args.messages))
    surface = _batches(_lines(SURFACESTREAM, args.messages))
    if args.setup_only:
        return
    produce: Callable[..., Any] = _noop
    purge: Callable[[], Any] = _noop
    if args.produce:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": "127.0.0.1:9",
                "log_level": 0,
                "queue.buffering.max.messages": 10_000_000,
                "queue.buffering.max.kbytes": 4_000_000,
            }
        )
        produce, purge = producer.produce, producer.purge
    records = sum(map(len, control)) + sum(map(len, surface))
    if not args.timed:
        written = run(control, surface, produce)
        purge()
        print(f"{records:,} records read, {written:,} written")
        return
    best = float("inf")
    for _ in range(7):
        started = time.process_time()
        run(control, surface, produce)
        best = min(best, time.process_time() - started)
        purge()
    print(f"{best / records * 1e6:.3f} us of CPU a record (best of 7, {records:,} records)")


if __name__ == "__main__":
    main()
