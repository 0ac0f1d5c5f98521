"""The reader thread of one feed (`FeedReader`): reads its partition, applies the intake checks and the resume skip, and hands batches on (`Delivery`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Final, cast

import msgspec
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from unifeed.checkpoint.store import FeedCheckpoint
from unifeed.core.errors import (
    KafkaRuntimeError,
)
from unifeed.core.records import StampedDecoder
from unifeed.core.stages import (
    Accepted,
    DeadLetter,
    FeedIntake,
)
from unifeed.kafka.clients import (
    Target,
    consume_batch,
    consumer_config,
    kafka_error,
    watermarks,
)
from unifeed.runtime.endprobe import ASK_TIMEOUT_S, EndProbe
from unifeed.runtime.endwatch import EndOfLogWatch
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.limits import (
    MESSAGE_ERROR,
    MESSAGE_OFFSET,
    MESSAGE_PARTITION,
    MESSAGE_TOPIC,
    MESSAGE_VALUE,
    MISSING_WARN_EVERY_S,
    READ_BATCH,
    TRANSIENT,
    UNKNOWN_CODES,
    partition_fetch_kb,
    read_ahead_kb,
)
from unifeed.runtime.marks import RestartMarks
from unifeed.runtime.resume import ResumeSkip
from unifeed.runtime.state import RunState, Worker

log = logging.getLogger("unifeed")

# --- readers ---------------------------------------------------------------


class ConsumerWorker(Worker):
    """A thread that owns one consumer (made from ``self.config``) for its whole life and
    closes it however its loop (``_loop``) ends."""

    config: dict[str, Any]

    def work(self) -> None:
        consumer = Consumer(self.config)
        try:
            self._loop(consumer)
        finally:
            consumer.close()

    def _loop(self, consumer: Consumer) -> None:
        raise NotImplementedError


@dataclass
class ReadPlan:
    """Where a reader starts and which messages it only replays (state, no output)."""

    offset: int
    resume_after: FeedCheckpoint | None = None
    dead_offset: int | None = None
    #: The intake's order floor at ``offset`` (a restart from saved state), if known.
    floor: int | None = None


class FeedReader(ConsumerWorker):
    """Reads one feed's partition; validates; hands batches on; reports end of log."""

    def __init__(
        self,
        *,
        state: RunState,
        feed: str,
        target: Target,
        config: dict[str, Any],
        plan: ReadPlan,
        deliver: Callable[[ReadBatch], bool],
        stop_at: int | None,
        exit_at_end: bool,
        count_keepalives: bool = False,
        end_of_log_grace_s: float = 2.0,
        key: str | None = None,
        partition: int | None = None,
        decoder: StampedDecoder | None = None,
    ) -> None:
        """``key``: the partition's key when the feed is read from several (its queue
        name, and the ``partition`` its dead letters name); ``decoder``: `unifeed merge`'s
        (the feed's schema by default)."""
        key = feed if key is None else key
        super().__init__(f"reader-{key}", state)
        self.key = key
        self.end_of_log_grace_s = end_of_log_grace_s
        self.feed = feed
        self.target = target
        self.config = config
        self.plan = plan
        self.deliver = deliver
        self.stop_at = stop_at
        self.exit_at_end = exit_at_end
        self.count_keepalives = count_keepalives
        self.intake = FeedIntake(
            feed, where="offset", partition=partition, queue=key, decoder=decoder
        )
        if plan.floor is not None:
            self.intake.floor = plan.floor
        self.next_offset = plan.offset
        self.high = -1
        self.marks = RestartMarks(plan.offset)
        #: Called in this thread before a batch with accepted messages is handed on, with
        #: the batch's first offset and the intake's floor before it.
        self.before_batch: Callable[[int, int], None] | None = None
        #: The feed has ended here (--stop-at passed, or --exit-at-end at the end).
        self.closed = False
        #: Read by a `PartitionsReader`: how many of this partition's messages it holds
        #: (read, not taken by its delivery yet) before it pauses the partition.
        self.hold_limit = READ_BATCH
        self._skip = ResumeSkip(plan.resume_after, count_keepalives=count_keepalives)
        self._end = EndOfLogWatch(end_of_log_grace_s)
        self._idle_since = time.monotonic()
        #: When this reader last read a record (an end asked for before it is stale).
        self._read_at = 0.0
        self._warned_missing = 0.0
        #: Asks for this partition's end beside the loop (set by a `PartitionsReader`);
        #: without one, the reader asks itself, waiting for the answer.
        self.probe: EndProbe | None = None

    def deliver_room(self) -> int | None:
        """How many messages its hand-over takes now (None: no bound by count)."""
        room = getattr(self.deliver, "room", None)
        return None if room is None else cast("int | None", room())

    def _loop(self, consumer: Consumer) -> None:
        tp = self.target.topic_partition(self.plan.offset)
        consumer.assign([tp])
        stop = self.state.stop
        while not stop.is_set() and not self.closed:
            records, ended = split_errors(
                consume_batch(consumer, READ_BATCH, 0.1), self.feed, self.target
            )
            read = self.step(consumer, records, bool(ended))
            if read is not None and not self._hand_on(consumer, tp, read):
                return

    def step(self, consumer: Consumer, records: list[Message], eof: bool) -> ReadBatch | None:
        """One read of this partition: ``records`` (its messages, in offset order, none
        an error; maybe none) and whether the end of its log was reported (``eof``).
        What to hand on, if anything. ``consumer`` answers the watermarks of an idle
        partition (it may read other partitions too)."""
        if records and (records[0].offset() or 0) < self.next_offset:
            # Never twice: a message already read (a client that re-delivers after a pause).
            records = [m for m in records if (m.offset() or 0) >= self.next_offset]
        if records:
            self._idle_since = self._read_at = time.monotonic()
        elif not self._end.at_end:
            # librdkafka reports no end of log for an empty or missing partition: ask
            # for its end (the high watermark) once it has been idle for a second; by
            # the `EndProbe` when there is one (its answer comes on a later round).
            high: int | None = None
            probe = self.probe
            now = time.monotonic()
            if probe is not None:
                got = probe.answer(self.target, self._read_at)
                if got is not None:
                    high = self._end_from(got)
                if now - self._idle_since >= 1.0:
                    self._idle_since = now
                    probe.ask(self.target)
            elif now - self._idle_since >= 1.0:
                self._idle_since = now
                try:
                    high = watermarks(consumer, self.target, ASK_TIMEOUT_S)[1]
                except KafkaRuntimeError as exc:
                    high = self._end_from(exc)
            if high is not None and high >= 0 and self.next_offset >= high:
                eof = True
        if records:
            self.next_offset = (records[-1].offset() or 0) + 1

        def offset_of(i: int, rs: list[Message] = records) -> int:
            return rs[i].offset() or 0

        floor_before = self.intake.floor
        good: list[Accepted]
        good, dead = self.intake.process_values(list(map(MESSAGE_VALUE, records)), offset_of)
        accepted_at: list[int] | None = None
        if self.intake.partition is not None:
            # One partition of several: the offset of each accepted message, for the
            # feed's merge (where a restart from saved state reads each partition).
            # A consumed message always has an offset.
            accepted_at = cast("list[int]", list(map(MESSAGE_OFFSET, records)))
            if dead:
                dead_at = {d.offset for d in dead}
                accepted_at = [o for o in accepted_at if o not in dead_at]
        if dead and self.plan.dead_offset is not None:
            # Written and committed by the run that left the checkpoint.
            dead = [d for d in dead if (d.offset or 0) > (self.plan.dead_offset or 0)]
        replay, good = self._skip.split(good)
        closed = self.closed
        if self.stop_at is not None and good and good[-1].rec.pitr > self.stop_at:
            good = [a for a in good if a.rec.pitr <= self.stop_at]
            closed = True
        if eof and self.exit_at_end:
            closed = True
        self.closed = closed
        caught_up = self._end.update(read=bool(records), eof=eof)
        if not (records or caught_up or closed):
            return None
        self.state.add(f"in.{self.feed}", len(records))
        if good:
            self.state.lag_pitr[self.key] = good[-1].rec.pitr
        if good or replay:
            # Before the batch goes on: no commit can cover it without its mark.
            self.marks.add(records[0].offset() or 0, (good or replay)[-1].pitr)
            if self.before_batch is not None:
                self.before_batch(records[0].offset() or 0, floor_before)
        if accepted_at is not None:
            del accepted_at[len(replay) + len(good) :]
        return ReadBatch(replay, good, dead, caught_up, closed, accepted_at)

    def _end_from(self, answer: int | Exception) -> int:
        """The end of this partition from a question's answer: -1 when not known (no
        answer now, or the partition does not exist yet); raises what ends the run."""
        if isinstance(answer, int):
            return answer
        if not isinstance(answer, KafkaRuntimeError):
            raise answer
        exc = answer
        if exc.code in _TRANSIENT_NAMES:
            # No answer now (the broker restarting or gone): not at the end; the run's
            # `BrokerHealth` decides when a silent broker ends the run.
            log.debug("%s: %s", self.feed, exc)
            return -1
        if exc.code not in UNKNOWN_CODES:
            raise exc
        # A feed never seen (no record, no end of its partition) is never passed: it
        # could still deliver anything.
        now = time.monotonic()
        if now - self._warned_missing >= MISSING_WARN_EVERY_S:
            log.warning(
                "%s: %s does not exist (yet); waiting for it (its feed is not passed "
                "until it exists)",
                self.feed,
                self.target,
            )
            self._warned_missing = now
        return -1

    def _hand_on(self, consumer: Consumer, tp: TopicPartition, read: ReadBatch) -> bool:
        """Deliver, pausing the partition while the next stage is full."""
        paused = False
        try:
            while not self.deliver(read):
                if self.state.stop.is_set():
                    return False
                if not paused:
                    consumer.pause([tp])
                    paused = True
                # Already delivered: deliver() retries only what is left.
                read = ReadBatch([], [], [], read.caught_up, read.closed)
        finally:
            if paused and not self.state.stop.is_set():
                consumer.resume([tp])
        return True


