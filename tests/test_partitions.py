"""Partitions: ``kafka:TOPIC[:N[,N...]]`` selections, Kafka's key partitioner, and
``unifeed load --key`` / ``--partition`` on the fixture broker."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from tests.support.kafkatools import create_topic, read_all, run_cli
from unifeed.core.errors import ConfigError
from unifeed.kafka.clients import Target, TopicSelection, parse_selection, parse_target
from unifeed.kafka.partitioner import murmur2, partition_for_key

# Kafka's own test vectors (clients' UtilsTest.testMurmur2 and the values other clients
# check against Utils.murmur2), as signed 32-bit ints.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
    "1": -1993445489,
    "12": 126087238,
    "123": -267702483,
    "1234": -1614185708,
    "12345": -1188365604,
}


@pytest.mark.parametrize(("key", "expected"), list(JAVA_MURMUR2.items()))
def test_murmur2_matches_kafkas_java_utils(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


def test_partition_for_key_masks_the_sign_and_takes_the_modulo() -> None:
    assert partition_for_key(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 7) == (
        (-58897971 & 0x7FFFFFFF) % 7
    )
    assert partition_for_key(b"", 1) == 0
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        partition_for_key(b"x", 0)


@pytest.mark.parametrize(
    ("text", "topic", "partitions"),
    [
        ("kafka:ctl", "ctl", None),
        ("kafka:ctl:3", "ctl", (3,)),
        ("kafka:ctl:5,0,2", "ctl", (0, 2, 5)),
        ("kafka:a.b-c_d:0", "a.b-c_d", (0,)),
    ],
)
def test_selection_forms(text: str, topic: str, partitions: tuple[int, ...] | None) -> None:
    selection = parse_selection(text)
    assert selection == TopicSelection(topic, partitions)
    assert parse_selection(str(selection)) == selection


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ctl", "must be written kafka:TOPIC, kafka:TOPIC:N or kafka:TOPIC:N,M"),
        ("kafka:", "the topic name is empty"),
        ("kafka:bad topic", "is not a Kafka topic name"),
        ("kafka:ctl:", "must be integers >= 0 separated by commas"),
        ("kafka:ctl:1,,2", "got ''"),
        ("kafka:ctl:-1", "got '-1'"),
        ("kafka:ctl:1, 2", "got ' 2'"),
        ("kafka:ctl:x", "got 'x'"),
        ("kafka:ctl:2,2", "partition 2 is listed twice"),
        ("kafka:ctl:99999999999", "beyond Kafka's"),
    ],
)
def test_selection_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_selection(text)


def test_selection_targets_against_the_partition_count() -> None:
    assert parse_selection("kafka:t").targets(2) == [Target("t", 0), Target("t", 1)]
    assert parse_selection("kafka:t:1").targets(2) == [Target("t", 1)]
    with pytest.raises(ConfigError, match=r"has 3 partition\(s\) \(0..2\), so no partition 4, 7"):
        parse_selection("kafka:t:0,4,7").targets(3)
    with pytest.raises(ValueError, match="sorted and unique"):
        TopicSelection("t", (2, 1))


def test_the_single_partition_target_still_means_partition_0() -> None:
    assert parse_target("kafka:ctl") == Target("ctl", 0)
    assert parse_target("kafka:ctl:2") == Target("ctl", 2)


# --- unifeed load --key / --partition ------------------------------------------------


def _records(count: int) -> list[bytes]:
    """Records keyed by ``id``: strings, with integers among them."""
    out = []
    for i in range(count):
        key: Any = f"UAL{i % 23}-1700000000-schedule" if i % 5 else i % 11
        out.append(json.dumps({"type": "position", "pitr": 1_700_000_000_000 + i * 10,
                               "id": key, "n": i}, separators=(",", ":")).encode())
    return out


def _key_bytes(line: bytes) -> bytes:
    value = json.loads(line)["id"]
    return value.encode() if isinstance(value, str) else str(value).encode()


def _librdkafka_murmur2(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    """Produce with librdkafka's Java-compatible partitioner (an independent oracle)."""
    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "on_delivery": lambda e, _m: errors.append(e) if e else None})
    for line in lines:
        producer.produce(topic, line, _key_bytes(line))
    assert producer.flush(60) == 0 and not errors


