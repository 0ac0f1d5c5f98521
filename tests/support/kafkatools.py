"""Small, bounded helpers for integration tests: load lines, read a partition, run the CLI."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from unifeed.kafka.clients import record_timestamp

CLI = [sys.executable, "-m", "unifeed"]
ROOT = Path(__file__).resolve().parents[2]


def pitr_of(line: bytes) -> int:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return 0
    pitr = value.get("pitr") if isinstance(value, dict) else None
    return pitr if type(pitr) is int and pitr > 0 else 0


def load(bootstrap: str, topic: str, lines: Iterable[bytes], partition: int = 0,
         compression: str = "lz4") -> int:
    """Produce ``lines`` (blank ones skipped) with timestamp = pitr, as ``unifeed load``
    stamps them (`record_timestamp`); return how many. Fails on any delivery error."""
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            errors.append(error)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": compression,
            "enable.idempotence": True,
            "delivery.report.only.error": True,
            "on_delivery": delivered,
        }
    )
    now_ms = int(time.time() * 1000)
    n = 0
    for line in lines:
        if not line.strip():
            continue
        stamp = record_timestamp(pitr_of(line), now_ms)
        while True:
            try:
                producer.produce(topic, line, partition=partition, timestamp=stamp)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} records not delivered to {topic}"
    assert not errors, f"{len(errors)} records refused by the broker, the first: {errors[0]}"
    return n


def partitioned_topic(bootstrap: str, broker_kind: str, topic: str, partitions: int) -> None:
    """A topic with (at least) ``partitions`` partitions on any fixture broker: created on
    a real one; the embedded broker auto-creates 4 and answers no CreateTopics."""
    if broker_kind == "embedded":
        assert partitions <= 4, "the embedded broker auto-creates topics with 4 partitions"
        return
    create_topic(bootstrap, topic, partitions)


def create_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 30) -> None:
    """CreateTopics with a partition count (not on the embedded broker, which does not
    answer it), then wait until the broker's metadata shows every partition."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)],
                                  operation_timeout=timeout_s, request_timeout=timeout_s)
    futures[topic].result(timeout=timeout_s)
    def ready() -> bool:
        found = admin.list_topics(topic, timeout=5).topics.get(topic)
        return found is not None and found.error is None and len(found.partitions) == partitions
    wait_for(ready, timeout_s, f"{topic} with {partitions} partitions in the metadata")


_POLLERS: dict[str, Consumer] = {}


def _close_pollers() -> None:
    while _POLLERS:
        _, consumer = _POLLERS.popitem()
        consumer.close()


atexit.register(_close_pollers)


def forget_broker(bootstrap: str) -> None:
    """Close the kept client of a broker that is going away (no reconnect noise after)."""
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = _POLLERS.pop(f"{isolation}@{bootstrap}", None)
        if consumer is not None:
            consumer.close()


def high_watermark(bootstrap: str, topic: str, partition: int = 0) -> int:
    """The end of what a read_committed reader sees, 0 when the partition does not exist
    (yet): on a real broker the last stable offset, which stops at the first record of a
    transaction still open (`log_end_offset` counts those records too); the embedded
    broker ignores transactions and answers the high watermark. One client per broker is
    kept for the whole session, so that polling in a tight loop costs a round trip and not
    a new connection each time."""
    return _end_offset(bootstrap, topic, partition, "read_committed")


def log_end_offset(bootstrap: str, topic: str, partition: int = 0) -> int:
    """The partition's high watermark: every record written, those of open (and aborted)
    transactions included; 0 when the partition does not exist (yet)."""
    return _end_offset(bootstrap, topic, partition, "read_uncommitted")


def _end_offset(bootstrap: str, topic: str, partition: int, isolation: str) -> int:
    consumer = _POLLERS.get(f"{isolation}@{bootstrap}")
    if consumer is None:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unifeed-tests",
                             "isolation.level": isolation})
        _POLLERS[f"{isolation}@{bootstrap}"] = consumer
    tp = TopicPartition(topic, partition)
    try:
        return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
    except Exception:
        pass
    # The kept client does not learn of a topic created since it last looked (a cached
    # "unknown partition"): ask the broker for that topic's metadata, then again.
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or partition not in metadata.partitions:
            return 0
        return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
    except Exception:
        return 0


