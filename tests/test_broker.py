"""The embedded broker: in-process, and ``unifeed broker`` as a child process."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from unifeed.kafka.apache import cluster_id, local_kafka_available
from unifeed.kafka.clients import (
    Target,
    consumer_config,
    ensure_reachable,
    producer_config,
    read_range,
)
from unifeed.kafka.embedded import EmbeddedBroker, spawn_broker_process


def _accepts_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(2)
        try:
            sock.connect((host, int(port)))
        except OSError:
            return False
    return True


def _round_trip(bootstrap: str, topic: str) -> list[bytes | None]:
    producer = Producer(producer_config(bootstrap, linger_ms=0))
    for i in range(3):
        producer.produce(topic, b'{"pitr":%d}' % i, None, 0, timestamp=i + 1)
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(bootstrap, fetch_wait_ms=10))
    try:
        return [m.value() for m in read_range(consumer, Target(topic), 0, 3)]
    finally:
        consumer.close()


def test_embedded_broker_is_a_kafka_broker_on_localhost() -> None:
    with EmbeddedBroker() as broker:
        address = broker.bootstrap_servers
        assert address.startswith("127.0.0.1:")
        assert broker.running
        assert _round_trip(address, "embedded-smoke") == [
            b'{"pitr":0}',
            b'{"pitr":1}',
            b'{"pitr":2}',
        ]
        info = ensure_reachable(address, timeout_s=5)
        assert info.embedded and not info.answers_admin
    assert not broker.running
    assert not _accepts_connections(address)
    broker.close()  # idempotent
    assert "closed" in repr(broker)


def test_two_embedded_brokers_are_independent() -> None:
    with EmbeddedBroker() as first, EmbeddedBroker() as second:
        assert first.bootstrap_servers != second.bootstrap_servers


def test_broker_command_prints_its_address_and_stops_on_sigterm() -> None:
    process, address = spawn_broker_process(timeout_s=30, stderr=subprocess.PIPE)
    try:
        assert address.startswith("127.0.0.1:")
        assert _round_trip(address, "child-smoke")[0] == b'{"pitr":0}'
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
        assert process.returncode == 0
        assert b"export UNIFEED_BOOTSTRAP_SERVERS=" + address.encode() in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert not _accepts_connections(address)


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_broker_command_dies_as_told(how: str) -> None:
    process, address = spawn_broker_process(timeout_s=30)
    try:
        assert _accepts_connections(address)
        process.send_signal(getattr(signal, how))
        code: Any = process.wait(20)
        assert code == (0 if how == "SIGINT" else -signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert not _accepts_connections(address)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(x) for x in task.read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_broker_kafka_command_runs_apache_kafka_and_never_outlives_its_parent(how: str) -> None:
    """``unifeed broker --kafka``: Apache Kafka (it answers CreateTopics, unlike the
    embedded broker), its address on the first line; SIGTERM stops it in order (exit 0),
    and a SIGKILLed parent takes the JVM with it (no broker left behind)."""
    usable, why_not = local_kafka_available()
    if not usable:
        pytest.skip(f"the local Apache Kafka cannot run here: {why_not}")
    process, address = spawn_broker_process(timeout_s=180, stderr=subprocess.PIPE, kafka=True)
    try:
        jvms = _children(process.pid)
        assert len(jvms) == 1, jvms
        assert _round_trip(address, "kafka-smoke") == [b'{"pitr":0}', b'{"pitr":1}', b'{"pitr":2}']
        info = ensure_reachable(address, timeout_s=10)
        assert not info.embedded and info.answers_admin
        process.send_signal(getattr(signal, how))
        code: Any = process.wait(60)
        assert code == (0 if how == "SIGTERM" else -signal.SIGKILL)
        # A killed JVM's main thread can be a zombie while its other threads still hold
        # the listening socket: gone means both.
        for _ in range(300):
            if not _alive(jvms[0]) and not _accepts_connections(address):
                break
            time.sleep(0.1)
        assert not _alive(jvms[0]), "the JVM outlived unifeed broker --kafka"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    if how == "SIGTERM":
        assert process.stderr is not None
        err = process.stderr.read()
        assert b"Apache Kafka 4.4.0" in err and b"unifeed broker: stopped" in err, err
    assert not _accepts_connections(address)


def test_broker_kafka_command_without_java_says_what_to_do(tmp_path: Path) -> None:
    """No java on PATH and an empty cache: exit 2 with one line naming the Maven command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    env["PATH"] = str(Path(sys.executable).parent)
    env["UNIFEED_KAFKA_CACHE"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-m", "unifeed", "broker", "--kafka"],
                          capture_output=True, timeout=60, env=env, check=False)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Java" in err and "no java on PATH" in err, err
    assert "dependency:copy-dependencies" in err and str(tmp_path / "cache") in err, err


def test_cluster_ids_never_start_with_a_dash() -> None:
    """kafka-storage reads ``-t -abc...`` as an option: such IDs are drawn again."""
    dash_first = uuid.UUID(bytes=b"\xf8" + bytes(15))  # base64 "-A..."
    plain = uuid.UUID(bytes=b"\x00" + bytes(15))
    draws = iter([dash_first, dash_first, plain])
    chosen = cluster_id(lambda: next(draws))
    assert chosen == base64.urlsafe_b64encode(plain.bytes).rstrip(b"=").decode()
    assert next(draws, None) is None  # it drew until it found one
    assert base64.urlsafe_b64encode(dash_first.bytes).decode().startswith("-")
    ids = [cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
