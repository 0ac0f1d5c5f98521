"""`MappingsRun`: one run of `unifeed mappings` against Kafka: controlstream in, the
derived mappingstream out, on the same supervisor, checkpoints and claim as combine."""

from __future__ import annotations

import logging

from unifeed.checkpoint.store import FeedCheckpoint
from unifeed.core.combine import Emitted
from unifeed.core.mapping import DeriverState, DeriverStats, MappingDeriver, encode_mapping
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM
from unifeed.kafka.clients import Target, consumer_config
from unifeed.runtime.claim import ClaimWatcher
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.limits import IDLE_S, LANE_BATCHES
from unifeed.runtime.options import START_EARLIEST, RuntimeOptions
from unifeed.runtime.output import Committer
from unifeed.runtime.reader import Delivery, FeedReader, ReadBatch, ReadPlan
from unifeed.runtime.saved import StateSnapshots
from unifeed.runtime.seek import offset_for_pitr
from unifeed.runtime.stages import end_round
from unifeed.runtime.startup import (
    open_committer,
    restart_offset,
    restore_state,
    snapshot_hook,
    start_positions,
)
from unifeed.runtime.state import RunState, Worker
from unifeed.runtime.supervisor import Supervisor

log = logging.getLogger("unifeed")


class MappingsRun(Supervisor):
    """One run of `unifeed mappings` against Kafka; `stats` after `run`."""

    command = "mappings"

    def __init__(self, options: RuntimeOptions, control: Target, output: Target) -> None:
        super().__init__(options)
        self.control = control
        self.output = output
        self.deriver = MappingDeriver()
        self.inbox: Inbox[Emitted] = Inbox([CONTROLSTREAM], LANE_BATCHES, self.state.stop)

    def depths(self) -> dict[str, int]:
        return {"writer": self.inbox.depth(CONTROLSTREAM)}

    def stats(self) -> DeriverStats:
        """What the deriver has made so far (links, unlinks, keepalives)."""
        return self.deriver.stats()

    def setup(self) -> None:
        o = self.options
        control = self.control
        committer = open_committer(
            o, self.output, (CONTROLSTREAM,), self.state, {CONTROLSTREAM: control}
        )
        cp = committer.checkpoint
        restored: DeriverState | None = None
        if cp is not None and CONTROLSTREAM in cp.feeds:
            pos = cp.feeds[CONTROLSTREAM]
            restored = restore_state(o, committer, CONTROLSTREAM, control)
            if restored is not None and committer.state_ref is not None:
                plan = ReadPlan(committer.state_ref.offset, pos, pos.dead_offset, restored.floor)
            else:
                start = restart_offset(o, control, pos.pitr - o.lookback_ms, pos.offset)
                plan = ReadPlan(start, pos, pos.dead_offset)
            log.info("%s: resuming from checkpoint %s", o.instance, cp.describe())
        else:
            off, pos = start_positions(o, {CONTROLSTREAM: control})[CONTROLSTREAM]
            plan = (
                ReadPlan(off)
                if o.start == START_EARLIEST
                else ReadPlan(offset_for_pitr(o, control, pos.pitr - o.lookback_ms), pos)
            )
            committer.first_checkpoint({CONTROLSTREAM: pos})
        committer.begin()
        if restored is not None:
            self.deriver = MappingDeriver.restore(restored)
        deriver = self.deriver
        tracker: dict[str, int] = {}
        if plan.resume_after is not None:
            tracker.update(pitr=plan.resume_after.pitr, skip=plan.resume_after.skip)

        def hand_on(read: ReadBatch) -> Batch[Emitted] | None:
            good = read.good
            for a in read.replay:
                deriver.process(a.rec)
            out: list[Emitted] = []
            for a in good:
                for m in deriver.process(a.rec):
                    out.append(Emitted(MAPPINGSTREAM, m.pitr, encode_mapping(m)))
            # The checkpoint counts controlstream messages (keepalives too: they cause output).
            position = None
            if good:
                last = good[-1].rec.pitr
                count = sum(1 for a in good if a.rec.pitr == last)
                if count == len(good) and tracker.get("pitr") == last:
                    count += tracker["skip"]
                tracker.update(pitr=last, skip=count)
                position = FeedCheckpoint(pitr=last, skip=count)
            return Batch(out, read.dead, None, read.caught_up, read.closed, position)

        reader = FeedReader(
            state=self.state,
            feed=CONTROLSTREAM,
            target=control,
            config=consumer_config(o.bootstrap, o.kafka_extra),
            plan=plan,
            deliver=Delivery([(self.inbox, CONTROLSTREAM, hand_on)]),
            stop_at=o.stop_at,
            exit_at_end=o.exit_at_end,
            end_of_log_grace_s=o.end_of_log_grace_s,
            count_keepalives=True,
        )
        committer.marks = {CONTROLSTREAM: (reader.marks, o.lookback_ms)}
        snapshots = StateSnapshots()
        reader.before_batch = snapshot_hook(snapshots, deriver)
        committer.snapshots = snapshots
        writer = MappingsWriter(self.state, self.inbox, committer)
        self.threads += [reader, writer, ClaimWatcher(self.state, o, committer)]
        self.main = writer


class MappingsWriter(Worker):
    """Writes the mappings and dead letters the reader hands on, and commits."""

    def __init__(self, state: RunState, inbox: Inbox[Emitted], committer: Committer) -> None:
        super().__init__("writer", state)
        self.inbox = inbox
        self.committer = committer

    def work(self) -> None:
        committer = self.committer
        state = self.state
        try:
            while True:
                stopping = state.stop.is_set()
                finished = False
                for _, batch in self.inbox.take([CONTROLSTREAM], 0 if stopping else IDLE_S):
                    committer.write_dead(batch.dead)
                    position = batch.position
                    committer.write(
                        batch.records, None if position is None else {CONTROLSTREAM: position}
                    )
                    if batch.closed:
                        finished = True
                committer.stop_if_over_dead_letter_limit()
                if end_round(committer, state, finished or stopping):
                    return
        finally:
            committer.close()
