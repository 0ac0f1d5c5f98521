"""Kafka plumbing shared by every command: targets, client settings, bounded reads.

Everything here works on one topic partition at a time (a feed is one partition,
``kafka:TOPIC[:N]``) and never waits without a bound: each call takes a timeout and
counts its iterations. Errors from confluent-kafka are re-raised as `KafkaRuntimeError`
(keeping the librdkafka error name) or `BrokerUnreachableError`.

The helpers take any object with the few `confluent_kafka.Consumer` methods they use
(`PartitionConsumer`), so tests can hand them an in-memory fake. The search for the
offset of a ``pitr`` builds on the bounded reads here: `unifeed.kafka.seek`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from unifeed.core.errors import BrokerUnreachableError, ConfigError, KafkaRuntimeError

__all__ = [
    "ASSIGN_ONLY_GROUP_ID",
    "BOOTSTRAP_ENV",
    "BrokerInfo",
    "PartitionConsumer",
    "PartitionReader",
    "RdkafkaLog",
    "Target",
    "TopicSelection",
    "client_config",
    "consume_batch",
    "consumer_config",
    "ensure_reachable",
    "exception_text",
    "last_record_before",
    "parse_selection",
    "parse_target",
    "partition_count",
    "producer_config",
    "read_at",
    "read_properties",
    "read_range",
    "record_timestamp",
    "resolve_bootstrap",
    "watermarks",
]

log = logging.getLogger("unifeed.kafka")

#: Environment variable naming the brokers when ``--bootstrap-servers`` is not given.
BOOTSTRAP_ENV: Final = "UNIFEED_BOOTSTRAP_SERVERS"

#: librdkafka insists on a ``group.id`` even for ``assign()``-only consumers (the embedded
#: broker refuses the fetch without one). unifeed never joins or commits to this group:
#: its progress lives in the checkpoint topic.
ASSIGN_ONLY_GROUP_ID: Final = "unifeed-assign-only"
#: How long one bounded call (a seek by pitr, a checkpoint read or write) waits, by default.
CALL_TIMEOUT_S: Final = 30.0

# Consumer settings unifeed's guarantees depend on: an extra config must not change them.
_CONSUMER_FIXED: Final = frozenset(
    {"enable.auto.commit", "isolation.level", "auto.offset.reset", "enable.partition.eof"}
)
_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TARGET_FORMS: Final = "kafka:TOPIC or kafka:TOPIC:PARTITION"

# librdkafka error codes, looked up once.
_EOF: Final = KafkaError._PARTITION_EOF
_OUT_OF_RANGE: Final = frozenset({KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE})
_UNKNOWN_PARTITION: Final = frozenset(
    {KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART}
)
_TRANSIENT: Final = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
    }
)

#: How far ahead of this host's clock a record timestamp may be. Records are stamped with
#: their pitr (CreateTime), which lets a broker answer offsets_for_times by pitr; but a
#: Kafka 4 broker refuses a record stamped more than ``log.message.timestamp.after.max.ms``
#: ahead of its own clock (default one hour), and the whole batch with it. A far-future
#: pitr is valid input (docs/guarantees.md), so its record is stamped at most this far
#: ahead instead: the value, and so the output's bytes, keep the true pitr; the search by
#: pitr verifies every broker answer against the records' own pitr and bisects where a
#: stamp differs.
TIMESTAMP_AHEAD_MAX_MS: Final = 50 * 60 * 1000


def record_timestamp(pitr: int, now_ms: int) -> int:
    """The record timestamp for a record with this pitr: the pitr, at most
    `TIMESTAMP_AHEAD_MAX_MS` past ``now_ms`` (the wall clock, epoch milliseconds).

    >>> record_timestamp(1_700_000_000_000, 1_800_000_000_000)
    1700000000000
    >>> record_timestamp(4_102_444_800_000, 1_800_000_000_000)
    1800003000000
    """
    cap = now_ms + TIMESTAMP_AHEAD_MAX_MS
    return pitr if pitr <= cap else cap


#: How long one blocking wait inside a bounded loop may take, in seconds.
_SLICE_S: Final = 0.1


# --- targets ---------------------------------------------------------------


class Target(msgspec.Struct, frozen=True, gc=False):
    """One feed: a topic partition, written ``kafka:TOPIC`` (partition 0) or ``kafka:TOPIC:N``.

    >>> parse_target("kafka:controlstream:2")
    Target(topic='controlstream', partition=2)
    >>> str(Target("controlstream"))
    'kafka:controlstream:0'
    """

    topic: str
    partition: int = 0

    def __str__(self) -> str:
        return f"kafka:{self.topic}:{self.partition}"

    def topic_partition(self, offset: int = -1001) -> TopicPartition:
        """The confluent-kafka handle, positioned at ``offset`` (default: no position)."""
        return TopicPartition(self.topic, self.partition, offset)


def parse_target(text: str) -> Target:
    """Parse ``kafka:TOPIC[:PARTITION]``; raise `ConfigError` saying what is wrong.

    >>> parse_target("kafka:surfacestream")
    Target(topic='surfacestream', partition=0)
    >>> parse_target("surfacestream")
    Traceback (most recent call last):
    ...
    unifeed.core.errors.ConfigError: a Kafka feed must be written kafka:TOPIC or \