class ReadBatch(msgspec.Struct, gc=False):
    """What a reader hands on from one read: ``replay`` (accepted messages that only
    rebuild state: before the restart position), ``good`` (accepted messages to pass
    on), ``dead`` (dead letters), whether it is at the end of its log (``caught_up``)
    and whether its feed has ended (``closed``)."""

    replay: list[Accepted]
    good: list[Accepted]
    dead: list[DeadLetter]
    caught_up: bool
    closed: bool
    #: The offsets of ``replay`` then ``good``, for a reader of one partition of several.
    offsets: list[int] | None = None


def split_errors(
    messages: list[Message], feed: str, where: object
) -> tuple[list[Message], set[tuple[str, int]]]:
    """The records among ``messages`` (``feed``'s, read from ``where``) and the partitions
    (topic, partition) whose end of log they report;
    a transient client error is logged (the client reconnects by itself, `BrokerHealth`
    gives up in time), any other raises."""
    # Two passes in C (here and the reader's map over the values) instead of one Python
    # loop: this runs for every input message, and errors are rare (end of partition).
    # `error()` is None or a KafkaError, which is always true (and raises when compared,
    # so not `.count(None)`).
    if not any(map(MESSAGE_ERROR, messages)):
        return messages, set()
    records: list[Message] = []
    ended: set[tuple[str, int]] = set()
    for m in messages:
        err = m.error()
        if err is None:
            records.append(m)
        elif err.code() == KafkaError._PARTITION_EOF:
            ended.add((m.topic() or "", m.partition() or 0))
        elif not err.fatal() and (err.retriable() or err.code() in TRANSIENT):
            log.debug("%s: %s", feed, err.str())
        else:
            raise kafka_error(f"reading {feed} from {where}", err)
    return records, ended


