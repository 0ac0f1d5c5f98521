"""Bounds, intervals and defaults of the Kafka runtime, one constant each."""

from __future__ import annotations

import logging
from typing import Final

from confluent_kafka import KafkaError, Message

log = logging.getLogger("unifeed")

READ_BATCH: Final = 5000
LANE_BATCHES: Final = 8
MARK_SPAN: Final = 5000  # offsets: restart marks closer than this are merged
STAGE_CAPACITY: Final = 50_000
#: What the queues of one merge stage hold together (records): two feeds get
#: STAGE_CAPACITY each, more share it, never below two read batches a queue.
STAGE_BUDGET: Final = 2 * STAGE_CAPACITY
#: What a feed read from several partitions has in its merge (records: each partition's
#: messages in its merge's lane and queue), one budget whatever its partition count:
#: each partition gets its share (`partition_share`), as the feeds of a run share
#: `STAGE_BUDGET`; its reader holds at most as many more, undecoded, then pauses it. Four
#: partitions get 10,000 records each, about one fetch of a partition
#: (``max.partition.fetch.bytes``, 1 MiB): a share below one fetch made the reader pause
#: a partition ~45 times a run, and the Kafka client drops and fetches again what it had
#: fetched ahead of a paused partition (benchmarks/README.md, "The merge budget").
FEED_MERGE_BUDGET: Final = 8 * READ_BATCH
MIN_PARTITION_SHARE: Final = READ_BATCH // 10
#: What a run's consumers buffer ahead together (librdkafka's fetch queue and largest
#: fetch, KiB): two one-partition feeds get 16 MiB each, more consumers share it.
READ_AHEAD_BUDGET_KB: Final = 32_768
MIN_READ_AHEAD_KB: Final = 2_048
#: What one fetch of a run's consumer may bring all its partitions together (KiB): each
#: partition gets its share (``max.partition.fetch.bytes``), at most librdkafka's
#: default of 1 MiB (up to 8 partitions), never below 64 KiB (librdkafka grows it for a
#: record larger than that).
FETCH_BUDGET_KB: Final = 8_192
MAX_PARTITION_FETCH_KB: Final = 1_024
MIN_PARTITION_FETCH_KB: Final = 64


def lane_batches(lanes: int) -> int:
    """Batches each lane of an inbox of ``lanes`` may hold: LANE_BATCHES each for two
    lanes, shared among more, never below two."""
    return max(2, 2 * LANE_BATCHES // max(1, lanes))


def queue_capacity(queues: int) -> int:
    """Each queue's share of `STAGE_BUDGET` among ``queues``."""
    return max(2 * READ_BATCH, STAGE_BUDGET // max(1, queues))


def partition_share(partitions: int) -> int:
    """Each partition's share of `FEED_MERGE_BUDGET` among its feed's ``partitions``
    (never below `MIN_PARTITION_SHARE`, so that a merge of many partitions still moves
    batches, not single records)."""
    return max(MIN_PARTITION_SHARE, FEED_MERGE_BUDGET // max(1, partitions))


def partition_fetch_kb(partitions: int) -> int:
    """Each partition's share of `FETCH_BUDGET_KB` among ``partitions``."""
    return max(
        MIN_PARTITION_FETCH_KB,
        min(MAX_PARTITION_FETCH_KB, FETCH_BUDGET_KB // max(1, partitions)),
    )


def read_ahead_kb(consumers: int) -> int:
    """Each consumer's share of `READ_AHEAD_BUDGET_KB` among ``consumers``."""
    return max(MIN_READ_AHEAD_KB, READ_AHEAD_BUDGET_KB // max(1, consumers))
JOIN_TIMEOUT_S: Final = 30.0
IDLE_S: Final = 0.05
# Threads hand over whole batches: longer GIL slices mean fewer costly hand-overs.
SWITCH_INTERVAL_S: Final = 0.02
POLL_EVERY_S: Final = 0.05
MESSAGE_VALUE: Final = Message.value
MESSAGE_ERROR: Final = Message.error
MESSAGE_OFFSET: Final = Message.offset
MESSAGE_PARTITION: Final = Message.partition
MESSAGE_TOPIC: Final = Message.topic
DEAD_LETTER_MAX_BYTES: Final = 512 * 1024
MISSING_WARN_EVERY_S: Final = 30.0
UNKNOWN_CODES: Final = frozenset({"_UNKNOWN_PARTITION", "_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART"})
#: A checkpoint position this far past the wall clock that no input record reaches is
#: stale (a test's, another system's), not a future the inputs will bring: refused.
FUTURE_TOLERANCE_MS: Final = 5 * 60_000
# Deriver snapshots: at most one per this much pitr and per this many input messages
# (and never more often than 20 messages per entry of the previous one, so that their
# cost stays a small constant per message whatever the state's size); at most this many
# held between the reader and the commit that saves one (older ones thinned).
SNAPSHOT_EVERY_PITR_MS: Final = 5 * 60_000
SNAPSHOT_EVERY_MESSAGES: Final = 5000
SNAPSHOT_MESSAGES_PER_ENTRY: Final = 20
SNAPSHOTS_HELD: Final = 16
STATE_PART_BYTES: Final = 256 * 1024
TRANSIENT: Final = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
    }
)
