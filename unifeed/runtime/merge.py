"""`MergeRun`: one run of `unifeed merge` against Kafka: F feeds in, their merge by
``pitr`` out, on the supervisor, readers, writer, checkpoints and claim `CombineRun`
uses (combine is this merge plus mapping derivation and annotation).

The rules are `unifeed.core.merge`'s: a message needs only an integer ``pitr``;
keepalives are progress and are not written; every other message is written byte for
byte; ties go to the feed given first, then the lower partition. Every feed is required
in catch-up; in real time the feeds of ``live_required`` (default: all).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from functools import partial

from unifeed.checkpoint.store import FeedCheckpoint
from unifeed.core.combine import Feed
from unifeed.core.records import StampedDecoder
from unifeed.core.stages import Accepted, MergeStage
from unifeed.kafka.clients import Target, TopicSelection
from unifeed.runtime.claim import ClaimWatcher
from unifeed.runtime.feedmerge import FeedMerge, read_feed
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.layout import FeedInput
from unifeed.runtime.limits import lane_batches, queue_capacity
from unifeed.runtime.marks import RestartMarks
from unifeed.runtime.opening import watermarks_or_empty
from unifeed.runtime.options import START_EARLIEST, RuntimeOptions
from unifeed.runtime.output import Committer
from unifeed.runtime.partwatch import PartitionWatch
from unifeed.runtime.reader import (
    Delivery,
    FeedReader,
    ReadBatch,
    ReadPlan,
    reader_config,
    run_reader_config,
)
from unifeed.runtime.runloop import RunLoop
from unifeed.runtime.stages import Push, WriterInbox, WriterStep
from unifeed.runtime.startup import (
    inputs_of,
    open_output,
    resolve_feeds,
    restart_offset,
    start_positions,
)
from unifeed.runtime.supervisor import Supervisor

log = logging.getLogger("unifeed")


class MergeRun(Supervisor):
    """One run of `unifeed merge` against Kafka.

    ``inputs`` maps each feed's name to where it is read from, in tie-break order: a
    `Target` (one partition) or a `TopicSelection` (``kafka:TOPIC``: every partition).
    """

    command = "merge"

    def __init__(
        self,
        options: RuntimeOptions,
        inputs: dict[str, Target | TopicSelection],
        output: Target,
        live_required: Collection[str] | None = None,
    ) -> None:
        super().__init__(options)
        if not inputs:
            raise ValueError("a merge needs at least one input")
        if isinstance(live_required, str):
            raise ValueError("live_required must be a collection of input names, not a string")
        unknown = sorted(set(live_required or ()) - set(inputs))
        if unknown:
            raise ValueError(f"live_required names {unknown}, which are not inputs {list(inputs)}")
        self.inputs = dict(inputs)
        self.output = output
        self.live_required = set(inputs) if live_required is None else set(live_required)
        self.writer: WriterStep | None = None
        self.feeds: dict[str, FeedInput] = {}
        self.writer_inbox: WriterInbox | None = None

    def setup(self) -> None:
        o = self.options
        feeds = resolve_feeds(o, self.state, self.inputs)
        self.feeds = feeds
        self.watchers.append(PartitionWatch(o, list(feeds.values())))
        targets = inputs_of(*feeds.values())
        keys = tuple(targets)
        opened = open_output(o, self.output, keys, self.state, targets)
        cp = opened.checkpoint
        first: dict[str, FeedCheckpoint] | None = None
        plans: dict[str, ReadPlan] = {}
        known = {k: cp.feeds[k] for k in keys if cp is not None and k in cp.feeds}
        if cp is not None and known:
            for key, target in targets.items():
                pos = known.get(key)
                plans[key] = (
                    ReadPlan(watermarks_or_empty(o, target)[0])
                    if pos is None
                    else ReadPlan(
                        restart_offset(o, target, pos.pitr, pos.offset), pos, pos.dead_offset
                    )
                )
            log.info("%s: resuming from checkpoint %s", o.instance, cp.describe())
        else:
            starts = start_positions(o, targets)
            positions = {k: pos for k, (_, pos) in starts.items()}
            for key, (offset, pos) in starts.items():
                plans[key] = (
                    ReadPlan(offset) if o.start == START_EARLIEST else ReadPlan(offset, pos)
                )
            first = positions

        names = list(feeds)
        st = self.state
        inbox: WriterInbox = Inbox(names, lane_batches(len(names)), st.stop)
        stage = MergeStage(
            [Feed(n, n in self.live_required, True, queue_capacity(len(names))) for n in names],
            realtime_threshold_ms=o.realtime_threshold_ms,
            clock=o.clock,
        )
        pushes: dict[str, Push] = {n: partial(stage.push, n) for n in names}
        rconf = reader_config(o, sum(len(f.targets) for f in feeds.values()))

        def to_writer(read: ReadBatch) -> Batch[Accepted] | None:
            good = read.good
            marker = good[-1].pitr if good else None
            return Batch(good, read.dead, marker, read.caught_up, read.closed)

        marks: dict[str, tuple[RestartMarks, int | None]] = {}
        parts: list[FeedReader] = []
        merges: list[FeedMerge] = []
        for name, feed in feeds.items():
            _, readers, merge = read_feed(
                st,
                feed,
                plans,
                Delivery([(inbox, name, to_writer)]),
                rconf,
                o,
                decoder=StampedDecoder(name),
            )
            parts += readers.values()
            if merge is not None:
                merges.append(merge)
            marks.update({k: (r.marks, None) for k, r in readers.items()})
        committer = Committer(opened, marks)
        if first is not None:
            committer.first_checkpoint(first)
        committer.begin()
        self.writer = WriterStep(st, inbox, committer, o, stage=stage, pushes=pushes)
        self.writer_inbox = inbox
        # Every input partition on one consumer, every stage in one thread (`RunLoop`).
        loop = RunLoop(st, run_reader_config(o, len(parts)), parts, merges, self.writer)
        self.threads += [loop, ClaimWatcher(st, o, opened.claim)]
        self.main = loop

    def depths(self) -> dict[str, int]:
        inbox = self.writer_inbox
        if inbox is None:
            return {}  # still starting: no queues yet
        return {f"writer.{name}": inbox.depth(name) for name in self.feeds}