#: What a reader's batch becomes for one lane (None: nothing for it this time).
HandOn = Callable[[ReadBatch], "Batch[Any] | None"]
#: One lane a reader feeds: its inbox, the lane's name and the hand-on that fills it.
HandOnStep = tuple["Inbox[Any]", str, HandOn]


class Delivery:
    """Hands one reader's output to its lanes, retrying only what is still undelivered."""

    def __init__(self, steps: list[HandOnStep], wait_s: float = 0.1) -> None:
        self.steps = steps
        #: How long a call waits for room in a full lane.
        self.wait_s = wait_s
        self.pending: list[tuple[Inbox[Any], str, Batch[Any]]] = []

    def room(self) -> int | None:
        """How many messages this delivery takes now; None: no bound by count (a full
        lane refuses a batch instead)."""
        return None

    def __call__(self, read: ReadBatch) -> bool:
        if not self.pending and (
            read.replay or read.good or read.dead or read.caught_up or read.closed
        ):
            for inbox, lane, make in self.steps:
                batch = make(read)
                if batch is not None:
                    self.pending.append((inbox, lane, batch))
        while self.pending:
            inbox, lane, batch = self.pending[0]
            if not inbox.put(lane, batch, self.wait_s):
                return False
            self.pending.pop(0)
        return True


