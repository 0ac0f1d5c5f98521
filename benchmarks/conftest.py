"""Benchmark session set-up: markers, shared inputs, and a place to compare peers.

Every benchmark that asserts a target measures its peer in the same session, interleaved
with its own rounds (`benchmarks._peers.Interleaved`), and asserts the *ratio* of the two
medians, never a wall-clock time.

Sizes can be lowered for a quick look (the targets are asserted at any size):

* ``UNIFEED_BENCH_MERGE_MESSAGES`` (default 1,000,000): the combining-rule benchmark;
* ``UNIFEED_BENCH_KAFKA_MESSAGES`` (default 1,000,000): the Kafka throughput runs;
* ``UNIFEED_BENCH_MEMORY_MESSAGES`` (default 5,000,000): the Kafka memory run;
* ``UNIFEED_BENCH_KAFKA_ROUNDS`` (default 3): rounds of each Kafka contender.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._data import KafkaTraffic, busy_airport_dir
from benchmarks._peers import SUMMARY, env_int


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY:
        terminalreporter.section("unifeed: subject vs peer (same session)")
        for line in SUMMARY:
            terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kafka_bench: end-to-end runs on the embedded broker (long; select with -m kafka_bench)",
    )


@pytest.fixture(scope="session")
def busy_airport(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``(controlstream, surfacestream, source)`` files of the busy-airport scenario."""
    return busy_airport_dir(tmp_path_factory.mktemp("busy-airport"))


@pytest.fixture(scope="session")
def kafka_traffic() -> Iterator[KafkaTraffic]:
    """Simulated traffic for the Kafka runs (generated once: ~25 s for 1M messages)."""
    count = env_int("UNIFEED_BENCH_KAFKA_MESSAGES", 1_000_000)
    yield KafkaTraffic.simulate(count)
