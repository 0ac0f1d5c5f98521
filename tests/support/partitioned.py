"""Helpers for partitioned topics: load a file spread by key (through `unifeed load`, as a
user would), read a topic's partitions back, and their merge by (pitr, partition)."""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka import Producer

from tests.support.kafkatools import partitioned_topic, pitr_of, read_all, run_cli, wait_for


def load_file(bootstrap: str, topic: str, lines: list[bytes], path: Path, *extra: str) -> None:
    """``unifeed load PATH --topic kafka:TOPIC EXTRA...`` (e.g. ``--key id``)."""
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    done = run_cli(["load", str(path), "--topic", f"kafka:{topic}", "--bootstrap-servers",
                    bootstrap, *extra])
    assert done.returncode == 0, done.stderr.decode()


def keyed_topic(bootstrap: str, broker_kind: str, topic: str, partitions: int,
                lines: list[bytes], field: str, path: Path) -> None:
    """A topic of ``partitions`` partitions holding ``lines`` spread by ``--key field``."""
    partitioned_topic(bootstrap, broker_kind, topic, partitions)
    if broker_kind == "embedded":
        _auto_create(bootstrap, topic)
    load_file(bootstrap, topic, lines, path, "--key", field)


def pinned_topic(bootstrap: str, broker_kind: str, topic: str, partitions: int,
                 groups: list[list[bytes]], path: Path) -> None:
    """A topic of ``partitions`` partitions, ``groups[p]`` loaded into partition p
    (partitions past the groups get nothing)."""
    partitioned_topic(bootstrap, broker_kind, topic, partitions)
    for p, group in enumerate(groups):
        if group:
            load_file(bootstrap, topic, group, path, "--partition", str(p))


def partitions_of(bootstrap: str, topic: str, partitions: int) -> list[list[bytes]]:
    return [read_all(bootstrap, topic, p) for p in range(partitions)]


def merged_by_partition(parts: list[list[bytes]]) -> list[bytes]:
    """Every record of ``parts`` (one list a partition, in offset order), merged by
    (pitr, partition, offset): a stable sort, independent of unifeed's merge."""
    rows = [(pitr_of(line), p, i, line) for p, part in enumerate(parts) for i, line in enumerate(part)]
    return [line for *_, line in sorted(rows)]


def without_keepalives(lines: list[bytes]) -> list[bytes]:
    return [x for x in lines if json.loads(x).get("type") != "keepalive"]


def _auto_create(bootstrap: str, topic: str) -> None:
    """The embedded broker creates a topic (4 partitions) when a producer asks for its
    metadata by name; `unifeed load --key` needs it to exist."""
    producer = Producer({"bootstrap.servers": bootstrap})

    def exists() -> bool:
        found = producer.list_topics(topic, timeout=5).topics.get(topic)
        return found is not None and found.error is None and len(found.partitions) > 0

    wait_for(exists, 30, f"{topic} to be auto-created")