class PartitionsReader(ConsumerWorker):
    """Reads several partitions with one consumer (every input partition of a run,
    stepped by its loop, `unifeed.runtime.runloop`; or, in a thread of its own, every
    partition of one feed of `unifeed mappings`): splits each read by topic partition and
    hands each one's share on as that partition's own `FeedReader` would (its
    `FeedReader.step`, its delivery), so that they cost one client, not one each.

    A partition whose hand-over is full, or takes fewer messages than were read of it
    (`Delivery.room`: a partitioned feed's merge takes each partition's share), is held:
    what was read of it and not handed on waits here undecoded, and the partition is
    paused once that reaches its hold limit (`FeedReader.hold_limit`), resumed once all
    of it has gone on. The others go on meanwhile: the merge it feeds may be waiting for
    one of them. So what a partition holds is bounded by its hold limit and one read,
    and what it has in its merge by its share, whatever the number of partitions.
    """

    def __init__(
        self, state: RunState, name: str, config: dict[str, Any], parts: list[FeedReader]
    ) -> None:
        super().__init__(f"reader-{name}", state)
        self.feed = name
        self.config = config
        self.parts = {(r.target.topic, r.target.partition): r for r in parts}
        if len(self.parts) != len(parts):
            raise ValueError("a PartitionsReader reads distinct partitions")
        self._consumer: Consumer | None = None
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._where = ""
        self._held: dict[tuple[str, int], list[Message]] = {p: [] for p in self.parts}
        self._held_eof: set[tuple[str, int]] = set()
        self._paused: set[tuple[str, int]] = set()
        self._pending: dict[tuple[str, int], ReadBatch] = {}
        self._probe: EndProbe | None = None

    @property
    def next_offset(self) -> int:
        """Messages read so far, all partitions (for progress reports)."""
        return sum(r.next_offset for r in self.parts.values())

    def _loop(self, consumer: Consumer) -> None:
        self.begin(consumer)
        try:
            stop = self.state.stop
            while not stop.is_set() and not self.finished:
                self.step(_PENDING_POLL_S if self.refused else 0.1, wait_for_room=True)
        finally:
            self.end()

    def begin(self, consumer: Consumer) -> None:
        """Read the partitions with ``consumer`` (assigned here) from now on; the ends of
        idle partitions are asked for beside the reading (an `EndProbe`, until `end`)."""
        self._probe = EndProbe(self.config, f"end-probe-{self.feed}")
        for r in self.parts.values():
            r.probe = self._probe
        self._consumer = consumer
        self._tps = {p: r.target.topic_partition(r.plan.offset) for p, r in self.parts.items()}
        consumer.assign(list(self._tps.values()))
        self._where = ", ".join(str(r.target) for r in self.parts.values())

    def end(self) -> None:
        """The reading is over: no more questions of the partitions' ends."""
        if self._probe is not None:
            self._probe.close()

    @property
    def finished(self) -> bool:
        """Every partition has ended and everything read of them has been handed on."""
        return all(r.closed for r in self.parts.values()) and not self._pending

    @property
    def refused(self) -> bool:
        """Some partition's hand-over is full, or took only part of what was read of it
        (the rest waits here)."""
        return bool(self._pending) or any(self._held.values())

    def step(self, timeout_s: float, *, wait_for_room: bool, read: bool = True) -> bool:
        """One round: retry what is still undelivered, read what is there (waiting up to
        ``timeout_s`` for a first message) and hand each partition's share on. With
        ``wait_for_room``, when nothing else can go on, wait for room (once a round); in
        a thread that also runs the next stages (`unifeed.runtime.runloop`), never.
        Without ``read``, only the retries and what is held (nothing is read). Whether
        it read messages or handed on what was held (an idle partition's "still at the
        end of the log" moves nothing)."""
        parts = self.parts
        consumer = self._consumer
        assert consumer is not None, "begin() first"
        # Per partition: what was read but not handed on yet (its hand-over was full or
        # took part of it), and whether the end of its log came with it.
        held = self._held
        held_eof = self._held_eof
        pending = self._pending
        moved = False
        wait = wait_for_room and all(p in pending or r.closed for p, r in parts.items())
        for p in list(pending):
            left = pending[p]
            if self._deliver(parts[p], left, wait):
                moved = True
                del pending[p]
            else:
                pending[p] = ReadBatch([], [], [], left.caught_up, left.closed)
            wait = False
        mine: dict[tuple[str, int], list[Message]] = {}
        ended: set[tuple[str, int]] = set()
        if read:
            messages = consume_batch(consumer, READ_BATCH, timeout_s)
            records, ended = split_errors(messages, self.feed, self._where)
            moved = moved or bool(records)
            for topic, of_topic in groupby(records, MESSAGE_TOPIC):
                for at, run in groupby(of_topic, MESSAGE_PARTITION):
                    mine.setdefault((topic or "", at or 0), []).extend(run)
        elif not any(held.values()):
            return moved
        for p, r in parts.items():
            if r.closed:
                continue
            got = mine.get(p)
            if held[p]:
                got = _after(held[p], got) if got else held[p]
                held[p] = []
            elif not read:
                continue
            got = got or []
            eof = p in ended or p in held_eof
            held_eof.discard(p)
            if p not in pending:
                room = r.deliver_room()
                take = got if room is None or len(got) <= room else got[:room]
                if take or not got:
                    rest = got[len(take) :]
                    out = r.step(consumer, take, eof and not rest)
                    moved = moved or bool(take)
                    if out is not None and not self._deliver(r, out, False):
                        pending[p] = ReadBatch([], [], [], out.caught_up, out.closed)
                    got = rest
            if got and not r.closed:
                held[p] = got
                if eof:
                    held_eof.add(p)
            self._pause_or_resume(p, r, len(got))
        return moved

    def _pause_or_resume(self, p: tuple[str, int], r: FeedReader, held: int) -> None:
        """Pause partition ``p`` once it has ended or holds ``r.hold_limit`` messages;
        resume it once everything read of it has gone on."""
        consumer = self._consumer
        assert consumer is not None
        paused = self._paused
        if p not in paused:
            if r.closed or held >= r.hold_limit:
                paused.add(p)
                consumer.pause([self._tps[p]])
                if not r.closed:
                    self.state.add("partition_pauses")
        elif not r.closed and not held and p not in self._pending:
            paused.discard(p)
            consumer.resume([self._tps[p]])

    @staticmethod
    def _deliver(reader: FeedReader, read: ReadBatch, wait: bool) -> bool:
        """Hand ``read`` on; wait for room only when ``wait`` (nothing else to do)."""
        deliver = reader.deliver
        if isinstance(deliver, Delivery):
            deliver.wait_s = 0.1 if wait else 0.0
        return deliver(read)


