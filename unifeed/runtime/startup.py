"""Start-up planning: where each reader starts (a checkpoint, or --start), the inputs checked, the saved state restored, the output side opened."""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
from confluent_kafka import Consumer

from unifeed.checkpoint.store import (
    Checkpoint,
    CheckpointStore,
    FeedCheckpoint,
    PartitionStart,
    StateRef,
)
from unifeed.core.annotate import Annotator
from unifeed.core.errors import (
    KafkaRuntimeError,
    StartRefusedError,
)
from unifeed.core.mapping import (
    DeriverState,
    MappingDeriver,
)
from unifeed.kafka.clients import (
    Target,
    TopicSelection,
    consumer_config,
    ensure_reachable,
    parse_target,
    watermarks,
)
from unifeed.runtime.feedmerge import FeedMerge
from unifeed.runtime.layout import FeedInput, check_unique, resolve
from unifeed.runtime.limits import UNKNOWN_CODES
from unifeed.runtime.opening import OpenedOutput, start_output, watermarks_or_empty
from unifeed.runtime.options import START_EARLIEST, START_LATEST, RuntimeOptions
from unifeed.runtime.reader import FeedReader
from unifeed.runtime.saved import StateSnapshots, load_state
from unifeed.runtime.seek import find_by_pitr, offset_for_pitr
from unifeed.runtime.state import RunState

log = logging.getLogger("unifeed")

# --- start-up planning -----------------------------------------------------


def snapshot_hook(snapshots: StateSnapshots, deriver: MappingDeriver) -> Callable[[int, int], None]:
    def before_batch(offset: int, floor: int) -> None:
        if snapshots.due(offset, floor):
            snapshots.add(offset, deriver.snapshot(floor))

    return before_batch


def merged_snapshot_hook(
    snapshots: StateSnapshots, deriver: MappingDeriver
) -> Callable[[int, int, dict[str, PartitionStart]], None]:
    """`snapshot_hook` for a controlstream of several partitions (its `FeedMerge`)."""

    def before_batch(handed: int, floor: int, starts: dict[str, PartitionStart]) -> None:
        if snapshots.due(handed, floor):
            snapshots.add(handed, deriver.snapshot(floor), starts)

    return before_batch


def snapshot_deriver(
    deriver: MappingDeriver, key: str, readers: dict[str, FeedReader], merge: FeedMerge | None
) -> StateSnapshots:
    """Snapshots of ``deriver``, taken where it runs: in the feed's reader's hand-over
    (``readers[key]``), or in the merge of the feed's partitions."""
    snapshots = StateSnapshots()
    if merge is not None:
        merge.before_batch = merged_snapshot_hook(snapshots, deriver)
    else:
        readers[key].before_batch = snapshot_hook(snapshots, deriver)
    return snapshots


def links_hook(snapshots: StateSnapshots, links: Annotator) -> Callable[[int, int], None]:
    """Snapshots of the links an external mappingstream has made so far."""

    def before_batch(offset: int, floor: int) -> None:
        if snapshots.due(offset, floor):
            snapshots.add(offset, DeriverState(
                floor=floor, last_keepalive=0, next_prune=0, access=[], links=links.links(),
                tracks=[],
            ))

    return before_batch


def restore_state(
    options: RuntimeOptions,
    cp: Checkpoint | None,
    feed: str,
    target: Target,
    partitions: dict[str, Target] | None = None,
) -> tuple[DeriverState, StateRef] | None:
    """The saved state of the checkpoint resumed from (``cp``) and its reference (the
    next commits name it until they save a newer one), if it names one built from
    ``feed`` (read from ``target``, or from the ``partitions`` by key) that can be read
    and whose offsets are still stored; else None (logged), and the restart replays
    --lookback."""
    ref = cp.state if cp is not None else msgspec.UNSET
    if isinstance(ref, msgspec.UnsetType):
        return None
    if ref.feed != feed:
        log.warning(
            "%s: the saved state was built from %s, this run takes its links from %s; "
            "rebuilding links and access levels from --lookback instead",
            options.instance, ref.feed, feed,
        )
        return None
    if (ref.partitions is None) != (partitions is None):
        log.warning(
            "%s: the saved state was taken of %s read from %s, this run reads it from %s; "
            "rebuilding links and access levels from --lookback instead",
            options.instance, feed,
            "one partition" if ref.partitions is None else "several partitions",
            "one partition" if partitions is None else "several partitions",
        )
        return None
    if ref.partitions is not None and partitions is not None:
        for key, start in ref.partitions.items():
            where = partitions.get(key)
            low = watermarks_or_empty(options, where)[0] if where is not None else 0
            if where is not None and start.offset < low:
                log.warning(
                    "%s: the saved state was taken at %s offset %d, no longer stored (first "
                    "offset %d); rebuilding links and access levels from --lookback instead",
                    options.instance, where, start.offset, low,
                )
                return None
        low = 0
    else:
        low, _ = watermarks_or_empty(options, target)
    if ref.offset < low:
        log.warning(
            "%s: the saved state was taken at %s offset %d, no longer stored (first offset "
            "%d); rebuilding links and access levels from --lookback instead",
            options.instance, target, ref.offset, low,
        )
        return None
    state = load_state(options, ref)
    if state is None:
        return None
    if ref.partitions is not None and partitions is not None:
        saved_at = ", ".join(
            f"{partitions[k]} offset {p.offset}"
            for k, p in ref.partitions.items()
            if k in partitions
        )
    else:
        saved_at = f"{target} offset {ref.offset}"
    log.info(
        "%s: restored %d links and %d access levels saved at %s",
        options.instance, len(state.links), len(state.access), saved_at,
    )
    return state, ref


