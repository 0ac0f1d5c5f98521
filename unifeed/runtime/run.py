"""The Kafka runtime: reader threads, the annotator thread, the writer thread.

    control reader ──(control batches)──────────────────────────────► writer ──► output topic
        │ MappingDeriver (in-process) or mapping reader                   ▲     + checkpoints
        └──(mapping batches)──► annotator ──(annotated batches)───────────┘
    surface reader ──(surface batches)──┘

Each thread owns its state and its Kafka client; they talk only through `Inbox` lanes
that carry batches. The pure stages of ``_pipeline`` do the work; this module moves
bytes and keeps the promises: exact resume from per-feed pitr checkpoints, output and
checkpoint in one transaction, and the output-tail reconciliation that makes a restart
exact even where ``read_committed`` is not honoured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Final

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from unifeed.checkpoint.store import (
    Checkpoint,
    CheckpointStore,
    StateRef,
    client_properties,
    encode_record,
)
from unifeed.checkpoint.store import FeedCheckpoint as FeedPosition
from unifeed.checkpoint.store import OutputCheckpoint as OutputPosition
from unifeed.core.annotate import DEFAULT_LATE_WINDOW_MS, Annotator
from unifeed.core.combine import Emitted
from unifeed.core.errors import (
    BrokerUnreachableError,
    CheckpointError,
    ConfigError,
    DeadLetterLimitError,
    InstanceFencedError,
    KafkaRuntimeError,
    StartRefusedError,
    UnifeedError,
)
from unifeed.core.mapping import (
    DeriverState,
    MappingDeriver,
    decode_state,
    encode_mapping,
    encode_state,
)
from unifeed.core.records import (
    CONTROLSTREAM,
    MAPPINGSTREAM,
    SURFACESTREAM,
    Keepalive,
    Mapping,
    dead_letter_raw,
)
from unifeed.core.stages import (
    ANNOTATED,
    Accepted,
    AnnotateStage,
    DeadLetter,
    FeedIntake,
    WriterStage,
    dead_letter_category,
)
from unifeed.core.units import parse_time_ms
from unifeed.kafka.clients import (
    TIMESTAMP_AHEAD_MAX_MS,
    PitrSeek,
    Target,
    consume_batch,
    consumer_config,
    ensure_reachable,
    find_offset_for_pitr,
    kafka_error,
    parse_target,
    producer_config,
    resolve_bootstrap,
    watermarks,
)
from unifeed.runtime.inbox import Batch, Inbox

log = logging.getLogger("unifeed")
#: Progress lines and summaries: text as they always read, or JSON records (unifeed.cli.logs).
_status_log = logging.getLogger("unifeed.status")
_summary_log = logging.getLogger("unifeed.summary")

_READ_BATCH: Final = 5000
_LANE_BATCHES: Final = 8
_MARK_SPAN: Final = 5000  # offsets: restart marks closer than this are merged
_STAGE_CAPACITY: Final = 50_000
_JOIN_TIMEOUT_S: Final = 30.0
_IDLE_S: Final = 0.05
# Threads hand over whole batches: longer GIL slices mean fewer costly hand-overs.
_SWITCH_INTERVAL_S: Final = 0.02
_POLL_EVERY_S: Final = 0.05
_MESSAGE_VALUE: Final = Message.value
_MESSAGE_ERROR: Final = Message.error
_DEAD_LETTER_MAX_BYTES: Final = 512 * 1024
_MISSING_WARN_EVERY_S: Final = 30.0
_UNKNOWN_CODES: Final = frozenset({"_UNKNOWN_PARTITION", "_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART"})
#: A checkpoint position this far past the wall clock that no input record reaches is
#: stale (a test's, another system's), not a future the inputs will bring: refused.
_FUTURE_TOLERANCE_MS: Final = 5 * 60_000
# Deriver snapshots: at most one per this much pitr and per this many input messages
# (and never more often than 20 messages per entry of the previous one, so that their
# cost stays a small constant per message whatever the state's size); at most this many
# held between the reader and the commit that saves one (older ones thinned).
_SNAPSHOT_EVERY_PITR_MS: Final = 5 * 60_000
_SNAPSHOT_EVERY_MESSAGES: Final = 5000
_SNAPSHOT_MESSAGES_PER_ENTRY: Final = 20
_SNAPSHOTS_HELD: Final = 16
_STATE_PART_BYTES: Final = 256 * 1024
_TRANSIENT: Final = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
    }
)


# --- options ---------------------------------------------------------------


@dataclass
class RuntimeOptions:
    bootstrap: str
    instance: str = "unifeed"
    checkpoint_topic: str = "unifeed.checkpoints"
    start: str = "earliest"
    stop_at: int | None = None
    exit_at_end: bool = False
    delivery: str = "exactly-once"
    realtime_threshold_ms: int = 30_000
    strict_order: bool = False
    lookback_ms: int = 6 * 3_600_000
    commit_interval_ms: int = 100
    commit_max_records: int = 10_000
    dead_letter: str | None = None
    max_dead_letters: int | None = None
    kafka_extra: dict[str, Any] = field(default_factory=dict)
    status_interval_s: float = 2.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    connect_timeout_s: float = 10.0
    broker_timeout_s: float = 30.0
    claim_grace_s: float = 1.0
    end_of_log_grace_s: float = 2.0
    wait_for_topics: bool = False
    allow_nonempty_output: bool = False
    clock: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RuntimeOptions:
        extra: dict[str, Any] = client_properties(args)
        broker_timeout_s = getattr(args, "broker_timeout", 30_000) / 1000
        if args.start not in ("earliest", "latest"):
            parse_time_ms(args.start, "--start")  # checked now: a typo is a usage error
        return cls(
            bootstrap=resolve_bootstrap(args.bootstrap_servers),
            instance=args.instance,
            checkpoint_topic=args.checkpoint_topic,
            start=args.start,
            stop_at=None if args.stop_at is None else parse_time_ms(args.stop_at, "--stop-at"),
            exit_at_end=args.exit_at_end,
            delivery=args.delivery,
            realtime_threshold_ms=getattr(args, "realtime_threshold", 30_000),
            strict_order=getattr(args, "strict_order", False),
            lookback_ms=args.lookback,
            commit_interval_ms=args.commit_interval,
            dead_letter=args.dead_letter,
            max_dead_letters=getattr(args, "max_dead_letters", None),
            kafka_extra=extra,
            status_interval_s=args.status_interval / 1000 if not args.quiet else 0.0,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            end_of_log_grace_s=getattr(args, "end_of_log_grace", 2000) / 1000,
            broker_timeout_s=broker_timeout_s,
            connect_timeout_s=broker_timeout_s,  # the start-up wait honours --broker-timeout
            wait_for_topics=getattr(args, "wait_for_topics", False),
            allow_nonempty_output=getattr(args, "allow_nonempty_output", False),
        )


# --- shared run state ------------------------------------------------------


class RunState:
    """What every thread of one run shares: the stop event, the first failure, counters."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.lag_pitr: dict[str, int] = {}
        self.mode = "starting"

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = exc
        self.stop.set()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n


class Worker(threading.Thread):
    """A thread that reports its failure to the run instead of dying quietly."""

    def __init__(self, name: str, state: RunState) -> None:
        super().__init__(name=name, daemon=True)
        self.state = state

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:
            log.debug("%s failed", self.name, exc_info=True)
            self.state.fail(exc)

    def work(self) -> None:
        raise NotImplementedError


# --- readers ---------------------------------------------------------------


@dataclass
class ReadPlan:
    """Where a reader starts and which messages it only replays (state, no output)."""

    offset: int
    resume_after: FeedPosition | None = None
    dead_offset: int | None = None
    #: The intake's order floor at ``offset`` (a restart from saved state), if known.
    floor: int | None = None


class StateSnapshots:
    """Snapshots of the mapping deriver, each as of the start of a controlstream batch,
    from the reader that runs the deriver to the commits that save them.

    A commit saves the newest snapshot that lies wholly before every feed's position less
    the late window (`take`): a restart restores it and reads controlstream from its
    offset. The reader adds (`due`, `add`), the writer takes, under a lock. Snapshots are
    spaced by pitr and by input messages (the more state, the further apart), never by
    the wall clock: their cost per message stays small and constant.
    """

    def __init__(self) -> None:
        self._held: deque[tuple[int, DeriverState]] = deque()
        self._lock = threading.Lock()
        self._last_offset = -(2**63)
        self._last_pitr = -(2**63)
        self._next_offset = -(2**63)

    def due(self, offset: int, pitr: int) -> bool:
        return pitr - self._last_pitr >= _SNAPSHOT_EVERY_PITR_MS and offset >= self._next_offset

    def add(self, offset: int, state: DeriverState) -> None:
        self._last_pitr = state.floor
        entries = len(state.access) + len(state.links)
        self._next_offset = offset + max(
            _SNAPSHOT_EVERY_MESSAGES, _SNAPSHOT_MESSAGES_PER_ENTRY * entries
        )
        with self._lock:
            held = self._held
            held.append((offset, state))
            if len(held) > _SNAPSHOTS_HELD:
                # Keep the oldest (a commit may need one that far back), thin the rest.
                del held[1]

    def take(self, before_pitr: int) -> tuple[int, DeriverState] | None:
        """The newest snapshot whose messages all have pitr below ``before_pitr`` (and
        forget it and older ones), or None."""
        found = None
        with self._lock:
            held = self._held
            while held and held[0][1].floor < before_pitr:
                found = held.popleft()
        return found


class _StatePart(msgspec.Struct, frozen=True, gc=False):
    instance: str
    id: str
    part: int
    parts: int


_part_encode: Final = msgspec.json.Encoder().encode
_part_decode: Final = msgspec.json.Decoder(_StatePart).decode


def state_topic(checkpoint_topic: str) -> str:
    """Where saved state goes: beside the checkpoints, compacted, partition 0."""
    return f"{checkpoint_topic}.state"


