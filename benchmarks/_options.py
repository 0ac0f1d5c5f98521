"""The benchmark session's options (``pytest benchmarks --help``: "unifeed benchmarks")."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks._kafka_harness import Profiler


@dataclass(frozen=True)
class BenchOptions:
    """Sizes of the runs, and the profiler to run the Kafka processes under (if any)."""

    merge_messages: int
    kafka_messages: int
    memory_messages: int
    kafka_rounds: int
    profiler: Profiler | None
    #: Brokers the Kafka benchmarks run on, in order: ``apache-kafka`` and/or ``embedded``.
    kafka_brokers: tuple[str, ...] = ("embedded",)