def shared_reader_config(config: dict[str, Any], options: Any, partitions: int) -> dict[str, Any]:
    """``config`` (a `reader_config`, or any consumer's settings) for one consumer that
    reads ``partitions`` partitions. Its fetch queue's bound (``queued.max.messages.kbytes``)
    stays the consumer's: librdkafka applies it to the consumer's one queue, whatever the
    partitions assigned to it. A fetch may bring each partition its share, as one
    consumer each would (unless the run's Kafka settings say otherwise); librdkafka caps
    each partition's part of a fetch anyway (``fetch.message.max.bytes``)."""
    shared = dict(config)
    share = config.get("fetch.max.bytes")
    if share is not None and "fetch.max.bytes" not in (options.kafka_extra or {}):
        shared["fetch.max.bytes"] = int(share) * max(1, partitions)
    return shared


#: The names of the client's errors that mean "no answer now" (`limits.TRANSIENT`).
_TRANSIENT_NAMES: Final = frozenset(KafkaError(code).name() for code in TRANSIENT)


def _after(held: list[Message], got: list[Message]) -> list[Message]:
    """``got`` after ``held`` (a partition's messages in offset order), without any
    message of ``got`` already held (a client that delivers again after a pause)."""
    last = held[-1].offset() or 0
    if (got[0].offset() or 0) <= last:
        got = [m for m in got if (m.offset() or 0) > last]
    return held + got