def restart_offset(options: RuntimeOptions, target: Target, pitr: int, hint: int | None) -> int:
    """Where a restart reads a feed from: the search by ``pitr``, or the checkpoint's
    offset when that is earlier and still stored (a partition with backwards records can
    mislead a search; reading too early only repeats what the reader skips)."""
    found = find_by_pitr(options, target, pitr)
    if hint is not None and found.low <= hint < found.offset:
        return hint
    return found.offset


def start_positions(
    options: RuntimeOptions, targets: dict[str, Target]
) -> dict[str, tuple[int, FeedCheckpoint]]:
    """Offsets and checkpoint positions for a first start (no checkpoint)."""
    out: dict[str, tuple[int, FeedCheckpoint]] = {}
    for feed, target in targets.items():
        low, high = watermarks_or_empty(options, target)
        if options.start == START_EARLIEST:
            out[feed] = (low, FeedCheckpoint(pitr=0, skip=0))
        elif options.start == START_LATEST:
            last = _last_pitr(options, target, low, high)
            out[feed] = (high, FeedCheckpoint(pitr=0 if last is None else last + 1, skip=0))
        else:
            t = options.start
            out[feed] = (offset_for_pitr(options, target, t), FeedCheckpoint(pitr=t, skip=0))
    return out


def _last_pitr(options: RuntimeOptions, target: Target, low: int, high: int) -> int | None:
    from unifeed.kafka.clients import last_record_before
    from unifeed.kafka.seek import record_pitr

    if high <= low:
        return None
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra, fetch_wait_ms=10))
    try:
        m = last_record_before(
            consumer, target, high, lambda r: record_pitr(r) is not None, low=low
        )
        return None if m is None else record_pitr(m)
    finally:
        consumer.close()


def _check_inputs_exist(options: RuntimeOptions, inputs: dict[str, Target]) -> None:
    """A missing input is refused (`StartRefusedError`) unless ``wait_for_topics``: a
    misspelt topic would otherwise be waited for as a silent feed."""
    missing: list[str] = []
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    try:
        for feed, target in inputs.items():
            try:
                watermarks(consumer, target)
            except KafkaRuntimeError as exc:
                if exc.code not in UNKNOWN_CODES:
                    raise
                missing.append(f"{target} ({feed})")
    finally:
        consumer.close()
    if not missing:
        return
    if options.wait_for_topics:
        log.warning(
            "%s: %s do(es) not exist yet; waiting for them (--wait-for-topics)",
            options.instance,
            ", ".join(missing),
        )
        return
    raise StartRefusedError(
        f"input {', '.join(missing)} does not exist: check the topic name and partition, "
        "or pass --wait-for-topics to wait for it to be created"
    )


def open_output(
    options: RuntimeOptions,
    output: Target,
    feeds: tuple[str, ...],
    state: RunState,
    inputs: dict[str, Target],
) -> OpenedOutput:
    """Check the broker and the inputs, then the output side's start-up
    (`opening.start_output`): the checkpoint checked against output and inputs, the
    instance's claim, transactions, the output tail. Shared by every run."""
    ensure_reachable(options.bootstrap, options.connect_timeout_s, options.kafka_extra)
    _check_inputs_exist(options, inputs)
    dead_target = (
        parse_target(options.dead_letter)
        if options.dead_letter
        else Target(topic=f"{output.topic}.dead-letter", partition=0)
    )
    return start_output(
        options=options,
        output=output,
        dead_target=dead_target,
        store=CheckpointStore(options.bootstrap, options.checkpoint_topic, options.kafka_extra),
        feeds=feeds,
        state=state,
        inputs=inputs,
    )


def resolve_feeds(
    options: RuntimeOptions, state: RunState, sources: dict[str, Target | TopicSelection]
) -> dict[str, FeedInput]:
    """Each feed's partitions (`layout.resolve`), once the broker answers; no partition
    is read by two feeds."""
    ensure_reachable(options.bootstrap, options.connect_timeout_s, options.kafka_extra)
    feeds = {name: resolve(options, name, source) for name, source in sources.items()}
    check_unique(list(feeds.values()))
    for f in feeds.values():
        if f.split:
            log.info(
                "%s: %s is read from %d partitions of %s (%s)",
                options.instance, f.name, len(f.targets), f.topic,
                ", ".join(str(t.partition) for t in f.targets),
            )
    return feeds


def inputs_of(*feeds: FeedInput) -> dict[str, Target]:
    """Every partition of ``feeds`` by key, in rank then partition order."""
    out: dict[str, Target] = {}
    for f in feeds:
        out.update(f.by_key())
    return out