kafka:TOPIC:PARTITION, got 'surfacestream'
    """
    if not text.startswith("kafka:"):
        raise ConfigError(f"a Kafka feed must be written {_TARGET_FORMS}, got {text!r}")
    rest = text[len("kafka:") :]
    topic, sep, partition_text = rest.partition(":")
    _check_topic(topic, text, _TARGET_FORMS)
    if not sep:
        return Target(topic, 0)
    if not partition_text.isdigit() or not partition_text.isascii():
        raise ConfigError(
            f"the partition in {text!r} must be an integer >= 0, got {partition_text!r}"
        )
    return Target(topic, int(partition_text))


#: The highest partition number Kafka allows (partition counts are 32-bit signed ints).
MAX_PARTITION: Final = 2**31 - 2
_SELECTION_FORMS: Final = "kafka:TOPIC, kafka:TOPIC:N or kafka:TOPIC:N,M,..."


class TopicSelection(msgspec.Struct, frozen=True, gc=False):
    """A feed read from Kafka: a topic and which of its partitions (None: every one).

    Written ``kafka:TOPIC`` (every partition), ``kafka:TOPIC:N`` (one) or
    ``kafka:TOPIC:0,2,5`` (a list, kept sorted: partition order is the merge's
    tie-break, not the order they were written in).

    >>> parse_selection("kafka:surfacestream:5,0,2")
    TopicSelection(topic='surfacestream', partitions=(0, 2, 5))
    >>> str(parse_selection("kafka:controlstream"))
    'kafka:controlstream'
    >>> parse_selection("kafka:controlstream").targets(3)
    [Target(topic='controlstream', partition=0), Target(topic='controlstream', partition=1), Target(topic='controlstream', partition=2)]
    """

    topic: str
    partitions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.partitions is not None:
            if not self.partitions:
                raise ValueError("partitions must not be empty (None means every partition)")
            if list(self.partitions) != sorted(set(self.partitions)):
                raise ValueError("partitions must be sorted and unique")
            if self.partitions[0] < 0 or self.partitions[-1] > MAX_PARTITION:
                raise ValueError(f"partitions must be in 0..{MAX_PARTITION}")

    def __str__(self) -> str:
        if self.partitions is None:
            return f"kafka:{self.topic}"
        return f"kafka:{self.topic}:{','.join(map(str, self.partitions))}"

    @property
    def every_partition(self) -> bool:
        return self.partitions is None

    def targets(self, partition_count: int) -> list[Target]:
        """The selected partitions of a topic that has ``partition_count`` of them, in
        partition order; `ConfigError` naming the missing ones when the topic lacks any."""
        if partition_count < 1:
            raise ConfigError(f"topic {self.topic!r} has no partitions")
        chosen = range(partition_count) if self.partitions is None else self.partitions
        missing = [p for p in chosen if p >= partition_count]
        if missing:
            listed = ", ".join(map(str, missing))
            raise ConfigError(
                f"{self}: topic {self.topic!r} has {partition_count} partition(s) "
                f"(0..{partition_count - 1}), so no partition {listed}"
            )
        return [Target(self.topic, p) for p in chosen]


def parse_selection(text: str) -> TopicSelection:
    """Parse ``kafka:TOPIC[:N[,N...]]``; raise `ConfigError` saying what is wrong.

    >>> parse_selection("kafka:t:1,1")
    Traceback (most recent call last):
    ...
    unifeed.core.errors.ConfigError: partition 1 is listed twice in 'kafka:t:1,1'
    """
    if not text.startswith("kafka:"):
        raise ConfigError(f"a Kafka feed must be written {_SELECTION_FORMS}, got {text!r}")
    topic, sep, listed = text[len("kafka:") :].partition(":")
    _check_topic(topic, text, _SELECTION_FORMS)
    if not sep:
        return TopicSelection(topic)
    partitions: list[int] = []
    for item in listed.split(","):
        if not item.isdigit() or not item.isascii():
            raise ConfigError(
                f"the partitions in {text!r} must be integers >= 0 separated by commas "
                f"(expected {_SELECTION_FORMS}), got {item!r}"
            )
        number = int(item)
        if number > MAX_PARTITION:
            raise ConfigError(f"partition {number} in {text!r} is beyond Kafka's {MAX_PARTITION}")
        if number in partitions:
            raise ConfigError(f"partition {number} is listed twice in {text!r}")
        partitions.append(number)
    return TopicSelection(topic, tuple(sorted(partitions)))


def _check_topic(topic: str, text: str, forms: str) -> None:
    if not topic:
        raise ConfigError(f"the topic name is empty in {text!r} (expected {forms})")
    if not _TOPIC_NAME.fullmatch(topic):
        raise ConfigError(
            f"topic name {topic!r} in {text!r} is not a Kafka topic name: use 1 to 249 "
            "ASCII letters, digits, '.', '_' or '-'"
        )


def partition_count(client: Any, topic: str, timeout_s: float = 10.0) -> int | None:
    """How many partitions ``topic`` has, from the cluster's metadata; None when it does
    not exist. ``client`` is any confluent-kafka client (`list_topics`).

    Asks for every topic's metadata: a request naming the topic would let a producer's
    client auto-create it (with the broker's ``num.partitions``).
    """
    try:
        metadata = client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise kafka_error(f"reading the metadata of topic {topic!r} failed", exc.args[0]) from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        if found is not None and found.error.code() not in _UNKNOWN_PARTITION:
            raise kafka_error(f"reading the metadata of topic {topic!r} failed", found.error)
        return None
    return len(found.partitions)


# --- settings --------------------------------------------------------------


def resolve_bootstrap(argument: str | None) -> str:
    """The brokers to use: the argument, else ``$UNIFEED_BOOTSTRAP_SERVERS``, else `ConfigError`."""
    value = argument if argument else os.environ.get(BOOTSTRAP_ENV, "")
    value = value.strip()
    if not value:
        raise ConfigError(
            f"no Kafka broker given: pass --bootstrap-servers HOST:PORT or set {BOOTSTRAP_ENV} "
            "(for a local broker, run `unifeed broker` and use the address it prints)"
        )
    return value


def read_properties(path: str | Path) -> dict[str, str]:
    """Read librdkafka settings from a Java-style properties file (``key=value`` lines).

    Blank lines and lines starting with ``#`` or ``!`` are ignored. Raises `ConfigError`
    naming the file and line for anything else that has no ``=``.
    """
    settings: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read Kafka settings file {str(path)!r}: {exc.strerror}"
        ) from None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected key=value, got {stripped!r}")
        settings[key.strip()] = value.strip()
    return settings


class RdkafkaLog:
    """Routes librdkafka's log lines to Python logging, folding repeats.

    A client that loses its broker logs the same connection failure many times a second;
    this passes the first one on and then one summary line per ``window_s`` with the count.
    Used as the ``logger`` setting of every client unifeed creates. Thread-safe.
    """

    _VOLATILE = re.compile(r"\(after \d+ms in state \w+\)|\d+/\d+ brokers")

    def __init__(self, logger: logging.Logger, window_s: float = 10.0) -> None:
        self._logger = logger
        self._window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}

    def log(self, level: int, msg: str, *args: object) -> None:
        """The method librdkafka calls (via confluent-kafka) for every log line."""
        text = msg % args if args else msg
        key = self._VOLATILE.sub("", text)
        now = time.monotonic()
        with self._lock:
            first, repeats = self._seen.get(key, (0.0, -1))
            if repeats >= 0 and now - first < self._window_s:
                self._seen[key] = (first, repeats + 1)
                return
            if len(self._seen) > 512:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if repeats > 0:
            text = f"{text} (and {repeats} more like it in {self._window_s:g} s)"
        self._logger.log(level, "%s", text)


_RDKAFKA_LOG: Final = RdkafkaLog(logging.getLogger("unifeed.rdkafka"))


def client_config(bootstrap: str, extra: Mapping[str, object] | None = None) -> dict[str, Any]:
    """Settings every client gets: the brokers, log routing, then ``extra`` on top."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": _RDKAFKA_LOG,
        # Idle connections are closed by brokers all the time; that is not news.
        "log.connection.close": False,
    }
    if extra:
        config.update(extra)
    return config


