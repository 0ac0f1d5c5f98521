"""`CombineRun`: one run of `unifeed combine` against Kafka."""

from __future__ import annotations

import logging

from unifeed.core.annotate import DEFAULT_LATE_WINDOW_MS, Annotator
from unifeed.core.mapping import (
    DeriverState,
    MappingDeriver,
)
from unifeed.core.records import (
    CONTROLSTREAM,
    MAPPINGSTREAM,
    SURFACESTREAM,
    Keepalive,
    Mapping,
)
from unifeed.core.stages import (
    Accepted,
)
from unifeed.kafka.clients import (
    Target,
    consumer_config,
)
from unifeed.runtime.claim import ClaimWatcher
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.limits import LANE_BATCHES
from unifeed.runtime.options import START_EARLIEST, RuntimeOptions
from unifeed.runtime.output import Committer
from unifeed.runtime.reader import Delivery, FeedReader, HandOnStep, ReadBatch, ReadPlan
from unifeed.runtime.saved import StateSnapshots
from unifeed.runtime.seek import offset_for_pitr
from unifeed.runtime.stages import AnnotatorInbox, AnnotatorThread, WriterInbox, WriterThread
from unifeed.runtime.startup import (
    links_hook,
    open_committer,
    restart_offset,
    restore_state,
    snapshot_hook,
    start_positions,
)
from unifeed.runtime.supervisor import Supervisor

log = logging.getLogger("unifeed")



