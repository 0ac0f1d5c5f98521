"""A feed read from several partitions (`FeedMerge`): one reader a partition (all stepped
by one `PartitionsReader` over one consumer), and their merge into the feed's order
before anything else sees the feed, a round at a time (`FeedMerge.step`: in the run's
loop, `unifeed.runtime.runloop`; `unifeed mappings` gives it a thread of its own).

Each partition is its own FIFO queue (``pitr`` never decreases within a partition, not
across them); the merge emits by ``(pitr, partition)`` once every partition is settled
for a message: it has one queued, has ended, or its reader has stayed at the end of its
log for the end-of-log grace (an idle partition is passed, never waited for forever).
That is the catch-up rule, in real time too: a feed's partitions are merged strictly,
so everything downstream of the merge sees one feed in ``pitr`` order, as from one
partition. A partition that later delivers a message below what the merge has already
passed (it was idle at the end of its log meanwhile) would break that order: the message
becomes a dead letter (``pitr_backwards``, naming the partition) instead.

The merged messages keep their partition's key as their label (`Accepted.feed`), so
that the output side keeps each partition's position.

What a feed holds between its reads and its merge's output is one budget whatever its
partition count (`limits.FEED_MERGE_BUDGET`): each partition may have its share
(`limits.partition_share`) in the merge (its lane and its queue), and its hand-over
(`PartitionDelivery.room`) takes no more than what is left of it, so a read larger than
that is cut; the reader holds the rest undecoded, up to the same share, and pauses the
partition there. So a feed holds at most twice its budget and one read a partition
(librdkafka's fetch of it), however many partitions it has.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, Final

from unifeed.checkpoint.store import PartitionStart
from unifeed.core.combine import Combiner, Emitted, Feed
from unifeed.core.errors import DeadLetterReason
from unifeed.core.records import StampedDecoder, dead_letter_raw
from unifeed.core.stages import Accepted, DeadLetter, Intake, keepalives_at
from unifeed.core.unify import CATCHUP_CLOCK
from unifeed.kafka.clients import Target
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.layout import FeedInput
from unifeed.runtime.limits import IDLE_S, READ_BATCH, lane_batches, partition_share
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.reader import (
    Delivery,
    FeedReader,
    PartitionsReader,
    ReadBatch,
    ReadPlan,
    shared_reader_config,
)
from unifeed.runtime.state import RunState, Worker

log = logging.getLogger("unifeed")

_FEED: Final = attrgetter("feed")
_PITR: Final = attrgetter("pitr")


class _Offsets:
    """The offsets of one partition's messages in a merge, in order: a list read from
    ``head``, so that taking any number of them is one step (the list is cut once most
    of it has been taken)."""

    __slots__ = ("head", "items")

    def __init__(self) -> None:
        self.items: list[int] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.items) - self.head

    def first(self) -> int:
        """The first offset left; there is one."""
        return self.items[self.head]

    def take(self, n: int) -> int:
        """Remove the first ``n`` offsets (all of them if fewer are left) and return the
        last one removed; one is left."""
        items = self.items
        head = self.head + n
        if head >= len(items):
            last = items[-1]
            items.clear()
            self.head = 0
            return last
        last = items[head - 1]
        if head >= _CUT_AT and 2 * head >= len(items):
            del items[:head]
            head = 0
        self.head = head
        return last


#: How many offsets taken from the front of `_Offsets` it keeps before it cuts them.
_CUT_AT: Final = 4096


class FeedMerge(Worker):
    """Merges the partitions of one feed (their readers' batches, one lane each) and
    hands the feed on as one reader would (``deliver``, the feed's `Delivery`).

    Messages a restarted reader only replays (before its checkpoint position) stay
    replay in the merged batches, in merged order.
    """

    def __init__(
        self,
        state: RunState,
        feed: str,
        keys: tuple[str, ...],
        partitions: dict[str, int],
        deliver: Callable[[ReadBatch], bool],
        stop_at: int | None = None,
        starts: dict[str, PartitionStart] | None = None,
    ) -> None:
        """``starts``: where each partition's reader starts and its order floor there."""
        super().__init__(f"merge-{feed}", state)
        self.stop_at = stop_at
        begin = starts or {}
        # Per partition: the offsets of its queued messages (in order), where a restart
        # reads it from once they are handed on, and its highest pitr handed on.
        self._offsets = {k: _Offsets() for k in keys}
        self._next = {k: begin[k].offset if k in begin else 0 for k in keys}
        self._floor = {k: begin[k].floor if k in begin else -1 for k in keys}
        self._handed = 0  # messages handed on (spaces the snapshots)
        self._handed_pitr = -1  # the highest pitr handed on
        #: Called in this thread before a batch with messages is handed on, with the
        #: messages handed on so far, the highest pitr among them and where a restart
        #: would read each partition from: the deriver's snapshots (`merged_snapshot_hook`).
        #: Set before the first step: without it, where each partition stands is not kept.
        self.before_batch: Callable[[int, int, dict[str, PartitionStart]], None] | None = None
        self.feed = feed
        self.keys = keys
        self.partitions = partitions
        self.deliver = deliver
        self.inbox: Inbox[ReadBatch] = Inbox(list(keys), lane_batches(len(keys)), state.stop)
        #: How many messages a partition may have in this merge (its lane and its queue)
        #: before its hand-over takes no more: its share of the feed's budget.
        self.share = partition_share(len(keys))
        # Per partition: messages handed to this merge (written by the reader's thread
        # only) and messages that left it (handed on or dead letters: this thread only).
        self._added = dict.fromkeys(keys, 0)
        self._removed = dict.fromkeys(keys, 0)
        self._room = threading.Condition()
        # Always the catch-up rule (the clock is far past every pitr): every partition is
        # waited for until it is settled, caught up (end of log) or ended.
        self.combiner = Combiner(
            [Feed(k, True, True, self.share) for k in keys], clock=CATCHUP_CLOCK
        )
        self._last_pitr = -1
        self._caught = dict.fromkeys(keys, False)
        self._replay_ids: set[int] = set()
        # The keepalives pushed and not merged yet: each merged batch says where its own
        # are (an `Intake`), so that the next stage does not look at every message.
        self._keepalives: list[Accepted] = []
        self._sent_caught_up = False
        # Merged batches the next stage has not taken yet (`_flush`), the end flags of
        # one its delivery holds, and whether the last of them ends the feed.
        self._waiting: list[ReadBatch] = []
        # How many messages of each partition the waiting batches hold together (what
        # left its queue), and whether they are one batch without replay.
        self._taken: dict[str, int] = {}
        self._one_batch = False
        self._retry: ReadBatch | None = None
        self._ending = False
        #: Every partition has ended and the merged feed has been handed on.
        self.finished = False

    def reader_delivery(self, key: str) -> PartitionDelivery:
        """What a partition's reader hands its batches to."""
        return PartitionDelivery(self, key)

    def holds(self, key: str) -> int:
        """How many of partition ``key``'s messages this merge holds (its lane and its
        queue)."""
        return self._added[key] - self._removed[key]

    def wait_for_room(self, key: str, timeout_s: float) -> bool:
        """Whether partition ``key`` is below its share, waiting up to ``timeout_s``."""
        if self.holds(key) < self.share:
            return True
        if timeout_s <= 0:
            return False
        deadline = time.monotonic() + timeout_s
        with self._room:
            while self.holds(key) >= self.share:
                left = deadline - time.monotonic()
                if left <= 0 or self.state.stop.is_set():
                    return False
                self._room.wait(left)
        return True

    def _added_to(self, key: str, n: int) -> None:
        """``n`` messages of ``key`` went into this merge's lane (the reader's thread)."""
        self._added[key] += n

    def _release(self, counts: Mapping[str, int]) -> None:
        """These messages a partition left this merge: its hand-over may take more."""
        removed = self._removed
        for key, n in counts.items():
            removed[key] += n
        with self._room:
            self._room.notify_all()

    def work(self) -> None:
        while not self.state.stop.is_set() and not self.finished:
            self.step(IDLE_S)

    def step(self, wait_s: float = 0.0) -> bool:
        """One round: hand on what the next stage could not take yet, else merge what
        the partitions' readers delivered (waiting up to ``wait_s`` for it: in a thread
        of its own) and hand it on. Whether messages or dead letters moved (end flags alone move nothing).
        Nothing new is taken while merged batches wait."""
        flushed = False
        if self._waiting or self._retry is not None:
            if not self._flush():
                return False
            flushed = True
        if self.finished:
            return flushed
        c = self.combiner
        keys = self.keys
        caught = self._caught
        dead: list[DeadLetter] = []
        lanes = [k for k in keys if c.room(k) > 0]
        taken = self.inbox.take(lanes, wait_s)
        for key, batch in taken:
            read: ReadBatch = batch.records[0]
            dead.extend(read.dead)
            offsets = read.offsets
            at = 0
            for part, is_replay in ((read.replay, True), (read.good, False)):
                if not part:
                    continue
                part_at = None if offsets is None else offsets[at : at + len(part)]
                at += len(part)
                placed, part_at = self._in_order(key, part, part_at, dead)
                if len(placed) < len(part):
                    self._release({key: len(part) - len(placed)})
                part = placed
                if part:
                    # The partition's intake labelled them for its queue.
                    c.push_emitted(key, part, labelled=True)
                    if part_at is not None and self.before_batch is not None:
                        self._offsets[key].items.extend(part_at)
                    if is_replay:
                        self._replay_ids.update(map(id, part))
                    self._keepalives.extend(part[i] for i in keepalives_at(part))
            caught[key] = read.caught_up
            c.caught_up(key, read.caught_up)
            if read.closed:
                c.close(key)
        if self.stop_at is not None:
            self._close_idle(caught)
        queued = [c.queued(k) for k in keys]
        out = c.drain_list()
        finished = c.exhausted()
        caught_up = all(caught[k] or c.is_closed(k) for k in keys) and not any(
            c.queued(k) for k in keys
        )
        batches = _runs(out, self._replay_ids, self._placed_keepalives(out)) if out else []
        if not batches and (dead or finished or (caught_up and not self._sent_caught_up)):
            batches = [ReadBatch([], [], [], False, False)]
        for i, read in enumerate(batches):
            if i == 0:
                read.dead = dead
            if i == len(batches) - 1:
                read.caught_up = caught_up
                read.closed = finished
        if out:
            self._last_pitr = out[-1].pitr
            # The feed's lag is its merge's (each partition's reader keeps its own).
            self.state.lag_pitr[self.feed] = self._last_pitr
        if batches:
            self._sent_caught_up = caught_up
        self._waiting = batches
        if out:
            self._taken = {
                k: n - left for k, n in zip(keys, queued, strict=True) if n != (left := c.queued(k))
            }
            self._one_batch = len(batches) == 1 and not batches[0].replay
        self._ending = finished
        self._flush()
        return flushed or bool(out or dead)

    def _flush(self) -> bool:
        """Hand on the merged batches still waiting, in order; whether all went."""
        if self._retry is not None:
            if not self.deliver(self._retry):
                return False
            self._retry = None
        waiting = self._waiting
        while waiting:
            read = waiting.pop(0)
            if read.replay or read.good:
                self._handed_over(read, last=not waiting)
            if not self.deliver(read):
                # The delivery keeps what it could not hand on; it is retried with an
                # empty batch carrying the same end flags.
                self._retry = ReadBatch([], [], [], read.caught_up, read.closed)
                return False
        if self._ending:
            self.finished = True
        return True

    def _handed_over(self, read: ReadBatch, *, last: bool) -> None:
        """Before ``read`` is handed on (``last``: the last batch of a round): offer a
        snapshot of where each partition stands, then move past its messages. Without a
        snapshot hook, nobody asks where each partition stands: what left the merge is
        counted once a round (its last batch), not batch by batch."""
        handed_pitr = (read.good or read.replay)[-1].pitr
        if self.before_batch is None:
            self._handed += len(read.replay) + len(read.good)
            self._handed_pitr = max(self._handed_pitr, handed_pitr)
            if last:
                self._release(self._taken)
            return
        known = self._taken if self._one_batch else None
        starts = {
            k: PartitionStart(q.first() if q else self._next[k], self._floor[k])
            for k, q in self._offsets.items()
        }
        self.before_batch(self._handed, self._handed_pitr, starts)
        offsets = self._offsets
        left: Counter[str] = Counter()
        for part in (read.replay, read.good):
            if not part:
                continue
            # Per partition at once: how many of its messages go (counted in C; their
            # offsets leave its queue, the last one sets where a restart reads it from)
            # and the pitr of its last one (its floor: found from the end, where every
            # partition of a merged batch usually shows up within a few messages).
            counts = Counter(map(_FEED, part)) if known is None else known
            left.update(counts)
            for key, n in counts.items():
                q = offsets[key]
                if q:
                    self._next[key] = q.take(n) + 1
            need = set(counts)
            for e in reversed(part):
                if e.feed in need:
                    self._floor[e.feed] = e.pitr
                    need.discard(e.feed)
                    if not need:
                        break
            self._handed += len(part)
        self._handed_pitr = max(self._handed_pitr, handed_pitr)
        self._release(left)

    def _placed_keepalives(self, out: list[Emitted]) -> list[int]:
        """Where the keepalives among ``out`` (merged messages, in order) are, in order;
        found by their pitr, then among the messages of that pitr. They are no longer
        waited for; those not merged yet (behind a tie) still are."""
        if not self._keepalives:
            return []
        last = out[-1].pitr
        n = len(out)
        found: list[int] = []
        waiting: list[Accepted] = []
        for k in self._keepalives:
            if k.pitr <= last:
                i = bisect_left(out, k.pitr, key=_PITR)
                while i < n and out[i] is not k and out[i].pitr == k.pitr:
                    i += 1
                if i < n and out[i] is k:
                    found.append(i)
                    continue
            waiting.append(k)
        self._keepalives = waiting
        found.sort()
        return found

    def _close_idle(self, caught: dict[str, bool]) -> None:
        """With --stop-at: once a partition has passed it, one that stays at the end of
        its log without reaching it has ended too (it is passed, not waited for)."""
        c = self.combiner
        keys = self.keys
        if not any(c.is_closed(k) for k in keys):
            return
        if all(c.is_closed(k) or (caught[k] and not c.queued(k)) for k in keys):
            for k in keys:
                c.close(k)

    def _in_order(
        self, key: str, part: list[Accepted], at: list[int] | None, dead: list[DeadLetter]
    ) -> tuple[list[Accepted], list[int] | None]:
        """The messages of ``part`` (and their offsets ``at``) the merge can still place:
        below what it has passed, a message is a dead letter."""
        floor = self._last_pitr
        if part[0].pitr >= floor:
            return part, at
        kept: list[Accepted] = []
        kept_at: list[int] = []
        for i, a in enumerate(part):
            if a.pitr < floor:
                reason = (
                    f"pitr {a.pitr} is lower than {floor}, where feed {self.feed} already is: "
                    f"partition {self.partitions[key]} was idle at the end of its log and "
                    "was passed (--end-of-log-grace); a feed's partitions are merged in pitr "
                    "order, so this message cannot be placed"
                )
                raw: dict[str, Any] = dead_letter_raw(a.item)
                dead.append(
                    DeadLetter(
                        feed=self.feed,
                        partition=self.partitions[key],
                        pitr=a.pitr,
                        reason=reason,
                        kind=DeadLetterReason.PITR_BACKWARDS,
                        **raw,
                    )
                )
            else:
                kept.append(a)
                if at is not None:
                    kept_at.append(at[i])
        return kept, None if at is None else kept_at


class PartitionDelivery(Delivery):
    """A partition reader's hand-over to its feed's merge: it takes a batch only while
    the merge holds fewer than the partition's share (`FeedMerge.share`) of its messages,
    so that what a feed holds does not grow with its partitions. A batch taken may bring
    the partition past its share by that batch; nothing more until it is below again.
    A batch with no messages (dead letters, the end of the log, the end of the feed)
    always goes on."""

    def __init__(self, merge: FeedMerge, key: str) -> None:
        super().__init__([], wait_s=0.0)
        self.merge = merge
        self.key = key
        self._size = 0

    def room(self) -> int:
        """How many messages the merge takes now: what is left of the partition's share,
        once that is a quarter of it or more (a smaller batch would cost a round of the
        merge for little; the merge has plenty of the partition meanwhile)."""
        if self.pending:
            return 0
        merge = self.merge
        left = merge.share - merge.holds(self.key)
        return left if left >= merge.share // 4 else 0

    def __call__(self, read: ReadBatch) -> bool:
        merge = self.merge
        if not self.pending:
            if not (read.replay or read.good or read.dead or read.caught_up or read.closed):
                return True
            self.pending.append((merge.inbox, self.key, Batch([read])))
            self._size = len(read.replay) + len(read.good)
        if self._size and not merge.wait_for_room(self.key, self.wait_s):
            return False
        inbox, lane, batch = self.pending[0]
        if not inbox.put(lane, batch, self.wait_s):
            return False
        self.pending.clear()
        merge._added_to(self.key, self._size)
        return True


def _runs(out: list[Any], replay_ids: set[int], keepalive_at: list[int]) -> list[ReadBatch]:
    """The merged messages as batches of at most a reader's batch (`READ_BATCH`: the
    deriver's snapshots are taken between batches): each a run of replay, then a run of
    the rest. Without replay, each batch is an `Intake` that knows where its keepalives
    are (``keepalive_at``: their indexes in ``out``)."""
    if not replay_ids:
        return [
            ReadBatch(
                [],
                Intake(
                    out[i : i + READ_BATCH],
                    [k - i for k in keepalive_at if i <= k < i + READ_BATCH],
                ),
                [],
                False,
                False,
            )
            for i in range(0, len(out), READ_BATCH)
        ]
    batches: list[ReadBatch] = []
    replay: list[Accepted] = []
    good: list[Accepted] = []
    for e in out:
        if len(replay) + len(good) >= READ_BATCH:
            batches.append(ReadBatch(replay, good, [], False, False))
            replay, good = [], []
        if id(e) in replay_ids:
            replay_ids.discard(id(e))
            if good:
                batches.append(ReadBatch(replay, good, [], False, False))
                replay, good = [], []
            replay.append(e)
        else:
            good.append(e)
    if replay or good:
        batches.append(ReadBatch(replay, good, [], False, False))
    return batches


def read_feed(
    state: RunState,
    feed: FeedInput,
    plans: dict[str, ReadPlan],
    deliver: Delivery,
    config: dict[str, Any],
    options: RuntimeOptions,
    *,
    decoder: StampedDecoder | None = None,
    count_keepalives: bool = False,
) -> tuple[list[Worker], dict[str, FeedReader], FeedMerge | None]:
    """What reads one feed and hands it to ``deliver`` in its order: one reader for a
    feed of one partition; for a feed of several, a reader a partition (all stepped by
    one `PartitionsReader`) and their `FeedMerge`: the threads that run them on their own
    (`unifeed mappings`; a run's loop steps the readers and the merge itself), the
    readers by key (their restart marks) and the merge."""

    def reader(key: str, target: Target, hand_to: Delivery, partition: int | None) -> FeedReader:
        return FeedReader(
            state=state,
            feed=feed.name,
            target=target,
            config=config,
            plan=plans[key],
            deliver=hand_to,
            stop_at=options.stop_at,
            exit_at_end=options.exit_at_end,
            end_of_log_grace_s=options.end_of_log_grace_s,
            count_keepalives=count_keepalives,
            key=key,
            partition=partition,
            decoder=decoder,
        )

    if not feed.split:
        key = feed.keys[0]
        one = reader(key, feed.targets[0], deliver, None)
        return [one], {key: one}, None
    by_key = feed.by_key()
    merge = FeedMerge(
        state,
        feed.name,
        feed.keys,
        {k: t.partition for k, t in by_key.items()},
        deliver,
        options.stop_at,
        {k: PartitionStart(plans[k].offset, _floor(plans[k])) for k in feed.keys},
    )
    # One consumer reads all the feed's partitions (`PartitionsReader`),
    # each partition through its own reader's step (its checks, skip, marks and end).
    readers = {k: reader(k, t, merge.reader_delivery(k), t.partition) for k, t in by_key.items()}
    for r in readers.values():
        # Held by the reader, undecoded, while its hand-over takes no more: at most the
        # partition's share (then paused). A smaller limit paused 4 partitions a feed
        # 30-35 times a run instead of once, for no less memory.
        r.hold_limit = merge.share
    group = PartitionsReader(
        state,
        feed.name,
        shared_reader_config(config, options, len(readers)),
        list(readers.values()),
    )
    return [group, merge], readers, merge


def _floor(plan: ReadPlan) -> int:
    return -1 if plan.floor is None else plan.floor
