"""Benchmark session set-up: markers, shared inputs, and a place to compare peers.

Every benchmark that asserts a target measures its peer in the same session, interleaved
with its own rounds (`benchmarks._peers.Interleaved`), and asserts the *ratio* of the two
medians, never a wall-clock time.

Options (``pytest benchmarks --help``, group "unifeed benchmarks"): sizes can be lowered
for a quick look (the targets are asserted at any size, except the memory run's flatness,
which needs more than two million records), and the Kafka runs can be profiled. They are
command-line options rather than environment variables because unifeed's command line
refuses ``UNIFEED_*`` variables it does not know, and the file-pipeline benchmark runs it.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._data import KafkaTraffic, busy_airport_dir
from benchmarks._kafka_harness import Profiler
from benchmarks._options import BenchOptions
from benchmarks._peers import SUMMARY


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unifeed benchmarks")
    sizes = (
        ("--merge-messages", 1_000_000, "messages merged by the combining-rule benchmark"),
        ("--kafka-messages", 1_000_000, "records of each Kafka throughput run"),
        ("--memory-messages", 5_000_000, "records of the Kafka memory run"),
        ("--kafka-rounds", 3, "rounds of each Kafka contender"),
    )
    for flag, default, what in sizes:
        group.addoption(
            flag, type=int, default=default, metavar="N", help=f"{what} (default {default:,})"
        )
    group.addoption(
        "--pyspy",
        metavar="PATH",
        help="run each measured Kafka process under this py-spy binary (`py-spy record`); "
        "numbers measured so are not results",
    )
    group.addoption(
        "--pyspy-args",
        default="",
        metavar="ARGS",
        help="more py-spy record options, e.g. --gil or --idle",
    )
    group.addoption(
        "--profile-dir",
        metavar="DIR",
        help="where the py-spy profiles go (default: the temporary directory)",
    )


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
    config.addinivalue_line(
        "markers",
        "serve_bench: unifeed serve under WebSocket load (about a minute; -m serve_bench)",
    )


@pytest.fixture(scope="session")
def bench_options(pytestconfig: pytest.Config) -> BenchOptions:
    def positive(flag: str) -> int:
        value = int(pytestconfig.getoption(flag))
        if value < 1:
            raise pytest.UsageError(f"{flag} must be >= 1, got {value}")
        return value

    binary = pytestconfig.getoption("--pyspy")
    profiler = None
    if binary:
        profiler = Profiler(
            binary=binary,
            options=tuple(shlex.split(pytestconfig.getoption("--pyspy-args") or "")),
            directory=Path(pytestconfig.getoption("--profile-dir") or tempfile.gettempdir()),
        )
    return BenchOptions(
        merge_messages=positive("--merge-messages"),
        kafka_messages=positive("--kafka-messages"),
        memory_messages=positive("--memory-messages"),
        kafka_rounds=positive("--kafka-rounds"),
        profiler=profiler,
    )


@pytest.fixture(scope="session")
def busy_airport(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``(controlstream, surfacestream, source)`` files of the busy-airport scenario."""
    return busy_airport_dir(tmp_path_factory.mktemp("busy-airport"))


@pytest.fixture(scope="session")
def kafka_traffic(bench_options: BenchOptions) -> Iterator[KafkaTraffic]:
    """Simulated traffic for the Kafka runs (generated once: ~25 s for 1M messages)."""
    yield KafkaTraffic.simulate(bench_options.kafka_messages)
