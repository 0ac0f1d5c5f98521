"""`CombineRun`: one run of `unifeed combine` against Kafka."""

from __future__ import annotations

import logging

from unifeed.checkpoint.store import FeedCheckpoint, StateRef
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
    TopicSelection,
)
from unifeed.runtime.claim import ClaimWatcher
from unifeed.runtime.feedmerge import read_feed
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.layout import FeedInput, lowest_position
from unifeed.runtime.limits import LANE_BATCHES
from unifeed.runtime.opening import OpenedOutput, watermarks_or_empty
from unifeed.runtime.options import START_EARLIEST, RuntimeOptions
from unifeed.runtime.output import Committer
from unifeed.runtime.partwatch import PartitionWatch
from unifeed.runtime.reader import (
    Delivery,
    FeedReader,
    HandOnStep,
    ReadBatch,
    ReadPlan,
    reader_config,
    run_reader_config,
)
from unifeed.runtime.runloop import RunLoop
from unifeed.runtime.saved import StateSaver, StateSnapshots
from unifeed.runtime.seek import offset_for_pitr
from unifeed.runtime.stages import AnnotatorInbox, AnnotatorStep, WriterInbox, WriterStep
from unifeed.runtime.startup import (
    inputs_of,
    links_hook,
    open_output,
    resolve_feeds,
    restart_offset,
    restore_state,
    snapshot_deriver,
    start_positions,
)
from unifeed.runtime.supervisor import Supervisor

log = logging.getLogger("unifeed")



