"""Targets, settings, reachability, bounded reads and seek-by-pitr (unifeed.kafka.clients)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from hypothesis import given, settings
from hypothesis import strategies as st

from unifeed.core.errors import BrokerUnreachableError, ConfigError, KafkaRuntimeError
from unifeed.kafka.clients import (
    ASSIGN_ONLY_GROUP_ID,
    BOOTSTRAP_ENV,
    RdkafkaLog,
    Target,
    consume_batch,
    consumer_config,
    ensure_reachable,
    parse_target,
    producer_config,
    read_at,
    read_properties,
    read_range,
    resolve_bootstrap,
    watermarks,
)
from unifeed.kafka.seek import find_offset_for_pitr, record_pitr

# --- targets and settings (no broker) ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka:controlstream", Target("controlstream", 0)),
        ("kafka:control.stream-1_x:0", Target("control.stream-1_x", 0)),
        ("kafka:t:12", Target("t", 12)),
    ],
)
def test_parse_target_accepts(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("controlstream", "must be written kafka:TOPIC or kafka:TOPIC:PARTITION"),
        ("kafka:", "the topic name is empty"),
        ("kafka::1", "the topic name is empty"),
        ("kafka:a b", "is not a Kafka topic name"),
        ("kafka:t:x", "must be an integer >= 0, got 'x'"),
        ("kafka:t:-1", "must be an integer >= 0, got '-1'"),
        ("kafka:t:1:2", "must be an integer >= 0, got '1:2'"),
        ("kafka:t:", "must be an integer >= 0, got ''"),
    ],
)
def test_parse_target_refuses_with_exact_words(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(text)
    assert words in str(info.value)
    assert info.value.exit_code == 2


def test_target_is_frozen_and_prints_as_a_feed_argument() -> None:
    target = Target("t", 3)
    assert str(target) == "kafka:t:3"
    assert parse_target(str(target)) == target
    with pytest.raises(AttributeError):
        target.partition = 1  # type: ignore[misc]


def test_resolve_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, "envhost:9092")
    assert resolve_bootstrap("arg:1") == "arg:1"
    assert resolve_bootstrap(None) == "envhost:9092"
    monkeypatch.delenv(BOOTSTRAP_ENV)
    with pytest.raises(ConfigError, match="unifeed broker") as info:
        resolve_bootstrap(None)
    assert "--bootstrap-servers" in str(info.value)


def test_client_configs_fix_what_the_guarantees_need() -> None:
    config = consumer_config("h:1", {"fetch.min.bytes": "1"})
    assert config["group.id"] == ASSIGN_ONLY_GROUP_ID
    assert config["enable.auto.commit"] is False
    assert config["enable.partition.eof"] is True
    assert config["isolation.level"] == "read_committed"
    assert config["auto.offset.reset"] == "error"
    assert config["fetch.min.bytes"] == "1"
    assert consumer_config("h:1", partition_eof=False)["enable.partition.eof"] is False
    with pytest.raises(ConfigError, match=r"'isolation\.level' is fixed by unifeed"):
        consumer_config("h:1", {"isolation.level": "read_uncommitted"})
    producer = producer_config("h:1", transactional_id="uf-a")
    assert producer["compression.type"] == "lz4"
    assert producer["transactional.id"] == "uf-a"
    assert producer_config("h:1", compression="zstd")["compression.type"] == "zstd"
    with pytest.raises(ConfigError, match="compression must be one of"):
        producer_config("h:1", compression="brotli")


def test_read_properties(tmp_path: Any) -> None:
    path = tmp_path / "kafka.properties"
    path.write_text("# comment\n\nsecurity.protocol = SSL\n! other\nclient.id=x=y\n")
    assert read_properties(path) == {"security.protocol": "SSL", "client.id": "x=y"}
    path.write_text("fine=1\nbroken line\n")
    with pytest.raises(ConfigError, match=r"kafka.properties:2: expected key=value"):
        read_properties(path)


def test_rdkafka_log_folds_repeated_lines(caplog: pytest.LogCaptureFixture) -> None:
    folding = RdkafkaLog(logging.getLogger("test.rdkafka"), window_s=60)
    line = "h:1/bootstrap: Connect failed: Connection refused (after %dms in state CONNECT)"
    with caplog.at_level(logging.INFO, logger="test.rdkafka"):
        for n in range(50):
            folding.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", line % n)
        folding.log(logging.INFO, "%s [%s] %s", "MOCK", "rdkafka#producer-1", "cluster up")
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.INFO]
    assert "Connection refused" in caplog.records[0].getMessage()


def test_record_pitr() -> None:
    assert record_pitr(Message(value=b'{"pitr":5,"type":"x"}')) == 5
    assert record_pitr(Message(value=b'{"pitr":true}')) is None
    assert record_pitr(Message(value=b'{"pitr":-1}')) is None
    assert record_pitr(Message(value=b"\xff")) is None
    assert record_pitr(Message(value=None)) is None


# --- reachability ------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_ensure_reachable_gives_up_in_time_with_one_line_reason() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerUnreachableError) as info:
        ensure_reachable(address, timeout_s=2.0)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    message = str(info.value)
    assert "\n" not in message
    assert address in message
    assert "refused" in message.lower()
    assert info.value.exit_code == 3


def test_ensure_reachable_describes_the_broker(
    kafka_bootstrap: str, kafka_broker_kind: str
) -> None:
    info = ensure_reachable(kafka_bootstrap, timeout_s=10)
    assert info.brokers >= 1
    if kafka_broker_kind == "embedded":
        assert info.embedded
        assert not info.answers_admin
    else:
        assert info.answers_admin


# --- bounded reads -----------------------------------------------------------


def _line(pitr: int, n: int = 0) -> bytes:
    return json.dumps({"type": "position", "pitr": pitr, "n": n}).encode()


def test_read_at_and_read_range(
    produce: Callable[..., list[int]], make_consumer: Callable[..., Any], unique_topic: Any
) -> None:
    topic = unique_topic("read")
    target = Target(topic)
    offsets = produce(topic, [(_line(100 + i, i), 100 + i) for i in range(20)])
    assert offsets == list(range(20))
    consumer = make_consumer(fetch_wait_ms=10)
    assert watermarks(consumer, target) == (0, 20)
    message = read_at(consumer, target, 7)
    assert message is not None and message.offset() == 7
    assert record_pitr(message) == 107
    assert read_at(consumer, target, 20) is None
    got = [m.offset() for m in read_range(consumer, target, 3, 9)]
    assert got == [3, 4, 5, 6, 7, 8]
    assert [m.offset() for m in read_range(consumer, target, 18, 100)] == [18, 19]


def test_watermarks_of_a_missing_partition_says_so(
    produce: Callable[..., list[int]], make_consumer: Callable[..., Any], unique_topic: Any
) -> None:
    topic = unique_topic("missing")
    produce(topic, [(b'{"pitr":1}', 1)])
    with pytest.raises(KafkaRuntimeError, match="does not exist"):
        watermarks(make_consumer(), Target(topic, 99), timeout_s=5)


def test_read_past_the_end_fails_loudly(
    produce: Callable[..., list[int]], make_consumer: Callable[..., Any], unique_topic: Any
) -> None:
    topic = unique_topic("oor")
    produce(topic, [(_line(i), i + 1) for i in range(5)])
    with pytest.raises(KafkaRuntimeError, match="out of range") as info:
        read_at(make_consumer(fetch_wait_ms=10), Target(topic), 50, timeout_s=10)
    assert info.value.code in {"_AUTO_OFFSET_RESET", "OFFSET_OUT_OF_RANGE"}


def test_offset_deleted_by_retention_fails_loudly(
    kafka_bootstrap: str,
    kafka_broker_kind: str,
    make_consumer: Callable[..., Any],
    unique_topic: Any,
) -> None:
    """Records deleted under a reader: by the embedded broker's 5 MB limit, or on a real
    broker by DeleteRecords (what retention does to the oldest segment)."""
    topic = unique_topic("retention")
    producer = Producer(producer_config(kafka_bootstrap, compression="none", linger_ms=5))
    filler = b'{"pitr":1,"pad":"' + b"x" * 980 + b'"}'
    count = 7000 if kafka_broker_kind == "embedded" else 200  # ~7 MB > the mock's 5 MB
    for _ in range(count):
        producer.produce(topic, filler, partition=0)
        producer.poll(0)
    assert producer.flush(30) == 0
    if kafka_broker_kind != "embedded":
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        futures = admin.delete_records([TopicPartition(topic, 0, 150)],
                                       request_timeout=30, operation_timeout=30)
        for future in futures.values():
            future.result(timeout=30)
    consumer = make_consumer(fetch_wait_ms=10)
    low, _high = watermarks(consumer, Target(topic))
    assert low > 0, "expected the oldest records to be gone"
    with pytest.raises(KafkaRuntimeError, match="out of range") as info:
        read_at(consumer, Target(topic), low - 1, timeout_s=10)
    assert "refusing to skip them silently" in str(info.value)
    assert read_at(consumer, Target(topic), low) is not None


def test_consume_batch_does_not_wait_for_a_full_batch_at_the_tail(
    produce: Callable[..., list[int]], make_consumer: Callable[..., Any], unique_topic: Any
) -> None:
    topic = unique_topic("tail")
    produce(topic, [(_line(i), i + 1) for i in range(5)])
    consumer = make_consumer(fetch_wait_ms=10)
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[int] = []
    started = time.monotonic()
    for _ in range(50):
        batch = consume_batch(consumer, 1000, 2.0)
        seen.extend(m.offset() for m in batch if m.error() is None)
        if any(m.error() is not None for m in batch):
            break
    assert seen == [0, 1, 2, 3, 4]
    assert time.monotonic() - started < 1.5


# --- seek by pitr on the broker ----------------------------------------------


def _expected_offset(records: list[tuple[int, int | None]], pitr: int, high: int) -> int:
    """Brute force: first offset whose readable pitr is >= pitr (records: (offset, pitr))."""
    for offset, value in records:
        if value is not None and value >= pitr:
            return offset
    return high


def test_seek_by_pitr_with_duplicates_markers_and_bad_records(
    kafka_bootstrap: str,
    kafka_broker_kind: str,
    make_consumer: Callable[..., Any],
    unique_topic: Any,
) -> None:
    topic = unique_topic("seek")
    target = Target(topic)
    # Transactions put commit markers between the records; some records have no pitr.
    producer = Producer(producer_config(kafka_bootstrap, transactional_id=f"{topic}-tx"))
    producer.init_transactions(30)
    pitrs: list[int | None] = []
    pitr = 1_000
    for batch in range(40):
        producer.begin_transaction()
        for i in range(7):
            if (batch * 7 + i) % 11 == 5:
                value, stamp = b"not json at all", pitr
                pitrs.append(None)
            else:
                pitr += 0 if i % 3 else 10  # runs of equal pitr
                value, stamp = _line(pitr, batch * 7 + i), pitr
                pitrs.append(pitr)
            producer.produce(topic, value, None, 0, timestamp=stamp)
        producer.commit_transaction(30)
    consumer = make_consumer(fetch_wait_ms=10)
    low, high = watermarks(consumer, target)
    records = [(m.offset(), record_pitr(m)) for m in read_range(consumer, target, low, high)]
    assert [p for _o, p in records] == pitrs
    assert high > len(records), "expected transaction markers between the records"
    record_offsets = {o for o, _p in records}
    readable = sorted({p for p in pitrs if p is not None})
    probes = [0, readable[0], readable[0] + 1, *readable[5:9], 1_500, readable[-1]]
    probes += [readable[-1] + 1, 10**13]
    for wanted in probes:
        result = find_offset_for_pitr(consumer, target, wanted, timeout_s=30)
        assert result.offset == _expected_offset(records, wanted, high), wanted
        assert result.reads <= 40, result
        if kafka_broker_kind == "embedded":  # answers -1 to every offsets_for_times
            assert result.broker_answer == -1
            assert result.method in {"bisection", "after_last"}
        elif wanted > time.time() * 1000:
            assert (result.broker_answer, result.method) == (-1, "after_last"), result
        else:
            # A real broker answers with the first offset stamped at or after the pitr.
            # Transaction markers are stamped with the wall-clock time of the commit, far
            # after these pitrs, so past the first transaction its answer is the first
            # marker: a lower bound, verified against the records, then bisected from.
            answer = result.broker_answer
            assert answer is not None and 0 <= answer <= result.offset, result
            if answer != result.offset:
                assert answer not in record_offsets and result.method == "bisection", result
            else:
                assert result.method == "offsets_for_times", result
        assert find_offset_for_pitr(consumer, target, wanted).offset == result.offset
    # Bisection alone (as on a broker that cannot answer) agrees too.
    for wanted in probes:
        result = find_offset_for_pitr(
            consumer, target, wanted, timeout_s=30, use_offsets_for_times=False
        )
        assert result.offset == _expected_offset(records, wanted, high), wanted


def test_seek_by_pitr_on_plain_records_takes_the_brokers_answer(
    kafka_bootstrap: str,
    kafka_broker_kind: str,
    make_consumer: Callable[..., Any],
    unique_topic: Any,
) -> None:
    """Records written without transactions (as `unifeed load` and most producers write
    a feed), timestamp = pitr: a real broker's offsets_for_times is the answer, verified
    with two reads; the embedded broker answers -1 and the search bisects."""
    topic = unique_topic("seek-plain")
    target = Target(topic)
    records = [(_line(1_000 + 10 * (i // 3), i), 1_000 + 10 * (i // 3)) for i in range(600)]
    produce(kafka_bootstrap, topic, records)
    consumer = make_consumer(fetch_wait_ms=10)
    for wanted in (1_000, 1_005, 1_010, 1_777, 2_000, 2_990):
        result = find_offset_for_pitr(consumer, target, wanted, timeout_s=30)
        truth = next(i for i, (_v, p) in enumerate(records) if p >= wanted)
        assert result.offset == truth, (wanted, result)
        if kafka_broker_kind == "embedded":
            assert (result.broker_answer, result.method) == (-1, "bisection"), result
        else:
            assert (result.broker_answer, result.method) == (truth, "offsets_for_times"), result
            assert result.reads <= 2, result


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, int]]) -> None:
    producer = Producer(producer_config(bootstrap, linger_ms=5))
    for value, stamp in records:
        producer.produce(topic, value, None, 0, timestamp=stamp)
    assert producer.flush(30) == 0


def test_seek_on_an_empty_partition() -> None:
    fake = FakePartition({}, 0, None)
    result = find_offset_for_pitr(fake, Target("t"), 1)
    assert (result.offset, result.method, result.reads) == (0, "empty", 0)


# --- seek by pitr against a fake consumer (broker that answers) ---------------


class FakePartition:
    """An in-memory partition with offset gaps (markers), answering like a real broker."""

    def __init__(self, entries: dict[int, bytes], high: int, broker_answer: Any) -> None:
        self.entries = entries
        self.high = high
        self.low = min(entries) if entries else high
        self.broker_answer = broker_answer
        self.position: int | None = 0
        self.assigns = 0

    # PartitionConsumer protocol
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return self.low, self.high

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        wanted = partitions[0]
        answer = self.broker_answer(wanted.offset) if callable(self.broker_answer) else -1
        return [TopicPartition(wanted.topic, wanted.partition, answer)]

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        raise AssertionError("the fake partition always exists")

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigns += 1
        self.position = partitions[0].offset

    def poll(self, timeout: float = -1) -> Message | None:
        if self.position is None:
            return None  # the end was reported once; librdkafka then waits for more
        while self.position < self.high and self.position not in self.entries:
            self.position += 1
        if self.position >= self.high:
            self.position = None
            eof = KafkaError(KafkaError._PARTITION_EOF)
            return Message(topic="t", partition=0, offset=self.high, error=eof)
        offset = self.position
        self.position += 1
        return Message(topic="t", partition=0, offset=offset, value=self.entries[offset])

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        out: list[Message] = []
        for _ in range(num_messages):
            message = self.poll(0)
            if message is None:
                break
            out.append(message)
            if message.error() is not None:
                break
        return out


def _fake(pitrs: list[int | None], gap_every: int = 4) -> tuple[dict[int, bytes], int]:
    entries: dict[int, bytes] = {}
    offset = 0
    for i, pitr in enumerate(pitrs):
        entries[offset] = b"garbage" if pitr is None else _line(pitr, i)
        offset += 2 if i % gap_every == gap_every - 1 else 1  # a marker after some records
    return entries, offset + 1  # and one at the very end


def _truth(entries: dict[int, bytes], high: int) -> Callable[[int], int]:
    readable = [(o, record_pitr(Message(value=v))) for o, v in sorted(entries.items())]

    def first(pitr: int) -> int:
        return _expected_offset(readable, pitr, high)

    return first


PITRS: list[int | None] = [10, 10, 20, None, 20, 20, 30, 40, 40, None, 40, 50, 60, 60, 70]


@pytest.mark.parametrize("wanted", [0, 10, 11, 20, 25, 40, 41, 60, 70, 71])
def test_seek_uses_a_correct_broker_answer_after_verifying_it(wanted: int) -> None:
    entries, high = _fake(PITRS)
    truth = _truth(entries, high)
    fake = FakePartition(entries, high, lambda ts: truth(ts) if truth(ts) < high else -1)
    result = find_offset_for_pitr(fake, Target("t"), wanted)
    assert result.offset == truth(wanted)
    assert result.method in {"offsets_for_times", "after_last"}
    assert result.reads <= 3, result  # the record it points at, the one before (windowed)


@pytest.mark.parametrize("wanted", [0, 10, 11, 20, 25, 40, 41, 60, 70, 71])
@pytest.mark.parametrize("error", [-3, -1, +1, +3])
def test_seek_falls_back_to_bisection_when_the_answer_is_wrong(wanted: int, error: int) -> None:
    entries, high = _fake(PITRS)
    truth = _truth(entries, high)

    def wrong(ts: int) -> int:
        return min(max(truth(ts) + error, 0), high)

    fake = FakePartition(entries, high, wrong)
    result = find_offset_for_pitr(fake, Target("t"), wanted)
    assert result.offset == truth(wanted), result
    assert result.method in {"offsets_for_times", "bisection", "after_last"}


def test_seek_checks_an_unknown_answer_against_the_last_record() -> None:
    entries, high = _fake(PITRS)
    fake = FakePartition(entries, high, None)  # always -1
    result = find_offset_for_pitr(fake, Target("t"), 1_000)
    assert (result.offset, result.method) == (high, "after_last")
    assert result.reads <= 2  # the last few records, not a search
    result = find_offset_for_pitr(fake, Target("t"), 40)
    assert result.method == "bisection"
    assert result.offset == _truth(entries, high)(40)


def test_bisection_cost_is_logarithmic() -> None:
    pitrs: list[int | None] = [i // 3 for i in range(30_000)]
    entries, high = _fake(pitrs, gap_every=50)
    truth = _truth(entries, high)
    fake = FakePartition(entries, high, None)
    for wanted in (0, 1, 4_999, 5_000, 9_999):
        result = find_offset_for_pitr(fake, Target("t"), wanted)
        assert result.offset == truth(wanted)
        assert result.reads <= 20, result


@st.composite
def _disordered(draw: st.DrawFn) -> list[int | None]:
    """Non-decreasing pitrs with runs of up to 15 backwards ones (and unreadable records)
    inserted anywhere: a feed's partition after a few upstream mistakes."""
    valid = sorted(draw(st.lists(st.integers(100, 400), min_size=1, max_size=120)))
    out: list[int | None] = []
    for p in valid:
        out.append(p)
        if draw(st.integers(0, 3)) == 0:
            floor = max(x for x in out if x is not None)
            out += draw(st.lists(st.one_of(st.none(), st.integers(0, floor - 1)), max_size=15))
    return out


@given(_disordered(), st.integers(0, 420), st.integers(2, 7))
@settings(max_examples=300, deadline=None)
def test_seek_finds_where_the_highest_pitr_so_far_reaches_the_target(
    pitrs: list[int | None], wanted: int, gap_every: int
) -> None:
    """A record with a backwards pitr (a dead letter) must not send the search past the
    answer: the offset found is the first at which the largest pitr so far reaches the
    target, whatever the broker answers. Earlier would repeat work; later would lose it."""
    entries, high = _fake(pitrs, gap_every=gap_every)
    readable = [(o, record_pitr(Message(value=v))) for o, v in sorted(entries.items())]
    top = -1
    expected = high
    for offset, p in readable:
        if p is not None:
            top = max(top, p)
            if top >= wanted:
                expected = offset
                break
    first_at_least = next((o for o, p in readable if p is not None and p >= wanted), high)
    for answer in (None, lambda ts: first_at_least if first_at_least < high else -1):
        fake = FakePartition(entries, high, answer)
        assert find_offset_for_pitr(fake, Target("t"), wanted).offset == expected
