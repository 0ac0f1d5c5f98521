"""Commands that move data in and out of Kafka: ``broker``, ``load``, ``dump``, ``checkpoint``.

``unifeed load FILE --topic kafka:T``
    Each non-blank line of a JSON-lines file (``-``: stdin) becomes one record: value =
    the line's bytes (without its line ending), no key, record timestamp (CreateTime) =
    its ``pitr``. A gzip file (or stdin) is recognised by its magic bytes and decompressed.
    lz4-compressed by default. A line must be a JSON object with an integer
    ``pitr`` >= 0; otherwise nothing is loaded and the command exits 4 naming the bad
    lines. ``--allow-invalid`` loads such lines as they are (to test dead-letter handling
    through Kafka), stamped with the previous line's pitr. A line larger than a record may
    be (``message.max.bytes``, 1,000,000 bytes by default) is refused either way: nothing
    is loaded, exit 4. Blank lines are skipped. Prints the count on stdout.

``unifeed load FILE --topic kafka:T --key FIELD [--partition N]``
    Each record's key is the line's FIELD (a string's UTF-8 bytes, an integer's decimal
    digits; anything else, or no such field, makes the line invalid as above) and its
    partition is the one Kafka's Java clients pick for that key (murmur2 of the key,
    positive, modulo the topic's partition count, read from the cluster's metadata: the
    topic must exist). ``--partition N`` (or ``kafka:T:N``) pins every record to
    partition N instead. Whenever the topic exists, a partition it lacks is refused
    before anything is produced (exit 2); a topic that does not exist is auto-created by
    the broker on the first write, with its ``num.partitions``.
    With ``--allow-invalid``, a line without a usable key is loaded without a key, to
    partition 0 (or the pinned one).

``unifeed dump kafka:T [--from T] [--to T] [--audience A] [-o WHERE] [-c N] [-f]``
    Writes the partition's records, one per line, to stdout: from the start of the
    partition (or ``--offset``) to its end as it was when the command started
    (read_committed); with ``--follow`` on until Ctrl-C or SIGTERM, or ``--count``.
    ``load`` and ``dump`` name a topic the same way: ``[kafka:]TOPIC[:N]`` as an argument
    or with ``-t``/``--topic``.
    ``--from``/``--to`` keep records with ``from <= pitr < to`` (epoch ms or ISO-8601; a
    record without a pitr is judged by its record timestamp). ``--audience`` hides every
    message whose access is stronger than the audience. A message's access is the stronger
    of its own ``access`` field (an unknown level counts as ``blocked``) and that of
    its flight ``id`` as last seen in a ``flightplan`` earlier in the partition (a
    flightplan without ``access`` is ``public``), else ``public``. A record that is not a
    JSON object cannot be judged and is hidden whenever ``--audience`` is given. A dead
    letter (any record of a topic named ``*.dead-letter``, or a record shaped like one:
    ``reason`` and ``raw``/``raw_b64``, no ``type``) carries input of unknown access: it
    counts as ``blocked``, so only ``--audience blocked`` shows it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

import unifeed.cli.checkpoint as _checkpoint
from unifeed.cli.pipeline import non_negative_int
from unifeed.core.access import FlightLevels, visible
from unifeed.core.errors import BadRecordError, ConfigError, KafkaRuntimeError
from unifeed.core.records import ACCESS_LEVELS, ACCESS_RANK, TOO_DEEP
from unifeed.core.unify import decompressed, stdin_bytes, stdout_bytes
from unifeed.core.units import parse_time_ms
from unifeed.kafka.clients import (
    COMPRESSIONS,
    MAX_PARTITION,
    Target,
    consume_batch,
    consumer_config,
    kafka_error,
    parse_selection,
    parse_target,
    partition_count,
    producer_config,
    record_timestamp,
    watermarks,
)
from unifeed.kafka.embedded import run_broker_foreground
from unifeed.kafka.foreground import stop_signals
from unifeed.kafka.partitioner import partition_for_key

__all__ = [
    "DumpReport",
    "LoadReport",
    "dump_partition",
    "load_lines",
    "register",
    "start_offset",
]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: At most this many bad lines are named in the error message.
_NAMED_BAD_LINES: Final = 5
#: librdkafka's default ``message.max.bytes``: it refuses a larger record value at once.
_MAX_RECORD_BYTES: Final = 1_000_000
#: ``dump`` gives up when the broker sends nothing for this long.
_STALL_S: Final = 30.0
#: A topic whose name ends so holds dead letters (the default sink is ``<output>.dead-letter``).
DEAD_LETTER_SUFFIX: Final = ".dead-letter"


# --- load ------------------------------------------------------------------


class _Stamp(msgspec.Struct, gc=False):
    pitr: int


_stamp_decoder: Final = msgspec.json.Decoder(_Stamp)


class LoadReport(msgspec.Struct, frozen=True, gc=False):
    """What `load_lines` did: records produced, blank lines skipped, invalid lines loaded,
    and the topic's partition count when records were spread by key."""

    records: int
    blank: int
    invalid: int
    spread_over: int | None = None