def load_state(options: RuntimeOptions, ref: StateRef) -> DeriverState | None:
    """The saved state a checkpoint refers to, or None (logged) when it cannot be read."""
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    parts: dict[int, bytes] = {}
    wanted = set(ref.offsets)
    try:
        consumer.assign([TopicPartition(ref.topic, ref.partition, min(ref.offsets))])
        deadline = time.monotonic() + 60
        last = max(ref.offsets)
        done = False
        while not done and time.monotonic() < deadline:
            for m in consume_batch(consumer, 1000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise kafka_error(f"reading saved state from {ref.topic}", err)
                offset = m.offset() or 0
                if offset in wanted:
                    head, _, body = (m.value() or b"").partition(b"\n")
                    part = _part_decode(head)
                    if part.id == ref.id and part.instance == options.instance:
                        parts[part.part] = body
                if offset >= last:
                    done = True
        if len(parts) != len(ref.offsets):
            log.warning(
                "%s: the saved state at %s:%d offsets %s is gone or incomplete; rebuilding "
                "links and access levels from --lookback instead",
                options.instance, ref.topic, ref.partition, ref.offsets,
            )
            return None
        return decode_state(b"".join(parts[i] for i in range(len(parts))))
    except (msgspec.DecodeError, KafkaException, KafkaRuntimeError) as exc:
        log.warning(
            "%s: the saved state at %s:%d cannot be read (%s); rebuilding links and access "
            "levels from --lookback instead",
            options.instance, ref.topic, ref.partition, exc,
        )
        return None
    finally:
        consumer.close()


class RestartMarks:
    """Where a restart may read one feed from, kept by its reader for the checkpoints.

    Each mark is ``(first offset, last pitr)``: the offset of the first message of a
    batch the reader handed on and the highest pitr it accepted up to the end of it.
    Marks closer than ``_MARK_SPAN`` offsets are merged, so a long lookback keeps few. A
    commit asks `offset_for` a pitr: every accepted message of the marks before the first
    whose last pitr reaches it has a lower pitr, so it is done, and reading again from
    that mark's offset repeats only what (pitr, skip) tells a restart to skip. The reader
    adds (once a batch) and the writer asks (once a commit) under a lock.

    >>> m = RestartMarks(start=100)
    >>> m.offset_for(5)                  # nothing handed on yet: where the run began
    100
    >>> m.add(100, 10); m.add(6000, 20); m.add(9000, 20); m.add(12000, 30)
    >>> [m.offset_for(p) for p in (10, 15, 20, 25)]    # 9000 was merged into 6000
    [100, 6000, 6000, 12000]
    >>> m.offset_for(31)                 # past every mark: where the run began
    100
    """

    def __init__(self, start: int) -> None:
        self._marks: deque[tuple[int, int]] = deque()
        self._start = start  # where this run began reading: the answer before any mark
        self._lock = threading.Lock()

    def add(self, first_offset: int, last_pitr: int) -> None:
        with self._lock:
            marks = self._marks
            if marks:
                prev_offset, prev_pitr = marks[-1]
                if first_offset - prev_offset < _MARK_SPAN:
                    marks[-1] = (prev_offset, max(prev_pitr, last_pitr))
                    return
            marks.append((first_offset, last_pitr))

    def offset_for(self, pitr: int) -> int:
        with self._lock:
            marks = self._marks
            while marks and marks[0][1] < pitr:
                marks.popleft()
            return marks[0][0] if marks else self._start


class FeedReader(Worker):
    """Reads one feed's partition; validates; hands batches on; reports end of log."""

    def __init__(
        self,
        *,
        state: RunState,
        feed: str,
        target: Target,
        config: dict[str, Any],
        plan: ReadPlan,
        deliver: Callable[[list[Accepted], list[Accepted], list[DeadLetter], bool, bool], bool],
        stop_at: int | None,
        exit_at_end: bool,
        count_keepalives: bool = False,
        end_of_log_grace_s: float = 2.0,
    ) -> None:
        super().__init__(f"reader-{feed}", state)
        self.end_of_log_grace_s = end_of_log_grace_s
        self.feed = feed
        self.target = target
        self.config = config
        self.plan = plan
        self.deliver = deliver
        self.stop_at = stop_at
        self.exit_at_end = exit_at_end
        self.count_keepalives = count_keepalives
        self.intake = FeedIntake(feed, where="offset")
        if plan.floor is not None:
            self.intake.floor = plan.floor
        self.next_offset = plan.offset
        self.high = -1
        self.marks = RestartMarks(plan.offset)
        #: Called in this thread before a batch with accepted messages is handed on, with
        #: the batch's first offset and the intake's floor before it.
        self.before_batch: Callable[[int, int], None] | None = None

    def work(self) -> None:
        consumer = Consumer(self.config)
        try:
            self._loop(consumer)
        finally:
            consumer.close()

    def _loop(self, consumer: Consumer) -> None:
        tp = self.target.topic_partition(self.plan.offset)
        consumer.assign([tp])
        resume = self.plan.resume_after
        replaying = resume is not None
        at_resume_pitr = 0
        stop = self.state.stop
        closed = False
        grace = self.end_of_log_grace_s
        at_end_since: float | None = None
        reported_end = False
        idle_since = time.monotonic()
        warned_missing = 0.0
        while not stop.is_set() and not closed:
            messages = consume_batch(consumer, _READ_BATCH, 0.1)
            eof = False
            if messages:
                idle_since = time.monotonic()
            elif at_end_since is None and time.monotonic() - idle_since >= 1.0:
                # librdkafka reports no end of log for an empty or missing partition:
                # ask for the watermarks instead.
                idle_since = time.monotonic()
                try:
                    _, high = watermarks(consumer, self.target, 5.0)
                except KafkaRuntimeError as exc:
                    if exc.code not in _UNKNOWN_CODES:
                        raise
                    # A feed never seen (no record, no end of its partition) is never
                    # passed: it could still deliver anything.
                    high = -1
                    now = time.monotonic()
                    if now - warned_missing >= _MISSING_WARN_EVERY_S:
                        log.warning(
                            "%s: %s does not exist (yet); waiting for it (its feed is not "
                            "passed until it exists)",
                            self.feed,
                            self.target,
                        )
                        warned_missing = now
                if high >= 0 and self.next_offset >= high:
                    eof = True
            # Two passes in C (here and the map over the values below) instead of one Python
            # loop: this runs for every input message, and errors are rare (end of
            # partition). `error()` is None or a KafkaError, which is always true (and
            # raises when compared, so not `.count(None)`).
            if any(map(_MESSAGE_ERROR, messages)):
                records = []
                for m in messages:
                    err = m.error()
                    if err is None:
                        records.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        eof = True
                    elif not err.fatal() and (err.retriable() or err.code() in _TRANSIENT):
                        # The client reconnects by itself; BrokerHealth gives up in time.
                        log.debug("%s: %s", self.feed, err.str())
                    else:
                        raise kafka_error(f"reading {self.feed} from {self.target}", err)
            else:
                records = messages
            if records:
                self.next_offset = (records[-1].offset() or 0) + 1

            def offset_of(i: int, rs: list[Message] = records) -> int:
                return rs[i].offset() or 0

            floor_before = self.intake.floor
            good: list[Accepted]
            good, dead = self.intake.process_values(list(map(_MESSAGE_VALUE, records)), offset_of)
            if dead and self.plan.dead_offset is not None:
                # Written and committed by the run that left the checkpoint.
                dead = [d for d in dead if (d.offset or 0) > (self.plan.dead_offset or 0)]
            replay: list[Accepted] = []
            if replaying and resume is not None:
                k = 0
                for a in good:
                    p = a.rec.pitr
                    counted = self.count_keepalives or type(a.rec) is not Keepalive
                    if p < resume.pitr:
                        k += 1
                        continue
                    if p == resume.pitr and counted and at_resume_pitr < resume.skip:
                        at_resume_pitr += 1
                        k += 1
                        continue
                    if p == resume.pitr and not counted:
                        k += 1
                        continue
                    replaying = False
                    break
                if k:
                    replay, good = good[:k], good[k:]
            if self.stop_at is not None and good and good[-1].rec.pitr > self.stop_at:
                good = [a for a in good if a.rec.pitr <= self.stop_at]
                closed = True
            if eof and self.exit_at_end:
                closed = True
            # End of log counts as progress only once the reader has stayed there for the
            # grace period: a source that is merely slow to top up an old backlog must not
            # let catch-up run ahead of it (which would emit its next messages as late).
            if records:
                at_end_since = None
                reported_end = False
            if eof and at_end_since is None:
                at_end_since = time.monotonic()
            caught_up = (
                at_end_since is not None
                and not reported_end
                and time.monotonic() - at_end_since >= grace
            )
            if caught_up:
                reported_end = True
            if records or caught_up or closed:
                self.state.add(f"in.{self.feed}", len(records))
                if good:
                    self.state.lag_pitr[self.feed] = good[-1].rec.pitr
                if good or replay:
                    # Before the batch goes on: no commit can cover it without its mark.
                    self.marks.add(records[0].offset() or 0, (good or replay)[-1].pitr)
                    if self.before_batch is not None:
                        self.before_batch(records[0].offset() or 0, floor_before)
                if not self._hand_on(consumer, tp, replay, good, dead, caught_up, closed):
                    return

    def _hand_on(
        self,
        consumer: Consumer,
        tp: TopicPartition,
        replay: list[Accepted],
        good: list[Accepted],
        dead: list[DeadLetter],
        caught_up: bool,
        closed: bool,
    ) -> bool:
        """Deliver, pausing the partition while the next stage is full."""
        paused = False
        try:
            while not self.deliver(replay, good, dead, caught_up, closed):
                if self.state.stop.is_set():
                    return False
                if not paused:
                    consumer.pause([tp])
                    paused = True
                replay = good = []  # already delivered: deliver() retries only what is left
                dead = []
        finally:
            if paused and not self.state.stop.is_set():
                consumer.resume([tp])
        return True


class _Delivery:
    """Hands one reader's output to its lanes, retrying only what is still undelivered."""

    def __init__(self, steps: list[tuple[Inbox, str, Callable[..., Batch | None]]]) -> None:
        self.steps = steps
        self.pending: list[tuple[Inbox, str, Batch]] = []

    def __call__(
        self,
        replay: list[Accepted],
        good: list[Accepted],
        dead: list[DeadLetter],
        caught_up: bool,
        closed: bool,
    ) -> bool:
        if not self.pending and (replay or good or dead or caught_up or closed):
            for inbox, lane, make in self.steps:
                batch = make(replay, good, dead, caught_up, closed)
                if batch is not None:
                    self.pending.append((inbox, lane, batch))
        while self.pending:
            inbox, lane, batch = self.pending[0]
            if not inbox.put(lane, batch, 0.1):
                return False
            self.pending.pop(0)
        return True


# --- the output side -------------------------------------------------------


class Committer:
    """Owns the output producer: transactions, checkpoints, output-tail reconciliation.

    Output records are produced with timestamp = pitr. Every commit: flush the output,
    produce the checkpoint (per-feed positions and the output's ``next_offset``), commit
    the transaction. Records found after the checkpoint's ``next_offset`` at start-up were
    written by an earlier incarnation; they must equal what this run writes first, and
    are skipped instead of written twice.
    """

    def __init__(
        self,
        *,
        options: RuntimeOptions,
        output: Target,
        dead_target: Target | None,
        store: CheckpointStore,
        feeds: tuple[str, ...],
        state: RunState,
        inputs: dict[str, Target] | None = None,
    ) -> None:
        self.options = options
        #: Every input feed and where it is read from; checkpoints name them.
        self.inputs = dict(inputs or {})
        self.output = output
        self.dead_target = dead_target
        self.store = store
        self.state = state
        self.transactional = options.delivery == "exactly-once"
        config = producer_config(
            options.bootstrap,
            options.kafka_extra,
            transactional_id=f"unifeed-{options.instance}" if self.transactional else None,
        )
        config.setdefault("queue.buffering.max.messages", 500_000)
        config.setdefault("queue.buffering.max.kbytes", 262_144)
        config["error_cb"] = self._on_error
        self.max_record_bytes = int(config.get("message.max.bytes", 1_000_000)) - 1024
        self.producer = Producer(config)
        self._error: KafkaError | None = None
        self._last_poll = 0.0
        self.positions: dict[str, FeedPosition] = {}
        self.feeds = feeds
        self.next_offset = 0
        self._delivered_next = -1
        self._tail: list[tuple[int, bytes]] = []
        self._tail_pos = 0
        self.uncommitted = 0
        self.last_commit = time.monotonic()
        self.commits = 0
        self.checkpoint: Checkpoint | None = None
        #: Per input feed: its reader's restart marks and how far before the feeds'
        #: lowest position a restart must read it (the lookback that rebuilds state), or
        #: None: from the feed's own position.
        self.marks: dict[str, tuple[RestartMarks, int | None]] = {}
        self._dirty = False
        self._in_txn = False
        self.generation = 1
        # Tells apart two processes that claim the same generation at the same moment.
        self.incarnation = secrets.token_hex(8)
        self.watch_from: int | None = None  # checkpoint offset the claim watcher starts at
        self._dead_offsets: dict[str, int] = {}
        #: Dead letters this run has written (those a restart skips are not counted).
        self.dead_written = 0
        self._last_dead: DeadLetter | None = None
        #: The deriver's snapshots (None: no state is saved), how far behind the lowest
        #: feed position a saved one must lie, and the saved state the next checkpoint
        #: names (carried from the checkpoint resumed from until a newer one is saved).
        self.snapshots: StateSnapshots | None = None
        self.state_lag_ms = 0
        self.state_feed = CONTROLSTREAM  # the input the snapshots are taken of
        self.state_ref: StateRef | None = None
        self.state_target = Target(state_topic(options.checkpoint_topic), 0)

    # start-up ----------------------------------------------------------------

    def start(self) -> Checkpoint | None:
        """Find the checkpoint → check it against output and inputs → ``init_transactions``
        → claim the instance → read the output tail.

        Everything that can refuse the start runs before ``init_transactions`` and the
        claim: either of them stops a healthy incarnation of the same name.
        """
        self.store.ensure_topic()
        CheckpointStore(
            self.options.bootstrap, self.state_target.topic, self.options.kafka_extra
        ).ensure_topic()
        # The output's end before the checkpoint is read: output written by an
        # incarnation starting at the same time then comes after its first checkpoint,
        # which this load sees (so it is not taken for a foreign output).
        before = _watermarks_or_empty(self.options, self.output)
        cp, cp_offset = self.store.load(self.options.instance)
        self._check_start(cp, cp_offset, output_before=before)
        if self.transactional:
            try:
                self.producer.init_transactions(30)
            except KafkaException as exc:
                raise _wrap(
                    "cannot initialise transactions (use --delivery at-least-once "
                    "for brokers without them)",
                    exc,
                ) from None
        self.generation = (cp.generation if cp is not None else 0) + 1
        cp, cp_offset = self._claim(cp)
        # The latest record may be an older incarnation's last commit: check it too. (Not
        # the new-instance rule: a twin that claimed at the same moment and outranks this
        # one may have written output by now; the claim already decided who goes on.)
        _low, high = self._check_start(cp, cp_offset)
        if cp is not None and not cp.feeds:
            cp = None  # a claim of a new instance: nothing to resume from
        self.checkpoint = cp
        if cp is None:
            self.next_offset = high
        else:
            self.positions = dict(cp.feeds)
            self.next_offset = cp.output.next_offset if cp.output is not None else high
            self._tail = _read_tail(self.options, self.output, self.next_offset, high)
            if self._tail:
                log.info(
                    "%s: %d output records after the checkpoint, written by an earlier "
                    "run: they will be checked and not written again",
                    self.options.instance,
                    len(self._tail),
                )
        return cp

    def _check_start(
        self,
        cp: Checkpoint | None,
        cp_offset: int,
        *,
        output_before: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """Refuse a start that would duplicate or lose output; the output's watermarks.

        Checks, with `StartRefusedError` (exit 2) naming what differs and the way out: a
        new instance (no checkpoint) writes to an empty output unless
        ``allow_nonempty_output`` (judged on ``output_before``, the output's watermarks read
        before ``cp``; skipped without them); a checkpoint belongs to this output and these inputs,
        its output offset is not past the output's end, and no feed is past both the
        wall clock and every record of its input.
        """
        o = self.options
        name = o.instance
        low, high = _watermarks_or_empty(o, self.output)
        topic_option = (
            f" --checkpoint-topic {o.checkpoint_topic}"
            if o.checkpoint_topic != "unifeed.checkpoints"
            else ""
        )
        reset = f"`unifeed checkpoint reset --instance {name}{topic_option}`"
        where = f"the checkpoint of instance {name!r} (kafka:{o.checkpoint_topic}:0 offset {cp_offset})"
        if cp is None or not cp.feeds:
            if output_before is None or o.allow_nonempty_output:
                return low, high
            first, end = output_before
            if end > first:
                raise StartRefusedError(
                    f"instance {name!r} has no checkpoint in kafka:{o.checkpoint_topic}:0, "
                    f"but its output {self.output} already holds records (offsets {first} to "
                    f"{end - 1}): starting over would write them again. Check "
                    "--checkpoint-topic and --instance; or write to a new output topic; or "
                    "pass --allow-nonempty-output to append after those records"
                )
            return low, high
        holder = "combine" if SURFACESTREAM in cp.feeds else "mappings"
        if holder != ("combine" if SURFACESTREAM in self.feeds else "mappings"):
            # Another command's run holds the name: refused before init_transactions,
            # which would fence that run's producer (same transactional.id).
            held_output = (
                f" writing kafka:{cp.output.topic}:{cp.output.partition}"
                if cp.output is not None
                else ""
            )
            raise StartRefusedError(
                f"instance name {name!r} is held by a `unifeed {holder}` run{held_output} "
                f"({where}); give this run its own --instance"
            )
        if cp.output is not None and (
            cp.output.topic != self.output.topic or cp.output.partition != self.output.partition
        ):
            raise StartRefusedError(
                f"instance {name!r} wrote to kafka:{cp.output.topic}:{cp.output.partition}, "
                f"not {self.output}; use another --instance, or {reset}"
            )
        recorded = {f: p.source for f, p in cp.feeds.items() if p.source is not None}
        if recorded:  # records written before sources existed are not checked
            now = {f: f"{t.topic}:{t.partition}" for f, t in self.inputs.items()}
            changed = [f for f in sorted(set(recorded) | set(now)) if recorded.get(f) != now.get(f)]
            if changed:
                what = "; ".join(
                    f"{f} was read from {_named(recorded.get(f))}, now from {_named(now.get(f))}"
                    for f in changed
                )
                raise StartRefusedError(
                    f"{where} belongs to other inputs ({what}): its positions mean nothing "
                    f"in these, and resuming would mix two datasets in {self.output}. Give the "
                    f"same inputs, or use another --instance and output topic, or {reset} "
                    "(then write to a new output topic)"
                )
        if cp.output is not None:
            if cp.output.next_offset > high:
                raise StartRefusedError(
                    f"{where} covers output {self.output} up to offset "
                    f"{cp.output.next_offset}, but the output ends at offset {high}: the "
                    "output topic was deleted, recreated or truncated since, and a restart "
                    "could not tell what it already wrote (it would write records twice). "
                    f"Start over: {reset}, then run into a new or empty output topic"
                )
            if cp.output.next_offset < low:
                raise StartRefusedError(
                    f"{where} points at output offset {cp.output.next_offset}, below the "
                    f"first stored offset {low} of {self.output}: retention deleted what a "
                    "restart must compare its first records with, so it could write them "
                    f"twice. Start over: {reset}, then run into a new or empty output topic"
                )
        self._check_not_future(cp, where, reset)
        return low, high

    def _check_not_future(self, cp: Checkpoint, where: str, reset: str) -> None:
        """A feed position past the wall clock must be one its input reaches."""
        o = self.options
        horizon = o.clock() + _FUTURE_TOLERANCE_MS
        start_ms = None if o.start in ("earliest", "latest") else parse_time_ms(o.start)
        for feed, pos in cp.feeds.items():
            target = self.inputs.get(feed)
            if target is None or pos.pitr <= horizon:
                continue
            if pos.pitr == start_ms and pos.skip == 0:
                continue  # the first checkpoint of this very `--start` in the future
            # (pitr, 0) says everything before pitr is done: a `--start latest` one is the
            # last record's pitr + 1.
            wanted = pos.pitr - 1 if pos.skip == 0 else pos.pitr
            try:
                reached = _find(o, target, wanted).method not in ("after_last", "empty")
            except KafkaRuntimeError as exc:
                if exc.code not in _UNKNOWN_CODES:
                    raise
                reached = False
            if reached:
                continue  # the input holds a record that late: a real position
            raise StartRefusedError(
                f"{where} says {feed} was processed up to pitr {pos.pitr} "
                f"({_iso(pos.pitr)}), later than now and than every record of {target}: it "
                "is stale (written for other data, or by a wrong clock), and resuming would "
                f"skip everything before it. Start over: {reset}"
            )

    @property
    def claim_rank(self) -> tuple[int, str]:
        return (self.generation, self.incarnation)

    def _claim(self, cp: Checkpoint | None) -> tuple[Checkpoint | None, int]:
        """Tell an older incarnation of this instance name to stop, then give it time to.

        The claim is the current checkpoint (or, for a new instance, an empty one) with
        the next generation and this process's incarnation token. An incarnation that
        sees a greater ``(generation, incarnation)`` for its name stops before its next
        commit (brokers that fence transactional producers stop it too). Afterwards the
        latest checkpoint is read again: the older incarnation may have committed once
        more meanwhile, and a process that claimed at the same moment may outrank this one.
        """
        instance = self.options.instance
        claim = Checkpoint(
            version=1,
            instance=instance,
            feeds=cp.feeds if cp is not None else {},
            output=cp.output if cp is not None else None,
            state=cp.state if cp is not None else msgspec.UNSET,
            generation=self.generation,
            written_ms=self.options.clock(),
            incarnation=self.incarnation,
        )
        key, value = encode_record(claim)
        self.begin()
        self.producer.produce(self.store.topic, value, key=key, partition=0)
        self._commit_or_flush()
        time.sleep(self.options.claim_grace_s)
        latest, offset = self.store.load(instance)
        if latest is None:
            raise CheckpointError(
                f"the checkpoint of instance {instance!r} was reset while this run started; "
                "start it again"
            )
        if latest.claim_rank > self.claim_rank:
            raise InstanceFencedError(
                f"another incarnation of instance {instance!r} (generation {latest.generation}, "
                f"{latest.incarnation}) started at the same time as this one (generation "
                f"{self.generation}, {self.incarnation}); this one stops"
            )
        log.info("%s: generation %d claimed (incarnation %s)", instance, self.generation,
                 self.incarnation)
        # Every record after the one just read is news to the claim watcher.
        self.watch_from = offset + 1
        return latest, offset

    def _commit_or_flush(self) -> None:
        if self.transactional:
            try:
                self.producer.commit_transaction(30)
            except KafkaException as exc:
                raise _wrap(
                    "committing a transaction failed", exc, self.options.instance
                ) from None
            self._in_txn = False
        elif self._served(lambda: self.producer.flush(30)):
            raise KafkaRuntimeError("a checkpoint record was not delivered within 30 s")

    def first_checkpoint(self, positions: dict[str, FeedPosition]) -> None:
        """Written before any output when the instance has no checkpoint yet."""
        self.positions = dict(positions)
        self._dirty = True
        self.commit(force=True)

    # hot path ----------------------------------------------------------------

    def _on_error(self, error: KafkaError) -> None:
        try:
            fatal = error.fatal()
        except SystemError as exc:  # called with a fatal error pending: see `_served`
            error, fatal = _pending_error(exc, error), True
        if fatal:
            self._error = error
            self.state.fail(
                _fenced(self.options.instance, error)
                or kafka_error("the output producer failed", error)
            )
        else:
            log.debug("producer: %s", error.str())

    def _on_last_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self._delivered_next = (message.offset() or 0) + 1
            return
        try:
            failure = _fenced(self.options.instance, error) or kafka_error(
                f"writing to {self.output} failed", error
            )
        except SystemError as exc:  # called with a fatal error pending: see `_served`
            error = _pending_error(exc, error)
            failure = _fenced(self.options.instance, error) or kafka_error(
                f"writing to {self.output} failed", error
            )
        self._error = error
        self.state.fail(failure)

    def _served(self, call: Callable[[], int]) -> int:
        """``call()``, a producer call that serves delivery reports (flush, poll).

        After a fatal error (a fenced producer), confluent-kafka hands the purged records'
        reports to their callbacks with its own exception still pending, so the first
        client method a callback calls raises SystemError, and the serving call fails
        with SystemError too. The callbacks take the pending error as the run's failure;
        here that failure is raised instead of the SystemError.
        """
        try:
            return call()
        except SystemError:
            if self.state.failure is not None:
                raise self.state.failure from None
            raise

    def write(
        self,
        items: list[Emitted],
        positions: dict[str, FeedPosition] | None = None,
    ) -> None:
        """Produce each item's bytes (timestamp = pitr) in order; advance the positions.

        Without ``positions``, each item is one input message of its feed (the unified
        feed); with it, the caller says how far its inputs got (the mapping deriver).
        """
        if positions is not None:
            self.positions.update(positions)
            self._dirty = True
        if not items:
            return
        produce = self.producer.produce
        topic = self.output.topic
        partition = self.output.partition
        start = 0
        if self._tail_pos < len(self._tail):
            start = self._reconcile(items)
        n = len(items)
        max_bytes = self.max_record_bytes
        # Only the last record has a callback: its delivery report tells how far the
        # output got.
        last = items[-1]
        # Timestamp = pitr, at most TIMESTAMP_AHEAD_MAX_MS ahead of the clock (a broker
        # refuses records stamped further ahead; `record_timestamp`).
        cap = int(time.time() * 1000) + TIMESTAMP_AHEAD_MAX_MS
        for e in items[start:]:
            value = e.item
            if len(value) > max_bytes:
                self._oversized(e.feed, e.pitr, value)
                continue
            callback = self._on_last_delivery if e is last else None
            stamp = e.pitr if e.pitr <= cap else cap
            try:
                # Positional (topic, value, key, partition, callback, on_delivery, timestamp; a
                # positional on_delivery is ignored, so the callback goes in `callback`):
                # 0.5 us a record cheaper than keywords, measured.
                produce(topic, value, None, partition, callback, None, stamp)
            except BufferError:
                self._produce_when_room(topic, value, partition, stamp, e is last)
        if positions is None:
            self._advance_positions(items)
        # Delivery reports and errors are served here at most every _POLL_EVERY_S (and by
        # every commit's flush): each poll lets go of the GIL, and the writer, the busiest
        # thread, can then wait a whole switch interval to get it back.
        now = time.monotonic()
        if now - self._last_poll >= _POLL_EVERY_S:
            self._last_poll = now
            self._served(lambda: self.producer.poll(0))
        self.uncommitted += n - start
        self._dirty = True
        self.state.add("out", n)

    def _produce_when_room(
        self, topic: str, value: bytes, partition: int, stamp: int, is_last: bool
    ) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._served(lambda: self.producer.poll(0.05))
            try:
                callback = self._on_last_delivery if is_last else None
                self.producer.produce(topic, value, None, partition, callback, None, stamp)
                return
            except BufferError:
                continue
        raise KafkaRuntimeError(f"the producer's queue for {self.output} stayed full for 60 s")

    def _advance_positions(self, items: list[Emitted]) -> None:
        """Per feed: the last pitr written and how many of its messages had it (one
        backward scan that stops as soon as every feed's last run has ended)."""
        runs: dict[str, list[Any]] = {}  # feed -> [pitr, count, ended]
        open_runs = 0
        for e in reversed(items):
            run = runs.get(e.feed)
            if run is None:
                runs[e.feed] = [e.pitr, 1, False]
                open_runs += 1
            elif not run[2]:
                if e.pitr == run[0]:
                    run[1] += 1
                else:
                    run[2] = True
                    open_runs -= 1
                    if open_runs == 0 and len(runs) == len(self.feeds):
                        break
        positions = self.positions
        for feed, (pitr, count, ended) in runs.items():
            if not ended:
                prev = positions.get(feed)
                if prev is not None and prev.pitr == pitr:
                    count += prev.skip
            prev_dead = positions[feed].dead_offset if feed in positions else None
            positions[feed] = FeedPosition(pitr=pitr, skip=count, dead_offset=prev_dead)

    def _oversized(self, feed: str, pitr: int, value: bytes) -> None:
        """A record the producer cannot send: a dead letter instead of a stopped run."""
        reason = (
            f"the output record ({len(value)} bytes) is larger than the producer's "
            f"message.max.bytes allows; raise message.max.bytes (here and on the broker) with "
            f"--kafka-config to pass such records"
        )
        kw: dict[str, Any] = dead_letter_raw(value)
        letter = DeadLetter(feed=feed, reason=reason, pitr=pitr, **kw)
        log.warning("%s: %s: %s (pitr %d)", self.options.instance, feed, reason, pitr)
        self.write_dead([letter])

    def _feed_checkpoints(self) -> dict[str, FeedPosition]:
        out: dict[str, FeedPosition] = {}
        for f in self.feeds:
            pos = self.positions.get(f)
            if pos is None:
                continue
            dead = self._dead_offsets.get(f)
            if dead is not None and (pos.dead_offset is None or dead > pos.dead_offset):
                pos = FeedPosition(pitr=pos.pitr, skip=pos.skip, dead_offset=dead)
                self.positions[f] = pos
            out[f] = pos
        # A feed read without a position of its own (an external mappingstream) keeps only
        # its dead-letter mark, so that a restart does not write its dead letters again.
        for f, dead in self._dead_offsets.items():
            prev = self.positions.get(f)
            if f not in out and (prev is None or dead > (prev.dead_offset or -1)):
                self.positions[f] = FeedPosition(pitr=0, skip=0, dead_offset=dead)
        for f, pos in self.positions.items():
            if f not in out:
                out[f] = pos
        if self.marks and all(f in out for f in self.marks):
            lowest = min(out[f].pitr for f in self.marks)
            for f, (marks, lookback) in self.marks.items():
                pos = out[f]
                offset = marks.offset_for(pos.pitr if lookback is None else lowest - lookback)
                if offset != pos.offset:
                    out[f] = self.positions[f] = FeedPosition(
                        pitr=pos.pitr, skip=pos.skip, dead_offset=pos.dead_offset, offset=offset
                    )
        # Each feed names its input, so that a start with other inputs is refused (an
        # external mappingstream too, with no position of its own).
        for f, target in self.inputs.items():
            source = f"{target.topic}:{target.partition}"
            pos = out.get(f) or FeedPosition(pitr=0, skip=0)
            if pos.source != source:
                out[f] = msgspec.structs.replace(pos, source=source)
        return out

    def _reconcile(self, feed_items: list[Emitted]) -> int:
        i = 0
        tail = self._tail
        while i < len(feed_items) and self._tail_pos < len(tail):
            if len(feed_items[i].item) > self.max_record_bytes:
                i += 1  # never written: nothing to compare (its dead letter may repeat)
                continue
            offset, old = tail[self._tail_pos]
            new = feed_items[i].item
            if old != new:
                raise CheckpointError(
                    f"output {self.output} offset {offset} holds a record that differs from what "
                    f"this run writes next (its {self._tail_pos + 1}th message after the "
                    f"checkpoint's next_offset {self.tail_start}): the inputs or options changed "
                    "since that record was written. Use a new output topic, or "
                    f"`unifeed checkpoint reset --instance {self.options.instance}` and --start"
                )
            self._tail_pos += 1
            self.next_offset = offset + 1
            i += 1
        self.state.add("reconciled", i)
        return i

    @property
    def tail_start(self) -> int:
        return self._tail[0][0] if self._tail else self.next_offset

    def write_dead(self, letters: list[DeadLetter]) -> None:
        if not letters or self.dead_target is None:
            return
        for d in letters:
            d = d.fitted(_DEAD_LETTER_MAX_BYTES)
            while True:
                try:
                    self.producer.produce(
                        self.dead_target.topic, d.encode(), partition=self.dead_target.partition
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.state.add("dead_letters", len(letters))
        self.dead_written += len(letters)
        self._last_dead = letters[-1]
        for d in letters:
            if d.offset is not None and d.offset > self._dead_offsets.get(d.feed, -1):
                self._dead_offsets[d.feed] = d.offset
        for d in letters:
            self.state.add(f"dead_letters.{dead_letter_category(d.reason)}")
        self._dirty = True

    def stop_if_over_dead_letter_limit(self) -> None:
        """Beyond ``--max-dead-letters``: commit what is processed, then stop (exit 4).

        The commit holds, in one transaction, the output written so far, every dead letter
        written (also those beyond the limit that came in the same batch) and the
        checkpoint of both, so a rerun resumes after them with a fresh count.
        """
        limit = self.options.max_dead_letters
        if limit is None or self.dead_written <= limit:
            return
        self.commit(reopen=False)
        last = self._last_dead
        where = "" if last is None else f"; the last: {last.feed} {last.offset}: {last.reason}"
        raise DeadLetterLimitError(
            f"{self.dead_written} dead letters exceed --max-dead-letters {limit}{where}; "
            "the output, dead letters and checkpoint up to here are committed, so a rerun "
            "resumes after them"
        )

    def due(self) -> bool:
        """Asked after each merge step; a catch-up step can be bigger than
        `commit_max_records`, and is committed whole (docs/guarantees.md says why)."""
        return self._dirty and (
            self.uncommitted >= self.options.commit_max_records
            or (time.monotonic() - self.last_commit) * 1000 >= self.options.commit_interval_ms
        )

    def commit(self, force: bool = False, reopen: bool = True) -> None:
        """Flush output, write the checkpoint, commit (one transaction)."""
        if not self._dirty and not force:
            return
        producer = self.producer
        self.begin()
        feeds = self._feed_checkpoints()
        saving = self._save_state(feeds)
        remaining = self._served(lambda: producer.flush(30))
        if remaining:
            raise KafkaRuntimeError(f"{remaining} output records not delivered after 30 s")
        if self._error is not None:
            raise kafka_error("output delivery failed", self._error)
        if self._delivered_next >= 0:
            self.next_offset = max(self.next_offset, self._delivered_next)
        if saving is not None:
            offsets, ref = saving
            if None in offsets:
                raise KafkaRuntimeError(f"saved state not delivered to {self.state_target}")
            self.state_ref = msgspec.structs.replace(ref, offsets=offsets)
        cp = Checkpoint(
            version=1,
            instance=self.options.instance,
            state=msgspec.UNSET if self.state_ref is None else self.state_ref,
            feeds=feeds,
            output=OutputPosition(
                topic=self.output.topic,
                partition=self.output.partition,
                next_offset=self.next_offset,
            ),
            generation=self.generation,
            written_ms=self.options.clock(),
            incarnation=self.incarnation,
        )
        key, value = encode_record(cp)
        if isinstance(self.state.failure, InstanceFencedError):
            raise self.state.failure
        producer.produce(self.store.topic, value, key=key, partition=0)
        self._commit_or_flush()
        if reopen:
            self.begin()
        self.checkpoint = cp
        self.commits += 1
        self.uncommitted = 0
        self._dirty = False
        self.last_commit = time.monotonic()
        self.state.add("commits")

    def _save_state(
        self, feeds: dict[str, FeedPosition]
    ) -> tuple[list[Any], StateRef] | None:
        """Produce the newest snapshot the checkpoint may name, in parts, inside the open
        transaction (before its flush); its offsets are filled in by delivery reports."""
        if self.snapshots is None or not all(f in feeds for f in self.feeds):
            return None
        lowest = min(feeds[f].pitr for f in self.feeds)
        taken = self.snapshots.take(lowest - self.state_lag_ms)
        if taken is None:
            return None
        offset, state = taken
        raw = encode_state(state)
        size = min(_STATE_PART_BYTES, max(1024, self.max_record_bytes - 1024))
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)] or [b""]
        token = secrets.token_hex(8)
        offsets: list[Any] = [None] * len(chunks)
        for i, chunk in enumerate(chunks):

            def delivered(error: KafkaError | None, message: Message, i: int = i) -> None:
                if error is None:
                    offsets[i] = message.offset()
                else:
                    self._error = error

            head = _part_encode(_StatePart(self.options.instance, token, i, len(chunks)))
            while True:
                try:
                    self.producer.produce(
                        self.state_target.topic,
                        head + b"\n" + chunk,
                        # One key per part: compaction keeps the latest snapshot whole.
                        key=f"{self.options.instance}#{i}".encode(),
                        partition=self.state_target.partition,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.state.add("state_saves")
        ref = StateRef(
            topic=self.state_target.topic,
            partition=self.state_target.partition,
            offsets=[],
            id=token,
            feed=self.state_feed,
            offset=offset,
        )
        return offsets, ref

    def begin(self) -> None:
        """Open a transaction unless one is open (exactly-once only)."""
        if self.transactional and not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True

    def close(self) -> None:
        """Abort an open transaction (nothing of it becomes visible) and flush."""
        if self._in_txn:
            self.state.add("aborts")
            try:
                self.producer.abort_transaction(5)
            except KafkaException as exc:
                log.warning(
                    "%s: aborting the open transaction failed: %s", self.options.instance, exc
                )
            self._in_txn = False
        with contextlib.suppress(SystemError):  # a fatal error's reports: see `_served`
            self.producer.flush(5)


def _named(source: str | None) -> str:
    return "nothing" if source is None else f"kafka:{source}"


def _iso(ms: int) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))
    except (OverflowError, OSError, ValueError):
        return "beyond the calendar"