#: librdkafka's ``fetch.queue.backoff.ms`` for unifeed's readers (see `consumer_config`).
FETCH_QUEUE_BACKOFF_MS: Final = 5


def consumer_config(
    bootstrap: str,
    extra: Mapping[str, object] | None = None,
    *,
    partition_eof: bool = True,
    fetch_wait_ms: int = 100,
) -> dict[str, Any]:
    """Settings of an ``assign()``-only reader.

    Fixed: a dummy ``group.id`` (`ASSIGN_ONLY_GROUP_ID`), no auto-commit,
    ``isolation.level=read_committed``, ``auto.offset.reset=error`` (a deleted offset
    fails loudly instead of jumping), ``enable.partition.eof`` as asked. ``extra`` may
    change anything else; ``fetch_wait_ms`` bounds how long the broker holds an empty fetch
    (10 makes single-record probes take ~2 ms on the embedded broker instead of ~50 ms).
    """
    if extra:
        clash = sorted(_CONSUMER_FIXED & extra.keys())
        if clash:
            raise ConfigError(
                f"the Kafka setting {clash[0]!r} is fixed by unifeed and cannot be overridden"
            )
    config = client_config(bootstrap)
    config.update(
        {
            "group.id": ASSIGN_ONLY_GROUP_ID,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": partition_eof,
            "isolation.level": "read_committed",
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": fetch_wait_ms,
            # When the local fetch queue is over its thresholds, librdkafka waits this long
            # before fetching that partition again (1 s by default): a reader catching up
            # drains its queue much sooner and then waits for nothing.
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        }
    )
    if extra:
        config.update(extra)
    return config


Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
COMPRESSIONS: Final[tuple[str, ...]] = ("none", "gzip", "snappy", "lz4", "zstd")
#: How long a producer lets a record wait for more to send with it (``linger.ms``)
#: unless told otherwise: records are visible as they reach the broker.
DEFAULT_LINGER_MS: Final = 5