class CombineRun(Supervisor):
    """One run of `unifeed combine` against Kafka (see the package docstring)."""

    command = "combine"

    def __init__(
        self,
        options: RuntimeOptions,
        control: Target,
        surface: Target,
        output: Target,
        mapping: Target | None = None,
    ) -> None:
        super().__init__(options)
        self.control = control
        self.surface = surface
        self.mapping = mapping
        self.output = output
        self.writer: WriterThread | None = None

    def setup(self) -> None:
        o = self.options
        inputs = {CONTROLSTREAM: self.control, SURFACESTREAM: self.surface}
        if self.mapping is not None:
            inputs[MAPPINGSTREAM] = self.mapping
        committer = open_committer(
            o, self.output, (CONTROLSTREAM, SURFACESTREAM), self.state, inputs
        )
        cp = committer.checkpoint
        targets = {CONTROLSTREAM: self.control, SURFACESTREAM: self.surface}
        plans: dict[str, ReadPlan] = {}
        restored: DeriverState | None = None
        if cp is not None and all(f in cp.feeds for f in targets):
            pc, ps = cp.feeds[CONTROLSTREAM], cp.feeds[SURFACESTREAM]
            if self.mapping is None:
                restored = restore_state(o, committer, CONTROLSTREAM, self.control)
            else:
                restored = restore_state(o, committer, MAPPINGSTREAM, self.mapping)
            if restored is not None and self.mapping is None:
                plans[CONTROLSTREAM] = ReadPlan(
                    committer.state_ref.offset if committer.state_ref else 0,
                    pc,
                    pc.dead_offset,
                    restored.floor,
                )
            else:
                replay_from = min(pc.pitr, ps.pitr) - o.lookback_ms
                plans[CONTROLSTREAM] = ReadPlan(
                    restart_offset(o, self.control, replay_from, pc.offset), pc, pc.dead_offset
                )
            plans[SURFACESTREAM] = ReadPlan(
                restart_offset(o, self.surface, ps.pitr, ps.offset), ps, ps.dead_offset
            )
            mapping_from = ps.pitr - o.lookback_ms
            log.info("%s: resuming from checkpoint %s", o.instance, cp.describe())
        else:
            starts = start_positions(o, targets)
            positions = {f: pos for f, (_, pos) in starts.items()}
            if o.start == START_EARLIEST:
                plans = {f: ReadPlan(off) for f, (off, _) in starts.items()}
                mapping_from = 0
            else:
                pc, ps = positions[CONTROLSTREAM], positions[SURFACESTREAM]
                plans[CONTROLSTREAM] = ReadPlan(
                    offset_for_pitr(o, self.control, min(pc.pitr, ps.pitr) - o.lookback_ms), pc
                )
                plans[SURFACESTREAM] = ReadPlan(starts[SURFACESTREAM][0], ps)
                mapping_from = ps.pitr - o.lookback_ms
            committer.first_checkpoint(positions)
        committer.begin()
        self._build_threads(committer, plans, mapping_from, restored)

    def _build_threads(
        self,
        committer: Committer,
        plans: dict[str, ReadPlan],
        mapping_from: int,
        restored: DeriverState | None = None,
    ) -> None:
        o = self.options
        st = self.state
        writer_inbox: WriterInbox = Inbox([CONTROLSTREAM, SURFACESTREAM], LANE_BATCHES, st.stop)
        annot_inbox: AnnotatorInbox = Inbox([MAPPINGSTREAM, SURFACESTREAM], LANE_BATCHES, st.stop)
        rconf = consumer_config(o.bootstrap, o.kafka_extra)
        rconf.setdefault("queued.max.messages.kbytes", 16_384)
        rconf.setdefault("fetch.max.bytes", 16 * 1024 * 1024)
        derive = self.mapping is None
        deriver = (
            None
            if not derive
            else MappingDeriver() if restored is None else MappingDeriver.restore(restored)
        )

        def control_to_writer(read: ReadBatch) -> Batch[Accepted] | None:
            good = read.good
            marker = good[-1].rec.pitr if good else None
            return Batch(good, read.dead, marker, read.caught_up, read.closed)

        def control_to_annotator(read: ReadBatch) -> Batch[Mapping] | None:
            assert deriver is not None
            replay, good = read.replay, read.good
            records: list[Mapping | Keepalive] = []
            records.extend(deriver.process_many([a.rec for a in replay]))
            records.extend(deriver.process_many([a.rec for a in good]))
            maps = [m for m in records if type(m) is Mapping]
            last = (replay or good)[-1].rec.pitr if (good or replay) else None
            if good:
                last = good[-1].rec.pitr
            return Batch(maps, [], last, read.caught_up, read.closed)

        control_steps: list[HandOnStep] = []
        if derive:
            control_steps.append((annot_inbox, MAPPINGSTREAM, control_to_annotator))
        control_steps.append((writer_inbox, CONTROLSTREAM, control_to_writer))

        def surface_to_annotator(read: ReadBatch) -> Batch[Accepted] | None:
            return Batch(read.good, read.dead, None, read.caught_up, read.closed)

        def reader(
            feed: str, target: Target, plan: ReadPlan, deliver: Delivery
        ) -> FeedReader:
            """A reader of this run: the settings every feed shares."""
            return FeedReader(
                state=st,
                feed=feed,
                target=target,
                config=rconf,
                plan=plan,
                deliver=deliver,
                stop_at=o.stop_at,
                exit_at_end=o.exit_at_end,
                end_of_log_grace_s=o.end_of_log_grace_s,
            )

        control_reader = reader(
            CONTROLSTREAM, self.control, plans[CONTROLSTREAM], Delivery(control_steps)
        )
        surface_reader = reader(
            SURFACESTREAM,
            self.surface,
            plans[SURFACESTREAM],
            Delivery([(annot_inbox, SURFACESTREAM, surface_to_annotator)]),
        )
        self.threads += [control_reader, surface_reader]
        if deriver is not None:
            # The deriver's state travels with the checkpoints (a restart needs it whatever
            # --lookback); a saved one lies a late window behind every feed's position, so
            # that a restart rebuilds the link history late messages need.
            snapshots = StateSnapshots()
            control_reader.before_batch = snapshot_hook(snapshots, deriver)
            committer.snapshots = snapshots
            committer.state_lag_ms = DEFAULT_LATE_WINDOW_MS
        # controlstream restarts a lookback before the lowest position (it rebuilds the
        # links from there; with derived mappings, the surface's links come from it too).
        committer.marks = {
            CONTROLSTREAM: (control_reader.marks, o.lookback_ms),
            SURFACESTREAM: (surface_reader.marks, None),
        }
        if self.mapping is not None:
            cp = committer.checkpoint
            mapping_dead = (
                cp.feeds[MAPPINGSTREAM].dead_offset
                if cp is not None and MAPPINGSTREAM in cp.feeds
                else None
            )

            # The links this mappingstream has made, kept beside the annotator's own table
            # (in this reader's thread) for the state saved with the checkpoints.
            links = Annotator(late_window_ms=0)
            if restored is not None:
                links.seed(restored.links, restored.floor)

            def mapping_to_annotator(read: ReadBatch) -> Batch[Mapping] | None:
                records = [a.rec for a in read.good]
                apply = links.apply
                for r in records:
                    if type(r) is Mapping:
                        apply(r)
                return Batch(
                    [r for r in records if type(r) is Mapping],
                    read.dead,
                    records[-1].pitr if records else None,
                    read.caught_up,
                    read.closed,
                )

            ref = committer.state_ref
            mapping_plan = (
                ReadPlan(ref.offset, None, mapping_dead, restored.floor)
                if restored is not None and ref is not None
                else ReadPlan(offset_for_pitr(o, self.mapping, mapping_from), None, mapping_dead)
            )
            mapping_reader = reader(
                MAPPINGSTREAM,
                self.mapping,
                mapping_plan,
                Delivery([(annot_inbox, MAPPINGSTREAM, mapping_to_annotator)]),
            )
            snapshots = StateSnapshots()
            mapping_reader.before_batch = links_hook(snapshots, links)
            committer.snapshots = snapshots
            committer.state_lag_ms = DEFAULT_LATE_WINDOW_MS
            committer.state_feed = MAPPINGSTREAM
            self.threads.append(mapping_reader)
        annotator = AnnotatorThread(st, annot_inbox, writer_inbox, o)
        if restored is not None:
            annotator.stage.annotator.seed(restored.links, restored.floor)
        self.threads.append(annotator)
        self.writer = WriterThread(st, writer_inbox, committer, o)
        self.threads.append(self.writer)
        self.main = self.writer
        self.threads.append(ClaimWatcher(st, o, committer))
        self.annot_inbox = annot_inbox
        self.writer_inbox = writer_inbox

    def depths(self) -> dict[str, int]:
        if self.writer is None:
            return {}  # still starting: no queues yet
        return {
            "writer.controlstream": self.writer_inbox.depth(CONTROLSTREAM),
            "writer.surfacestream": self.writer_inbox.depth(SURFACESTREAM),
            "annotator.mappingstream": self.annot_inbox.depth(MAPPINGSTREAM),
            "annotator.surfacestream": self.annot_inbox.depth(SURFACESTREAM),
        }
