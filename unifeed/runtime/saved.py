"""Saved state: deriver snapshots taken by a reader (`StateSnapshots`), saved with the
checkpoints (`StateSaver`) to the state topic, and read back from it (`load_state`)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from unifeed.checkpoint.store import FeedCheckpoint, PartitionStart, StateRef
from unifeed.core.errors import (
    KafkaRuntimeError,
)
from unifeed.core.mapping import (
    DeriverState,
    decode_state,
    encode_state,
)
from unifeed.kafka.clients import (
    Target,
    consume_batch,
    consumer_config,
    kafka_error,
)
from unifeed.runtime.layout import lowest_position
from unifeed.runtime.limits import (
    SNAPSHOT_EVERY_MESSAGES,
    SNAPSHOT_EVERY_PITR_MS,
    SNAPSHOT_MESSAGES_PER_ENTRY,
    SNAPSHOTS_HELD,
    STATE_PART_BYTES,
)
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.state import RunState
from unifeed.runtime.transactions import Transactions, pending_error

log = logging.getLogger("unifeed")

class StateSnapshots:
    """Snapshots of the mapping deriver, each as of the start of a controlstream batch,
    from the reader that runs the deriver to the commits that save them.

    A commit saves the newest snapshot that lies wholly before every feed's position less
    the late window (`take`): a restart restores it and reads controlstream from its
    offset. The reader adds (`due`, `add`), the writer takes, under a lock. Snapshots are
    spaced by pitr and by input messages (the more state, the further apart), never by
    the wall clock: their cost per message stays small and constant.
    """

    def __init__(self) -> None:
        #: (offset, state, partition starts): ``offset`` is the controlstream offset
        #: the state was taken before, or, for a controlstream of several partitions, a
        #: count of merged messages (spacing only) with each partition's start.
        self._held: deque[tuple[int, DeriverState, dict[str, PartitionStart] | None]] = deque()
        self._lock = threading.Lock()
        self._last_offset = -(2**63)
        self._last_pitr = -(2**63)
        self._next_offset = -(2**63)

    def due(self, offset: int, pitr: int) -> bool:
        return pitr - self._last_pitr >= SNAPSHOT_EVERY_PITR_MS and offset >= self._next_offset

    def add(
        self,
        offset: int,
        state: DeriverState,
        starts: dict[str, PartitionStart] | None = None,
    ) -> None:
        self._last_pitr = state.floor
        entries = len(state.access) + len(state.links)
        self._next_offset = offset + max(
            SNAPSHOT_EVERY_MESSAGES, SNAPSHOT_MESSAGES_PER_ENTRY * entries
        )
        with self._lock:
            held = self._held
            held.append((offset, state, starts))
            if len(held) > SNAPSHOTS_HELD:
                # Keep the oldest (a commit may need one that far back), thin the rest.
                del held[1]

    def take(
        self, before_pitr: int
    ) -> tuple[int, DeriverState, dict[str, PartitionStart] | None] | None:
        """The newest snapshot whose messages all have pitr below ``before_pitr`` (and
        forget it and older ones), or None."""
        found = None
        with self._lock:
            held = self._held
            while held and held[0][1].floor < before_pitr:
                found = held.popleft()
        return found


class StateSaver:
    """Saves the deriver's snapshots with the checkpoints, and names the saved state the
    next checkpoint refers to (``ref``: carried from the checkpoint resumed from until a
    newer one is saved).

    ``feed`` is the input the snapshots are taken of; a saved snapshot lies ``lag_ms``
    behind the lowest feed position (the late window, so that a restart rebuilds the link
    history late messages need).
    """

    def __init__(
        self,
        snapshots: StateSnapshots,
        *,
        feed: str,
        ref: StateRef | None = None,
        lag_ms: int = 0,
    ) -> None:
        self.snapshots = snapshots
        self.feed = feed
        self.ref = ref
        self.lag_ms = lag_ms

    def produce(
        self,
        txn: Transactions,
        options: RuntimeOptions,
        state: RunState,
        feeds: Mapping[str, FeedCheckpoint],
        keys: tuple[str, ...],
    ) -> tuple[list[Any], StateRef] | None:
        """Produce the newest snapshot the checkpoint of ``feeds`` may name, in parts,
        inside the open transaction (before its flush); its offsets are filled in by
        delivery reports (`saved` checks them after the flush). None: nothing to save."""
        if not all(f in feeds for f in keys):
            return None
        lowest = lowest_position(feeds, keys)
        taken = self.snapshots.take(lowest - self.lag_ms)
        if taken is None:
            return None
        target = Target(state_topic(options.checkpoint_topic), 0)
        offset, snapshot, starts = taken
        raw = encode_state(snapshot)
        size = min(STATE_PART_BYTES, max(1024, txn.max_record_bytes - 1024))
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)] or [b""]
        token = secrets.token_hex(8)
        offsets: list[Any] = [None] * len(chunks)
        producer = txn.producer
        for i, chunk in enumerate(chunks):

            def delivered(error: KafkaError | None, message: Message, i: int = i) -> None:
                if error is None:
                    offsets[i] = message.offset()
                    return
                # As the output's report (`Committer._on_last_delivery`): after a fatal
                # error the first client call raises SystemError with the client's
                # pending error, which ends the run (a fenced producer: its one line).
                try:
                    error.code()
                except SystemError as exc:
                    error = pending_error(exc, error)
                txn.delivery_failed(error)

            head = part_encode(StatePart(options.instance, token, i, len(chunks)))
            while True:
                try:
                    producer.produce(
                        target.topic,
                        head + b"\n" + chunk,
                        # One key per part: compaction keeps the latest snapshot whole.
                        key=f"{options.instance}#{i}".encode(),
                        partition=target.partition,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        state.add("state_saves")
        ref = StateRef(
            topic=target.topic,
            partition=target.partition,
            offsets=[],
            id=token,
            feed=self.feed,
            offset=0 if starts is not None else offset,
            partitions=starts,
        )
        return offsets, ref

    def saved(self, saving: tuple[list[Any], StateRef]) -> None:
        """After the flush: the saved state is the one the checkpoint names."""
        offsets, ref = saving
        if None in offsets:
            raise KafkaRuntimeError(
                f"saved state not delivered to {Target(ref.topic, ref.partition)}"
            )
        self.ref = msgspec.structs.replace(ref, offsets=offsets)


class StatePart(msgspec.Struct, frozen=True, gc=False):
    instance: str
    id: str
    part: int
    parts: int


part_encode: Final = msgspec.json.Encoder().encode
_part_decode: Final = msgspec.json.Decoder(StatePart).decode


def state_topic(checkpoint_topic: str) -> str:
    """Where saved state goes: beside the checkpoints, compacted, partition 0."""
    return f"{checkpoint_topic}.state"


def load_state(options: RuntimeOptions, ref: StateRef) -> DeriverState | None:
    """The saved state a checkpoint refers to, or None (logged) when it cannot be read."""
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    parts: dict[int, bytes] = {}
    wanted = set(ref.offsets)
    try:
        consumer.assign([TopicPartition(ref.topic, ref.partition, min(ref.offsets))])
        deadline = time.monotonic() + 60
        last = max(ref.offsets)
        done = False
        while not done and time.monotonic() < deadline:
            for m in consume_batch(consumer, 1000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise kafka_error(f"reading saved state from {ref.topic}", err)
                offset = m.offset() or 0
                if offset in wanted:
                    head, _, body = (m.value() or b"").partition(b"\n")
                    part = _part_decode(head)
                    if part.id == ref.id and part.instance == options.instance:
                        parts[part.part] = body
                if offset >= last:
                    done = True
        if len(parts) != len(ref.offsets):
            log.warning(
                "%s: the saved state at %s:%d offsets %s is gone or incomplete; rebuilding "
                "links and access levels from --lookback instead",
                options.instance, ref.topic, ref.partition, ref.offsets,
            )
            return None
        return decode_state(b"".join(parts[i] for i in range(len(parts))))
    except (msgspec.DecodeError, KafkaException, KafkaRuntimeError) as exc:
        log.warning(
            "%s: the saved state at %s:%d cannot be read (%s); rebuilding links and access "
            "levels from --lookback instead",
            options.instance, ref.topic, ref.partition, exc,
        )
        return None
    finally:
        consumer.close()