def _wrap(message: str, exc: KafkaException, instance: str = "") -> UnifeedError:
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return _fenced(instance, error) or kafka_error(message, error)
    return KafkaRuntimeError(f"{message}: {exc}")


#: What a broker that fences says to the producer of an older incarnation: another
#: producer with the same transactional.id (the instance name) has initialised since.
_FENCED_CODES: Final = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


def _pending_error(exc: SystemError, fallback: KafkaError) -> KafkaError:
    """The client's error that was pending when a callback's call raised ``exc``."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, KafkaException) and cause.args and isinstance(cause.args[0], KafkaError):
        return cause.args[0]
    return fallback


def _fenced(instance: str, error: KafkaError) -> InstanceFencedError | None:
    """The error a fenced producer of ``instance`` ends the run with, or None."""
    if not instance or error.code() not in _FENCED_CODES:
        return None
    return InstanceFencedError(
        f"another incarnation of instance {instance!r} took over: the broker fenced this "
        f"one's transactional producer ({error.name()}); this one stops without committing "
        "again"
    )


def _watermarks_or_empty(options: RuntimeOptions, target: Target) -> tuple[int, int]:
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    try:
        try:
            return watermarks(consumer, target)
        except KafkaRuntimeError as exc:
            if exc.code in _UNKNOWN_CODES:
                return 0, 0
            raise
    finally:
        consumer.close()


def _read_tail(
    options: RuntimeOptions, target: Target, start: int, high: int
) -> list[tuple[int, bytes]]:
    """Records of ``target`` from ``start`` to ``high`` (read_committed), bounded in time."""
    if start >= high:
        return []
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    out: list[tuple[int, bytes]] = []
    try:
        consumer.assign([target.topic_partition(start)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = consume_batch(consumer, 10_000, 0.5)
            done = False
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise kafka_error(f"reading the output tail of {target}", err)
                offset = m.offset() or 0
                out.append((offset, m.value() or b""))
                if offset >= high - 1:
                    done = True
            if done:
                return out
        raise KafkaRuntimeError(f"reading the output tail of {target} took more than 60 s")
    finally:
        consumer.close()


# --- stages as threads -----------------------------------------------------


class AnnotatorThread(Worker):
    def __init__(
        self, state: RunState, inbox: Inbox, writer_inbox: Inbox, options: RuntimeOptions
    ) -> None:
        super().__init__("annotator", state)
        self.inbox = inbox
        self.writer_inbox = writer_inbox
        self.stage = AnnotateStage(
            realtime_threshold_ms=options.realtime_threshold_ms,
            clock=options.clock,
            strict_order=options.strict_order,
            capacity=_STAGE_CAPACITY,
        )
        self.surface_caught_up = False
        self._sent_marker: int | None = None
        self._sent_caught_up = False

    def work(self) -> None:
        stage = self.stage
        c = stage.combiner
        closed_sent = False
        while not self.state.stop.is_set():
            lanes = [lane for lane in (MAPPINGSTREAM, SURFACESTREAM) if c.room(lane) > 0]
            dead: list[DeadLetter] = []
            for lane, batch in self.inbox.take(lanes, _IDLE_S):
                dead.extend(batch.dead)
                if lane == MAPPINGSTREAM:
                    stage.push_mappings(batch.records)
                    if batch.marker is not None:
                        c.advance(MAPPINGSTREAM, batch.marker)
                    c.caught_up(MAPPINGSTREAM, batch.caught_up)
                    if batch.closed:
                        c.close(MAPPINGSTREAM)
                else:
                    stage.push_surface(batch.records)
                    if batch.records or batch.caught_up:
                        self.surface_caught_up = batch.caught_up
                    c.caught_up(SURFACESTREAM, batch.caught_up)
                    if batch.closed:
                        c.close(SURFACESTREAM)
            out = stage.drain()
            if stage.dead:
                dead.extend(stage.dead)
                stage.dead.clear()
            marker = stage.progress()
            finished = stage.finished()
            caught_up = self.surface_caught_up and c.queued(SURFACESTREAM) == 0
            if (
                out
                or dead
                or marker != self._sent_marker
                or finished
                or caught_up != self._sent_caught_up
            ):
                batch = Batch(out, dead, marker, caught_up, finished)
                if not self.writer_inbox.put_blocking(ANNOTATED, batch):
                    return
                self._sent_marker = marker
                self._sent_caught_up = caught_up
                self.state.counters["annotated"] = stage.annotator.annotated
                self.state.counters["unmapped"] = stage.annotator.unmapped
                if finished:
                    closed_sent = True
            if closed_sent:
                # The annotated feed has ended; keep emptying the inbox so that the
                # control reader (which also feeds mappings here) never blocks on it.
                while not self.state.stop.is_set():
                    self.inbox.take([MAPPINGSTREAM, SURFACESTREAM], _IDLE_S)
                return


class WriterThread(Worker):
    def __init__(
        self, state: RunState, inbox: Inbox, committer: Committer, options: RuntimeOptions
    ) -> None:
        super().__init__("writer", state)
        self.inbox = inbox
        self.committer = committer
        self.stage = WriterStage(
            realtime_threshold_ms=options.realtime_threshold_ms,
            clock=options.clock,
            strict_order=options.strict_order,
            capacity=_STAGE_CAPACITY,
        )
        self.finished = False

    def work(self) -> None:
        stage = self.stage
        c = stage.combiner
        committer = self.committer
        try:
            while True:
                stopping = self.state.stop.is_set()
                lanes = [lane for lane in (CONTROLSTREAM, ANNOTATED) if c.room(lane) > 0]
                for lane, batch in self.inbox.take(lanes, 0 if stopping else _IDLE_S):
                    committer.write_dead(batch.dead)
                    if lane == CONTROLSTREAM:
                        stage.push_control(batch.records)
                    else:
                        stage.push_annotated(batch.records)
                    if batch.marker is not None:
                        c.advance(lane, batch.marker)
                    c.caught_up(lane, batch.caught_up)
                    if batch.closed:
                        c.close(lane)
                out = stage.drain()
                if out:
                    committer.write(out)
                    self.state.counters["late"] = c.late
                if c.last_mode is not None:
                    self.state.mode = c.last_mode.value
                committer.stop_if_over_dead_letter_limit()
                if c.exhausted():
                    committer.commit(reopen=False)
                    self.finished = True
                    return
                if stopping:
                    # After a failure the open transaction is aborted, not committed: the
                    # restart redoes it from the last checkpoint.
                    if self.state.failure is None:
                        committer.commit(reopen=False)
                    return
                if committer.due():
                    committer.commit()
        finally:
            committer.close()


class ClaimWatcher(Worker):
    """Follows the checkpoint partition from just after the claim; stops the run when
    another incarnation of this instance name outranks it (a checkpoint record with a
    greater ``(generation, incarnation)``)."""

    def __init__(self, state: RunState, options: RuntimeOptions, committer: Committer) -> None:
        super().__init__("claim-watcher", state)
        self.options = options
        self.committer = committer
        self.target = Target(options.checkpoint_topic, 0)

    def work(self) -> None:
        from unifeed.checkpoint.store import decode_checkpoint

        consumer = Consumer(
            consumer_config(self.options.bootstrap, self.options.kafka_extra, fetch_wait_ms=100)
        )
        key = self.options.instance.encode("utf-8")
        try:
            start = self.committer.watch_from
            if start is None:
                start = watermarks(consumer, self.target)[1]
            consumer.assign([self.target.topic_partition(start)])
            while not self.state.stop.is_set():
                for m in consume_batch(consumer, 500, 0.2):
                    if m.error() is not None or m.key() != key:
                        continue
                    if m.value() is None:
                        raise InstanceFencedError(
                            f"the checkpoint of instance {self.options.instance!r} was reset "
                            f"(tombstone at checkpoint offset {m.offset()}) while this "
                            f"incarnation (generation {self.committer.generation}) ran; it "
                            "stops without committing again"
                        )
                    if not m.value():
                        continue
                    try:
                        cp = decode_checkpoint(
                            m.value() or b"",
                            topic=self.target.topic,
                            offset=m.offset() or 0,
                            instance=self.options.instance,
                        )
                    except CheckpointError:
                        continue
                    if cp.claim_rank > self.committer.claim_rank:
                        raise InstanceFencedError(
                            f"another incarnation of instance {self.options.instance!r} "
                            f"(generation {cp.generation}, {cp.incarnation}) took over at checkpoint offset "
                            f"{m.offset()}; this one (generation {self.committer.generation}) "
                            "stops without committing again"
                        )
        finally:
            consumer.close()


class BrokerHealth:
    """Asks the broker for metadata now and then; raises when it has not answered for
    ``broker_timeout_s`` (the readers and the producer retry quietly meanwhile)."""

    def __init__(self, options: RuntimeOptions, every_s: float = 1.0) -> None:
        self.options = options
        self.every_s = every_s
        self.last_ok = time.monotonic()
        self.last_check = 0.0
        self.last_error = ""
        self._client = Consumer(consumer_config(options.bootstrap, options.kafka_extra))

    def check(self) -> None:
        now = time.monotonic()
        if now - self.last_check < self.every_s:
            return
        self.last_check = now
        try:
            # One topic's metadata, not the cluster's: on a cluster with thousands of
            # topics a full listing every second would cost the run real GIL time.
            self._client.list_topics(
                self.options.checkpoint_topic, timeout=min(2.0, self.options.broker_timeout_s)
            )
            self.last_ok = time.monotonic()
        except KafkaException as exc:
            self.last_error = str(exc.args[0] if exc.args else exc)
            silent = time.monotonic() - self.last_ok
            log.warning(
                "%s: the broker does not answer (%.0f s): %s",
                self.options.instance,
                silent,
                self.last_error,
            )
            if silent >= self.options.broker_timeout_s:
                raise BrokerUnreachableError(
                    f"lost the broker at {self.options.bootstrap}: no answer for "
                    f"{silent:.0f} s ({self.last_error}); the open transaction is aborted, "
                    "nothing after the last checkpoint is committed; run again when the "
                    "broker is back"
                ) from None

    def close(self) -> None:
        self._client.close()


# --- start-up planning -----------------------------------------------------


def _snapshot_hook(snapshots: StateSnapshots, deriver: MappingDeriver) -> Callable[[int, int], None]:
    def before_batch(offset: int, floor: int) -> None:
        if snapshots.due(offset, floor):
            snapshots.add(offset, deriver.snapshot(floor))

    return before_batch


def _links_hook(snapshots: StateSnapshots, links: Annotator) -> Callable[[int, int], None]:
    """Snapshots of the links an external mappingstream has made so far."""

    def before_batch(offset: int, floor: int) -> None:
        if snapshots.due(offset, floor):
            table = [(s, e[1], "", e[3], e[2]) for s, e in links._links.items()]
            snapshots.add(offset, DeriverState(
                floor=floor, last_keepalive=0, next_prune=0, access=[], links=table, tracks=[]
            ))

    return before_batch


def _restore(
    options: RuntimeOptions, committer: Committer, feed: str, target: Target
) -> DeriverState | None:
    """The saved state of the checkpoint resumed from, if it names one built from
    ``feed`` that can be read and whose offset is still stored; else None (logged), and
    the restart replays --lookback. The checkpoint's reference is kept for the next
    commits."""
    cp = committer.checkpoint
    ref = cp.state if cp is not None else msgspec.UNSET
    if isinstance(ref, msgspec.UnsetType):
        return None
    if ref.feed != feed:
        log.warning(
            "%s: the saved state was built from %s, this run takes its links from %s; "
            "rebuilding links and access levels from --lookback instead",
            options.instance, ref.feed, feed,
        )
        return None
    low, _ = _watermarks_or_empty(options, target)
    if ref.offset < low:
        log.warning(
            "%s: the saved state was taken at %s offset %d, no longer stored (first offset "
            "%d); rebuilding links and access levels from --lookback instead",
            options.instance, target, ref.offset, low,
        )
        return None
    state = load_state(options, ref)
    if state is not None:
        committer.state_ref = ref
        log.info(
            "%s: restored %d links and %d access levels saved at %s offset %d",
            options.instance, len(state.links), len(state.access), target, ref.offset,
        )
    return state


def _find(options: RuntimeOptions, target: Target, pitr: int) -> PitrSeek:
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra, fetch_wait_ms=10))
    try:
        return find_offset_for_pitr(consumer, target, max(pitr, 0))
    finally:
        consumer.close()


def _seek(options: RuntimeOptions, target: Target, pitr: int) -> int:
    return _find(options, target, pitr).offset


def _restart_offset(options: RuntimeOptions, target: Target, pitr: int, hint: int | None) -> int:
    """Where a restart reads a feed from: the search by ``pitr``, or the checkpoint's
    offset when that is earlier and still stored (a partition with backwards records can
    mislead a search; reading too early only repeats what the reader skips)."""
    found = _find(options, target, pitr)
    if hint is not None and found.low <= hint < found.offset:
        return hint
    return found.offset


def _start_positions(
    options: RuntimeOptions, targets: dict[str, Target]
) -> dict[str, tuple[int, FeedPosition]]:
    """Offsets and checkpoint positions for a first start (no checkpoint)."""
    out: dict[str, tuple[int, FeedPosition]] = {}
    for feed, target in targets.items():
        low, high = _watermarks_or_empty(options, target)
        if options.start == "earliest":
            out[feed] = (low, FeedPosition(pitr=0, skip=0))
        elif options.start == "latest":
            last = _last_pitr(options, target, low, high)
            out[feed] = (high, FeedPosition(pitr=0 if last is None else last + 1, skip=0))
        else:
            t = parse_time_ms(options.start)
            out[feed] = (_seek(options, target, t), FeedPosition(pitr=t, skip=0))
    return out


def _last_pitr(options: RuntimeOptions, target: Target, low: int, high: int) -> int | None:
    from unifeed.kafka.clients import last_record_before, record_pitr

    if high <= low:
        return None
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra, fetch_wait_ms=10))
    try:
        m = last_record_before(
            consumer, target, high, lambda r: record_pitr(r) is not None, low=low
        )
        return None if m is None else record_pitr(m)
    finally:
        consumer.close()


def _check_inputs_exist(options: RuntimeOptions, inputs: dict[str, Target]) -> None:
    """A missing input is refused (`StartRefusedError`) unless ``wait_for_topics``: a
    misspelt topic would otherwise be waited for as a silent feed."""
    missing: list[str] = []
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    try:
        for feed, target in inputs.items():
            try:
                watermarks(consumer, target)
            except KafkaRuntimeError as exc:
                if exc.code not in _UNKNOWN_CODES:
                    raise
                missing.append(f"{target} ({feed})")
    finally:
        consumer.close()
    if not missing:
        return
    if options.wait_for_topics:
        log.warning(
            "%s: %s do(es) not exist yet; waiting for them (--wait-for-topics)",
            options.instance,
            ", ".join(missing),
        )
        return
    raise StartRefusedError(
        f"input {', '.join(missing)} does not exist: check the topic name and partition, "
        "or pass --wait-for-topics to wait for it to be created"
    )


def _open_committer(
    options: RuntimeOptions,
    output: Target,
    feeds: tuple[str, ...],
    state: RunState,
    inputs: dict[str, Target],
) -> Committer:
    """Check the broker and the inputs, then the output side's start-up: the checkpoint
    checked against output and inputs, transactions, the instance's claim (checkpoint in
    ``.checkpoint``), the output tail. Shared by combine and mappings."""
    ensure_reachable(options.bootstrap, options.connect_timeout_s, options.kafka_extra)
    _check_inputs_exist(options, inputs)
    dead_target = (
        parse_target(options.dead_letter)
        if options.dead_letter
        else Target(topic=f"{output.topic}.dead-letter", partition=0)
    )
    committer = Committer(
        options=options,
        output=output,
        dead_target=dead_target,
        store=CheckpointStore(options.bootstrap, options.checkpoint_topic, options.kafka_extra),
        feeds=feeds,
        state=state,
        inputs=inputs,
    )
    committer.start()
    return committer


# --- the combine run -------------------------------------------------------


class CombineRun:
    """One run of `unifeed combine` against Kafka."""

    def __init__(
        self,
        options: RuntimeOptions,
        control: Target,
        surface: Target,
        output: Target,
        mapping: Target | None = None,
    ) -> None:
        self.options = options
        self.control = control
        self.surface = surface
        self.mapping = mapping
        self.output = output
        self.state = RunState()
        self.threads: list[Worker] = []
        self.writer: WriterThread | None = None
        self.metrics: Any = None

    def setup(self) -> None:
        o = self.options
        inputs = {CONTROLSTREAM: self.control, SURFACESTREAM: self.surface}
        if self.mapping is not None:
            inputs[MAPPINGSTREAM] = self.mapping
        committer = _open_committer(
            o, self.output, (CONTROLSTREAM, SURFACESTREAM), self.state, inputs
        )
        cp = committer.checkpoint
        targets = {CONTROLSTREAM: self.control, SURFACESTREAM: self.surface}
        plans: dict[str, ReadPlan] = {}
        restored: DeriverState | None = None
        if cp is not None and all(f in cp.feeds for f in targets):
            pc, ps = cp.feeds[CONTROLSTREAM], cp.feeds[SURFACESTREAM]
            if self.mapping is None:
                restored = _restore(o, committer, CONTROLSTREAM, self.control)
            else:
                restored = _restore(o, committer, MAPPINGSTREAM, self.mapping)
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
                    _restart_offset(o, self.control, replay_from, pc.offset), pc, pc.dead_offset
                )
            plans[SURFACESTREAM] = ReadPlan(
                _restart_offset(o, self.surface, ps.pitr, ps.offset), ps, ps.dead_offset
            )
            mapping_from = ps.pitr - o.lookback_ms
            log.info("%s: resuming from checkpoint %s", o.instance, cp.describe())
        else:
            starts = _start_positions(o, targets)
            positions = {f: pos for f, (_, pos) in starts.items()}
            if o.start == "earliest":
                plans = {f: ReadPlan(off) for f, (off, _) in starts.items()}
                mapping_from = 0
            else:
                pc, ps = positions[CONTROLSTREAM], positions[SURFACESTREAM]
                plans[CONTROLSTREAM] = ReadPlan(
                    _seek(o, self.control, min(pc.pitr, ps.pitr) - o.lookback_ms), pc
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
        writer_inbox = Inbox([CONTROLSTREAM, ANNOTATED], _LANE_BATCHES, st.stop)
        annot_inbox = Inbox([MAPPINGSTREAM, SURFACESTREAM], _LANE_BATCHES, st.stop)
        rconf = consumer_config(o.bootstrap, o.kafka_extra)
        rconf.setdefault("queued.max.messages.kbytes", 16_384)
        rconf.setdefault("fetch.max.bytes", 16 * 1024 * 1024)
        derive = self.mapping is None
        deriver = (
            None
            if not derive
            else MappingDeriver() if restored is None else MappingDeriver.restore(restored)
        )

        def control_to_writer(
            replay: list[Accepted],
            good: list[Accepted],
            dead: list[DeadLetter],
            caught_up: bool,
            closed: bool,
        ) -> Batch | None:
            marker = good[-1].rec.pitr if good else None
            return Batch(good, dead, marker, caught_up, closed)

        def control_to_annotator(
            replay: list[Accepted],
            good: list[Accepted],
            dead: list[DeadLetter],
            caught_up: bool,
            closed: bool,
        ) -> Batch | None:
            assert deriver is not None
            records: list[Mapping | Keepalive] = []
            records.extend(deriver.process_many([a.rec for a in replay]))
            records.extend(deriver.process_many([a.rec for a in good]))
            maps = [m for m in records if type(m) is Mapping]
            last = (replay or good)[-1].rec.pitr if (good or replay) else None
            if good:
                last = good[-1].rec.pitr
            return Batch(maps, [], last, caught_up, closed)

        control_steps: list[tuple[Inbox, str, Callable[..., Batch | None]]] = []
        if derive:
            control_steps.append((annot_inbox, MAPPINGSTREAM, control_to_annotator))
        control_steps.append((writer_inbox, CONTROLSTREAM, control_to_writer))

        def surface_to_annotator(
            replay: list[Accepted],
            good: list[Accepted],
            dead: list[DeadLetter],
            caught_up: bool,
            closed: bool,
        ) -> Batch | None:
            return Batch(good, dead, None, caught_up, closed)

        def reader(
            feed: str, target: Target, plan: ReadPlan, deliver: _Delivery
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
            CONTROLSTREAM, self.control, plans[CONTROLSTREAM], _Delivery(control_steps)
        )
        surface_reader = reader(
            SURFACESTREAM,
            self.surface,
            plans[SURFACESTREAM],
            _Delivery([(annot_inbox, SURFACESTREAM, surface_to_annotator)]),
        )
        self.threads += [control_reader, surface_reader]
        if deriver is not None:
            # The deriver's state travels with the checkpoints (a restart needs it whatever
            # --lookback); a saved one lies a late window behind every feed's position, so
            # that a restart rebuilds the link history late messages need.
            snapshots = StateSnapshots()
            control_reader.before_batch = _snapshot_hook(snapshots, deriver)
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

            def mapping_to_annotator(
                replay: list[Accepted],
                good: list[Accepted],
                dead: list[DeadLetter],
                caught_up: bool,
                closed: bool,
            ) -> Batch | None:
                records = [a.rec for a in good]
                apply = links.apply
                for r in records:
                    if type(r) is Mapping:
                        apply(r)
                return Batch(
                    [r for r in records if type(r) is Mapping],
                    dead,
                    records[-1].pitr if records else None,
                    caught_up,
                    closed,
                )

            ref = committer.state_ref
            mapping_plan = (
                ReadPlan(ref.offset, None, mapping_dead, restored.floor)
                if restored is not None and ref is not None
                else ReadPlan(_seek(o, self.mapping, mapping_from), None, mapping_dead)
            )
            mapping_reader = reader(
                MAPPINGSTREAM,
                self.mapping,
                mapping_plan,
                _Delivery([(annot_inbox, MAPPINGSTREAM, mapping_to_annotator)]),
            )
            snapshots = StateSnapshots()
            mapping_reader.before_batch = _links_hook(snapshots, links)
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
        self.threads.append(ClaimWatcher(st, o, committer))
        self.annot_inbox = annot_inbox
        self.writer_inbox = writer_inbox

    def start_metrics(self) -> None:
        """Bind the metrics port (`ConfigError`, exit 2, when taken): before `setup`
        claims the instance, since a refused start must not stop a running incarnation."""
        self.metrics = self._start_metrics()

    def _start_metrics(self) -> Any:
        def depths() -> dict[str, int]:
            if self.writer is None:
                return {}  # still starting: no queues yet
            return {
                "writer.controlstream": self.writer_inbox.depth(CONTROLSTREAM),
                "writer.surfacestream": self.writer_inbox.depth(ANNOTATED),
                "annotator.mappingstream": self.annot_inbox.depth(MAPPINGSTREAM),
                "annotator.surfacestream": self.annot_inbox.depth(SURFACESTREAM),
            }

        return _metrics_server(self.options, self.state, "combine", depths)

    def run(self) -> int:
        """Start the threads, watch them, stop them; the exit code."""
        for t in self.threads:
            t.start()
        status = StatusLine(self, self.options.status_interval_s)
        # Everything alive now lives for the whole run: keep the collector off it, and
        # collect young objects rarely (the hot loop allocates no cycles).
        gc.freeze()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 50, 1000)
        health = BrokerHealth(self.options)
        metrics = self.metrics
        try:
            while True:
                writer = self.writer
                assert writer is not None
                if not writer.is_alive():
                    break
                writer.join(0.2)
                status.maybe_print()
                try:
                    health.check()
                except BrokerUnreachableError as exc:
                    self.state.fail(exc)
        finally:
            self.state.stop.set()
            for t in self.threads:
                t.join(_JOIN_TIMEOUT_S)
            health.close()
            if metrics is not None:
                metrics.close()
            gc.set_threshold(*thresholds)
            sys.setswitchinterval(switch)
            gc.unfreeze()
            status.maybe_print(final=True)
        if self.state.failure is not None:
            raise self.state.failure
        return 0


def _metrics_server(
    options: RuntimeOptions, state: RunState, command: str, depths: Callable[[], dict[str, int]]
) -> Any:
    if options.metrics_port is None:
        return None
    from unifeed.runtime.metrics import MetricsServer, snapshot_from_counters

    def collect() -> Any:
        return snapshot_from_counters(
            state.counters,
            lag_pitr=dict(state.lag_pitr),
            mode=state.mode,
            now_ms=options.clock(),
            queue_depth=depths(),
        )

    server = MetricsServer(
        options.metrics_port,
        collect,
        command=command,
        instance=options.instance,
        host=options.metrics_host,
    )
    server.start()
    log.info("%s: metrics on %s", options.instance, server.url)
    return server


class StatusLine:
    """A progress line on stderr: rate, mode, per-feed lag, queue depths."""

    def __init__(self, run: CombineRun, interval_s: float) -> None:
        self.run = run
        self.interval = interval_s
        self.started = time.monotonic()
        self.last = self.started
        self.last_out = 0

    def maybe_print(self, final: bool = False) -> None:
        if self.interval <= 0:
            return
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        st = self.run.state
        out = st.counters.get("out", 0)
        rate = (out - self.last_out) / max(now - self.last, 1e-9)
        if final:
            rate = out / max(now - self.started, 1e-9)
        wall = self.run.options.clock()
        lags = " ".join(f"{f}-lag={_fmt_lag(wall - p)}" for f, p in sorted(st.lag_pitr.items()))
        depths = (
            f"queues writer={self.run.writer_inbox.depth(CONTROLSTREAM)}/"
            f"{self.run.writer_inbox.depth(ANNOTATED)} "
            f"annotator={self.run.annot_inbox.depth(MAPPINGSTREAM)}/"
            f"{self.run.annot_inbox.depth(SURFACESTREAM)}"
        )
        fields = {
            "command": "combine",
            "mode": "done" if final else st.mode,
            "out": out,
            "rate": round(rate, 1),
            "lag_seconds": {f: (wall - p) / 1000 for f, p in sorted(st.lag_pitr.items())},
            "late": st.counters.get("late", 0),
            "dead": st.counters.get("dead_letters", 0),
            "commits": st.counters.get("commits", 0),
        }
        # One record on "unifeed.status": a line of text, or JSON with these fields.
        _status_log.info(
            "unifeed combine [%s] %s: out=%d rate=%s/s %s %s late=%d dead=%d commits=%d",
            self.run.options.instance, fields["mode"], out, f"{rate:,.0f}", lags, depths,
            fields["late"], fields["dead"], fields["commits"],
            extra={"fields": fields, "final": final},
        )  # fmt: skip
        self.last = now
        self.last_out = out


def _fmt_lag(ms: int) -> str:
    """A lag for the status line, in the unit a person reads it in.

    >>> [_fmt_lag(ms) for ms in (-200, 1_500, 600_000, 36_000_000, 96_062_400_000)]
    ['-0.2s', '1.5s', '10.0m', '10.0h', '1111.8d']
    """
    s = ms / 1000
    if abs(s) < 120:
        return f"{s:.1f}s"
    if abs(s) < 7200:
        return f"{s / 60:.1f}m"
    if abs(s) < 172_800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86_400:.1f}d"


def _install_signals(state: RunState) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the open transaction", signum)
        state.stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def combine_command(args: argparse.Namespace) -> int:
    options = RuntimeOptions.from_args(args)
    if args.reorder:
        raise ConfigError("--reorder is available for file inputs only")
    run = CombineRun(
        options,
        control=parse_target(args.control),
        surface=parse_target(args.surface),
        output=parse_target(args.output),
        mapping=parse_target(args.mapping) if args.mapping else None,
    )
    _install_signals(run.state)
    run.start_metrics()
    try:
        try:
            run.setup()
        except KafkaException as exc:
            raise _wrap("start-up failed", exc) from None
    except BaseException:
        if run.metrics is not None:
            run.metrics.close()
        raise
    return run.run()


# --- unifeed mappings against Kafka -----------------------------------------


def mappings_command(args: argparse.Namespace) -> int:
    o = RuntimeOptions.from_args(args)
    control = parse_target(args.control)
    output = parse_target(args.output)
    state = RunState()
    _install_signals(state)
    inbox = Inbox([CONTROLSTREAM], _LANE_BATCHES, state.stop)
    # Bound before the claim: a refused start must not stop a running incarnation.
    metrics = _metrics_server(o, state, "mappings", lambda: {"writer": inbox.depth(CONTROLSTREAM)})
    try:
        committer = _open_committer(o, output, (CONTROLSTREAM,), state, {CONTROLSTREAM: control})
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    cp = committer.checkpoint
    restored: DeriverState | None = None
    if cp is not None and CONTROLSTREAM in cp.feeds:
        pos = cp.feeds[CONTROLSTREAM]
        restored = _restore(o, committer, CONTROLSTREAM, control)
        if restored is not None and committer.state_ref is not None:
            plan = ReadPlan(committer.state_ref.offset, pos, pos.dead_offset, restored.floor)
        else:
            start = _restart_offset(o, control, pos.pitr - o.lookback_ms, pos.offset)
            plan = ReadPlan(start, pos, pos.dead_offset)
        log.info("%s: resuming from checkpoint %s", o.instance, cp.describe())
    else:
        off, pos = _start_positions(o, {CONTROLSTREAM: control})[CONTROLSTREAM]
        plan = (
            ReadPlan(off)
            if o.start == "earliest"
            else ReadPlan(_seek(o, control, pos.pitr - o.lookback_ms), pos)
        )
        committer.first_checkpoint({CONTROLSTREAM: pos})
    committer.begin()
    deriver = MappingDeriver() if restored is None else MappingDeriver.restore(restored)
    tracker: dict[str, int] = {}
    if plan.resume_after is not None:
        tracker.update(pitr=plan.resume_after.pitr, skip=plan.resume_after.skip)

    def hand_on(
        replay: list[Accepted],
        good: list[Accepted],
        dead: list[DeadLetter],
        caught_up: bool,
        closed: bool,
    ) -> Batch | None:
        for a in replay:
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
            position = FeedPosition(pitr=last, skip=count)
        return Batch(out, dead, None, caught_up, closed, position)

    rconf = consumer_config(o.bootstrap, o.kafka_extra)
    reader = FeedReader(
        state=state,
        feed=CONTROLSTREAM,
        target=control,
        config=rconf,
        plan=plan,
        deliver=_Delivery([(inbox, CONTROLSTREAM, hand_on)]),
        stop_at=o.stop_at,
        exit_at_end=o.exit_at_end,
        end_of_log_grace_s=o.end_of_log_grace_s,
        count_keepalives=True,
    )
    committer.marks = {CONTROLSTREAM: (reader.marks, o.lookback_ms)}
    snapshots = StateSnapshots()
    reader.before_batch = _snapshot_hook(snapshots, deriver)
    committer.snapshots = snapshots
    reader.start()
    watcher = ClaimWatcher(state, o, committer)
    watcher.start()
    health = BrokerHealth(o)
    finished = False
    try:
        while True:
            stopping = state.stop.is_set()
            for _, batch in inbox.take([CONTROLSTREAM], 0 if stopping else _IDLE_S):
                committer.write_dead(batch.dead)
                position = batch.position
                committer.write(
                    batch.records, None if position is None else {CONTROLSTREAM: position}
                )
                if batch.closed:
                    finished = True
            committer.stop_if_over_dead_letter_limit()
            if finished or stopping:
                if state.failure is None:
                    committer.commit(reopen=False)
                break
            if committer.due():
                committer.commit()
            try:
                health.check()
            except BrokerUnreachableError as exc:
                state.fail(exc)
    finally:
        health.close()
        if metrics is not None:
            metrics.close()
        state.stop.set()
        reader.join(_JOIN_TIMEOUT_S)
        watcher.join(_JOIN_TIMEOUT_S)
        committer.close()
    if state.failure is not None:
        raise state.failure
    if not args.quiet:
        s = deriver.stats()
        dead = state.counters.get("dead_letters", 0)
        _summary_log.info(
            "unifeed mappings [%s]: %d links, %d unlinks, %d keepalives, %d dead letters",
            o.instance, s.links, s.unlinks, s.keepalives, dead,
            extra={"fields": {"command": "mappings", "links": s.links, "unlinks": s.unlinks,
                              "keepalives": s.keepalives, "dead": dead}},
        )  # fmt: skip
    return 0


__all__ = ["CombineRun", "RuntimeOptions", "UnifeedError", "combine_command", "mappings_command"]
