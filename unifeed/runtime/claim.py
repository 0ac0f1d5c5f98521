"""The instance claim: a start claims its instance name (`InstanceClaim`), and the claim
watcher (`ClaimWatcher`) stops a run that another incarnation of its name outranks, or
whose checkpoint was reset."""

from __future__ import annotations

import logging
import secrets
import time

import msgspec
from confluent_kafka import Consumer

from unifeed.checkpoint.store import Checkpoint, CheckpointStore
from unifeed.core.errors import (
    CheckpointError,
    InstanceFencedError,
)
from unifeed.kafka.clients import (
    Target,
    consume_batch,
    consumer_config,
    watermarks,
)
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.state import RunState, Worker

log = logging.getLogger("unifeed")


class InstanceClaim:
    """This incarnation's claim of its instance name: ``(generation, incarnation)``, the
    rank a rival's claim is compared with, and where the claim watcher starts.

    A start `claim`s after its checks and before ``init_transactions``, then reads its
    `resume_point` once it holds the name.
    """

    def __init__(self, options: RuntimeOptions, store: CheckpointStore) -> None:
        self.options = options
        self.store = store
        self.generation = 1
        # Tells apart two processes that claim the same generation at the same moment.
        self.incarnation = secrets.token_hex(8)
        #: The checkpoint offset the claim watcher starts at (None: the partition's end).
        self.watch_from: int | None = None
        self._claims_from = 0  # checkpoint offset from which rival claims are looked for

    @property
    def claim_rank(self) -> tuple[int, str]:
        return (self.generation, self.incarnation)

    def mark_start(self) -> None:
        """Called before the checkpoint is loaded: a claim made by a twin after this point
        is at or after this offset (one made before it is in what the load reads, and this
        run then claims above it)."""
        self._claims_from = self.store.end_offset()

    def claim(self, cp: Checkpoint | None) -> None:
        """Tell an older incarnation of this instance name to stop, give it time to, and
        stop this start if another claim outranks it.

        The claim is the current checkpoint ``cp`` (or, for a new instance, an empty one)
        with the next generation and this process's incarnation token, written outside any
        transaction and before ``init_transactions``: a start that loses to a twin never
        initialises, so it never fences the producer of the one that goes on. An
        incarnation that sees a greater ``(generation, incarnation)`` for its name stops
        before its next commit. After the grace, every claim of the name since this start
        read the checkpoint is looked at, not only the latest record: a twin that claimed
        at the same moment may have landed first and still outrank this one.
        """
        instance = self.options.instance
        self.generation = (cp.generation if cp is not None else 0) + 1
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

    def resume_point(self) -> tuple[Checkpoint, int]:
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


class ClaimWatcher(Worker):
    """Follows the checkpoint partition from just after the claim; stops the run when
    another incarnation of this instance name outranks it (a checkpoint record with a
    greater ``(generation, incarnation)``)."""

    def __init__(self, state: RunState, options: RuntimeOptions, claim: InstanceClaim) -> None:
        super().__init__("claim-watcher", state)
        self.options = options
        self.claim = claim
        self.target = Target(options.checkpoint_topic, 0)

    def work(self) -> None:
        from unifeed.checkpoint.store import decode_checkpoint

        consumer = Consumer(
            consumer_config(self.options.bootstrap, self.options.kafka_extra, fetch_wait_ms=100)
        )
        key = self.options.instance.encode("utf-8")
        try:
            start = self.claim.watch_from
            if start is None:
                start = watermarks(consumer, self.target)[1]
            consumer.assign([self.target.topic_partition(start)])
            while not self.state.stop.is_set():
                for m in consume_batch(consumer, 500, 0.2):
                    if m.error() is not None or m.key() != key:
                        continue
                    if m.value() is None:
                        raise InstanceFencedError(
                            f"the checkpoint of instance {self.options.instance!r} was reset "
                            f"(tombstone at checkpoint offset {m.offset()}) while this "
                            f"incarnation (generation {self.claim.generation}) ran; it "
                            "stops without committing again"
                        )
                    if not m.value():
                        continue
                    try:
                        cp = decode_checkpoint(
                            m.value() or b"",
                            topic=self.target.topic,
                            offset=m.offset() or 0,
                            instance=self.options.instance,
                        )
                    except CheckpointError:
                        continue
                    if cp.claim_rank > self.claim.claim_rank:
                        raise InstanceFencedError(
                            f"another incarnation of instance {self.options.instance!r} "
                            f"(generation {cp.generation}, {cp.incarnation}) took over at checkpoint offset "
                            f"{m.offset()}; this one (generation {self.claim.generation}) "
                            "stops without committing again"
                        )
        finally:
            consumer.close()
