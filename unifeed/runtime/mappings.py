"""`MappingsRun`: one run of `unifeed mappings` against Kafka: controlstream in, the
derived mappingstream out, on the same supervisor, checkpoints and claim as combine."""

from __future__ import annotations

import logging

from unifeed.checkpoint.store import FeedCheckpoint, StateRef
from unifeed.core.combine import Emitted
from unifeed.core.mapping import DeriverState, DeriverStats, MappingDeriver, encode_mapping
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM
from unifeed.kafka.clients import Target, TopicSelection, consumer_config
from unifeed.runtime import startup
from unifeed.runtime.claim import ClaimWatcher
from unifeed.runtime.feedmerge import read_feed
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.layout import lowest_position
from unifeed.runtime.limits import IDLE_S, LANE_BATCHES
from unifeed.runtime.opening import watermarks_or_empty
from unifeed.runtime.options import START_EARLIEST, RuntimeOptions
from unifeed.runtime.output import Committer
from unifeed.runtime.partwatch import PartitionWatch
from unifeed.runtime.reader import Delivery, ReadBatch, ReadPlan
from unifeed.runtime.saved import StateSaver
from unifeed.runtime.seek import offset_for_pitr
from unifeed.runtime.stages import end_round
from unifeed.runtime.state import RunState, Worker
from unifeed.runtime.supervisor import Supervisor

log = logging.getLogger("unifeed")


class MappingsRun(Supervisor):
    """One run of `unifeed mappings` against Kafka; `stats` after `run`."""

    command = "mappings"

    def __init__(
        self, options: RuntimeOptions, control: Target | TopicSelection, output: Target
    ) -> None:
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
        control = startup.resolve_feeds(o, self.state, {CONTROLSTREAM: self.control})[CONTROLSTREAM]
        self.watchers.append(PartitionWatch(o, [control]))
        targets = control.by_key()
        opened = startup.open_output(o, self.output, control.keys, self.state, targets)
        cp = opened.checkpoint
        restored: DeriverState | None = None
        ref: StateRef | None = None
        first: dict[str, FeedCheckpoint] | None = None
        plans: dict[str, ReadPlan] = {}
        known = {k: cp.feeds[k] for k in control.keys if cp is not None and k in cp.feeds}
        if cp is not None and known:
            found = startup.restore_state(
                o, cp, CONTROLSTREAM, control.targets[0], targets if control.split else None
            )
            if found is not None:
                restored, ref = found
            lowest = lowest_position(known, known)
            for key, target in targets.items():
                pos = known.get(key)
                saved = ref.partitions.get(key) if ref is not None and ref.partitions else None
                if pos is None:
                    plans[key] = ReadPlan(watermarks_or_empty(o, target)[0])
                elif restored is not None and ref is not None and ref.partitions is not None:
                    plans[key] = (
                        ReadPlan(saved.offset, pos, pos.dead_offset, saved.floor)
                        if saved is not None
                        else ReadPlan(watermarks_or_empty(o, target)[0], pos, pos.dead_offset)
                    )
                elif restored is not None and ref is not None:
                    plans[key] = ReadPlan(ref.offset, pos, pos.dead_offset, restored.floor)
                else:
                    start = startup.restart_offset(o, target, lowest - o.lookback_ms, pos.offset)
                    plans[key] = ReadPlan(start, pos, pos.dead_offset)
            log.info("%s: resuming from checkpoint %s", o.instance, cp.describe())
        else:
            starts = startup.start_positions(o, targets)
            positions = {k: pos for k, (_, pos) in starts.items()}
            lowest = lowest_position(positions, positions)
            for key, target in targets.items():
                off, pos = starts[key]
                plans[key] = (
                    ReadPlan(off)
                    if o.start == START_EARLIEST
                    else ReadPlan(offset_for_pitr(o, target, lowest - o.lookback_ms), pos)
                )
            first = positions
        if restored is not None:
            self.deriver = MappingDeriver.restore(restored)
        deriver = self.deriver
        # Per partition key: the last pitr handed on and how many messages had it.
        tracker: dict[str, tuple[int, int]] = {
            k: (p.resume_after.pitr, p.resume_after.skip)
            for k, p in plans.items()
            if p.resume_after is not None
        }

        def hand_on(read: ReadBatch) -> Batch[Emitted] | None:
            good = read.good
            for a in read.replay:
                deriver.process(a.rec)
            out: list[Emitted] = []
            for a in good:
                for m in deriver.process(a.rec):
                    out.append(Emitted(MAPPINGSTREAM, m.pitr, encode_mapping(m)))
            # The checkpoint counts controlstream messages (keepalives too: they cause output).
            positions = None
            if good:
                positions = {}
                for a in good:
                    key = a.feed
                    last = tracker.get(key)
                    tracker[key] = (
                        (a.pitr, last[1] + 1) if last is not None and last[0] == a.pitr else (a.pitr, 1)
                    )
                    positions[key] = tracker[key]
            return Batch(
                out,
                read.dead,
                None,
                read.caught_up,
                read.closed,
                None
                if positions is None
                else {k: FeedCheckpoint(pitr=p, skip=n) for k, (p, n) in positions.items()},
            )

        threads, readers, merge = read_feed(
            self.state,
            control,
            plans,
            Delivery([(self.inbox, CONTROLSTREAM, hand_on)]),
            consumer_config(o.bootstrap, o.kafka_extra),
            o,
            count_keepalives=True,
        )
        snapshots = startup.snapshot_deriver(deriver, control.keys[0], readers, merge)
        committer = Committer(
            opened,
            {k: (r.marks, o.lookback_ms) for k, r in readers.items()},
            StateSaver(snapshots, feed=CONTROLSTREAM, ref=ref),
        )
        if first is not None:
            committer.first_checkpoint(first)
        committer.begin()
        writer = MappingsWriter(self.state, self.inbox, committer)
        self.threads += [*threads, writer, ClaimWatcher(self.state, o, opened.claim)]
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
        options = committer.options
        catching_up = False
        try:
            while True:
                stopping = state.stop.is_set()
                finished = False
                for _, batch in self.inbox.take([CONTROLSTREAM], 0 if stopping else IDLE_S):
                    committer.write_dead(batch.dead)
                    committer.write(batch.records, batch.positions)
                    if batch.records:
                        # A backlog: its last mapping older than the real-time threshold.
                        age = options.clock() - batch.records[-1].pitr
                        catching_up = age > options.realtime_threshold_ms
                    if batch.closed:
                        finished = True
                committer.stop_if_over_dead_letter_limit()
                if end_round(committer, state, finished or stopping, catching_up):
                    return
        finally:
            committer.close()
