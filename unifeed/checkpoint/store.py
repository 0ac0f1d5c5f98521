"""Checkpoints: per-feed progress of one instance, kept in a Kafka partition.

The topic (``unifeed.checkpoints`` by default) is used at **partition 0 only**, keyed by
instance name. A record's value is one JSON object, keys always in this order::

    {"version":1,"instance":"uf-a",
     "feeds":{"controlstream":{"pitr":1700000000000,"skip":2},"surfacestream":{...}},
     "output":{"topic":"unified","partition":0,"next_offset":1234},
     "generation":3,"written_ms":1700000000123,"incarnation":"9f2c0d4e5a6b7c81"}

* ``feeds``: for each input, the ``pitr`` of the last processed message and ``skip``, how
  many messages with exactly that pitr were processed (a resume seeks to ``pitr`` and
  skips that many). Feeds keep the order the writer gave them. ``dead_offset``, when
  present, is the offset of the last dead letter written for that feed (a restart that
  reads it again does not write it twice). ``offset``, when present, is an input offset
  from which a restart may read: every message before it is done. A restart reads from
  there or from where a search by ``pitr`` lands, whichever is earlier (a partition whose
  ``pitr`` order is broken by backwards records, dead letters, can mislead a search), and
  skips what ``pitr`` and ``skip`` say is done. An external mappingstream has only
  ``dead_offset`` (its ``pitr`` and ``skip`` are 0: combine resumes it from the
  surfacestream's). ``source``, when present, names the input the feed was read from
  (``TOPIC:PARTITION``): a start with other inputs is refused, since the positions belong
  to those inputs. A feed without ``source`` resumes without that check.
* ``output``: the output partition and ``next_offset``, the offset after the last output
  record this checkpoint covers (output-tail reconciliation); null before any output.
* ``generation``: incarnation counter; a run resuming from generation g writes g + 1.
  Lets logs and ``unifeed checkpoint show`` tell runs apart. 0 when unknown.
* ``incarnation``: a random token of the process that wrote the record. Two processes
  that claim the same generation at once are told apart by it: the one whose
  ``(generation, incarnation)`` is greater keeps the name, the other stops. Empty when
  unknown.
* ``written_ms``: wall-clock epoch ms when the record was made; for people only, never
  used to decide anything.
* ``state`` (absent until the first state snapshot is committed): where the saved links and access levels are. ``topic``,
  ``partition``, ``offsets`` (one record per part, written in the same transaction as
  this checkpoint or an earlier one), ``id`` (the snapshot's token, in every part),
  ``feed`` and ``offset``: the input the state was built from (controlstream when
  mappings are derived, mappingstream when they are read) and the offset of that feed
  the snapshot was taken before. A restart restores it and reads that feed from there,
  whatever ``--lookback``; without it, it replays ``--lookback``. For a feed read
  from several partitions, ``partitions`` maps each partition's key
  (``controlstream[2]``) to ``[offset, floor]``: where that partition is read from and
  the highest pitr it had before.

A **reset** is a tombstone (null value) for the key: `CheckpointStore.load` then returns
None, and on a compacted topic the broker eventually drops the key altogether. A running
incarnation that sees the tombstone of its name stops without committing again, so a
reset is never undone by the run it resets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from unifeed.checkpoint import CHECKPOINT_TOPIC
from unifeed.core.closing import Closing
from unifeed.core.errors import CheckpointError, KafkaRuntimeError
from unifeed.kafka.clients import (
    CALL_TIMEOUT_S,
    Target,
    client_config,
    consumer_config,
    is_unknown_partition,
    kafka_error,
    last_record_before,
    producer_config,
    read_range,
    watermarks,
)

__all__ = [
    "CHECKPOINT_PARTITION",
    "CHECKPOINT_TOPIC",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointStore",
    "FeedCheckpoint",
    "OutputCheckpoint",
    "PartitionStart",
    "StateRef",
    "decode_checkpoint",
    "encode_checkpoint",
    "encode_record",
]

log = logging.getLogger("unifeed.checkpoint")

CHECKPOINT_PARTITION: Final = 0
CHECKPOINT_VERSION: Final = 1
#: ``checkpoint reset``: how long it waits for a running incarnation to stop, how often.
_RESET_SETTLE_S: Final = 1.0
_RESET_ROUNDS: Final = 5

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
InstanceName = Annotated[str, msgspec.Meta(min_length=1)]


class FeedCheckpoint(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    """Progress of one input feed: last processed ``pitr`` and how many at it were done."""

    pitr: NonNegative
    skip: NonNegative
    #: Highest input offset whose dead letter is committed (Kafka input), so that a
    #: restart does not write it again; absent until the feed had a dead letter.
    dead_offset: int | None = None
    #: An input offset from which a restart may read (every message before it is done).
    offset: int | None = None
    #: The input this feed was read from, ``TOPIC:PARTITION``; None: not recorded (no check).
    source: str | None = None


class OutputCheckpoint(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The output partition and the offset after the last record this checkpoint covers."""

    topic: str
    partition: NonNegative
    next_offset: NonNegative


