"""The checks that refuse a start (`StartCheck`): a checkpoint must belong to this
command, this output and these inputs, and must not point past what the output or an
input holds. Pure: the output's watermarks and the search of an input by pitr are given."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import msgspec

from unifeed.checkpoint import CHECKPOINT_TOPIC
from unifeed.checkpoint.store import Checkpoint
from unifeed.core.errors import KafkaRuntimeError, StartRefusedError
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM, SURFACESTREAM
from unifeed.kafka.clients import Target
from unifeed.runtime.layout import feed_of, partition_changes, rekey
from unifeed.runtime.limits import FUTURE_TOLERANCE_MS, UNKNOWN_CODES
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.seek import find_by_pitr

#: Whether an input holds a record at or after a pitr (`input_reaches`).
Reaches = Callable[[Target, int], bool]


@dataclass(frozen=True)
class StartCheck:
    """Refuses (`StartRefusedError`, exit 2) a start that would duplicate or lose output,
    naming what differs and the way out.

    ``feeds`` are the keys this run keeps positions for, ``inputs`` every input by key
    (where it is read from).
    """

    options: RuntimeOptions
    output: Target
    feeds: tuple[str, ...]
    inputs: Mapping[str, Target]

    def rekeyed(self, cp: Checkpoint | None) -> Checkpoint | None:
        """``cp`` with its positions under this run's partition keys (`layout.rekey`);
        with ``accept_partition_change``, without the partitions no longer read."""
        if cp is None or not cp.feeds:
            return cp
        feeds = rekey(cp.feeds, self.inputs)
        if self.options.accept_partition_change:
            changed = {c.feed for c in partition_changes(feeds, self.inputs)}
            feeds = {k: p for k, p in feeds.items() if k in self.inputs or feed_of(k) not in changed}
        if feeds == cp.feeds:
            return cp
        return msgspec.structs.replace(cp, feeds=feeds)

    def check(
        self,
        cp: Checkpoint | None,
        cp_offset: int,
        watermarks: tuple[int, int],
        reaches: Reaches,
        *,
        output_before: tuple[int, int] | None = None,
    ) -> None:
        """Refuse a start that would duplicate or lose output.

        ``watermarks`` are the output's now. A new instance (no checkpoint) writes to an
        empty output unless ``allow_nonempty_output`` (judged on ``output_before``, the
        output's watermarks read before ``cp``; skipped without them); a checkpoint
        belongs to this output and these inputs, its output offset is not past the
        output's end, and no feed is past both the wall clock and every record of its
        input (``reaches``).
        """
        o = self.options
        name = o.instance
        low, high = watermarks
        topic_option = (
            f" --checkpoint-topic {o.checkpoint_topic}"
            if o.checkpoint_topic != CHECKPOINT_TOPIC
            else ""
        )
        reset = f"`unifeed checkpoint reset --instance {name}{topic_option}`"
        where = f"the checkpoint of instance {name!r} (kafka:{o.checkpoint_topic}:0 offset {cp_offset})"
        if cp is None or not cp.feeds:
            if output_before is None or o.allow_nonempty_output:
                return
            first, end = output_before
            if end > first:
                raise StartRefusedError(
                    f"instance {name!r} has no checkpoint in kafka:{o.checkpoint_topic}:0, "
                    f"but its output {self.output} already holds records (offsets {first} to "
                    f"{end - 1}): starting over would write them again. Check "
                    "--checkpoint-topic and --instance; or write to a new output topic; or "
                    "pass --allow-nonempty-output to append after those records"
                )
            return
        holder = run_kind(cp.feeds)
        if holder != run_kind(self.feeds):
            # Another command's run holds the name: refused before init_transactions,
            # which would fence that run's producer (same transactional.id).
            held_output = (
                f" writing kafka:{cp.output.topic}:{cp.output.partition}"
                if cp.output is not None
                else ""
            )
            raise StartRefusedError(
                f"instance name {name!r} is held by a `unifeed {holder}` run{held_output} "
                f"({where}); give this run its own --instance"
            )
        if cp.output is not None and (
            cp.output.topic != self.output.topic or cp.output.partition != self.output.partition
        ):
            raise StartRefusedError(
                f"instance {name!r} wrote to kafka:{cp.output.topic}:{cp.output.partition}, "
                f"not {self.output}; use another --instance, or {reset}"
            )
        changes = partition_changes(cp.feeds, self.inputs)
        if changes and not o.accept_partition_change:
            raise StartRefusedError(
                f"{where} was written when the inputs had other partitions: "
                f"{'; '.join(c.describe() for c in changes)}. Resuming as if nothing had "
                "changed would never read a new partition (or would drop a position). To go "
                "on, run again with --accept-partition-change: new partitions are read from "
                "their first offset (their records come after the output already written), "
                "positions of partitions no longer read are dropped"
            )
        moved = {c.feed for c in changes}
        recorded = {
            f: p.source
            for f, p in cp.feeds.items()
            if p.source is not None and feed_of(f) not in moved
        }
        if recorded:  # positions without a source are not checked
            now = {
                f: f"{t.topic}:{t.partition}"
                for f, t in self.inputs.items()
                if feed_of(f) not in moved
            }
            changed = [f for f in sorted(set(recorded) | set(now)) if recorded.get(f) != now.get(f)]
            if changed:
                # One clause a feed, its partitions together (`kafka:T:0,1,2`).
                feeds = sorted({feed_of(f) for f in changed})
                what = "; ".join(
                    f"{feed} was read from {sources(recorded, feed)}, now from "
                    f"{sources(now, feed)}"
                    for feed in feeds
                )
                raise StartRefusedError(
                    f"{where} belongs to other inputs ({what}): its positions mean nothing "
                    f"in these, and resuming would mix two datasets in {self.output}. Give the "
                    f"same inputs, or use another --instance and output topic, or {reset} "
                    "(then write to a new output topic)"
                )
        if cp.output is not None:
            if cp.output.next_offset > high:
                raise StartRefusedError(
                    f"{where} covers output {self.output} up to offset "
                    f"{cp.output.next_offset}, but the output ends at offset {high}: the "
                    "output topic was deleted, recreated or truncated since, and a restart "
                    "could not tell what it already wrote (it would write records twice). "
                    f"Start over: {reset}, then run into a new or empty output topic"
                )
            if cp.output.next_offset < low:
                raise StartRefusedError(
                    f"{where} points at output offset {cp.output.next_offset}, below the "
                    f"first stored offset {low} of {self.output}: retention deleted what a "
                    "restart must compare its first records with, so it could write them "
                    f"twice. Start over: {reset}, then run into a new or empty output topic"
                )
        self._check_not_future(cp, where, reset, reaches)

    def _check_not_future(self, cp: Checkpoint, where: str, reset: str, reaches: Reaches) -> None:
        """A feed position past the wall clock must be one its input reaches."""
        o = self.options
        horizon = o.clock() + FUTURE_TOLERANCE_MS
        start_ms = o.start if isinstance(o.start, int) else None
        for feed, pos in cp.feeds.items():
            target = self.inputs.get(feed)
            if target is None or pos.pitr <= horizon:
                continue
            if pos.pitr == start_ms and pos.skip == 0:
                continue  # the first checkpoint of this very `--start` in the future
            # (pitr, 0) says everything before pitr is done: a `--start latest` one is the
            # last record's pitr + 1.
            wanted = pos.pitr - 1 if pos.skip == 0 else pos.pitr
            if reaches(target, wanted):
                continue  # the input holds a record that late: a real position
            raise StartRefusedError(
                f"{where} says {feed} was processed up to pitr {pos.pitr} "
                f"({_iso(pos.pitr)}), later than now and than every record of {target}: it "
                "is stale (written for other data, or by a wrong clock), and resuming would "
                f"skip everything before it. Start over: {reset}"
            )


def input_reaches(options: RuntimeOptions) -> Reaches:
    """`Reaches` on the broker: the search by pitr finds a record at or after it (a
    missing topic reaches nothing)."""

    def reaches(target: Target, pitr: int) -> bool:
        try:
            return find_by_pitr(options, target, pitr).method not in ("after_last", "empty")
        except KafkaRuntimeError as exc:
            if exc.code not in UNKNOWN_CODES:
                raise
            return False

    return reaches


def run_kind(feeds: Iterable[str]) -> str:
    """Which command's run reads these feeds (checkpoint keys, one a partition of a feed
    read from several: ``surfacestream[2]``): combine reads surfacestream, mappings
    controlstream alone, merge feeds of its own names.

    >>> run_kind(["controlstream[0]", "controlstream[1]", "surfacestream"])
    'combine'
    >>> run_kind(["controlstream"]), run_kind(["radar", "adsb[3]"])
    ('mappings', 'merge')
    """
    names = {feed_of(key) for key in feeds}
    if SURFACESTREAM in names and names <= {CONTROLSTREAM, SURFACESTREAM, MAPPINGSTREAM}:
        return "combine"
    if names == {CONTROLSTREAM}:
        return "mappings"
    return "merge"


def sources(recorded: dict[str, str], feed: str) -> str:
    """Where a feed was read from, as people write it: ``kafka:T:0`` or ``kafka:T:0,1,2``.

    >>> sources({"c[0]": "t:0", "c[1]": "t:1", "s": "u:0"}, "c"), sources({}, "c")
    ('kafka:t:0,1', 'nothing')
    """
    by_topic: dict[str, list[str]] = {}
    for key, source in sorted(recorded.items()):
        if feed_of(key) == feed:
            topic, _, partition = source.rpartition(":")
            by_topic.setdefault(topic, []).append(partition)
    if not by_topic:
        return "nothing"
    return " and ".join(
        f"kafka:{topic}:{','.join(sorted(parts, key=int))}" for topic, parts in by_topic.items()
    )


def _iso(ms: int) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))
    except (OverflowError, OSError, ValueError):
        return "beyond the calendar"