def producer_config(
    bootstrap: str,
    extra: Mapping[str, object] | None = None,
    *,
    compression: str = "lz4",
    transactional_id: str | None = None,
    linger_ms: int = DEFAULT_LINGER_MS,
) -> dict[str, Any]:
    """Settings of a producer: idempotent, compressed (lz4 by default), optionally transactional."""
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    config = client_config(bootstrap)
    config.update(
        {
            "enable.idempotence": True,
            "compression.type": compression,
            "linger.ms": linger_ms,
        }
    )
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    if extra:
        config.update(extra)
    return config


# --- reachability ----------------------------------------------------------


class BrokerInfo(msgspec.Struct, frozen=True, gc=False):
    """What `ensure_reachable` learnt about the cluster.

    ``answers_admin`` is False when the metadata names no live controller, which is how
    librdkafka's embedded mock cluster looks: such a broker never answers CreateTopics.
    """

    cluster_id: str | None
    brokers: int
    controller_id: int
    answers_admin: bool
    embedded: bool


class _ErrorTrap:
    """Keeps the last errors a probing client reports instead of printing them."""

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []

    def on_error(self, error: KafkaError) -> None:
        self.errors.append(error)
        del self.errors[:-8]

    def log(self, level: int, msg: str, *args: object) -> None:
        """Swallow librdkafka log lines: the reason is reported once, by the caller."""