class PartitionStart(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Where a restart reads one partition of a feed from with saved state: its offset,
    and the highest pitr that partition had before it (its intake's order floor)."""

    offset: NonNegative
    floor: int


class StateRef(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    """Where a checkpoint's saved state is (see the module docstring)."""

    topic: str
    partition: NonNegative
    offsets: list[NonNegative]
    id: str
    feed: str
    offset: NonNegative
    #: For a feed read from several partitions: each partition's start by its key
    #: (``offset`` is then 0); absent for a feed of one partition.
    partitions: dict[str, PartitionStart] | None = None


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One checkpoint value (see the module docstring for the wire form)."""

    version: Literal[1] = 1
    instance: InstanceName
    feeds: dict[str, FeedCheckpoint]
    output: OutputCheckpoint | None = None
    generation: NonNegative = 0
    written_ms: NonNegative = 0
    incarnation: Annotated[str, msgspec.Meta(max_length=64)] = ""
    state: StateRef | msgspec.UnsetType = msgspec.UNSET

    @property
    def claim_rank(self) -> tuple[int, str]:
        """Which of two incarnations of one instance name keeps it: the greater rank."""
        return (self.generation, self.incarnation)

    def describe(self) -> str:
        """One line for people: where each feed resumes and what the output holds.

        >>> Checkpoint(instance="uf-a", generation=3, feeds={
        ...     "controlstream": FeedCheckpoint(pitr=1700000000000, skip=2, offset=7)},
        ...     output=OutputCheckpoint(topic="out", partition=0, next_offset=41)).describe()
        'generation 3: controlstream after pitr 1700000000000 (2023-11-14T22:13:20.000Z, 2 done at it, read from offset 7); output kafka:out:0 up to offset 41'
        """
        feeds = "; ".join(
            f"{name} after pitr {f.pitr} ({_iso_ms(f.pitr)}, {f.skip} done at it"
            + (f", read from offset {f.offset}" if f.offset is not None else "")
            + ")"
            for name, f in sorted(self.feeds.items())
        )
        out = (
            f"; output kafka:{self.output.topic}:{self.output.partition} up to offset "
            f"{self.output.next_offset}"
            if self.output is not None
            else ""
        )
        state = (
            ""
            if isinstance(self.state, msgspec.UnsetType)
            else f"; saved state at {self.state.topic}:{self.state.partition} offsets "
            f"{self.state.offsets} ({self.state.feed} from offset {self.state.offset})"
        )
        return f"generation {self.generation}: {feeds or 'no feed position yet'}{out}{state}"


def _iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Checkpoint)


class _Versioned(msgspec.Struct, gc=False):
    version: Any = None


_version_probe: Final = msgspec.json.Decoder(_Versioned)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """The JSON value of a checkpoint record (stable key order)."""
    return _encoder.encode(checkpoint)


def encode_record(checkpoint: Checkpoint) -> tuple[bytes, bytes]:
    """``(key, value)`` of the record that stores ``checkpoint``.

    For a writer that produces its checkpoints itself, inside its own transaction, to
    partition `CHECKPOINT_PARTITION` of the checkpoint topic.
    """
    return checkpoint.instance.encode("utf-8"), encode_checkpoint(checkpoint)


def decode_checkpoint(
    value: bytes, *, topic: str, offset: int, instance: str, partition: int = 0
) -> Checkpoint:
    """Decode a checkpoint value; `CheckpointError` naming topic, offset and instance if bad."""
    where = f"checkpoint record of instance {instance!r} at {topic}:{partition} offset {offset}"
    fix = (
        f"inspect it with `unifeed checkpoint show --instance {instance}` or start over "
        f"with `unifeed checkpoint reset --instance {instance}`"
    )
    try:
        checkpoint = _decoder.decode(value)
    except msgspec.ValidationError as exc:
        try:
            version = _version_probe.decode(value).version
        except msgspec.DecodeError:
            version = None
        if version is not None and version != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{where} has version {version!r}, this unifeed reads version "
                f"{CHECKPOINT_VERSION} only; upgrade unifeed or {fix}"
            ) from None
        raise CheckpointError(f"{where} is not a valid checkpoint ({exc}); {fix}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise CheckpointError(f"{where} is corrupt ({exc}); {fix}") from None
    if checkpoint.instance != instance:
        raise CheckpointError(f"{where} names instance {checkpoint.instance!r} in its value; {fix}")
    return checkpoint


EnsureOutcome = Literal["exists", "created", "auto"]


class CheckpointStore(Closing):
    """Reads and writes the checkpoints of any instance in one checkpoint topic.

    Creates its consumer and producer lazily and closes them in `close` (or ``with``).
    Not thread-safe: one thread owns a store (the runtime uses it at start-up, and the
    writer produces its checkpoints inside its own transaction via `encode_record`).
    """

    partition: Final = CHECKPOINT_PARTITION

    def __init__(
        self,
        bootstrap: str,
        topic: str = CHECKPOINT_TOPIC,
        extra_config: Mapping[str, object] | None = None,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        if not topic:
            raise ValueError("topic must not be empty")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.bootstrap = bootstrap
        self.topic = topic
        self.target = Target(topic, CHECKPOINT_PARTITION)
        self.timeout_s = timeout_s
        self._extra = dict(extra_config or {})
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # -- clients --

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                consumer_config(self.bootstrap, self._extra, fetch_wait_ms=10)
            )
        return self._consumer

    def _writer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(producer_config(self.bootstrap, self._extra, linger_ms=0))
        return self._producer

    def close(self) -> None:
        """Close the clients (flushing nothing: `write` and `reset` flush themselves)."""
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            consumer.close()
        if producer is not None:
            producer.flush(self.timeout_s)

    # -- topic --

    def ensure_topic(self) -> EnsureOutcome:
        """Make sure the topic exists: one partition, ``cleanup.policy=compact``.

        Returns ``exists``, ``created``, or ``auto`` when the broker does not answer
        CreateTopics (the embedded broker): then the topic is auto-created on first write,
        with several partitions, of which unifeed uses partition 0 only. Logged either way.
        """
        admin = AdminClient(client_config(self.bootstrap, self._extra))
        try:
            # All topics: asking for this one by name makes some brokers auto-create it.
            metadata = admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise KafkaRuntimeError(f"cannot list topic {self.topic!r}: {exc}") from None
        found = metadata.topics.get(self.topic)
        if found is not None and found.error is None and found.partitions:
            if len(found.partitions) > 1:
                log.info(
                    "checkpoint topic %s has %d partitions; only partition 0 is used",
                    self.topic,
                    len(found.partitions),
                )
            return "exists"
        # The embedded broker's metadata names a controller that is not among its brokers;
        # an AdminClient would wait for it until the request times out.
        if metadata.controller_id not in metadata.brokers:
            log.info(
                "the broker does not answer CreateTopics (embedded broker?); checkpoint topic "
                "%s will be auto-created on first write and partition 0 used",
                self.topic,
            )
            return "auto"
        futures = admin.create_topics(
            [NewTopic(self.topic, num_partitions=1, config={"cleanup.policy": "compact"})],
            operation_timeout=min(self.timeout_s, 10.0),
            request_timeout=min(self.timeout_s, 10.0),
        )
        try:
            futures[self.topic].result(timeout=self.timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return "exists"
            log.warning(
                "could not create checkpoint topic %s (%s); relying on auto-creation and "
                "partition 0",
                self.topic,
                exc,
            )
            return "auto"
        log.info("created checkpoint topic %s (1 partition, compacted)", self.topic)
        return "created"

    # -- records --

    def load(self, instance: str) -> tuple[Checkpoint | None, int]:
        """The latest checkpoint of ``instance`` and its offset.

        Returns ``(None, offset)`` after a reset (the tombstone's offset) and ``(None, -1)``
        when the instance never wrote one (or the topic does not exist). A corrupt latest
        record raises `CheckpointError` naming topic, offset and instance.
        """
        value, offset = self.load_raw(instance)
        if value is None:
            return None, offset
        return (
            decode_checkpoint(value, topic=self.topic, offset=offset, instance=instance),
            offset,
        )

    def load_raw(self, instance: str) -> tuple[bytes | None, int]:
        """The value of the latest record of ``instance`` as stored, and its offset.

        Scans back from the end of partition 0 in growing windows, never waiting for
        offset ``high - 1`` (after transactional writes it is a commit marker). ``(None,
        offset)`` for a tombstone, ``(None, -1)`` when there is no record (or no topic).
        Reads any record, also one that is not a checkpoint.
        """
        consumer = self._reader()
        try:
            low, high = watermarks(consumer, self.target, self.timeout_s)
        except KafkaRuntimeError as exc:
            if is_unknown_partition(exc):
                return None, -1
            raise
        if low >= high:
            return None, -1
        key = instance.encode("utf-8")
        found = last_record_before(
            consumer,
            self.target,
            high,
            lambda message: message.key() == key,
            low=low,
            timeout_s=self.timeout_s,
        )
        if found is None:
            return None, -1
        offset = found.offset()
        assert offset is not None
        return found.value(), offset

    def end_offset(self) -> int:
        """The checkpoint partition's high watermark (0 when the topic does not exist)."""
        try:
            return watermarks(self._reader(), self.target, self.timeout_s)[1]
        except KafkaRuntimeError as exc:
            if is_unknown_partition(exc):
                return 0
            raise

    def highest_claim(self, instance: str, since: int) -> tuple[Checkpoint, int] | None:
        """Of the checkpoints of ``instance`` at offsets from ``since`` to the end, the one
        with the greatest ``(generation, incarnation)``, and its offset (None if none).

        Two processes claiming one name at the same moment each see both claims here,
        whichever landed last; records that are not checkpoints (and tombstones) are
        passed over.
        """
        consumer = self._reader()
        key = instance.encode("utf-8")
        best: tuple[Checkpoint, int] | None = None
        high = watermarks(consumer, self.target, self.timeout_s)[1]
        for message in read_range(consumer, self.target, since, high, self.timeout_s):
            value, offset = message.value(), message.offset()
            if message.key() != key or not value or offset is None:
                continue
            try:
                cp = decode_checkpoint(value, topic=self.topic, offset=offset, instance=instance)
            except CheckpointError:
                continue
            if best is None or cp.claim_rank > best[0].claim_rank:
                best = (cp, offset)
        return best

    def write(self, instance: str, checkpoint: Checkpoint) -> int:
        """Store ``checkpoint`` (non-transactional) and return its offset once acknowledged."""
        if checkpoint.instance != instance:
            raise ValueError(
                f"checkpoint.instance is {checkpoint.instance!r}, expected {instance!r}"
            )
        key, value = encode_record(checkpoint)
        return self._produce(key, value)

    def reset(self, instance: str) -> int:
        """Write a tombstone for ``instance``; `load` returns None afterwards. Its offset."""
        if not instance:
            raise ValueError("instance must not be empty")
        return self._produce(instance.encode("utf-8"), None)

    def reset_until_quiet(self, instance: str) -> tuple[int, int]:
        """Write a tombstone for ``instance`` and keep it the latest record.

        A running incarnation stops when its watcher sees the tombstone, and may commit
        once more before that: the store looks again after it had time to stop, and
        writes the tombstone again over such a commit. Returns the last tombstone's offset
        and how many times it was written again; raises `CheckpointError` when the
        instance still writes after ``_RESET_ROUNDS`` rounds.
        """
        offset = self.reset(instance)
        for rewritten in range(_RESET_ROUNDS):
            time.sleep(_RESET_SETTLE_S)
            value, _latest = self.load_raw(instance)
            if value is None:
                return offset, rewritten
            offset = self.reset(instance)
        raise CheckpointError(
            f"instance {instance!r} kept writing checkpoints after {_RESET_ROUNDS} "
            "resets; stop its process, then run `unifeed checkpoint reset` again"
        )

    def _produce(self, key: bytes, value: bytes | None) -> int:
        producer = self._writer()
        outcome: list[tuple[KafkaError | None, Message]] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            outcome.append((error, message))

        producer.produce(
            self.topic,
            value=value,
            key=key,
            partition=CHECKPOINT_PARTITION,
            on_delivery=delivered,
        )
        deadline = time.monotonic() + self.timeout_s
        for _attempt in range(int(self.timeout_s / 0.05) + 2):
            if outcome:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            producer.flush(min(0.1, remaining))
        if not outcome:
            raise KafkaRuntimeError(
                f"checkpoint write to {self.target} not acknowledged within {self.timeout_s:g} s",
                "_MSG_TIMED_OUT",
            )
        error, message = outcome[0]
        if error is not None:
            raise kafka_error(f"checkpoint write to {self.target} failed", error)
        offset = message.offset()
        assert offset is not None
        return offset