def _need_create_topics(kind: str) -> None:
    if kind == "embedded":
        pytest.skip("the embedded broker does not answer CreateTopics (run on Apache Kafka)")


def test_load_key_spreads_records_as_kafkas_java_clients_do(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Any, tmp_path: Path
) -> None:
    _need_create_topics(kafka_broker_kind)
    topic, oracle = unique_topic("keyed"), unique_topic("oracle")
    create_topic(kafka_bootstrap, topic, partitions=4)
    create_topic(kafka_bootstrap, oracle, partitions=4)
    lines = _records(300)
    path = tmp_path / "ctl.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    done = run_cli(["load", str(path), "--topic", f"kafka:{topic}", "--key", "id",
                    "--bootstrap-servers", kafka_bootstrap])
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == (
        f"loaded 300 records into kafka:{topic} (by id over 4 partitions)"
    )
    _librdkafka_murmur2(kafka_bootstrap, oracle, lines)
    spread = [read_all(kafka_bootstrap, topic, p) for p in range(4)]
    assert spread == [read_all(kafka_bootstrap, oracle, p) for p in range(4)]
    assert Counter(x for part in spread for x in part) == Counter(lines)
    assert all(len(part) > 0 for part in spread)
    for p, part in enumerate(spread):
        assert part == [x for x in lines if x in set(part)]  # file order kept per partition
        assert {partition_for_key(_key_bytes(x), 4) for x in part} == {p}


def test_load_partition_pins_one_and_refuses_one_the_topic_lacks(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Any, tmp_path: Path
) -> None:
    _need_create_topics(kafka_broker_kind)
    topic = unique_topic("pinned")
    create_topic(kafka_bootstrap, topic, partitions=2)
    lines = _records(20)
    path = tmp_path / "ctl.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    base = ["load", str(path), "--bootstrap-servers", kafka_bootstrap]
    done = run_cli([*base, "--topic", f"kafka:{topic}", "--partition", "1", "--key", "id"])
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, topic, 1) == lines
    assert read_all(kafka_bootstrap, topic, 0) == []
    refused = run_cli([*base, "--topic", f"kafka:{topic}", "--partition", "5"])
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.decode().strip() == (
        f"unifeed load: topic '{topic}' has 2 partition(s) (0..1), so no partition 5; "
        "nothing was loaded"
    )
    missing = unique_topic("missing")
    refused = run_cli([*base, "--topic", f"kafka:{missing}", "--key", "id"])
    assert refused.returncode == 2, refused.stderr
    assert f"topic '{missing}' does not exist" in refused.stderr.decode()
    assert read_all(kafka_bootstrap, topic, 1) == lines  # nothing more was written


def test_load_key_refuses_lines_without_a_usable_key(
    kafka_bootstrap: str, tmp_path: Path, unique_topic: Any
) -> None:
    path = tmp_path / "ctl.jsonl"
    path.write_bytes(b'{"pitr":1,"id":"A"}\n{"pitr":2}\n{"pitr":3,"id":[1]}\n')
    topic = unique_topic("keyless")
    done = run_cli(["load", str(path), "--topic", f"kafka:{topic}", "--key", "id",
                    "--bootstrap-servers", kafka_bootstrap])
    assert done.returncode == 4, done.stderr
    message = done.stderr.decode().strip()
    assert "2 line(s) are not JSON objects with an integer pitr >= 0 and a string or integer `id`" in message
    assert "line 2: no `id` field to take the key from" in message
    assert "line 3: `id` must be a string or an integer to be a key, got [1]" in message


@pytest.mark.parametrize(
    ("topic", "extra", "message"),
    [
        ("kafka:t:0,1", [], "load writes one partition"),
        ("kafka:t:1", ["--partition", "0"], "--topic kafka:t:1 and --partition 0 disagree"),
        ("kafka:t", ["--partition", "-1"], "--partition must be in 0.."),
    ],
)
def test_load_target_arguments(topic: str, extra: list[str], message: str, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"pitr":1}\n')
    done = run_cli(["load", str(path), "--topic", topic, *extra,
                    "--bootstrap-servers", "127.0.0.1:9"])
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.decode()
