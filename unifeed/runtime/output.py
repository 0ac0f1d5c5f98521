"""The output side of a running run (`Committer`): the produce path and the commit that
writes, in one transaction, the output, the dead letters, the saved state and the
checkpoint. Its parts, each its own module: `transactions` (the producer), `tail` (the
output tail reconciled after a restart), `deadletters` (dead letters and oversized
records), `positions` (the checkpoint's feed positions), `saved` (saved state); the
start-up that hands it an `OpenedOutput` is `opening`'s."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from operator import attrgetter, length_hint

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message

from unifeed.checkpoint.store import (
    Checkpoint,
    FeedCheckpoint,
    OutputCheckpoint,
    encode_record,
)
from unifeed.core.combine import Emitted
from unifeed.core.errors import InstanceFencedError, KafkaRuntimeError
from unifeed.core.stages import DeadLetter
from unifeed.kafka.clients import TIMESTAMP_AHEAD_MAX_MS, kafka_error
from unifeed.runtime.deadletters import DeadLetters
from unifeed.runtime.limits import POLL_EVERY_S
from unifeed.runtime.opening import OpenedOutput
from unifeed.runtime.positions import MarksByFeed, Positions
from unifeed.runtime.saved import StateSaver
from unifeed.runtime.transactions import FLUSH_TIMEOUT_S, pending_error

log = logging.getLogger("unifeed")

_ITEM = attrgetter("item")
_PITR = attrgetter("pitr")
#: Runs an iterator to its end, keeping nothing (a loop in C).
_drain: Callable[[Iterable[object]], None] = deque[object](maxlen=0).extend


def _remaining(it: Iterator[object]) -> int:
    """How many items a list's iterator has left (without taking any)."""
    return length_hint(it)


