"""The claim watcher: stops a run that another incarnation of its instance outranks, or whose checkpoint was reset."""

from __future__ import annotations

import logging

from confluent_kafka import Consumer

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
from unifeed.runtime.output import Committer
from unifeed.runtime.state import RunState, Worker

log = logging.getLogger("unifeed")

class ClaimWatcher(Worker):
    """Follows the checkpoint partition from just after the claim; stops the run when
    another incarnation of this instance name outranks it (a checkpoint record with a
    greater ``(generation, incarnation)``)."""

    def __init__(self, state: RunState, options: RuntimeOptions, committer: Committer) -> None:
        super().__init__("claim-watcher", state)
        self.options = options
        self.committer = committer
        self.target = Target(options.checkpoint_topic, 0)

    def work(self) -> None:
        from unifeed.checkpoint.store import decode_checkpoint

        consumer = Consumer(
            consumer_config(self.options.bootstrap, self.options.kafka_extra, fetch_wait_ms=100)
        )
        key = self.options.instance.encode("utf-8")
        try:
            start = self.committer.watch_from
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
                            f"incarnation (generation {self.committer.generation}) ran; it "
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
                    if cp.claim_rank > self.committer.claim_rank:
                        raise InstanceFencedError(
                            f"another incarnation of instance {self.options.instance!r} "
                            f"(generation {cp.generation}, {cp.incarnation}) took over at checkpoint offset "
                            f"{m.offset()}; this one (generation {self.committer.generation}) "
                            "stops without committing again"
                        )
        finally:
            consumer.close()
