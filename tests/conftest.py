"""Shared fixtures: a Kafka-protocol broker for the whole session, topic names, golden flag.

The broker comes from, in this order:

1. ``UNIFEED_TEST_BOOTSTRAP`` - an existing cluster (``external``);
2. testcontainers' Kafka module (>= 4.15, one KRaft node), when a Docker engine answers a
   quick ping (``container``), found as docker's client finds it: ``DOCKER_HOST``, the
   current context, the rootful, rootless, Desktop and Podman sockets
   (`tests.support.docker_engine`); set ``UNIFEED_TEST_NO_DOCKER=1`` to skip the probe;
3. Apache Kafka 4.4 run locally by a JVM (``apache-kafka``, `unifeed.kafka.apache`), when
   ``java`` is on PATH and its jars are cached or ``mvn`` can fetch them;
4. the embedded broker, librdkafka's mock cluster in this process (``embedded``).

``UNIFEED_TEST_BROKER=KIND`` (one of the four names) makes the session use that kind and
fail, not fall back, when it cannot: CI sets ``apache-kafka`` so that a missing Java
cannot silently turn the run into a mock-broker run, and ``embedded`` for its pass on
the mock. The summary line at the end says which broker ran.

The same tests must pass on all of them. Tests share the broker, so every test makes its
own topics with `unique_topic`. No test relies on a pytest timeout: helpers wait with
explicit bounds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, Producer

from tests.support.docker_engine import find_docker_host, kafka_container
from tests.support.kafkatools import forget_broker
from unifeed.core.errors import UnifeedError
from unifeed.kafka.apache import KAFKA_VERSION, LocalKafka, local_kafka_available
from unifeed.kafka.clients import consumer_config, producer_config
from unifeed.kafka.embedded import EmbeddedBroker

_DOCKER_PROBE_S = 3.0


KINDS = ("external", "container", "apache-kafka", "embedded")


class BrokerChoice(msgspec.Struct, frozen=True):
    kind: str  # one of KINDS
    bootstrap: str
    note: str


_notes: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files in golden/ from the current output (review the diff)",
    )


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether ``--update-golden`` was given."""
    return bool(request.config.getoption("--update-golden"))


def _docker_answers() -> tuple[bool, str]:
    """Whether a Docker engine answers a ping within a few seconds, and why not. The engine
    is found as docker's client finds it (`find_docker_host`); DOCKER_HOST is set to it,
    which docker-py and testcontainers read."""
    if os.environ.get("UNIFEED_TEST_NO_DOCKER"):
        return False, "UNIFEED_TEST_NO_DOCKER is set"
    host, source = find_docker_host()
    if host is None:
        return False, source
    try:
        import docker  # testcontainers' own dependency

        client = docker.DockerClient(base_url=host, timeout=int(_DOCKER_PROBE_S))
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means: no usable engine
        return False, f"Docker engine at {host} ({source}) did not answer ({type(exc).__name__}: {exc})"
    os.environ["DOCKER_HOST"] = host
    if "podman" in host:
        # Podman runs no Ryuk reaper by default; the container is stopped by the fixture.
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    return True, ""


def _required_kind() -> str:
    kind = os.environ.get("UNIFEED_TEST_BROKER", "").strip()
    if kind and kind not in KINDS:
        raise pytest.UsageError(f"UNIFEED_TEST_BROKER={kind!r}: expected one of {', '.join(KINDS)}")
    return kind