def ensure_reachable(
    bootstrap: str, timeout_s: float = 10.0, extra: Mapping[str, object] | None = None
) -> BrokerInfo:
    """Check that a broker at ``bootstrap`` answers a metadata request within ``timeout_s``.

    Raises `BrokerUnreachableError` with a one-line reason (the last connection error
    librdkafka reported) when none does. Returns at most ``timeout_s`` + ~0.1 s later.
    """
    if timeout_s <= 0:
        raise ValueError("timeout_s must be > 0")
    trap = _ErrorTrap()
    config = client_config(bootstrap, extra)
    config.update(
        {
            "logger": trap,
            "error_cb": trap.on_error,
            "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000)),
        }
    )
    try:
        admin = AdminClient(config)
    except KafkaException as exc:
        raise ConfigError(f"bad Kafka settings: {exception_text(exc)}") from None
    deadline = time.monotonic() + timeout_s
    metadata: Any = None
    failure = "no answer"
    for _attempt in range(1000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            metadata = admin.list_topics(timeout=min(1.0, remaining))
            break
        except KafkaException as exc:
            failure = exception_text(exc)
        admin.poll(0)  # serves error_cb
    admin.poll(0)
    del admin
    if metadata is None:
        reason = trap.errors[-1].str() if trap.errors else failure
        raise BrokerUnreachableError(
            f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s ({reason}); "
            f"check --bootstrap-servers / {BOOTSTRAP_ENV}, or start one with `unifeed broker`"
        )
    brokers: dict[int, Any] = metadata.brokers
    cluster_id: str | None = metadata.cluster_id
    return BrokerInfo(
        cluster_id=cluster_id,
        brokers=len(brokers),
        controller_id=metadata.controller_id,
        answers_admin=metadata.controller_id in brokers,
        embedded=bool(cluster_id and cluster_id.startswith("mockCluster")),
    )


def exception_text(exc: KafkaException) -> str:
    first = exc.args[0] if exc.args else exc
    return first.str() if isinstance(first, KafkaError) else str(first)


def kafka_error(message: str, error: KafkaError) -> KafkaRuntimeError:
    """Wrap a librdkafka error, keeping its name as the code."""
    return KafkaRuntimeError(f"{message}: {error.str()}", error.name())


# --- bounded reads ---------------------------------------------------------


class PartitionConsumer(Protocol):
    """The part of `confluent_kafka.Consumer` these helpers use."""

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def poll(self, timeout: float = -1) -> Message | None: ...

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]: ...

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]: ...

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


def watermarks(
    consumer: PartitionConsumer, target: Target, timeout_s: float = 10.0
) -> tuple[int, int]:
    """``(low, high)``: the first offset still stored and the offset the next record gets.

    Raises `KafkaRuntimeError` (code ``_UNKNOWN_PARTITION`` or ``UNKNOWN_TOPIC_OR_PART`` when
    the topic or partition does not exist).
    """
    deadline = time.monotonic() + timeout_s
    try:
        try:
            low, high = consumer.get_watermark_offsets(
                target.topic_partition(), timeout=timeout_s, cached=False
            )
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not isinstance(error, KafkaError) or error.code() not in _UNKNOWN_PARTITION:
                raise
            # The client's metadata may predate the topic: refresh it (asking for every
            # topic, since asking for this one by name auto-creates it on some brokers).
            consumer.list_topics(timeout=max(0.1, deadline - time.monotonic()))
            low, high = consumer.get_watermark_offsets(
                target.topic_partition(),
                timeout=max(0.1, deadline - time.monotonic()),
                cached=False,
            )
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError):
            if error.code() in _UNKNOWN_PARTITION:
                raise KafkaRuntimeError(
                    f"{target} does not exist (no such topic or partition)", error.name()
                ) from None
            raise kafka_error(f"cannot read the offsets of {target}", error) from None
        raise KafkaRuntimeError(f"cannot read the offsets of {target}: {exc}") from None
    return int(low), int(high)


def is_unknown_partition(error: KafkaRuntimeError) -> bool:
    """Whether `watermarks` failed because the topic or partition does not exist."""
    return error.code in {"_UNKNOWN_PARTITION", "_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART"}


def consume_batch(
    consumer: PartitionConsumer, max_messages: int, timeout_s: float
) -> list[Message]:
    """Up to ``max_messages``, returning as soon as one is there (or after ``timeout_s``).

    ``Consumer.consume(n, timeout)`` waits the whole timeout whenever fewer than ``n``
    records remain (the tail of a partition); this blocks only for the first message and
    then takes what is already queued without waiting.
    """
    # What is already queued first, without waiting: every call into the client lets go of
    # the GIL, and getting it back can take a switch interval while the other threads run,
    # so a busy reader makes one call per batch, not two.
    ready = consumer.consume(max_messages, 0)
    if ready:
        return ready
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    rest = consumer.consume(max_messages - 1, 0)
    rest.insert(0, first)
    return rest


