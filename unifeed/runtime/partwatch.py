"""The partition watch (`PartitionWatch`): a topic read whole that gains partitions while
a run reads it stops the run, instead of leaving the new partitions unread."""

from __future__ import annotations

import logging
import time
from typing import Final

from confluent_kafka import Consumer

from unifeed.core.errors import KafkaRuntimeError, PartitionChangeError
from unifeed.kafka.clients import consumer_config, partition_count
from unifeed.runtime.layout import FeedInput
from unifeed.runtime.options import RuntimeOptions

log = logging.getLogger("unifeed")

#: How often the cluster's metadata is asked for the partition counts.
PARTITION_WATCH_S: Final = 3.0


class PartitionWatch:
    """Asks the metadata of every topic read whole (``kafka:TOPIC``) now and then;
    `check` raises `PartitionChangeError` (exit 2) once one has more partitions than the
    run reads. The run then stops without committing again: its last checkpoint stands,
    and a restart with ``--accept-partition-change`` reads the new partitions from their
    first offset (docs/operations.md, "Partitioned inputs")."""

    def __init__(
        self, options: RuntimeOptions, feeds: list[FeedInput], every_s: float = PARTITION_WATCH_S
    ) -> None:
        self.options = options
        self.feeds = [f for f in feeds if f.every_partition]
        self.every_s = every_s
        self.last_check = time.monotonic()
        self._client: Consumer | None = None

    def check(self) -> None:
        if not self.feeds:
            return
        now = time.monotonic()
        if now - self.last_check < self.every_s:
            return
        self.last_check = now
        if self._client is None:
            self._client = Consumer(consumer_config(self.options.bootstrap, self.options.kafka_extra))
        for f in self.feeds:
            try:
                count = partition_count(self._client, f.topic, 2.0)
            except KafkaRuntimeError as exc:
                # The broker's health is BrokerHealth's to judge; the other topics wait
                # for the next check (each question would wait as long for no answer).
                log.debug("%s: partition watch: %s", self.options.instance, exc)
                return
            if count is None or count <= len(f.targets):
                continue
            read = len(f.targets)
            new = ", ".join(str(p) for p in range(read, count))
            if f.missing_at_start:
                raise PartitionChangeError(
                    f"kafka:{f.topic} ({f.name}) did not exist when this run started, so it "
                    f"reads partition 0 only; it was created with {count} partitions, and "
                    f"partition(s) {new} would never be read. The run stops without committing "
                    "again (its last checkpoint stands). Run the same command again (add "
                    "--accept-partition-change once a checkpoint exists) to read every "
                    "partition"
                )
            raise PartitionChangeError(
                f"kafka:{f.topic} ({f.name}) now has {count} partitions; this run reads "
                f"{read} (0..{read - 1}) and would never read partition(s) {new}. It stops "
                "without committing again (its last checkpoint stands). Run the same command "
                "again with --accept-partition-change to read the new partitions from their "
                "first offset"
            )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
