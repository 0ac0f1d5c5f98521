"""The output tail (`OutputTail`): records an earlier incarnation wrote after its last
checkpoint. A restart writes the same records first; each is compared with the tail's
and not written again."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError

from unifeed.core.combine import Emitted
from unifeed.core.errors import CheckpointError, KafkaRuntimeError
from unifeed.kafka.clients import Target, consume_batch, consumer_config, kafka_error
from unifeed.runtime.options import RuntimeOptions


@dataclass
class OutputTail:
    """The ``(offset, value)`` records of ``output`` after the checkpoint's next offset,
    matched in order against what this run writes first.

    >>> tail = OutputTail([(7, b"a"), (8, b"b")], Target("out"), "uf", max_record_bytes=4)
    >>> tail.reconcile([Emitted("s", 1, b"a"), Emitted("s", 2, b"oversized")])
    (2, 8)
    >>> tail.pending, tail.reconcile([Emitted("s", 3, b"b"), Emitted("s", 4, b"c")])
    (True, (1, 9))
    >>> tail.pending
    False
    """

    records: list[tuple[int, bytes]]
    output: Target
    instance: str
    max_record_bytes: int
    _pos: int = field(default=0, init=False)

    @property
    def pending(self) -> bool:
        """Whether tail records are left to compare."""
        return self._pos < len(self.records)

    def reconcile(self, items: list[Emitted]) -> tuple[int, int]:
        """Compare the first of ``items`` with the records left; how many of ``items``
        are done (already in the output, or too large ever to be written) and the output
        offset after the last one compared (-1: none compared). A record that differs
        raises `CheckpointError`: the inputs or options changed since it was written."""
        i = 0
        tail = self.records
        next_offset = -1
        while i < len(items) and self._pos < len(tail):
            if len(items[i].item) > self.max_record_bytes:
                i += 1  # never written: nothing to compare (its dead letter may repeat)
                continue
            offset, old = tail[self._pos]
            new = items[i].item
            if old != new:
                raise CheckpointError(
                    f"output {self.output} offset {offset} holds a record that differs from what "
                    f"this run writes next (its {self._pos + 1}th message after the "
                    f"checkpoint's next_offset {tail[0][0]}): the inputs or options changed "
                    "since that record was written. Use a new output topic, or "
                    f"`unifeed checkpoint reset --instance {self.instance}` and --start"
                )
            self._pos += 1
            next_offset = offset + 1
            i += 1
        return i, next_offset


def read_tail(
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
