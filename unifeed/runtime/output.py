"""The output side (`Committer`): transactions, the produce path, dead letters, checkpoints and the instance claim."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from unifeed.checkpoint.store import (
    Checkpoint,
    CheckpointStore,
    FeedCheckpoint,
    OutputCheckpoint,
    StateRef,
    encode_record,
)
from unifeed.core.combine import Emitted
from unifeed.core.errors import (
    CheckpointError,
    DeadLetterLimitError,
    DeadLetterReason,
    InstanceFencedError,
    KafkaRuntimeError,
    StartRefusedError,
    UnifeedError,
)
from unifeed.core.mapping import (
    encode_state,
)
from unifeed.core.records import (
    CONTROLSTREAM,
    MAPPINGSTREAM,
    SURFACESTREAM,
    dead_letter_raw,
)
from unifeed.core.stages import (
    DeadLetter,
)
from unifeed.kafka.clients import (
    TIMESTAMP_AHEAD_MAX_MS,
    Target,
    consume_batch,
    consumer_config,
    kafka_error,
    producer_config,
    watermarks,
)
from unifeed.runtime.layout import (
    feed_of,
    lowest_position,
    partition_changes,
    partition_key,
    rekey,
)
from unifeed.runtime.limits import (
    DEAD_LETTER_MAX_BYTES,
    FUTURE_TOLERANCE_MS,
    POLL_EVERY_S,
    STATE_PART_BYTES,
    UNKNOWN_CODES,
)
from unifeed.runtime.marks import RestartMarks
from unifeed.runtime.options import EXACTLY_ONCE, RuntimeOptions
from unifeed.runtime.saved import StatePart, StateSnapshots, part_encode, state_topic
from unifeed.runtime.seek import find_by_pitr
from unifeed.runtime.state import RunState

log = logging.getLogger("unifeed")

# --- the output side -------------------------------------------------------


class Committer:
    """Owns the output producer: transactions, checkpoints, output-tail reconciliation.

    Output records are produced with timestamp = pitr. Every commit: flush the output,
    produce the checkpoint (per-feed positions and the output's ``next_offset``), commit
    the transaction. Records found after the checkpoint's ``next_offset`` at start-up were
    written by an earlier incarnation; they must equal what this run writes first, and
    are skipped instead of written twice.
    """

    def __init__(
        self,
        *,
        options: RuntimeOptions,
        output: Target,
        dead_target: Target | None,
        store: CheckpointStore,
        feeds: tuple[str, ...],
        state: RunState,
        inputs: dict[str, Target] | None = None,
    ) -> None:
        self.options = options
        #: Every input feed and where it is read from; checkpoints name them.
        self.inputs = dict(inputs or {})
        self.output = output
        self.dead_target = dead_target
        self.store = store
        self.state = state
        self.transactional = options.delivery == EXACTLY_ONCE
        config = producer_config(
            options.bootstrap,
            options.kafka_extra,
            transactional_id=f"unifeed-{options.instance}" if self.transactional else None,
        )
        config.setdefault("queue.buffering.max.messages", 500_000)
        config.setdefault("queue.buffering.max.kbytes", 262_144)
        config["error_cb"] = self._on_error
        self.max_record_bytes = int(config.get("message.max.bytes", 1_000_000)) - 1024
        self.producer = Producer(config)
        self._error: KafkaError | None = None
        self._last_poll = 0.0
        self.positions: dict[str, FeedCheckpoint] = {}
        self.feeds = feeds
        self.next_offset = 0
        self._delivered_next = -1
        self._tail: list[tuple[int, bytes]] = []
        self._tail_pos = 0
        self.uncommitted = 0
        self.last_commit = time.monotonic()
        self.commits = 0
        self.checkpoint: Checkpoint | None = None
        #: Per input feed: its reader's restart marks and how far before the feeds'
        #: lowest position a restart must read it (the lookback that rebuilds state), or
        #: None: from the feed's own position.
        self.marks: dict[str, tuple[RestartMarks, int | None]] = {}
        self._dirty = False
        self._in_txn = False
        self.generation = 1
        # Tells apart two processes that claim the same generation at the same moment.
        self.incarnation = secrets.token_hex(8)
        self.watch_from: int | None = None  # checkpoint offset the claim watcher starts at
        self._claims_from = 0  # checkpoint offset from which rival claims are looked for
        self._dead_offsets: dict[str, int] = {}
        #: Dead letters this run has written (those a restart skips are not counted).
        self.dead_written = 0
        self._last_dead: DeadLetter | None = None
        #: The deriver's snapshots (None: no state is saved), how far behind the lowest
        #: feed position a saved one must lie, and the saved state the next checkpoint
        #: names (carried from the checkpoint resumed from until a newer one is saved).
        self.snapshots: StateSnapshots | None = None
        self.state_lag_ms = 0
        self.state_feed = CONTROLSTREAM  # the input the snapshots are taken of
        self.state_ref: StateRef | None = None
        self.state_target = Target(state_topic(options.checkpoint_topic), 0)

    # start-up ----------------------------------------------------------------

    def start(self) -> Checkpoint | None:
        """Find the checkpoint → check it against output and inputs → claim the instance
        → ``init_transactions`` → read the latest checkpoint and the output tail.

        Everything that can refuse the start runs before the claim and
        ``init_transactions``: either of them stops a healthy incarnation of the same name.
        """
        self.store.ensure_topic()
        CheckpointStore(
            self.options.bootstrap, self.state_target.topic, self.options.kafka_extra
        ).ensure_topic()
        # The output's end before the checkpoint is read: output written by an
        # incarnation starting at the same time then comes after its first checkpoint,
        # which this load sees (so it is not taken for a foreign output).
        before = watermarks_or_empty(self.options, self.output)
        # A claim made by a twin after this point is at or after this offset (one made
        # before it is in what `load` reads next, and this run then claims above it).
        self._claims_from = self.store.end_offset()
        cp, cp_offset = self.store.load(self.options.instance)
        cp = self._rekeyed(cp)
        self._check_start(cp, cp_offset, output_before=before)
        self.generation = (cp.generation if cp is not None else 0) + 1
        self._claim(cp)
        if self.transactional:
            try:
                self.producer.init_transactions(30)
            except KafkaException as exc:
                raise wrap_kafka_error(
                    "cannot initialise transactions (use --delivery at-least-once "
                    "for brokers without them)",
                    exc,
                ) from None
        cp, cp_offset = self._resume_point()
        cp = self._rekeyed(cp)
        # The latest record may be an older incarnation's last commit: check it too. (Not
        # the new-instance rule: a twin that claimed at the same moment and outranks this
        # one may have written output by now; the claim already decided who goes on.)
        _low, high = self._check_start(cp, cp_offset)
        if cp is not None and not cp.feeds:
            cp = None  # a claim of a new instance: nothing to resume from
        self.checkpoint = cp
        if cp is None:
            self.next_offset = high
        else:
            self.positions = dict(cp.feeds)
            self.next_offset = cp.output.next_offset if cp.output is not None else high
            self._tail = _read_tail(self.options, self.output, self.next_offset, high)
            if self._tail:
                log.info(
                    "%s: %d output records after the checkpoint, written by an earlier "
                    "run: they will be checked and not written again",
                    self.options.instance,
                    len(self._tail),
                )
        return cp

    def _rekeyed(self, cp: Checkpoint | None) -> Checkpoint | None:
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

    def _check_start(
        self,
        cp: Checkpoint | None,
        cp_offset: int,
        *,
        output_before: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """Refuse a start that would duplicate or lose output; the output's watermarks.

        Checks, with `StartRefusedError` (exit 2) naming what differs and the way out: a
        new instance (no checkpoint) writes to an empty output unless
        ``allow_nonempty_output`` (judged on ``output_before``, the output's watermarks read
        before ``cp``; skipped without them); a checkpoint belongs to this output and these inputs,
        its output offset is not past the output's end, and no feed is past both the
        wall clock and every record of its input.
        """
        o = self.options
        name = o.instance
        low, high = watermarks_or_empty(o, self.output)
        topic_option = (
            f" --checkpoint-topic {o.checkpoint_topic}"
            if o.checkpoint_topic != "unifeed.checkpoints"
            else ""
        )
        reset = f"`unifeed checkpoint reset --instance {name}{topic_option}`"
        where = f"the checkpoint of instance {name!r} (kafka:{o.checkpoint_topic}:0 offset {cp_offset})"
        if cp is None or not cp.feeds:
            if output_before is None or o.allow_nonempty_output:
                return low, high
            first, end = output_before
            if end > first:
                raise StartRefusedError(
                    f"instance {name!r} has no checkpoint in kafka:{o.checkpoint_topic}:0, "
                    f"but its output {self.output} already holds records (offsets {first} to "
                    f"{end - 1}): starting over would write them again. Check "
                    "--checkpoint-topic and --instance; or write to a new output topic; or "
                    "pass --allow-nonempty-output to append after those records"
                )
            return low, high
        holder = _run_kind(cp.feeds)
        if holder != _run_kind(self.feeds):
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
        if recorded:  # records written before sources existed are not checked
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
                    f"{feed} was read from {_sources(recorded, feed)}, now from "
                    f"{_sources(now, feed)}"
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
        self._check_not_future(cp, where, reset)
        return low, high

    def _check_not_future(self, cp: Checkpoint, where: str, reset: str) -> None:
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
            try:
                reached = find_by_pitr(o, target, wanted).method not in ("after_last", "empty")
            except KafkaRuntimeError as exc:
                if exc.code not in UNKNOWN_CODES:
                    raise
                reached = False
            if reached:
                continue  # the input holds a record that late: a real position
            raise StartRefusedError(
                f"{where} says {feed} was processed up to pitr {pos.pitr} "
                f"({_iso(pos.pitr)}), later than now and than every record of {target}: it "
                "is stale (written for other data, or by a wrong clock), and resuming would "
                f"skip everything before it. Start over: {reset}"
            )

    @property
    def claim_rank(self) -> tuple[int, str]:
        return (self.generation, self.incarnation)

    def _claim(self, cp: Checkpoint | None) -> None:
        """Tell an older incarnation of this instance name to stop, give it time to, and
        stop this start if another claim outranks it.

        The claim is the current checkpoint (or, for a new instance, an empty one) with
        the next generation and this process's incarnation token, written outside any
        transaction and before ``init_transactions``: a start that loses to a twin never
        initialises, so it never fences the producer of the one that goes on. An
        incarnation that sees a greater ``(generation, incarnation)`` for its name stops
        before its next commit. After the grace, every claim of the name since this start
        read the checkpoint is looked at, not only the latest record: a twin that claimed
        at the same moment may have landed first and still outrank this one.
        """
        instance = self.options.instance
        claim = Checkpoint(
            version=1,
            instance=instance,
            feeds=cp.feeds if cp is not None else {},
            output=cp.output if cp is not None else None,
            state=cp.state if cp is not None else msgspec.UNSET,
            generation=self.generation,
            written_ms=self.options.clock(),
            incarnation=self.incarnation,
        )
        self.store.write(instance, claim)
        time.sleep(self.options.claim_grace_s)
        self._check_rank(self.store.highest_claim(instance, self._claims_from))

    def _check_rank(self, top: tuple[Checkpoint, int] | None) -> None:
        if top is not None and top[0].claim_rank > self.claim_rank:
            rival = top[0]
            raise InstanceFencedError(
                f"another incarnation of instance {self.options.instance!r} (generation "
                f"{rival.generation}, {rival.incarnation}) started at the same time as this "
                f"one (generation {self.generation}, {self.incarnation}); this one stops"
            )

    def _resume_point(self) -> tuple[Checkpoint | None, int]:
        """The latest checkpoint once this run holds the name (after ``init_transactions``,
        so an older incarnation can commit no more on a broker that fences); the claim
        watcher starts after it."""
        instance = self.options.instance
        latest, offset = self.store.load(instance)
        if latest is None:
            raise CheckpointError(
                f"the checkpoint of instance {instance!r} was reset while this run started; "
                "start it again"
            )
        self._check_rank((latest, offset))
        log.info("%s: generation %d claimed (incarnation %s)", instance, self.generation,
                 self.incarnation)
        # Every record after the one just read is news to the claim watcher.
        self.watch_from = offset + 1
        return latest, offset

    def _commit_or_flush(self) -> None:
        if self.transactional:
            try:
                self.producer.commit_transaction(30)
            except KafkaException as exc:
                raise wrap_kafka_error(
                    "committing a transaction failed", exc, self.options.instance
                ) from None
            self._in_txn = False
        elif self._served(lambda: self.producer.flush(30)):
            raise KafkaRuntimeError("a checkpoint record was not delivered within 30 s")

    def first_checkpoint(self, positions: dict[str, FeedCheckpoint]) -> None:
        """Written before any output when the instance has no checkpoint yet."""
        self.positions = dict(positions)
        self._dirty = True
        self.commit(force=True)

    # hot path ----------------------------------------------------------------

    def _on_error(self, error: KafkaError) -> None:
        try:
            fatal = error.fatal()
        except SystemError as exc:  # called with a fatal error pending: see `_served`
            error, fatal = _pending_error(exc, error), True
        if fatal:
            self._error = error
            self.state.fail(
                _fenced(self.options.instance, error)
                or kafka_error("the output producer failed", error)
            )
        else:
            log.debug("producer: %s", error.str())

    def _on_last_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self._delivered_next = (message.offset() or 0) + 1
            return
        try:
            failure = _fenced(self.options.instance, error) or kafka_error(
                f"writing to {self.output} failed", error
            )
        except SystemError as exc:  # called with a fatal error pending: see `_served`
            error = _pending_error(exc, error)
            failure = _fenced(self.options.instance, error) or kafka_error(
                f"writing to {self.output} failed", error
            )
        self._error = error
        self.state.fail(failure)

    def _served(self, call: Callable[[], int]) -> int:
        """``call()``, a producer call that serves delivery reports (flush, poll).

        After a fatal error (a fenced producer), confluent-kafka hands the purged records'
        reports to their callbacks with its own exception still pending, so the first
        client method a callback calls raises SystemError, and the serving call fails
        with SystemError too. The callbacks take the pending error as the run's failure;
        here that failure is raised instead of the SystemError.
        """
        try:
            return call()
        except SystemError:
            if self.state.failure is not None:
                raise self.state.failure from None
            raise

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
            self.positions.update(positions)
            self._dirty = True
        if not items:
            return
        produce = self.producer.produce
        topic = self.output.topic
        partition = self.output.partition
        start = 0
        if self._tail_pos < len(self._tail):
            start = self._reconcile(items)
        n = len(items)
        max_bytes = self.max_record_bytes
        # Only the last record has a callback: its delivery report tells how far the
        # output got.
        last = items[-1]
        # Timestamp = pitr, at most TIMESTAMP_AHEAD_MAX_MS ahead of the clock (a broker
        # refuses records stamped further ahead; `record_timestamp`).
        cap = int(time.time() * 1000) + TIMESTAMP_AHEAD_MAX_MS
        for e in items[start:]:
            value = e.item
            if len(value) > max_bytes:
                self._oversized(e.feed, e.pitr, value)
                continue
            callback = self._on_last_delivery if e is last else None
            stamp = e.pitr if e.pitr <= cap else cap
            try:
                # Positional (topic, value, key, partition, callback, on_delivery, timestamp; a
                # positional on_delivery is ignored, so the callback goes in `callback`):
                # 0.5 us a record cheaper than keywords, measured.
                produce(topic, value, None, partition, callback, None, stamp)
            except BufferError:
                self._produce_when_room(topic, value, partition, stamp, e is last)
        if positions is None:
            self._advance_positions(items)
        # Delivery reports and errors are served here at most every POLL_EVERY_S (and by
        # every commit's flush): each poll lets go of the GIL, and the writer, the busiest
        # thread, can then wait a whole switch interval to get it back.
        now = time.monotonic()
        if now - self._last_poll >= POLL_EVERY_S:
            self._last_poll = now
            self._served(lambda: self.producer.poll(0))
        self.uncommitted += n - start
        self._dirty = True
        self.state.add("out", n)

    def _produce_when_room(
        self, topic: str, value: bytes, partition: int, stamp: int, is_last: bool
    ) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._served(lambda: self.producer.poll(0.05))
            try:
                callback = self._on_last_delivery if is_last else None
                self.producer.produce(topic, value, None, partition, callback, None, stamp)
                return
            except BufferError:
                continue
        raise KafkaRuntimeError(f"the producer's queue for {self.output} stayed full for 60 s")

    def _advance_positions(self, items: list[Emitted]) -> None:
        """Per feed: the last pitr written and how many of its messages had it (one
        backward scan that stops as soon as every feed's last run has ended)."""
        runs: dict[str, list[Any]] = {}  # feed -> [pitr, count, ended]
        open_runs = 0
        for e in reversed(items):
            run = runs.get(e.feed)
            if run is None:
                runs[e.feed] = [e.pitr, 1, False]
                open_runs += 1
            elif not run[2]:
                if e.pitr == run[0]:
                    run[1] += 1
                else:
                    run[2] = True
                    open_runs -= 1
                    if open_runs == 0 and len(runs) == len(self.feeds):
                        break
        positions = self.positions
        for feed, (pitr, count, ended) in runs.items():
            if not ended:
                prev = positions.get(feed)
                if prev is not None and prev.pitr == pitr:
                    count += prev.skip
            prev_dead = positions[feed].dead_offset if feed in positions else None
            positions[feed] = FeedCheckpoint(pitr=pitr, skip=count, dead_offset=prev_dead)

    def _oversized(self, feed: str, pitr: int, value: bytes) -> None:
        """A record the producer cannot send: a dead letter instead of a stopped run."""
        reason = (
            f"the output record ({len(value)} bytes) is larger than the producer's "
            f"message.max.bytes allows; raise message.max.bytes (here and on the broker) with "
            f"--kafka-config to pass such records"
        )
        kw: dict[str, Any] = dead_letter_raw(value)
        letter = DeadLetter(
            feed=feed, reason=reason, pitr=pitr, kind=DeadLetterReason.TOO_LARGE, **kw
        )
        log.warning("%s: %s: %s (pitr %d)", self.options.instance, feed, reason, pitr)
        self.write_dead([letter])

    def _feed_checkpoints(self) -> dict[str, FeedCheckpoint]:
        out: dict[str, FeedCheckpoint] = {}
        for f in self.feeds:
            pos = self.positions.get(f)
            if pos is None:
                continue
            dead = self._dead_offsets.get(f)
            if dead is not None and (pos.dead_offset is None or dead > pos.dead_offset):
                pos = FeedCheckpoint(pitr=pos.pitr, skip=pos.skip, dead_offset=dead)
                self.positions[f] = pos
            out[f] = pos
        # A feed read without a position of its own (an external mappingstream) keeps only
        # its dead-letter mark, so that a restart does not write its dead letters again.
        for f, dead in self._dead_offsets.items():
            prev = self.positions.get(f)
            if f not in out and (prev is None or dead > (prev.dead_offset or -1)):
                self.positions[f] = FeedCheckpoint(pitr=0, skip=0, dead_offset=dead)
        for f, pos in self.positions.items():
            if f not in out:
                out[f] = pos
        if self.marks and all(f in out for f in self.marks):
            lowest = lowest_position(out, self.marks)
            for f, (marks, lookback) in self.marks.items():
                pos = out[f]
                offset = marks.offset_for(pos.pitr if lookback is None else lowest - lookback)
                if offset != pos.offset:
                    out[f] = self.positions[f] = FeedCheckpoint(
                        pitr=pos.pitr, skip=pos.skip, dead_offset=pos.dead_offset, offset=offset
                    )
        # Each feed names its input, so that a start with other inputs is refused (an
        # external mappingstream too, with no position of its own).
        for f, target in self.inputs.items():
            source = f"{target.topic}:{target.partition}"
            pos = out.get(f) or FeedCheckpoint(pitr=0, skip=0)
            if pos.source != source:
                out[f] = msgspec.structs.replace(pos, source=source)
        return out

    def _reconcile(self, feed_items: list[Emitted]) -> int:
        i = 0
        tail = self._tail
        while i < len(feed_items) and self._tail_pos < len(tail):
            if len(feed_items[i].item) > self.max_record_bytes:
                i += 1  # never written: nothing to compare (its dead letter may repeat)
                continue
            offset, old = tail[self._tail_pos]
            new = feed_items[i].item
            if old != new:
                raise CheckpointError(
                    f"output {self.output} offset {offset} holds a record that differs from what "
                    f"this run writes next (its {self._tail_pos + 1}th message after the "
                    f"checkpoint's next_offset {self.tail_start}): the inputs or options changed "
                    "since that record was written. Use a new output topic, or "
                    f"`unifeed checkpoint reset --instance {self.options.instance}` and --start"
                )
            self._tail_pos += 1
            self.next_offset = offset + 1
            i += 1
        self.state.add("reconciled", i)
        return i

    @property
    def tail_start(self) -> int:
        return self._tail[0][0] if self._tail else self.next_offset

    def write_dead(self, letters: list[DeadLetter]) -> None:
        if not letters or self.dead_target is None:
            return
        for d in letters:
            d = d.fitted(DEAD_LETTER_MAX_BYTES)
            while True:
                try:
                    self.producer.produce(
                        self.dead_target.topic, d.encode(), partition=self.dead_target.partition
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.state.add("dead_letters", len(letters))
        self.dead_written += len(letters)
        self._last_dead = letters[-1]
        for d in letters:
            key = d.feed if d.partition is None else partition_key(d.feed, d.partition)
            if d.offset is not None and d.offset > self._dead_offsets.get(key, -1):
                self._dead_offsets[key] = d.offset
        for d in letters:
            self.state.add(f"dead_letters.{d.kind.value}")
        self._dirty = True

    def stop_if_over_dead_letter_limit(self) -> None:
        """Beyond ``--max-dead-letters``: commit what is processed, then stop (exit 4).

        The commit holds, in one transaction, the output written so far, every dead letter
        written (also those beyond the limit that came in the same batch) and the
        checkpoint of both, so a rerun resumes after them with a fresh count.
        """
        limit = self.options.max_dead_letters
        if limit is None or self.dead_written <= limit:
            return
        self.commit(reopen=False)
        last = self._last_dead
        where = "" if last is None else f"; the last: {last.feed} {last.offset}: {last.reason}"
        raise DeadLetterLimitError(
            f"{self.dead_written} dead letters exceed --max-dead-letters {limit}{where}; "
            "the output, dead letters and checkpoint up to here are committed, so a rerun "
            "resumes after them"
        )

    def due(self) -> bool:
        """Asked after each merge step; a catch-up step can be bigger than
        `commit_max_records`, and is committed whole (docs/guarantees.md says why)."""
        return self._dirty and (
            self.uncommitted >= self.options.commit_max_records
            or (time.monotonic() - self.last_commit) * 1000 >= self.options.commit_interval_ms
        )

    def commit(self, force: bool = False, reopen: bool = True) -> None:
        """Flush output, write the checkpoint, commit (one transaction)."""
        if not self._dirty and not force:
            return
        producer = self.producer
        self.begin()
        feeds = self._feed_checkpoints()
        saving = self._save_state(feeds)
        remaining = self._served(lambda: producer.flush(30))
        if remaining:
            raise KafkaRuntimeError(f"{remaining} output records not delivered after 30 s")
        if self._error is not None:
            raise kafka_error("output delivery failed", self._error)
        if self._delivered_next >= 0:
            self.next_offset = max(self.next_offset, self._delivered_next)
        if saving is not None:
            offsets, ref = saving
            if None in offsets:
                raise KafkaRuntimeError(f"saved state not delivered to {self.state_target}")
            self.state_ref = msgspec.structs.replace(ref, offsets=offsets)
        cp = Checkpoint(
            version=1,
            instance=self.options.instance,
            state=msgspec.UNSET if self.state_ref is None else self.state_ref,
            feeds=feeds,
            output=OutputCheckpoint(
                topic=self.output.topic,
                partition=self.output.partition,
                next_offset=self.next_offset,
            ),
            generation=self.generation,
            written_ms=self.options.clock(),
            incarnation=self.incarnation,
        )
        key, value = encode_record(cp)
        if isinstance(self.state.failure, InstanceFencedError):
            raise self.state.failure
        producer.produce(self.store.topic, value, key=key, partition=0)
        self._commit_or_flush()
        if reopen:
            self.begin()
        self.checkpoint = cp
        self.commits += 1
        self.uncommitted = 0
        self._dirty = False
        self.last_commit = time.monotonic()
        self.state.add("commits")

    def _save_state(
        self, feeds: dict[str, FeedCheckpoint]
    ) -> tuple[list[Any], StateRef] | None:
        """Produce the newest snapshot the checkpoint may name, in parts, inside the open
        transaction (before its flush); its offsets are filled in by delivery reports."""
        if self.snapshots is None or not all(f in feeds for f in self.feeds):
            return None
        lowest = lowest_position(feeds, self.feeds)
        taken = self.snapshots.take(lowest - self.state_lag_ms)
        if taken is None:
            return None
        offset, state, starts = taken
        raw = encode_state(state)
        size = min(STATE_PART_BYTES, max(1024, self.max_record_bytes - 1024))
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)] or [b""]
        token = secrets.token_hex(8)
        offsets: list[Any] = [None] * len(chunks)
        for i, chunk in enumerate(chunks):

            def delivered(error: KafkaError | None, message: Message, i: int = i) -> None:
                if error is None:
                    offsets[i] = message.offset()
                else:
                    self._error = error

            head = part_encode(StatePart(self.options.instance, token, i, len(chunks)))
            while True:
                try:
                    self.producer.produce(
                        self.state_target.topic,
                        head + b"\n" + chunk,
                        # One key per part: compaction keeps the latest snapshot whole.
                        key=f"{self.options.instance}#{i}".encode(),
                        partition=self.state_target.partition,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.state.add("state_saves")
        ref = StateRef(
            topic=self.state_target.topic,
            partition=self.state_target.partition,
            offsets=[],
            id=token,
            feed=self.state_feed,
            offset=0 if starts is not None else offset,
            partitions=starts,
        )
        return offsets, ref

    def begin(self) -> None:
        """Open a transaction unless one is open (exactly-once only)."""
        if self.transactional and not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True

    def close(self) -> None:
        """Abort an open transaction (nothing of it becomes visible) and flush."""
        if self._in_txn:
            self.state.add("aborts")
            try:
                self.producer.abort_transaction(5)
            except KafkaException as exc:
                log.warning(
                    "%s: aborting the open transaction failed: %s", self.options.instance, exc
                )
            self._in_txn = False
        with contextlib.suppress(SystemError):  # a fatal error's reports: see `_served`
            self.producer.flush(5)


def _run_kind(feeds: Iterable[str]) -> str:
    """Which command's run reads these feeds (checkpoint keys, one a partition of a feed
    read from several: ``surfacestream[2]``): combine reads surfacestream, mappings
    controlstream alone, merge feeds of its own names.

    >>> _run_kind(["controlstream[0]", "controlstream[1]", "surfacestream"])
    'combine'
    >>> _run_kind(["controlstream"]), _run_kind(["radar", "adsb[3]"])
    ('mappings', 'merge')
    """
    names = {feed_of(key) for key in feeds}
    if SURFACESTREAM in names and names <= {CONTROLSTREAM, SURFACESTREAM, MAPPINGSTREAM}:
        return "combine"
    if names == {CONTROLSTREAM}:
        return "mappings"
    return "merge"


def _sources(sources: dict[str, str], feed: str) -> str:
    """Where a feed was read from, as people write it: ``kafka:T:0`` or ``kafka:T:0,1,2``.

    >>> _sources({"c[0]": "t:0", "c[1]": "t:1", "s": "u:0"}, "c"), _sources({}, "c")
    ('kafka:t:0,1', 'nothing')
    """
    by_topic: dict[str, list[str]] = {}
    for key, source in sorted(sources.items()):
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


def wrap_kafka_error(message: str, exc: KafkaException, instance: str = "") -> UnifeedError:
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return _fenced(instance, error) or kafka_error(message, error)
    return KafkaRuntimeError(f"{message}: {exc}")


#: What a broker that fences says to the producer of an older incarnation: another
#: producer with the same transactional.id (the instance name) has initialised since.
_FENCED_CODES: Final = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


def _pending_error(exc: SystemError, fallback: KafkaError) -> KafkaError:
    """The client's error that was pending when a callback's call raised ``exc``."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, KafkaException) and cause.args and isinstance(cause.args[0], KafkaError):
        return cause.args[0]
    return fallback


def _fenced(instance: str, error: KafkaError) -> InstanceFencedError | None:
    """The error a fenced producer of ``instance`` ends the run with, or None."""
    if not instance or error.code() not in _FENCED_CODES:
        return None
    return InstanceFencedError(
        f"another incarnation of instance {instance!r} took over: the broker fenced this "
        f"one's transactional producer ({error.name()}); this one stops without committing "
        "again"
    )


def watermarks_or_empty(options: RuntimeOptions, target: Target) -> tuple[int, int]:
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    try:
        try:
            return watermarks(consumer, target)
        except KafkaRuntimeError as exc:
            if exc.code in UNKNOWN_CODES:
                return 0, 0
            raise
    finally:
        consumer.close()


def _read_tail(
    options: RuntimeOptions, target: Target, start: int, high: int
) -> list[tuple[int, bytes]]:
    """Records of ``target`` from ``start`` to ``high`` (read_committed), bounded in time."""
    if start >= high:
        return []
    consumer = Consumer(consumer_config(options.bootstrap, options.kafka_extra))
    out: list[tuple[int, bytes]] = []
    try:
        consumer.assign([target.topic_partition(start)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = consume_batch(consumer, 10_000, 0.5)
            done = False
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise kafka_error(f"reading the output tail of {target}", err)
                offset = m.offset() or 0
                out.append((offset, m.value() or b""))
                if offset >= high - 1:
                    done = True
            if done:
                return out
        raise KafkaRuntimeError(f"reading the output tail of {target} took more than 60 s")
    finally:
        consumer.close()