class KeyReader:
    """Reads a record key from one field of a JSON-lines line (`unifeed load --key`).

    >>> KeyReader("surface_id").key(b'{"pitr":1,"surface_id":"S9"}')
    (b'S9', '')
    >>> KeyReader("id").key(b'{"pitr":1,"id":42}')
    (b'42', '')
    >>> KeyReader("id").key(b'{"pitr":1}')
    (None, 'no `id` field to take the key from')
    """

    def __init__(self, field: str) -> None:
        if not field:
            raise ConfigError("--key must name a JSON field, like id")
        self.field = field
        shape = msgspec.defstruct(
            "_Keyed", [("value", Any, msgspec.UNSET)], rename={"value": field}, gc=False
        )
        self._decode: Callable[[bytes], Any] = msgspec.json.Decoder(shape).decode

    def key(self, line: bytes) -> tuple[bytes | None, str]:
        """``(key, "")``, or ``(None, reason)`` when the line has no usable key."""
        try:
            value = self._decode(line).value
        except msgspec.DecodeError as exc:
            return None, str(exc)
        except RecursionError:
            return None, TOO_DEEP
        if value is msgspec.UNSET:
            return None, f"no `{self.field}` field to take the key from"
        if isinstance(value, str):
            return value.encode("utf-8"), ""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value).encode("ascii"), ""
        shown = msgspec.json.encode(value).decode()[:40]
        return None, f"`{self.field}` must be a string or an integer to be a key, got {shown}"


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line number, line without its line ending)`` for every line."""
    for number, raw in enumerate(stream, start=1):
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        yield number, raw


def _pitr_of_line(line: bytes) -> tuple[int | None, str]:
    """``(pitr, "")`` for a valid line, ``(None, reason)`` otherwise."""
    try:
        pitr = _stamp_decoder.decode(line).pitr
    except msgspec.DecodeError as exc:
        return None, str(exc)
    except RecursionError:
        return None, TOO_DEEP
    if pitr < 0:
        return None, f"`pitr` must not be negative, got {pitr}"
    return pitr, ""


def _check_lines(
    stream: IO[bytes],
    source: str,
    max_bytes: int,
    allow_invalid: bool,
    keys: KeyReader | None = None,
) -> None:
    """Refuse the whole file (`BadRecordError`) if a line is larger than a record may be
    or, unless ``allow_invalid``, is not a JSON object with an integer pitr >= 0 (and,
    with ``keys``, a usable key)."""
    bad: list[str] = []
    count = large = 0
    for number, line in _lines(stream):
        if not line.strip():
            continue
        if len(line) > max_bytes:
            large += 1
            count += 1
            if len(bad) < _NAMED_BAD_LINES:
                bad.append(f"line {number}: {len(line):,} bytes")
            continue
        if allow_invalid:
            continue
        pitr, reason = _pitr_of_line(line)
        if pitr is not None and keys is not None:
            key, reason = keys.key(line)
            if key is None:
                pitr = None
        if pitr is None:
            count += 1
            if len(bad) < _NAMED_BAD_LINES:
                bad.append(f"line {number}: {reason}")
    if not count:
        return
    more = f" (and {count - len(bad)} more)" if count > len(bad) else ""
    named = f"{'; '.join(bad)}{more}"
    if large and allow_invalid:
        what = f"{count} line(s) are larger than a record may be ({max_bytes:,} bytes)"
    elif large:
        what = (
            f"{count} line(s) are larger than a record may be ({max_bytes:,} bytes) or "
            "are not JSON objects with an integer pitr >= 0"
        )
    elif keys is not None:
        what = (
            f"{count} line(s) are not JSON objects with an integer pitr >= 0 and a string "
            f"or integer `{keys.field}` (--key)"
        )
    else:
        what = f"{count} line(s) are not JSON objects with an integer pitr >= 0"
    fix = "fix them, or pass --allow-invalid to load them as they are"
    if large:
        fix = (
            "a line above the limit can never be a record: split or drop it, or raise "
            "message.max.bytes (--kafka-config; the topic's max.message.bytes on the "
            "broker must allow it too)"
        )
    raise BadRecordError(source, f"{what}: {named}; nothing was loaded ({fix})")


def _load_failure(producer: Producer, target: Target, error: KafkaError) -> KafkaRuntimeError:
    """The error of a load the broker refused; for a partition the topic lacks (a topic
    auto-created on first write gets the broker's ``num.partitions``, often 1), how many
    it has and what to do."""
    if error.code() not in (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART):
        return kafka_error(f"loading into {target} failed", error)
    try:
        found = producer.list_topics(target.topic, timeout=5).topics.get(target.topic)
        count = len(found.partitions) if found is not None and found.error is None else 0
    except KafkaException:
        count = 0
    if count == 0:
        return kafka_error(f"loading into {target} failed", error)
    return KafkaRuntimeError(
        f"loading into {target} failed: topic {target.topic!r} has {count} partition(s), "
        f"so no partition {target.partition}; create the topic with more partitions first "
        "(a topic written before it exists is auto-created with the broker's num.partitions)",
        error.name(),
    )


def load_lines(
    stream: IO[bytes],
    target: Target,
    bootstrap: str,
    *,
    extra_config: Mapping[str, object] | None = None,
    compression: str = "lz4",
    rate: float | None = None,
    allow_invalid: bool = False,
    source: str = "input",
    timeout_s: float = 60.0,
    progress: IO[str] | None = None,
    key_field: str | None = None,
    spread: bool = False,
) -> LoadReport:
    """Produce every non-blank line of ``stream`` to ``target`` (record timestamp = pitr).

    With ``key_field`` each record's key is that field of its line; with ``spread`` too,
    its partition is the one Kafka's Java clients pick for the key over every partition
    of ``target.topic`` (which must exist), else ``target.partition``, which the topic
    must have (`ConfigError` before anything is produced).

    The stream must be seekable: it is checked first and nothing is produced if a line is
    larger than a record may be (``message.max.bytes``, 1,000,000 by default) or, without
    ``allow_invalid``, invalid (`BadRecordError`, exit code 4). ``rate`` paces the
    records per second. Waits up to ``timeout_s`` for the last acknowledgements; a record
    the broker refused raises `KafkaRuntimeError`.
    """
    if rate is not None and rate <= 0:
        raise ConfigError("--rate must be > 0")
    if spread and key_field is None:
        raise ValueError("spreading records over partitions needs a key_field")
    keys = None if key_field is None else KeyReader(key_field)
    max_bytes = int(str((extra_config or {}).get("message.max.bytes", _MAX_RECORD_BYTES)))
    _check_lines(stream, source, max_bytes, allow_invalid, keys)
    stream.seek(0)
    failures: list[KafkaError] = []

    def on_failure(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error)

    config = producer_config(bootstrap, extra_config, compression=compression, linger_ms=20)
    config.update({"delivery.report.only.error": True, "on_delivery": on_failure})
    producer = Producer(config)
    spread_over = _partitions_for_load(producer, target, spread)
    records = blank = invalid = 0
    last_pitr = 0
    started = last_note = time.monotonic()
    produce = producer.produce
    topic, partition = target.topic, target.partition
    # Pitrs up to the start time need no look at the clock (`record_timestamp`).
    stamp_cap = int(time.time() * 1000)
    for number, line in _lines(stream):
        if not line.strip():
            blank += 1
            continue
        pitr, _reason = _pitr_of_line(line)
        key = None
        if keys is not None:
            key, _reason = keys.key(line)
            partition = target.partition
            if key is not None and spread_over is not None:
                partition = partition_for_key(key, spread_over)
        if pitr is None or (keys is not None and key is None):
            invalid += 1
        if pitr is None:
            pitr = last_pitr
        last_pitr = pitr
        # timestamp 0 would mean "now" to librdkafka; pitr 0 is 1970 anyway.
        stamp = pitr if pitr <= stamp_cap else record_timestamp(pitr, int(time.time() * 1000))
        for _attempt in range(10_000):
            try:
                produce(topic, line, key, partition, timestamp=stamp)
                break
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                # A partition the topic lacks is refused here once the producer knows the
                # topic (it may have been auto-created a moment ago), else at delivery.
                if exc.args[0].code() == KafkaError._UNKNOWN_PARTITION:
                    raise _load_failure(producer, target, exc.args[0]) from None
                raise kafka_error(f"loading line {number} into {target} failed", exc.args[0]) from None
        else:
            raise KafkaRuntimeError(f"{target}: the producer queue stayed full", "_QUEUE_FULL")
        records += 1
        if failures:
            raise _load_failure(producer, target, failures[0])
        if rate is not None:
            ahead = started + records / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
                producer.poll(0)
        if progress is not None and records % 1024 == 0:
            now = time.monotonic()
            if now - last_note >= 1.0:
                last_note = now
                speed = records / max(now - started, 1e-9)
                progress.write(f"\rloaded {records} records ({speed:,.0f}/s)")
                progress.flush()
    deadline = time.monotonic() + timeout_s
    remaining = len(producer)
    for _attempt in range(int(timeout_s / 0.1) + 2):
        remaining = producer.flush(min(0.1, max(deadline - time.monotonic(), 0)))
        if remaining == 0 or time.monotonic() >= deadline:
            break
    if progress is not None and records >= 1024:
        progress.write("\n")
    if failures:
        raise _load_failure(producer, target, failures[0])
    if remaining:
        raise KafkaRuntimeError(
            f"{remaining} records to {target} not acknowledged within {timeout_s:g} s",
            "_MSG_TIMED_OUT",
        )
    return LoadReport(records=records, blank=blank, invalid=invalid, spread_over=spread_over)


def _partitions_for_load(producer: Producer, target: Target, spread: bool) -> int | None:
    """The topic's partition count when records are spread by key (None when pinned);
    `ConfigError` when the topic is missing (spread) or lacks the pinned partition."""
    count = partition_count(producer, target.topic)
    if count is None:
        if spread:
            raise ConfigError(
                f"topic {target.topic!r} does not exist: --key spreads records over the "
                "topic's partitions, so create it first with the partition count you want "
                "(or pin one with --partition N)"
            )
        return None
    if not spread:
        if target.partition >= count:
            raise ConfigError(
                f"topic {target.topic!r} has {count} partition(s) (0..{count - 1}), so no "
                f"partition {target.partition}; nothing was loaded"
            )
        return None
    return count


# --- dump ------------------------------------------------------------------


class _View(msgspec.Struct, gc=False):
    """The fields dump looks at; any type, checked by hand (a bad field must not hide others)."""

    type: Any = None
    pitr: Any = None
    id: Any = None
    access: Any = None
    # A dead letter's fields: kept undecoded, only their presence matters.
    reason: msgspec.Raw = msgspec.Raw()
    raw: msgspec.Raw = msgspec.Raw()
    raw_b64: msgspec.Raw = msgspec.Raw()

    def is_dead_letter(self) -> bool:
        """Shaped like a dead-letter record: a reason and the raw input, no type."""
        return self.type is None and bool(self.reason) and bool(self.raw or self.raw_b64)


_view_decoder: Final = msgspec.json.Decoder(_View)


class DumpReport(msgspec.Struct, frozen=True, gc=False):
    """What `dump_partition` did: records read, written, hidden by audience, outside the range."""

    read: int
    written: int
    hidden: int
    out_of_range: int


def start_offset(spec: str | None, low: int, end: int) -> int:
    """Where ``--offset`` starts a dump, as kcat's ``-o``: ``beginning`` (the default),
    ``end``, an absolute offset N (clamped to the partition) or -N, N records before the end.

    >>> [start_offset(s, 10, 50) for s in (None, "beginning", "end", "20", "5", "-5", "-100")]
    [10, 10, 50, 20, 10, 45, 10]
    """
    if spec is None or spec == "beginning":
        return low
    if spec == "end":
        return end
    try:
        value = int(spec)
    except ValueError:
        raise ConfigError(
            f"--offset must be beginning, end, an offset N or -N (N before the end), got {spec!r}"
        ) from None
    wanted = end + value if value < 0 else value
    return min(max(wanted, low), end)


def dump_partition(
    target: Target,
    bootstrap: str,
    out: IO[bytes],
    *,
    extra_config: Mapping[str, object] | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
    audience: str | None = None,
    stall_s: float = _STALL_S,
    offset: str | None = None,
    count: int | None = None,
    follow: bool = False,
    stop: threading.Event | None = None,
) -> DumpReport:
    """Write the committed records of ``target`` to ``out``, one per line (see module doc).

    Reads from ``offset`` (`start_offset`; default the low watermark) to the high
    watermark taken at the start, or, with ``follow``, on and on until ``stop`` is set;
    ``count`` ends it after that many records are written. Raises `KafkaRuntimeError`
    when the broker sends nothing for ``stall_s`` before the end (not while following at
    the end) or the records are deleted while being read.
    """
    if audience is not None and audience not in ACCESS_RANK:
        raise ConfigError(f"--audience must be one of {', '.join(ACCESS_LEVELS)}, got {audience!r}")
    if count is not None and count < 0:
        raise ConfigError("--count must be >= 0")
    audience_rank = ACCESS_RANK[audience] if audience is not None else None
    filtering = from_ms is not None or to_ms is not None or audience is not None
    low_bound = from_ms if from_ms is not None else -(2**63)
    high_bound = to_ms if to_ms is not None else 2**63
    flight_access = FlightLevels()
    dead_letters = target.topic.endswith(DEAD_LETTER_SUFFIX)
    read = written = hidden = out_of_range = 0
    stop = stop or threading.Event()
    consumer = Consumer(consumer_config(bootstrap, extra_config))
    try:
        low, end = watermarks(consumer, target)
        first = start_offset(offset, low, end)
        if count == 0 or (first >= end and not follow):
            return DumpReport(0, 0, 0, 0)
        consumer.assign([target.topic_partition(first)])
        last_data = time.monotonic()
        finished = False
        max_idle = int(stall_s / 0.1) + 2
        idle = 0
        # Bounded without --follow: every pass brings records (at most end - first of
        # them) or is idle. With --follow it ends on `stop` (SIGINT, SIGTERM) or --count.
        passes = itertools.count() if follow else range(end - first + max_idle + 1)
        for _pass in passes:
            if finished or stop.is_set():
                break
            messages = consume_batch(consumer, 1024, 0.1)
            if not messages:
                idle += 1
                if not follow and (time.monotonic() - last_data > stall_s or idle > max_idle):
                    raise KafkaRuntimeError(
                        f"dump of {target}: no data from the broker for {stall_s:g} s "
                        f"(stuck before offset {end})",
                        "_TIMED_OUT",
                    )
                continue
            idle = 0
            last_data = time.monotonic()
            chunk: list[bytes] = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if follow:
                            continue
                        finished = True
                        break
                    raise kafka_error(f"dump of {target}", error)
                at = message.offset()
                if at is None or (at >= end and not follow):
                    finished = True
                    break
                value = message.value()
                if value is None:
                    continue  # a tombstone has nothing to print
                read += 1
                if filtering:
                    verdict = _judge(
                        message,
                        value,
                        flight_access,
                        low_bound,
                        high_bound,
                        audience_rank,
                        dead_letters,
                    )
                    if verdict == "range":
                        out_of_range += 1
                        continue
                    if verdict == "hidden":
                        hidden += 1
                        continue
                chunk.append(value)
                written += 1
                if count is not None and written >= count:
                    finished = True
                    break
                if at >= end - 1 and not follow:
                    finished = True
                    break
            if chunk:
                chunk.append(b"")
                out.write(b"\n".join(chunk))
                if follow:
                    out.flush()
        else:
            raise KafkaRuntimeError(f"dump of {target}: did not reach offset {end}", "_TIMED_OUT")
    finally:
        consumer.close()
    out.flush()
    return DumpReport(read=read, written=written, hidden=hidden, out_of_range=out_of_range)


def _judge(
    message: Message,
    value: bytes,
    flight_access: FlightLevels,
    low_bound: int,
    high_bound: int,
    audience_rank: int | None,
    dead_letters: bool = False,
) -> str:
    """``keep``, ``range`` (outside --from/--to) or ``hidden`` (stronger than the audience)."""
    try:
        view: _View | None = _view_decoder.decode(value)
    except (msgspec.DecodeError, RecursionError):
        view = None
    flight = None
    own_access: object = None
    if view is not None:
        if isinstance(view.id, str | int) and not isinstance(view.id, bool):
            flight = view.id
        own_access = view.access
        flight_access.see(view.type, flight, own_access)
    pitr = view.pitr if view is not None else None
    if type(pitr) is not int:
        kind, stamp = message.timestamp()
        pitr = stamp if kind != 0 else None
    if pitr is None:
        if low_bound > -(2**63) or high_bound < 2**63:
            return "range"
    elif not low_bound <= pitr < high_bound:
        return "range"
    if audience_rank is None:
        return "keep"
    if view is None:
        return "hidden"
    if dead_letters or view.is_dead_letter():
        # A dead letter's access is unknown (its raw input may be any flight's): it counts
        # as `blocked`, shown to that audience only.
        return "keep" if visible("blocked", None, audience_rank) else "hidden"
    # The stronger of the message's own level and its flight's: controlstream messages
    # pass through unchanged, so an own `access` field may be weaker than the flight's.
    return "keep" if flight_access.visible(flight, own_access, audience_rank) else "hidden"


# --- CLI -------------------------------------------------------------------


def _broker(args: argparse.Namespace) -> int:
    if args.kafka:
        from unifeed.kafka.apache import run_local_kafka_foreground

        return run_local_kafka_foreground()
    return run_broker_foreground()


def register(subparsers: Any) -> None:
    """Add ``unifeed broker``, ``load``, ``dump`` and ``checkpoint``."""
    broker = subparsers.add_parser(
        "broker",
        help="run a local Kafka broker: the embedded one, or Apache Kafka with --kafka",
        description=(
            "Run a Kafka broker on 127.0.0.1 until Ctrl-C or SIGTERM. The first line on "
            "stdout is its address (HOST:PORT). By default librdkafka's embedded mock "
            "cluster: in memory, at most 5 MB per partition, nothing but pip needed; not "
            "for production. With --kafka, Apache Kafka itself (one KRaft node, storage "
            "in a temporary directory deleted on exit): needs Java 17+, and Maven the "
            "first time to fetch the jars into ~/.cache/unifeed."
        ),
    )
    broker.add_argument(
        "--kafka",
        action="store_true",
        help="run Apache Kafka (Java) instead of the embedded mock cluster",
    )
    broker.set_defaults(handler=_broker)

    load = subparsers.add_parser(
        "load",
        help="produce a JSON-lines file into a topic (record timestamp = pitr)",
        description=(
            "Produce each non-blank line of FILE as one record (value = the line, "
            "timestamp = its pitr). Lines that are not JSON objects with an integer pitr "
            "make the command exit 4 without loading anything, unless --allow-invalid; "
            "so do lines above message.max.bytes (1,000,000 bytes by default), always."
        ),
    )
    load.add_argument("file", metavar="FILE", help="JSON-lines file (gzip too), - for stdin")
    _add_topic_arguments(
        load, "destination", "partition 0 unless :N or --partition N, or by --key"
    )
    load.add_argument("--compression", choices=COMPRESSIONS, default="lz4", help="default lz4")
    load.add_argument("--rate", type=float, metavar="R", help="pace to R records per second")
    load.add_argument(
        "--key",
        metavar="FIELD",
        help="set each record's key from FIELD and spread the records over the topic's "
        "partitions as Kafka's Java clients do (murmur2); the topic must exist",
    )
    load.add_argument(
        "--partition",
        type=int,
        metavar="N",
        help="write every record to partition N (same as kafka:TOPIC:N)",
    )
    load.add_argument(
        "--allow-invalid",
        action="store_true",
        help="load lines without a valid pitr as they are (stamped with the previous pitr)",
    )
    _checkpoint.add_kafka_options(load)
    load.set_defaults(handler=_load)

    dump = subparsers.add_parser(
        "dump",
        help="print a topic partition's committed records as JSON lines",
        description=(
            "Print the records of a partition, from its start to its end as of now, one "
            "per line. --from/--to keep from <= pitr < to. --audience hides messages whose "
            "access (the stronger of their own `access` field and their flight's from its "
            "last flightplan; public when neither is known) is stronger than the audience."
        ),
    )
    _add_topic_arguments(dump, "partition to print")
    dump.add_argument("--from", dest="from_time", metavar="T", help="first pitr (inclusive)")
    dump.add_argument("--to", dest="to_time", metavar="T", help="end pitr (exclusive)")
    dump.add_argument(
        "--audience", choices=ACCESS_LEVELS, help="hide messages with stronger access"
    )
    dump.add_argument(
        "-o",
        "--offset",
        metavar="WHERE",
        help="where to start, as kcat -o: beginning (default), end, an offset N, or -N for "
        "N records before the end",
    )
    dump.add_argument(
        "-c", "--count", type=non_negative_int, metavar="N", help="stop after N records are printed"
    )
    dump.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new records as they are committed, until Ctrl-C or SIGTERM "
        "(exit 0) or --count (kcat without -e)",
    )
    _checkpoint.add_kafka_options(dump)
    dump.set_defaults(handler=_dump)

    _checkpoint.register(subparsers)


def _add_topic_arguments(
    parser: Any, what: str, partition: str = "partition 0 unless :N"
) -> None:
    """The topic of ``load`` and ``dump``, named the same way in both: a positional
    ``[kafka:]TOPIC[:N]`` or ``-t``/``--topic`` (kcat's and Kafka's tools' spelling)."""
    parser.add_argument(
        "topic_arg", nargs="?", metavar="[kafka:]TOPIC[:N]", help=f"{what} (or --topic)"
    )
    parser.add_argument("-t", "--topic", metavar="[kafka:]TOPIC[:N]", help=f"{what}; {partition}")


def _topic_of(args: argparse.Namespace) -> str:
    """The topic named by ``[kafka:]TOPIC[:N]`` or ``--topic``, as ``kafka:TOPIC[:N]``."""
    given = [t for t in (args.topic_arg, args.topic) if t]
    if not given:
        raise ConfigError("name the topic: [kafka:]TOPIC[:N], or --topic [kafka:]TOPIC[:N]")
    if len(given) == 2 and given[0] != given[1]:
        raise ConfigError(f"two topics given ({given[0]} and --topic {given[1]}): give one")
    text = given[0]
    return text if text.startswith("kafka:") else f"kafka:{text}"


def _load_target(args: argparse.Namespace) -> tuple[Target, bool]:
    """The target of ``unifeed load`` and whether records are spread over partitions by key."""
    topic = _topic_of(args)
    selection = parse_selection(topic)
    if args.partition is not None and not 0 <= args.partition <= MAX_PARTITION:
        raise ConfigError(f"--partition must be in 0..{MAX_PARTITION}, got {args.partition}")
    if selection.partitions is not None and len(selection.partitions) > 1:
        raise ConfigError(
            f"--topic {topic}: load writes one partition (kafka:TOPIC:N or --partition N) "
            "or spreads by --key over every partition (kafka:TOPIC), not a list"
        )
    given = None if selection.partitions is None else selection.partitions[0]
    if given is not None and args.partition is not None and given != args.partition:
        raise ConfigError(f"--topic {topic} and --partition {args.partition} disagree")
    pinned = given if given is not None else args.partition
    spread = args.key is not None and pinned is None
    return Target(selection.topic, 0 if pinned is None else pinned), spread


def _load(args: argparse.Namespace) -> int:
    target, spread = _load_target(args)
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be > 0")
    source = "stdin" if args.file == "-" else args.file
    with contextlib.ExitStack() as stack:
        if args.file == "-":
            # Spooled so that it can be checked before anything is produced.
            stream: IO[bytes] = stack.enter_context(
                tempfile.SpooledTemporaryFile(max_size=64 << 20)
            )
            stdin = stdin_bytes()
            for block in iter(lambda: stdin.read(1 << 20), b""):
                stream.write(block)
            stream.seek(0)
        else:
            try:
                stream = stack.enter_context(Path(args.file).open("rb"))
            except OSError as exc:
                raise ConfigError(f"cannot read {args.file!r}: {exc.strerror}") from None
        stream = decompressed(stream, source)  # gzip, by its magic bytes
        # The file is open and readable before the broker is asked for anything.
        bootstrap, extra = _checkpoint.kafka_settings(args)
        report = load_lines(
            stream,
            target,
            bootstrap,
            extra_config=extra,
            compression=args.compression,
            rate=args.rate,
            allow_invalid=args.allow_invalid,
            source=source,
            progress=sys.stderr if sys.stderr.isatty() else None,
            key_field=args.key,
            spread=spread,
        )
    notes = [f"{_lines_word(report.blank)} blank skipped"] if report.blank else []
    if report.invalid:
        notes.append(f"{_lines_word(report.invalid)} invalid loaded as they are")
    suffix = f" ({', '.join(notes)})" if notes else ""
    where = str(target)
    if report.spread_over is not None:
        where = f"kafka:{target.topic} (by {args.key} over {report.spread_over} partitions)"
    print(f"loaded {report.records} records into {where}{suffix}")
    return 0


def _lines_word(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


def _dump(args: argparse.Namespace) -> int:
    target = parse_target(_topic_of(args))
    from_ms = parse_time_ms(args.from_time, "--from") if args.from_time is not None else None
    to_ms = parse_time_ms(args.to_time, "--to") if args.to_time is not None else None
    if args.offset is not None:
        start_offset(args.offset, 0, 0)  # checked before the broker is asked
    bootstrap, extra = _checkpoint.kafka_settings(args)
    stop = threading.Event()
    # With --follow, SIGINT and SIGTERM end the follow; the handlers from before come back.
    ending = stop_signals(lambda _signum, _frame: stop.set())
    with ending if args.follow else contextlib.nullcontext():
        dump_partition(
            target,
            bootstrap,
            stdout_bytes(),
            extra_config=extra,
            from_ms=from_ms,
            to_ms=to_ms,
            audience=args.audience,
            offset=args.offset,
            count=args.count,
            follow=args.follow,
            stop=stop,
        )
    return 0
