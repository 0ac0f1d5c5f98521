"""`RuntimeOptions`: what one Kafka run is asked to do. Built by the command line
(`unifeed.cli.kafka_run`) or by a program that embeds a run; no argparse here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from unifeed.checkpoint import CHECKPOINT_TOPIC
from unifeed.core.combine import DEFAULT_REALTIME_THRESHOLD_MS
from unifeed.kafka import DEFAULT_BROKER_TIMEOUT_S

START_EARLIEST: Final = "earliest"
START_LATEST: Final = "latest"
#: Where a run without a checkpoint starts: the earliest stored record, just after the
#: latest one, or a pitr (milliseconds since the epoch).
Start = Literal["earliest", "latest"] | int

EXACTLY_ONCE: Final = "exactly-once"
AT_LEAST_ONCE: Final = "at-least-once"
#: exactly-once: output and checkpoint in one transaction; at-least-once: no
#: transactions, a restart may write the tail after the last checkpoint again.
DeliveryMode = Literal["exactly-once", "at-least-once"]

#: How much input a restart without saved state replays to rebuild links, by default.
DEFAULT_LOOKBACK_MS: Final = 6 * 3_600_000


@dataclass
class RuntimeOptions:
    """The settings of one run; every field but ``bootstrap`` has the command's default."""

    bootstrap: str
    instance: str = "unifeed"
    checkpoint_topic: str = CHECKPOINT_TOPIC
    start: Start = START_EARLIEST
    stop_at: int | None = None
    exit_at_end: bool = False
    delivery: DeliveryMode = EXACTLY_ONCE
    realtime_threshold_ms: int = DEFAULT_REALTIME_THRESHOLD_MS
    strict_order: bool = False
    lookback_ms: int = DEFAULT_LOOKBACK_MS
    commit_interval_ms: int = 100
    commit_max_records: int = 10_000
    #: While the output is catching up (a backlog older than the real-time threshold):
    #: a commit waits for the broker and holds up the writing, and a backlog's reader
    #: gains nothing from seeing it in 100 ms steps. The longer of these and the live
    #: bounds above applies (`Committer.due`).
    catchup_commit_interval_ms: int = 1000
    catchup_commit_max_records: int = 100_000
    dead_letter: str | None = None
    max_dead_letters: int | None = None
    kafka_extra: dict[str, Any] = field(default_factory=dict)
    #: The progress line's interval, for a caller that shows one (0: none).
    status_interval_s: float = 2.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    connect_timeout_s: float = 10.0
    broker_timeout_s: float = DEFAULT_BROKER_TIMEOUT_S
    claim_grace_s: float = 1.0
    end_of_log_grace_s: float = 2.0
    wait_for_topics: bool = False
    allow_nonempty_output: bool = False
    #: Resume a checkpoint although an input's partitions changed since (partitions added
    #: to a topic read whole, or another selection): new partitions are read from their
    #: first offset, positions of partitions no longer read are dropped. Without it such
    #: a start is refused (docs/operations.md, "Partitioned inputs").
    accept_partition_change: bool = False
    clock: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