class PartitionReader:
    """Positioned reads of one partition within one deadline; counts what it does."""

    def __init__(self, consumer: PartitionConsumer, target: Target, deadline: float) -> None:
        self.consumer = consumer
        self.target = target
        self.deadline = deadline
        self.reads = 0
        self.records = 0

    def scan(self, start: int, end: int | None, batch: int = 64) -> Iterator[Message]:
        """Records from ``start`` on, stopping before ``end`` or at the end of the partition."""
        self.reads += 1
        self.consumer.assign([self.target.topic_partition(start)])
        last_error: KafkaError | None = None
        # A pass either brings a record (at most end - start of those before we stop), or
        # waits up to _SLICE_S; the deadline bounds the time, this the count.
        idle_passes = int((self.deadline - time.monotonic()) / _SLICE_S) + 100
        max_passes = idle_passes + (end - start if end is not None else 1)
        for _pass in range(max_passes):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                break
            messages = consume_batch(self.consumer, batch, min(_SLICE_S, remaining))
            for message in messages:
                error = message.error()
                if error is not None:
                    code = error.code()
                    if code == _EOF:
                        return
                    if code in _OUT_OF_RANGE:
                        raise KafkaRuntimeError(
                            f"offset {start} of {self.target} is out of range: the records "
                            "there were deleted (retention) or never existed; refusing to "
                            "skip them silently",
                            error.name(),
                        )
                    if code in _TRANSIENT and not error.fatal():
                        last_error = error
                        continue
                    raise kafka_error(f"reading {self.target} from offset {start}", error)
                offset = message.offset()
                if offset is None or offset < start:
                    continue
                if end is not None and offset >= end:
                    return
                self.records += 1
                yield message
        why = f" (last error: {last_error.str()})" if last_error is not None else ""
        raise KafkaRuntimeError(
            f"reading {self.target} from offset {start}: no answer from the broker in time{why}",
            "_TIMED_OUT",
        )


def read_at(
    consumer: PartitionConsumer, target: Target, offset: int, timeout_s: float = 10.0
) -> Message | None:
    """The first record at or after ``offset``, or None at the end of the partition.

    Offsets that hold no record (transaction markers, compacted gaps) lead to the next
    real record. ``offset`` below the low watermark raises `KafkaRuntimeError`
    (``_AUTO_OFFSET_RESET``): the records there were deleted.
    Needs a consumer made with ``enable.partition.eof`` (`consumer_config`).
    """
    reader = PartitionReader(consumer, target, time.monotonic() + timeout_s)
    for message in reader.scan(offset, None, batch=1):
        return message
    return None


def read_range(
    consumer: PartitionConsumer,
    target: Target,
    start: int,
    end: int,
    timeout_s: float = 10.0,
) -> Iterator[Message]:
    """Every record with ``start <= offset < end``, in order.

    Stops at ``end`` or at the end of the partition, whichever comes first, without
    waiting for offset ``end - 1`` to arrive (it may be a transaction marker).
    ``timeout_s`` bounds the whole iteration.
    """
    reader = PartitionReader(consumer, target, time.monotonic() + timeout_s)
    yield from reader.scan(start, end, batch=512)


def last_record_before(
    consumer: PartitionConsumer,
    target: Target,
    end: int,
    accept: Callable[[Message], bool],
    *,
    low: int | None = None,
    timeout_s: float = 10.0,
) -> Message | None:
    """The last record below ``end`` that ``accept`` takes, scanning back in doubling windows.

    Used to find the latest checkpoint of one instance; ``low`` defaults to the low watermark.
    """
    deadline = time.monotonic() + timeout_s
    if low is None:
        low, _high = watermarks(consumer, target, timeout_s)
    reader = PartitionReader(consumer, target, deadline)
    window = 256
    upper = end
    while upper > low:
        start = max(low, upper - window)
        found: Message | None = None
        for message in reader.scan(start, upper, batch=512):
            if accept(message):
                found = message
        if found is not None:
            return found
        upper = start
        window = min(window * 4, 1 << 20)
    return None
