"""Benchmark session set-up: markers, shared inputs, and a place to compare peers.

Every benchmark that asserts a target measures its peer in the same session (same machine,
same load) and asserts the *ratio* of the two medians, never a wall-clock time. The
medians are collected in `PeerResults` as each benchmark finishes.

Sizes can be lowered for a quick look (the targets are asserted at any size):

* ``UNIFEED_BENCH_MERGE_MESSAGES`` (default 1,000,000): the combining-rule benchmark;
* ``UNIFEED_BENCH_KAFKA_MESSAGES`` (default 1,000,000): the Kafka throughput runs;
* ``UNIFEED_BENCH_MEMORY_MESSAGES`` (default 5,000,000): the Kafka memory run;
* ``UNIFEED_BENCH_KAFKA_ROUNDS`` (default 3): rounds of each Kafka contender.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks._data import KafkaTraffic, busy_airport_dir


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kafka_bench: end-to-end runs on the embedded broker (long; select with -m kafka_bench)",
    )


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip().replace("_", "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class PeerResults:
    """Per-round seconds of each contender, by name, for the ratio checks."""

    def __init__(self) -> None:
        self.rounds: dict[str, list[float]] = {}

    def record(self, name: str, benchmark: Any) -> float:
        """Keep a finished benchmark's rounds; return its median in seconds."""
        data = list(benchmark.stats.stats.data)
        self.rounds[name] = data
        return statistics.median(data)

    def median(self, name: str) -> float | None:
        data = self.rounds.get(name)
        return None if not data else statistics.median(data)


@pytest.fixture(scope="session")
def peers() -> PeerResults:
    return PeerResults()


@pytest.fixture(scope="session")
def busy_airport(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``(controlstream, surfacestream, source)`` files of the busy-airport scenario."""
    return busy_airport_dir(tmp_path_factory.mktemp("busy-airport"))


@pytest.fixture(scope="session")
def kafka_traffic() -> Iterator[KafkaTraffic]:
    """Simulated traffic for the Kafka runs (generated once: ~25 s for 1M messages)."""
    count = env_int("UNIFEED_BENCH_KAFKA_MESSAGES", 1_000_000)
    yield KafkaTraffic.simulate(count)
