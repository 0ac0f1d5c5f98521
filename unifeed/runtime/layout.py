"""Which partitions a run reads (`FeedInput`): a feed's topic selection resolved against
the cluster's metadata, and the name each partition goes by (its *key*) in queues,
checkpoints and restart marks.

A feed read from one partition is keyed by its name (``controlstream``), as every
checkpoint written before partitioned inputs existed; a feed read from several is keyed
``NAME[P]`` per partition (``controlstream[2]``), each its own FIFO queue, position and
restart offset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec
from confluent_kafka import Consumer

from unifeed.checkpoint.store import FeedCheckpoint
from unifeed.core.errors import StartRefusedError
from unifeed.kafka.clients import Target, TopicSelection, consumer_config, partition_count
from unifeed.runtime.options import RuntimeOptions

log = logging.getLogger("unifeed")



def partition_key(feed: str, partition: int) -> str:
    """The key of one partition of a feed read from several.

    >>> partition_key("surfacestream", 3)
    'surfacestream[3]'
    """
    return f"{feed}[{partition}]"


def feed_of(key: str) -> str:
    """The feed a key belongs to.

    >>> feed_of("surfacestream[3]"), feed_of("controlstream")
    ('surfacestream', 'controlstream')
    """
    return key.partition("[")[0]


@dataclass(frozen=True)
class FeedInput:
    """One feed of a run: its name, its selection and the partitions it is read from.

    ``every_partition``: the selection was ``kafka:TOPIC`` (a partition added to the
    topic belongs to the feed; see `unifeed.runtime.partwatch`).
    """

    name: str
    targets: tuple[Target, ...]
    every_partition: bool = False
    #: A topic read whole that did not exist at start (``--wait-for-topics``): read as
    #: partition 0 until it exists.
    missing_at_start: bool = False

    @property
    def topic(self) -> str:
        return self.targets[0].topic

    @property
    def split(self) -> bool:
        """Read from several partitions (merged inside the feed before anything else)."""
        return len(self.targets) > 1

    def key(self, target: Target) -> str:
        return partition_key(self.name, target.partition) if self.split else self.name

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.key(t) for t in self.targets)

    def by_key(self) -> dict[str, Target]:
        return {self.key(t): t for t in self.targets}

    def partition_of(self, key: str) -> int | None:
        """The partition a dead letter of ``key`` names (None for a feed of one)."""
        return self.by_key()[key].partition if self.split else None


def resolve(options: RuntimeOptions, name: str, source: Target | TopicSelection) -> FeedInput:
    """The partitions ``source`` stands for now.

    A `Target` is that one partition. A `TopicSelection` of every partition asks the
    cluster how many the topic has; a topic that does not exist yet is read as partition
    0: the start's input check refuses it, or, with ``wait_for_topics``, its reader waits
    for it, and the partition watch stops the run if it is created with more partitions
    (`unifeed.runtime.partwatch`).
    """
    if isinstance(source, Target):
        return FeedInput(name, (source,))
    if source.partitions is not None:
        # The topic's metadata decides whether the listed partitions exist: the start's
        # input check names any that do not.
        return FeedInput(name, tuple(Target(source.topic, p) for p in source.partitions))
    count = topic_partitions(options, source.topic)
    if count is None:
        return FeedInput(
            name, (Target(source.topic, 0),), every_partition=True, missing_at_start=True
        )
    return FeedInput(name, tuple(source.targets(count)), every_partition=True)


def topic_partitions(options: RuntimeOptions, topic: str) -> int | None:
    """The topic's partition count from the cluster's metadata; None: no such topic."""
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    try:
        return partition_count(consumer, topic, options.connect_timeout_s)
    finally:
        consumer.close()


def check_unique(feeds: list[FeedInput]) -> None:
    """Two feeds of one run never read the same partition."""
    seen: dict[Target, str] = {}
    for f in feeds:
        for t in f.targets:
            if t in seen:
                raise StartRefusedError(
                    f"{t} is read by both {seen[t]} and {f.name}; give each feed its own partitions"
                )
            seen[t] = f.name


def _recorded_target(key: str, source: str | None) -> Target | None:
    """Where a checkpoint's feed position was read from: its ``source``, else (records
    written before sources existed) unknown."""
    if source is None:
        return None
    topic, _, partition = source.rpartition(":")
    if not topic or not partition.isdigit():
        return None
    return Target(topic, int(partition))


def rekey(recorded: Mapping[str, FeedCheckpoint], inputs: Mapping[str, Target]) -> dict[str, FeedCheckpoint]:
    """A checkpoint's positions under this run's keys: a position read from a partition
    this run also reads, for the same feed, takes that partition's key (a feed that had
    one partition and now has several, or the other way round, keeps its positions).

    >>> from unifeed.checkpoint.store import FeedCheckpoint as P
    >>> old = {"controlstream": P(pitr=5, skip=1, source="c:0")}
    >>> rekey(old, {"controlstream[0]": Target("c", 0), "controlstream[1]": Target("c", 1)})
    {'controlstream[0]': FeedCheckpoint(pitr=5, skip=1, dead_offset=None, offset=None, source='c:0')}
    """
    by_target = {(feed_of(k), t): k for k, t in inputs.items()}
    out: dict[str, FeedCheckpoint] = {}
    for key, pos in recorded.items():
        target = _recorded_target(key, pos.source)
        new = by_target.get((feed_of(key), target)) if target is not None else None
        out[new if new is not None and new not in recorded else key] = pos
    return out


class PartitionChange(msgspec.Struct, frozen=True, gc=False):
    """A feed whose topic's partitions differ from those its checkpoint read."""

    feed: str
    topic: str
    recorded: tuple[int, ...]
    now: tuple[int, ...]

    @property
    def added(self) -> tuple[int, ...]:
        return tuple(p for p in self.now if p not in self.recorded)

    @property
    def removed(self) -> tuple[int, ...]:
        return tuple(p for p in self.recorded if p not in self.now)

    def describe(self) -> str:
        parts = [f"{self.feed} read kafka:{self.topic} partitions {_listed(self.recorded)}"]
        if self.added:
            parts.append(f"now also {_listed(self.added)}")
        if self.removed:
            parts.append(f"no longer {_listed(self.removed)}")
        return ", ".join(parts)