@pytest.fixture(scope="session")
def _kafka_broker() -> Iterator[BrokerChoice]:
    required = _required_kind()
    skipped: list[str] = []

    def unavailable(kind: str, why_not: str) -> None:
        if required == kind:
            pytest.fail(f"UNIFEED_TEST_BROKER={kind}, but it cannot run here: {why_not}",
                        pytrace=False)
        skipped.append(f"{kind}: {why_not}")

    external = os.environ.get("UNIFEED_TEST_BOOTSTRAP", "").strip()
    if required in ("", "external"):
        if external:
            _notes.append(f"Kafka tests ran against an existing cluster at {external}")
            yield BrokerChoice("external", external, "UNIFEED_TEST_BOOTSTRAP")
            return
        unavailable("external", "UNIFEED_TEST_BOOTSTRAP is not set")
    if required in ("", "container"):
        usable, why_not = _docker_answers()
        if usable:
            yield from _container_broker()
            return
        unavailable("container", why_not)
    if required in ("", "apache-kafka"):
        usable, why_not = local_kafka_available()
        if usable:
            kafka = LocalKafka()
            try:
                kafka.start()
            except UnifeedError as exc:  # e.g. Maven cannot reach its repository
                kafka.close()
                usable, why_not = False, f"it did not start: {exc}"
        if usable:
            yield from _local_kafka_broker(kafka)
            return
        unavailable("apache-kafka", why_not)
    passed_over = f" (passed over: {'; '.join(skipped)})" if skipped else ""
    _notes.append(f"Kafka tests ran against the embedded broker (librdkafka's mock cluster){passed_over}")
    with EmbeddedBroker() as broker:
        try:
            yield BrokerChoice("embedded", broker.bootstrap_servers, passed_over)
        finally:
            forget_broker(broker.bootstrap_servers)  # before the broker goes away


def _container_broker() -> Iterator[BrokerChoice]:
    container: Any = kafka_container()
    container.start()
    try:
        bootstrap = container.get_bootstrap_server()
        _notes.append(f"Kafka tests ran against a testcontainers Kafka at {bootstrap}")
        yield BrokerChoice("container", bootstrap, "testcontainers")
    finally:
        forget_broker(bootstrap)
        container.stop()


def _local_kafka_broker(kafka: LocalKafka) -> Iterator[BrokerChoice]:
    try:
        bootstrap = kafka.bootstrap_servers
        _notes.append(
            f"Kafka tests ran against Apache Kafka {KAFKA_VERSION} (local JVM, pid {kafka.pid}) "
            f"at {bootstrap}"
        )
        yield BrokerChoice("apache-kafka", bootstrap, f"Apache Kafka {KAFKA_VERSION}")
    finally:
        if kafka.bootstrap_servers:
            forget_broker(kafka.bootstrap_servers)
        kafka.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_broker: BrokerChoice) -> str:
    """``HOST:PORT`` of the session's broker."""
    return _kafka_broker.bootstrap


@pytest.fixture(scope="session")
def kafka_broker_kind(_kafka_broker: BrokerChoice) -> str:
    """``external``, ``container``, ``apache-kafka`` or ``embedded``: tests of the
    embedded broker's limits branch on it."""
    return _kafka_broker.kind


@pytest.fixture
def unique_topic() -> Callable[..., str]:
    """A factory of topic names no other test uses: ``unique_topic("control")``."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


Record = tuple[bytes | None, int]  # (value, timestamp ms)


@pytest.fixture
def produce(kafka_bootstrap: str) -> Callable[..., list[int]]:
    """``produce(topic, [(value, timestamp), ...], key=None, partition=0)`` -> offsets.

    Waits (bounded) for every acknowledgement and fails the test on any delivery error.
    """

    def send(
        topic: str, records: list[Record], *, key: bytes | None = None, partition: int = 0
    ) -> list[int]:
        producer = Producer(producer_config(kafka_bootstrap, linger_ms=0))
        offsets: list[int] = []
        errors: list[object] = []

        def delivered(error: object, message: Any) -> None:
            if error is not None:
                errors.append(error)
            else:
                offsets.append(message.offset())

        for value, timestamp in records:
            producer.produce(
                topic, value, key, partition, on_delivery=delivered, timestamp=timestamp
            )
        left = producer.flush(30)
        assert left == 0 and not errors, (left, errors)
        return sorted(offsets)

    return send


@pytest.fixture
def make_consumer(kafka_bootstrap: str) -> Iterator[Callable[..., Consumer]]:
    """A factory of reader consumers (`consumer_config`), all closed after the test."""
    made: list[Consumer] = []

    def make(**kwargs: Any) -> Consumer:
        consumer = Consumer(consumer_config(kafka_bootstrap, **kwargs))
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the session's broker is marked ``kafka`` (so that ``-m kafka``
    selects exactly the tests that a broker choice affects)."""
    for item in items:
        if "_kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for note in _notes:
        terminalreporter.write_line(note)
