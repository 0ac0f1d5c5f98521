"""The embedded broker: in-process, and ``unifeed broker`` as a child process."""

from __future__ import annotations

import signal
import socket
import subprocess
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

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
