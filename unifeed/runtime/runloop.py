"""`RunLoop`: every stage of a run in one thread, in turn.

The stages of a run (its partitions' readers, each partitioned feed's merge, the
annotator, the writer) are Python, and Python runs one thread at a time (the GIL): given
a thread each, they take turns anyway, and every turn hands the GIL, the batches and the
records' memory from one CPU to another. Measured on Apache Kafka (1,000,000 pre-filled
records, `benchmarks/test_bench_partitions.py`, with the commit beside the loop as below),
the same stages run in turn by one thread read 5-35% more records a second than in a
thread each, with less memory (benchmarks/README.md).
The Kafka client's own threads (fetching, compressing, sending) still run beside it, in
C, without the GIL.

One round: one consumer reads every input partition (`PartitionsReader.step`, a batch
of what is there, waiting only when the previous round moved nothing), then each next
stage takes what came in, in the order the records flow (merges, annotator, writer).
Nothing waits for room in a queue: a stage whose next queue is full keeps its output
and takes nothing new until the next stage has taken it, a round later; a partition
whose reader's hand-over is full is held, and nothing more is read while the next stages
still move (then read on, and paused past a batch). A periodic commit waits for the
broker in a thread of its own (`WriterStep`); the loop goes on meanwhile. The queues,
their bounds and the order of everything written are those of the threaded stages: only
who runs them changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer

from unifeed.runtime.feedmerge import FeedMerge
from unifeed.runtime.limits import IDLE_S
from unifeed.runtime.reader import ConsumerWorker, Delivery, FeedReader, PartitionsReader
from unifeed.runtime.stages import AnnotatorStep, WriterStep
from unifeed.runtime.state import RunState

#: One stage's round: whether it moved anything (it never waits: the loop waits in the
#: consumer).
Step = Callable[[], bool]


class RunLoop(ConsumerWorker):
    """Runs the readers of ``parts`` (every input partition of the run, on one consumer
    made from ``config``), then the partitioned feeds' ``merges``, the ``annotator`` (the
    unified feed's) and the ``writer``, round after round, until the writer is done.
    Their hand-overs never wait for room (see the module docstring)."""

    def __init__(
        self,
        state: RunState,
        config: dict[str, Any],
        parts: Sequence[FeedReader],
        merges: Sequence[FeedMerge],
        writer: WriterStep,
        annotator: AnnotatorStep | None = None,
    ) -> None:
        super().__init__("run", state)
        self.config = config
        # The partitions' hand-overs never wait: `PartitionsReader.step` without
        # ``wait_for_room``. The merges' are told here.
        self.reading = PartitionsReader(state, "inputs", config, list(parts))
        stages: list[Step] = []
        for m in merges:
            if isinstance(m.deliver, Delivery):
                m.deliver.wait_s = 0.0
            stages.append(m.step)
        if annotator is not None:
            stages.append(annotator.step)
        self.stages = stages
        self.writer = writer

    @property
    def next_offset(self) -> int:
        """Messages read so far, all partitions (for progress reports)."""
        return self.reading.next_offset

    def work(self) -> None:
        try:
            super().work()
        except BaseException as exc:
            # The run's failure is this error, recorded before closing: closing a failed
            # producer serves the reports of the records it purged, which would otherwise
            # be taken for the cause.
            self.state.fail(exc)
            raise
        finally:
            self.reading.end()
            self.writer.close()

    def _loop(self, consumer: Consumer) -> None:
        reading = self.reading
        reading.begin(consumer)
        stages = self.stages
        writer = self.writer
        stop = self.state.stop
        moved = True
        while not writer.done:
            if stop.is_set():
                # The writer's last round: what it holds is written and committed
                # (unless the run failed); the other stages' input is read again on
                # restart.
                writer.step()
                continue
            if not moved and writer.committing:
                # Nothing can move until the commit ends (the next stages are full).
                writer.wait_for_commit(IDLE_S)
                moved = True
            if not reading.finished:
                # While a hand-over is full and the next stages are still moving (or the
                # writer commits), they catch up before anything more is read: reading
                # on would hold that partition's messages, then pause it, and the Kafka
                # client drops what it has fetched ahead of a paused partition (fetched
                # again on resume). Once they stop moving, reading goes on: the stage a
                # partition waits for may need another partition's messages.
                catch_up = reading.refused and (moved or writer.committing)
                moved = reading.step(
                    0 if moved else IDLE_S, wait_for_room=False, read=not catch_up
                )
            else:
                if not moved:
                    stop.wait(IDLE_S)
                moved = False
            for step in stages:
                moved = step() or moved
            moved = writer.step() or moved