class CombineRun(Supervisor):
    """One run of `unifeed combine` against Kafka (see the package docstring).

    ``control`` and ``surface`` are a `Target` (that one partition) or a
    `TopicSelection` (``kafka:TOPIC`` is every partition of the topic; each partition is
    its own queue, merged into its feed's order: `FeedMerge`)."""

    command = "combine"

    def __init__(
        self,
        options: RuntimeOptions,
        control: Target | TopicSelection,
        surface: Target | TopicSelection,
        output: Target,
        mapping: Target | None = None,
    ) -> None:
        super().__init__(options)
        self.control = control
        self.surface = surface
        self.mapping = mapping
        self.output = output
        self.writer: WriterStep | None = None
        self.feeds: dict[str, FeedInput] = {}

    def setup(self) -> None:
        o = self.options
        feeds = resolve_feeds(
            o, self.state, {CONTROLSTREAM: self.control, SURFACESTREAM: self.surface}
        )
        self.feeds = feeds
        control, surface = feeds[CONTROLSTREAM], feeds[SURFACESTREAM]
        self.watchers.append(PartitionWatch(o, list(feeds.values())))
        inputs = {**control.by_key(), **surface.by_key()}
        if self.mapping is not None:
            inputs[MAPPINGSTREAM] = self.mapping
        keys = control.keys + surface.keys
        opened = open_output(o, self.output, keys, self.state, inputs)
        cp = opened.checkpoint
        plans: dict[str, ReadPlan] = {}
        restored: DeriverState | None = None
        ref: StateRef | None = None
        first: dict[str, FeedCheckpoint] | None = None
        known = {k: cp.feeds[k] for k in keys if cp is not None and k in cp.feeds}
        if cp is not None and known:
            found = (
                restore_state(
                    o,
                    cp,
                    CONTROLSTREAM,
                    control.targets[0],
                    control.by_key() if control.split else None,
                )
                if self.mapping is None
                else restore_state(o, cp, MAPPINGSTREAM, self.mapping)
            )
            if found is not None:
                restored, ref = found
            saved_starts = ref.partitions if ref is not None else None
            lowest = lowest_position(known, known)
            for key, target in control.by_key().items():
                pos = known.get(key)
                if pos is None:
                    plans[key] = ReadPlan(watermarks_or_empty(o, target)[0])
                elif restored is not None and self.mapping is None and saved_starts is not None:
                    # Each partition from where the saved state was taken of it.
                    start = saved_starts.get(key)
                    plans[key] = (
                        ReadPlan(start.offset, pos, pos.dead_offset, start.floor)
                        if start is not None
                        else ReadPlan(watermarks_or_empty(o, target)[0], pos, pos.dead_offset)
                    )
                elif restored is not None and self.mapping is None:
                    plans[key] = ReadPlan(
                        ref.offset if ref is not None else 0,
                        pos,
                        pos.dead_offset,
                        restored.floor,
                    )
                else:
                    plans[key] = ReadPlan(
                        restart_offset(o, target, lowest - o.lookback_ms, pos.offset),
                        pos,
                        pos.dead_offset,
                    )
            for key, target in surface.by_key().items():
                pos = known.get(key)
                plans[key] = (
                    ReadPlan(watermarks_or_empty(o, target)[0])
                    if pos is None
                    else ReadPlan(restart_offset(o, target, pos.pitr, pos.offset), pos, pos.dead_offset)
                )
            surface_known = [k for k in surface.keys if k in known]
            mapping_from = (
                lowest_position(known, surface_known) if surface_known else lowest
            ) - o.lookback_ms
            log.info("%s: resuming from checkpoint %s", o.instance, cp.describe())
        else:
            starts = start_positions(o, inputs_of(control, surface))
            positions = {k: pos for k, (_, pos) in starts.items()}
            if o.start == START_EARLIEST:
                plans = {k: ReadPlan(off) for k, (off, _) in starts.items()}
                mapping_from = 0
            else:
                lowest = lowest_position(positions, positions)
                for key, target in control.by_key().items():
                    plans[key] = ReadPlan(
                        offset_for_pitr(o, target, lowest - o.lookback_ms), positions[key]
                    )
                for key in surface.keys:
                    plans[key] = ReadPlan(starts[key][0], positions[key])
                mapping_from = min(positions[k].pitr for k in surface.keys) - o.lookback_ms
            first = positions
        self._build_threads(opened, plans, mapping_from, restored, ref, first)

    def _build_threads(
        self,
        opened: OpenedOutput,
        plans: dict[str, ReadPlan],
        mapping_from: int,
        restored: DeriverState | None,
        ref: StateRef | None,
        first: dict[str, FeedCheckpoint] | None,
    ) -> None:
        """The threads of the run, then its `Committer` (with their restart marks and the
        saved state): it writes the first checkpoint of a new instance (``first``) and
        opens the first transaction."""
        o = self.options
        st = self.state
        writer_inbox: WriterInbox = Inbox([CONTROLSTREAM, SURFACESTREAM], LANE_BATCHES, st.stop)
        annot_inbox: AnnotatorInbox = Inbox([MAPPINGSTREAM, SURFACESTREAM], LANE_BATCHES, st.stop)
        rconf = reader_config(
            o,
            sum(len(f.targets) for f in self.feeds.values()) + (self.mapping is not None),
        )
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

        control, surface = self.feeds[CONTROLSTREAM], self.feeds[SURFACESTREAM]
        _, control_readers, control_merge = read_feed(
            st, control, plans, Delivery(control_steps), rconf, o
        )
        _, surface_readers, surface_merge = read_feed(
            st,
            surface,
            plans,
            Delivery([(annot_inbox, SURFACESTREAM, surface_to_annotator)]),
            rconf,
            o,
        )
        parts = [*control_readers.values(), *surface_readers.values()]
        saver: StateSaver | None = None
        if deriver is not None:
            # The deriver's state travels with the checkpoints (a restart needs it whatever
            # --lookback); a saved one lies a late window behind every feed's position, so
            # that a restart rebuilds the link history late messages need. The deriver runs
            # in the control reader's thread, or in its partitions' merge.
            snapshots = snapshot_deriver(deriver, control.keys[0], control_readers, control_merge)
            saver = StateSaver(
                snapshots, feed=CONTROLSTREAM, ref=ref, lag_ms=DEFAULT_LATE_WINDOW_MS
            )
        # controlstream restarts a lookback before the lowest position (it rebuilds the
        # links from there; with derived mappings, the surface's links come from it too).
        marks = {
            **{k: (r.marks, o.lookback_ms) for k, r in control_readers.items()},
            **{k: (r.marks, None) for k, r in surface_readers.items()},
        }
        if self.mapping is not None:
            cp = opened.checkpoint
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
            saver = StateSaver(
                snapshots, feed=MAPPINGSTREAM, ref=ref, lag_ms=DEFAULT_LATE_WINDOW_MS
            )
            parts.append(mapping_reader)
        committer = Committer(opened, marks, saver)
        if first is not None:
            committer.first_checkpoint(first)
        committer.begin()
        annotator = AnnotatorStep(st, annot_inbox, writer_inbox, o)
        if restored is not None:
            annotator.stage.annotator.seed(restored.links, restored.floor)
        self.writer = WriterStep(st, writer_inbox, committer, o)
        merges = [m for m in (control_merge, surface_merge) if m is not None]
        loop = RunLoop(st, run_reader_config(o, len(parts)), parts, merges, self.writer, annotator)
        self.threads += [loop, ClaimWatcher(st, o, opened.claim)]
        self.main = loop
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