class Committer:
    """Writes the output and commits it with its checkpoint.

    Output records are produced with timestamp = pitr. Every commit: flush the output,
    produce the checkpoint (per-feed positions and the output's ``next_offset``), commit
    the transaction. Records an earlier incarnation wrote after the checkpoint (the
    ``opened`` output's tail) must equal what this run writes first, and are skipped
    instead of written twice.

    ``marks`` are the restart marks of the run's readers (`Positions`); ``saver``
    saves the deriver's state with the checkpoints (None: the run saves none).
    """

    def __init__(
        self,
        opened: OpenedOutput,
        marks: MarksByFeed,
        saver: StateSaver | None = None,
    ) -> None:
        self.options = opened.options
        self.output = opened.output
        self.store = opened.store
        self.state = opened.state
        self.feeds = opened.feeds
        self.claim = opened.claim
        self.txn = opened.transactions
        self.producer = opened.transactions.producer
        self.max_record_bytes = opened.transactions.max_record_bytes
        self.tail = opened.tail
        self.saver = saver
        cp = opened.checkpoint
        self.positions = Positions(
            opened.feeds, opened.inputs, marks, cp.feeds if cp is not None else None
        )
        self.dead = DeadLetters(
            self.producer,
            opened.dead_target,
            opened.state,
            self.options.max_dead_letters,
            self.options.instance,
        )
        self.next_offset = opened.next_offset
        self._delivered_next = -1
        self._last_poll = 0.0
        self.uncommitted = 0
        self.last_commit = time.monotonic()
        self._dirty = False

    def first_checkpoint(self, positions: dict[str, FeedCheckpoint]) -> None:
        """Written before any output when the instance has no checkpoint yet. Its
        positions are the start's and it names no restart offsets: nothing has been read
        (a restart from it searches each feed by pitr)."""
        self.positions.current = dict(positions)
        self._dirty = True
        self.commit(force=True, restart_offsets=False)

    # hot path ----------------------------------------------------------------

    def _on_last_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self._delivered_next = (message.offset() or 0) + 1
            return
        # The first client call on ``error`` is made here, in the callback's own frame:
        # after a fatal error it raises SystemError with the client's pending error
        # (see `Transactions.served`), which `delivery_failed` then reports.
        try:
            error.code()
        except SystemError as exc:
            error = pending_error(exc, error)
        self.txn.delivery_failed(error)

    def write(
        self,
        items: list[Emitted],
        positions: dict[str, FeedCheckpoint] | None = None,
    ) -> None:
        """Produce each item's bytes (timestamp = pitr) in order; advance the positions.

        Without ``positions``, each item is one input message of its feed (the unified
        feed); with it, the caller says how far its inputs got (the mapping deriver).
        """
        if positions is not None:
            self.positions.current.update(positions)
            self._dirty = True
        if not items:
            return
        topic = self.output.topic
        partition = self.output.partition
        start = 0
        tail = self.tail
        if tail is not None and tail.pending:
            start, reached = tail.reconcile(items)
            if reached >= 0:
                self.next_offset = reached
            if not tail.pending:
                self.tail = None  # every tail record compared: nothing more to check
            self.state.add("reconciled", start)
        n = len(items)
        try:
            self._produce(items, start, topic, partition)
        except KafkaException as exc:
            raise self.txn.produce_refused(exc) from None
        if positions is None:
            self.positions.advance(items)
        # Delivery reports and errors are served here at most every POLL_EVERY_S (and by
        # every commit's flush): each serves every record's report, one callback at most.
        now = time.monotonic()
        if now - self._last_poll >= POLL_EVERY_S:
            self._last_poll = now
            self.txn.served(lambda: self.producer.poll(0))
        self.uncommitted += n - start
        self._dirty = True
        self.state.add("out", n)

    def _produce(self, items: list[Emitted], start: int, topic: str, partition: int) -> None:
        """Produce ``items[start:]`` in order (timestamp = pitr, at most
        TIMESTAMP_AHEAD_MAX_MS ahead of the clock: a broker refuses records stamped
        further ahead, `record_timestamp`). Only the last record has a callback: its
        delivery report tells how far the output got. An oversized record is a dead
        letter instead."""
        todo = items[start:] if start else items
        if not todo:
            return
        produce = self.producer.produce
        last = todo[-1]
        body = todo[:-1]
        values = list(map(_ITEM, body))
        stamps = list(map(_PITR, body))
        cap = int(time.time() * 1000) + TIMESTAMP_AHEAD_MAX_MS
        if values and (max(map(len, values)) > self.max_record_bytes or max(stamps) > cap):
            # The unusual batch (an oversized record, a pitr ahead of the clock): one
            # record at a time.
            for e in body:
                self._produce_one(e, topic, partition, cap, None)
        elif values:
            # The usual batch: every call made from C (`map`), no Python frame per record.
            # Positional (topic, value, key, partition, callback, on_delivery, timestamp):
            # a positional on_delivery is ignored; positional arguments skip the keyword
            # parsing per record. When the producer's queue is full, the iterators tell
            # exactly which record was refused (`map` had taken it) and what is left.
            value_it, stamp_it = iter(values), iter(stamps)
            while True:
                try:
                    _drain(
                        map(
                            produce,
                            repeat(topic),
                            value_it,
                            repeat(None),
                            repeat(partition),
                            repeat(None),
                            repeat(None),
                            stamp_it,
                        )
                    )
                    break
                except BufferError:
                    left = len(values) - _remaining(value_it)
                    refused = left - 1  # the index of the record `map` had just taken
                    self._produce_when_room(
                        topic, values[refused], partition, stamps[refused], False
                    )
        self._produce_one(last, topic, partition, cap, self._on_last_delivery)

    def _produce_one(
        self,
        e: Emitted,
        topic: str,
        partition: int,
        cap: int,
        callback: Callable[[KafkaError | None, Message], None] | None,
    ) -> None:
        value = e.item
        if len(value) > self.max_record_bytes:
            if self.dead.oversized(e.feed, e.pitr, value):
                self._dirty = True
            return
        stamp = e.pitr if e.pitr <= cap else cap
        try:
            self.producer.produce(topic, value, None, partition, callback, None, stamp)
        except BufferError:
            self._produce_when_room(topic, value, partition, stamp, callback is not None)

    def _produce_when_room(
        self, topic: str, value: bytes, partition: int, stamp: int, is_last: bool
    ) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.txn.served(lambda: self.producer.poll(0.05))
            try:
                callback = self._on_last_delivery if is_last else None
                self.producer.produce(topic, value, None, partition, callback, None, stamp)
                return
            except BufferError:
                continue
        raise KafkaRuntimeError(f"the producer's queue for {self.output} stayed full for 60 s")

    def write_dead(self, letters: list[DeadLetter]) -> None:
        """Produce the dead letters of the input (in the open transaction)."""
        if self.dead.write(letters):
            self._dirty = True

    # commits -----------------------------------------------------------------

    def stop_if_over_dead_letter_limit(self) -> None:
        """Beyond ``--max-dead-letters``: commit what is processed, then stop (exit 4).

        The commit holds, in one transaction, the output written so far, every dead letter
        written (also those beyond the limit that came in the same batch) and the
        checkpoint of both, so a rerun resumes after them with a fresh count.
        """
        error = self.dead.over_limit()
        if error is None:
            return
        self.commit(reopen=False)
        raise error

    def due(self, catching_up: bool = False) -> bool:
        """Asked after each merge step; a catch-up step can be bigger than
        `commit_max_records`, and is committed whole (docs/guarantees.md says why).
        ``catching_up``: the output is a backlog (its last record was written in
        catch-up): the catch-up bounds apply where they are longer."""
        o = self.options
        interval, records = o.commit_interval_ms, o.commit_max_records
        if catching_up:
            interval = max(interval, o.catchup_commit_interval_ms)
            records = max(records, o.catchup_commit_max_records)
        return self._dirty and (
            self.uncommitted >= records or (time.monotonic() - self.last_commit) * 1000 >= interval
        )

    def commit(
        self, force: bool = False, reopen: bool = True, *, restart_offsets: bool = True
    ) -> None:
        """Flush output, write the checkpoint, commit (one transaction)."""
        if not self._dirty and not force:
            return
        txn = self.txn
        txn.begin()
        feeds = self.positions.checkpoints(self.dead.offsets, restart_offsets=restart_offsets)
        saver = self.saver
        saving = (
            None
            if saver is None
            else saver.produce(txn, self.options, self.state, feeds, self.feeds)
        )
        remaining = txn.flush()
        if remaining:
            raise KafkaRuntimeError(
                f"{remaining} output records not delivered after {FLUSH_TIMEOUT_S} s"
            )
        if txn.error is not None:
            raise kafka_error("output delivery failed", txn.error)
        if self._delivered_next >= 0:
            self.next_offset = max(self.next_offset, self._delivered_next)
        if saver is not None and saving is not None:
            saver.saved(saving)
        ref = saver.ref if saver is not None else None
        claim = self.claim
        cp = Checkpoint(
            version=1,
            instance=self.options.instance,
            state=msgspec.UNSET if ref is None else ref,
            feeds=feeds,
            output=OutputCheckpoint(
                topic=self.output.topic,
                partition=self.output.partition,
                next_offset=self.next_offset,
            ),
            generation=claim.generation,
            written_ms=self.options.clock(),
            incarnation=claim.incarnation,
        )
        key, value = encode_record(cp)
        if isinstance(self.state.failure, InstanceFencedError):
            raise self.state.failure
        self.producer.produce(self.store.topic, value, key=key, partition=0)
        txn.commit()
        if reopen:
            txn.begin()
        self.uncommitted = 0
        self._dirty = False
        self.last_commit = time.monotonic()
        self.state.add("commits")

    def begin(self) -> None:
        """Open a transaction unless one is open (exactly-once only)."""
        self.txn.begin()

    def close(self) -> None:
        """Abort an open transaction (nothing of it becomes visible) and flush."""
        self.txn.close()