def partition_changes(
    recorded: Mapping[str, FeedCheckpoint], inputs: Mapping[str, Target]
) -> list[PartitionChange]:
    """Feeds read from the same topic as the checkpoint says, but from other partitions.

    >>> from unifeed.checkpoint.store import FeedCheckpoint as P
    >>> was = {"controlstream": P(pitr=5, skip=1, source="c:0")}
    >>> now = {"controlstream[0]": Target("c", 0), "controlstream[1]": Target("c", 1)}
    >>> [c.describe() for c in partition_changes(rekey(was, now), now)]
    ['controlstream read kafka:c partitions 0, now also 1']
    """
    was: dict[tuple[str, str], set[int]] = {}
    for key, pos in recorded.items():
        target = _recorded_target(key, pos.source)
        if target is not None:
            was.setdefault((feed_of(key), target.topic), set()).add(target.partition)
    now: dict[tuple[str, str], set[int]] = {}
    for key, target in inputs.items():
        now.setdefault((feed_of(key), target.topic), set()).add(target.partition)
    return [
        PartitionChange(feed, topic, tuple(sorted(was[feed, topic])), tuple(sorted(parts)))
        for (feed, topic), parts in now.items()
        if (feed, topic) in was and was[feed, topic] != parts
    ]


def _listed(partitions: tuple[int, ...]) -> str:
    return ", ".join(map(str, partitions))


def lowest_position(positions: Mapping[str, FeedCheckpoint], keys: Iterable[str]) -> int:
    """The pitr every feed of ``keys`` has been processed up to: per feed, the highest of
    its partitions' positions (a feed's partitions are merged in pitr order, so each of
    them has passed that pitr, an idle one too), the lowest across feeds.

    >>> from unifeed.checkpoint.store import FeedCheckpoint as P
    >>> lowest_position({"c[0]": P(pitr=9, skip=0), "c[1]": P(pitr=0, skip=0),
    ...                  "s": P(pitr=7, skip=1)}, ["c[0]", "c[1]", "s"])
    7
    """
    per_feed: dict[str, int] = {}
    for key in keys:
        feed = feed_of(key)
        per_feed[feed] = max(per_feed.get(feed, 0), positions[key].pitr)
    return min(per_feed.values())