#: librdkafka's names of a fetch's bound a partition (aliases).
PARTITION_FETCH_KEYS: Final = frozenset({"max.partition.fetch.bytes", "fetch.message.max.bytes"})

#: How long a `PartitionsReader` waits for input while a delivery is still pending.
_PENDING_POLL_S: Final = 0.005


def reader_config(options: Any, consumers: int) -> dict[str, Any]:
    """The consumer settings of a run's readers: ``consumers`` share one read-ahead
    budget (`limits.read_ahead_kb`), so memory does not grow with the partitions read.
    A consumer reading several partitions counts as one a partition: librdkafka bounds
    its one queue by ``queued.max.messages.kbytes`` whatever it reads, but it fetches for
    each of them; divided by partitions, the budget holds whatever it keeps a partition.
    ``options`` is the run's `RuntimeOptions` (its Kafka settings win)."""
    config = consumer_config(options.bootstrap, options.kafka_extra)
    share = read_ahead_kb(consumers)
    config.setdefault("queued.max.messages.kbytes", share)
    config.setdefault("fetch.max.bytes", share * 1024)
    return config


def run_reader_config(options: Any, partitions: int) -> dict[str, Any]:
    """The settings of the one consumer that reads every input partition of a run
    (`unifeed.runtime.runloop`), ``partitions`` of them: the whole read-ahead budget,
    whatever the partitions (librdkafka bounds its one fetch queue by
    ``queued.max.messages.kbytes``), and a fetch that brings each partition its share of
    `limits.FETCH_BUDGET_KB` (``max.partition.fetch.bytes``; unless the run's Kafka
    settings name it). librdkafka keeps a fetch's whole response while any record of it
    is queued, so at 1 MiB a partition, the default, what it holds grew with the
    partitions: 16 partitions a feed peaked at 381-384 MB, at 256 KiB 256-299 MB, with
    the same throughput (benchmarks/README.md, "Sixteen partitions a feed")."""
    config = reader_config(options, 1)
    extra = options.kafka_extra or {}
    if not PARTITION_FETCH_KEYS & set(extra):
        config["max.partition.fetch.bytes"] = partition_fetch_kb(partitions) * 1024
    return config
