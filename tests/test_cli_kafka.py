"""``unifeed load`` / ``dump`` through real subprocesses, and their library halves."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from tests.support.kafkatools import create_topic
from unifeed.cli.kafka import dump_partition, load_lines
from unifeed.core.errors import BadRecordError, ConfigError, KafkaRuntimeError
from unifeed.core.units import parse_time_ms
from unifeed.kafka.clients import Target, consumer_config, read_range, watermarks

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def _unifeed(
    *args: str, bootstrap: str | None = None, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "UNIFEED_BOOTSTRAP_SERVERS"}
    env["PYTHONPATH"] = str(REPO)
    if bootstrap is not None:
        env["UNIFEED_BOOTSTRAP_SERVERS"] = bootstrap
    return subprocess.run(
        [sys.executable, "-m", "unifeed", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def _line(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def _feed() -> list[bytes]:
    """A small controlstream with odd spacing, unicode and duplicates at equal pitr."""
    return [
        b'{"type":"flightplan","pitr":1700000000000,"id":"F1","ident":"UAL1"}',
        b'{ "type" : "flightplan", "pitr": 1700000000000, "id": "F2", "ident": "\\u00e9", '
        b'"access": "restricted"}',
        _line(type="flightplan", pitr=T0 + 1000, id="F3", ident="X", access="blocked"),
        _line(type="position", pitr=T0 + 2000, id="F1", clock=1, lat=1.5, lon=2.5),
        _line(type="position", pitr=T0 + 2000, id="F2", clock=1, lat=1.5, lon=2.5),
        _line(type="position", pitr=T0 + 2000, id="F3", clock=1, lat=1.5, lon=2.5),
        _line(
            type="ground_position",
            pitr=T0 + 3000,
            surface_id="S1",
            facility="KSEA",
            clock=1,
            lat=1,
            lon=2,
            id="F3",
            access="public",
        ),
        '{"type":"departure","pitr":1700000004000,"id":"F4","note":"ünï"}'.encode(),
        _line(type="flightplan", pitr=T0 + 5000, id="F1", ident="UAL1", access="blocked"),
        _line(type="position", pitr=T0 + 6000, id="F1", clock=2, lat=1, lon=2),
        _line(
            type="vehicle_position",
            pitr=T0 + 6000,
            surface_id="V1",
            facility="KSEA",
            clock=1,
            lat=1,
            lon=2,
        ),
        _line(
            type="mapping",
            pitr=T0 + 7000,
            surface_id="S2",
            id="F9",
            action="link",
            access="top-secret",
            facility="KSEA",
        ),
    ]


def test_load_then_dump_is_byte_identical(
    kafka_bootstrap: str, unique_topic: Any, tmp_path: Path
) -> None:
    lines = _feed()
    source = tmp_path / "control.jsonl"
    source.write_bytes(b"\n".join(lines[:5]) + b"\n\n   \n" + b"\n".join(lines[5:]) + b"\n")
    topic = f"kafka:{unique_topic('roundtrip')}"
    loaded = _unifeed("load", str(source), "--topic", topic, bootstrap=kafka_bootstrap)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.decode().startswith(f"loaded {len(lines)} records into {topic}:0")
    assert b"2 lines blank skipped" in loaded.stdout
    dumped = _unifeed("dump", topic, "--bootstrap-servers", kafka_bootstrap)
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout == b"\n".join(lines) + b"\n"
    # Record timestamps are the pitrs.
    consumer = Consumer(consumer_config(kafka_bootstrap, fetch_wait_ms=10))
    try:
        target = Target(topic.removeprefix("kafka:"))
        stamps = [m.timestamp()[1] for m in read_range(consumer, target, 0, len(lines))]
    finally:
        consumer.close()
    assert stamps == [json.loads(line)["pitr"] for line in lines]


def test_load_from_stdin_with_pacing(kafka_bootstrap: str, unique_topic: Any) -> None:
    lines = _feed()[:6]
    topic = f"kafka:{unique_topic('stdin')}"
    started = time.monotonic()
    loaded = _unifeed(
        "load", "-", "--topic", topic, "--rate", "20", "--compression", "zstd",
        bootstrap=kafka_bootstrap, stdin=b"\r\n".join(lines) + b"\r\n",
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert time.monotonic() - started >= 0.25  # 6 records at 20/s
    dumped = _unifeed("dump", topic, bootstrap=kafka_bootstrap)
    assert dumped.stdout == b"\n".join(lines) + b"\n"


def test_dump_time_range_and_audience(
    kafka_bootstrap: str, unique_topic: Any, tmp_path: Path
) -> None:
    lines = _feed()
    source = tmp_path / "feed.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    topic = f"kafka:{unique_topic('filters')}"
    assert (
        _unifeed("load", str(source), "--topic", topic, bootstrap=kafka_bootstrap).returncode == 0
    )

    def dump(*options: str) -> list[bytes]:
        result = _unifeed("dump", topic, *options, bootstrap=kafka_bootstrap)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    assert dump("--from", str(T0 + 2000), "--to", str(T0 + 5000)) == lines[3:8]
    assert dump("--from", "2023-11-14T22:13:22Z", "--to", "2023-11-14T22:13:25") == lines[3:8]
    assert dump("--from", "2023-11-14T23:13:26+01:00") == lines[9:]
    public = dump("--audience", "public")
    # F2 restricted and F3 blocked by their flightplans; the ground position says public
    # itself but belongs to blocked F3, and the stronger level wins; F1 turns blocked at
    # T0+5000; the mapping's unknown level counts as blocked.
    assert public == [lines[0], lines[3], lines[7], lines[10]]
    restricted = dump("--audience", "restricted")
    assert restricted == [lines[0], lines[1], lines[3], lines[4], lines[7], lines[10]]
    assert dump("--audience", "blocked") == lines
    assert dump("--audience", "public", "--from", str(T0 + 6000)) == [lines[10]]


def test_load_refuses_invalid_lines_and_names_them(
    kafka_bootstrap: str, unique_topic: Any, tmp_path: Path
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(
        b'{"type":"keepalive","pitr":1}\n'
        b"not json\n"
        b'{"type":"keepalive","pitr":true}\n'
        b"\n"
        b'{"type":"keepalive"}\n'
        b'["pitr", 5]\n'
        b'{"type":"keepalive","pitr":7}\n'
    )
    name = unique_topic("bad")
    result = _unifeed("load", str(source), "--topic", f"kafka:{name}", bootstrap=kafka_bootstrap)
    assert result.returncode == 4
    message = result.stderr.decode()
    assert message.count("\n") == 1
    assert "4 line(s)" in message
    for words in ("line 2:", "line 3:", "line 5:", "line 6:", "nothing was loaded"):
        assert words in message
    assert "line 1:" not in message and "line 7:" not in message
    consumer = Consumer(consumer_config(kafka_bootstrap))
    try:
        with pytest.raises(KafkaRuntimeError, match="does not exist"):
            watermarks(consumer, Target(name), timeout_s=5)
    finally:
        consumer.close()
    allowed = _unifeed(
        "load", str(source), "--topic", f"kafka:{name}", "--allow-invalid",
        bootstrap=kafka_bootstrap,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert b"loaded 6 records" in allowed.stdout
    assert b"4 lines invalid loaded as they are" in allowed.stdout
    dumped = _unifeed("dump", f"kafka:{name}", bootstrap=kafka_bootstrap)
    assert dumped.stdout == source.read_bytes().replace(b"\n\n", b"\n")


def test_unreachable_broker_exits_3_with_one_line_reason(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    source = tmp_path / "one.jsonl"
    source.write_bytes(b'{"type":"keepalive","pitr":1}\n')
    for args in (
        ("dump", "kafka:t", "--connect-timeout", "2"),
        ("load", str(source), "--topic", "kafka:t", "--connect-timeout", "2"),
        ("checkpoint", "show", "--instance", "uf-a", "--connect-timeout", "2"),
    ):
        started = time.monotonic()
        result = _unifeed(*args, bootstrap=address, timeout=30)
        assert time.monotonic() - started < 30
        assert result.returncode == 3, result.stderr
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert address in lines[0] and "refused" in lines[0].lower()


def test_missing_bootstrap_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    source.write_bytes(b'{"type":"keepalive","pitr":1}\n')
    for args in (("dump", "kafka:t"), ("load", str(source), "--topic", "kafka:t")):
        result = _unifeed(*args)
        assert result.returncode == 2
        message = result.stderr.decode()
        assert "--bootstrap-servers" in message and "unifeed broker" in message


def test_bad_topic_argument_is_a_usage_error() -> None:
    # A bare name is a topic for load and dump (kafka: is optional there); these are not.
    for bad, needle in (("control stream", b"is not a Kafka topic name"),
                        ("kafka:t:x", b"partition")):  # fmt: skip
        result = _unifeed("dump", bad, bootstrap="127.0.0.1:1")
        assert result.returncode == 2
        assert needle in result.stderr, result.stderr


# --- library halves, no subprocess -------------------------------------------


def test_load_lines_and_dump_partition_in_process(kafka_bootstrap: str, unique_topic: Any) -> None:
    target = Target(unique_topic("lib"))
    lines = _feed()
    report = load_lines(io.BytesIO(b"\n".join(lines)), target, kafka_bootstrap)
    assert (report.records, report.blank, report.invalid) == (len(lines), 0, 0)
    out = io.BytesIO()
    dumped = dump_partition(target, kafka_bootstrap, out, audience="restricted", to_ms=T0 + 3000)
    assert out.getvalue().splitlines() == [lines[0], lines[1], lines[3], lines[4]]
    assert (dumped.read, dumped.written, dumped.hidden) == (len(lines), 4, 2)
    with pytest.raises(BadRecordError) as info:
        load_lines(io.BytesIO(b"{}\n"), target, kafka_bootstrap, source="x.jsonl")
    assert info.value.exit_code == 4
    assert str(info.value).startswith("x.jsonl: 1 line(s)")


def test_dump_of_an_empty_partition(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Any, produce: Callable[..., Any]
) -> None:
    topic = unique_topic("empty")
    if kafka_broker_kind != "embedded":  # the mock auto-creates 4 partitions, answers no CreateTopics
        create_topic(kafka_bootstrap, topic, partitions=2)
    produce(topic, [(b'{"pitr":1}', 1)])
    out = io.BytesIO()
    assert dump_partition(Target(topic, 1), kafka_bootstrap, out).written == 0
    assert out.getvalue() == b""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1700000000000", T0),
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T22:13:20", T0),
        ("2023-11-14T22:13:20.123+00:00", T0 + 123),
        ("2023-11-14", T0 - (22 * 3600 + 13 * 60 + 20) * 1000),
    ],
)
def test_parse_time_ms(text: str, expected: int) -> None:
    assert parse_time_ms(text) == expected


def test_parse_time_ms_refuses_with_an_example() -> None:
    with pytest.raises(ConfigError, match=r"--from must be epoch milliseconds or ISO-8601"):
        parse_time_ms("yesterday", "--from")


def test_load_into_a_partition_the_topic_lacks_says_how_many_it_has(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Any, tmp_path: Path
) -> None:
    """A topic written before it exists is auto-created with the broker's num.partitions
    (1 on the local Apache Kafka, 4 on the embedded broker): loading into partition 7 of a
    new topic exits 1 with one line that says how many partitions it got; after the topic
    is created with 8 (CreateTopics, not on the embedded broker), the same load works."""
    topic = unique_topic("parts")
    path = tmp_path / "one.jsonl"
    path.write_bytes(b'{"type":"keepalive","pitr":5}\n')
    args = ["load", str(path), "--topic", f"kafka:{topic}:7", "--bootstrap-servers",
            kafka_bootstrap]
    refused = _unifeed(*args)
    assert refused.returncode == 1, refused.stderr
    last = refused.stderr.decode().strip().splitlines()[-1]
    partitions = 4 if kafka_broker_kind == "embedded" else 1
    assert last.startswith(f"unifeed load: loading into kafka:{topic}:7 failed: topic "
                           f"'{topic}' has {partitions} partition(s), so no partition 7"), last
    if kafka_broker_kind == "embedded":
        return
    other = unique_topic("parts")
    create_topic(kafka_bootstrap, other, partitions=8)
    args[3] = f"kafka:{other}:7"
    assert _unifeed(*args).returncode == 0
    dumped = _unifeed("dump", f"kafka:{other}:7", "--bootstrap-servers", kafka_bootstrap)
    assert dumped.returncode == 0 and dumped.stdout == b'{"type":"keepalive","pitr":5}\n'