def read_all(bootstrap: str, topic: str, partition: int = 0, timeout_s: float = 60) -> list[bytes]:
    """Every record value of a partition up to its current end (read_committed)."""
    end = high_watermark(bootstrap, topic, partition)
    if end == 0:
        return []
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unifeed-tests",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    out: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in consumer.consume(5000, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return out
                    raise RuntimeError(err.str())
                out.append(m.value() or b"")
        raise TimeoutError(f"reading {topic} took more than {timeout_s}s")
    finally:
        consumer.close()


def run_cli(
    args: Sequence[str], timeout_s: float = 120, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        timeout=timeout_s,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **kw,
    )


def start_cli(args: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **kw,
    )


def reap(*procs: subprocess.Popen[bytes]) -> None:
    """Kill whichever of ``procs`` still runs and wait for it (a test's cleanup)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"waited {timeout_s}s for {what}")


def combine_feeding_surface_later(
    bootstrap: str,
    args: Sequence[str],
    topics: tuple[str, str, str],
    surface: list[bytes],
    *,
    before: int,
    after: int,
    pause_s: float,
    end_at: int,
) -> list[bytes]:
    """Run ``unifeed combine`` (``args``) over ``topics`` = (controlstream, surfacestream,
    output): once it has written ``before`` records and ``pause_s`` has passed, produce
    ``surface``; once it has written ``after``, end both inputs with a keepalive at
    ``end_at`` (past its --stop-at). Asserts it exits 0; returns what it wrote."""
    ctl, srf, out = topics
    proc = start_cli(args)
    try:
        wait_for(lambda: len(read_all(bootstrap, out)) >= before, 60, f"{before} records written")
        time.sleep(pause_s)
        load(bootstrap, srf, surface)
        wait_for(lambda: len(read_all(bootstrap, out)) >= after, 60, f"{after} records written")
        load(bootstrap, ctl, [keepalive(end_at)])
        load(bootstrap, srf, [keepalive(end_at)])
        rc = proc.wait(timeout=60)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert rc == 0, stderr
    finally:
        reap(proc)
    return read_all(bootstrap, out)


class PacedLoader(threading.Thread):
    """Produces feeds as a live source would: in merged pitr order, each message when the
    wall clock reaches it. ``entries`` are ``(topic, pitr, line)`` with pitr near now."""

    def __init__(self, bootstrap: str, entries: list[tuple[str, int, bytes]]) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.entries = sorted(entries, key=lambda e: e[1])
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 1})
            for topic, pitr, line in self.entries:
                delay = pitr / 1000 - time.time()
                if delay > 0:
                    producer.flush(delay)
                    time.sleep(max(0.0, pitr / 1000 - time.time()))
                producer.produce(topic, line, partition=0, timestamp=pitr)
                producer.poll(0)
            producer.flush(30)
        except BaseException as exc:
            self.error = exc


def keepalive(pitr: int) -> bytes:
    return b'{"type":"keepalive","pitr":%d}' % pitr


class Follower(threading.Thread):
    """Reads a partition as it grows (for outputs larger than the broker's retention)."""

    def __init__(self, bootstrap: str, topic: str, partition: int = 0) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition = partition
        self.values: list[bytes] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "unifeed-tests",
                             "isolation.level": "read_committed",
                             "auto.offset.reset": "error",
                             "topic.metadata.refresh.interval.ms": 200})
        try:
            consumer.assign([TopicPartition(self.topic, self.partition, 0)])
            while not self.stop.is_set():
                for m in consumer.consume(5000, 0.05):
                    err = m.error()
                    if err is not None:
                        if err.code() in (KafkaError._PARTITION_EOF,
                                          KafkaError.UNKNOWN_TOPIC_OR_PART):
                            continue
                        raise RuntimeError(err.str())
                    self.values.append(m.value() or b"")
        except BaseException as exc:
            self.error = exc
        finally:
            consumer.close()

    def finish(self, expected: int, timeout_s: float = 60) -> list[bytes]:
        wait_for(lambda: len(self.values) >= expected or self.error is not None, timeout_s,
                 f"{expected} records in {self.topic}")
        time.sleep(0.3)  # anything beyond the expected count would show up now
        self.stop.set()
        self.join(10)
        if self.error is not None:
            raise self.error
        return self.values
