"""Dead letters on the output side (`DeadLetters`): written to the dead-letter sink in
the output's transaction, counted against ``--max-dead-letters``, and the highest input
offset of each feed's kept for the checkpoint; also the policy for an output record too
large to send (`oversized_letter`)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Producer

from unifeed.core.errors import DeadLetterLimitError, DeadLetterReason
from unifeed.core.records import dead_letter_raw
from unifeed.core.stages import DeadLetter
from unifeed.kafka.clients import Target
from unifeed.runtime.layout import partition_key
from unifeed.runtime.limits import DEAD_LETTER_MAX_BYTES
from unifeed.runtime.state import RunState

log = logging.getLogger("unifeed")


class DeadLetters:
    """Writes dead letters to ``target`` (None: they are counted and dropped) with the
    output's producer, and keeps what the checkpoint and the limit need: ``written`` (by
    this run; those a restart skips are not counted), the last one, and per feed key the
    highest input offset written (`offsets`)."""

    def __init__(
        self,
        producer: Producer,
        target: Target | None,
        state: RunState,
        limit: int | None,
        instance: str,
    ) -> None:
        self.producer = producer
        self.instance = instance
        self.target = target
        self.state = state
        self.limit = limit
        self.written = 0
        self.last: DeadLetter | None = None
        #: Per feed key (``feed`` or ``feed[P]``): the highest input offset written.
        self.offsets: dict[str, int] = {}

    def write(self, letters: list[DeadLetter]) -> bool:
        """Produce ``letters`` (each cut to fit, `DeadLetter.fitted`); whether any were
        (False without a sink)."""
        if not letters or self.target is None:
            return False
        topic, partition = self.target.topic, self.target.partition
        for d in letters:
            d = d.fitted(DEAD_LETTER_MAX_BYTES)
            while True:
                try:
                    self.producer.produce(topic, d.encode(), partition=partition)
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.state.add("dead_letters", len(letters))
        self.written += len(letters)
        self.last = letters[-1]
        offsets = self.offsets
        for d in letters:
            key = d.feed if d.partition is None else partition_key(d.feed, d.partition)
            if d.offset is not None and d.offset > offsets.get(key, -1):
                offsets[key] = d.offset
        for d in letters:
            self.state.add(f"dead_letters.{d.kind.value}")
        return True

    def oversized(self, feed: str, pitr: int, value: bytes) -> bool:
        """An output record the producer cannot send: its dead letter (`oversized_letter`)
        instead of a stopped run; whether it was written."""
        letter = oversized_letter(feed, pitr, value)
        log.warning("%s: %s: %s (pitr %d)", self.instance, feed, letter.reason, pitr)
        return self.write([letter])

    def over_limit(self) -> DeadLetterLimitError | None:
        """The error that stops a run beyond ``--max-dead-letters``, or None."""
        return limit_error(self.written, self.limit, self.last)


def limit_error(
    written: int, limit: int | None, last: DeadLetter | None
) -> DeadLetterLimitError | None:
    """The error for ``written`` dead letters against ``limit`` (None: no limit).

    >>> limit_error(3, 3, None) is None, limit_error(3, None, None) is None
    (True, True)
    >>> print(limit_error(4, 3, DeadLetter(feed="controlstream", reason="bad", offset=9)))
    4 dead letters exceed --max-dead-letters 3; the last: controlstream 9: bad; the output, \
dead letters and checkpoint up to here are committed, so a rerun resumes after them
    """
    if limit is None or written <= limit:
        return None
    where = "" if last is None else f"; the last: {last.feed} {last.offset}: {last.reason}"
    return DeadLetterLimitError(
        f"{written} dead letters exceed --max-dead-letters {limit}{where}; "
        "the output, dead letters and checkpoint up to here are committed, so a rerun "
        "resumes after them"
    )


def oversized_letter(feed: str, pitr: int, value: bytes) -> DeadLetter:
    """The dead letter for an output record larger than the producer may send: the run
    goes on without it instead of stopping.

    >>> d = oversized_letter("surfacestream", 5, b"x" * 9)
    >>> d.kind.value, d.raw, d.pitr
    ('too_large', 'xxxxxxxxx', 5)
    """
    reason = (
        f"the output record ({len(value)} bytes) is larger than the producer's "
        f"message.max.bytes allows; raise message.max.bytes (here and on the broker) with "
        f"--kafka-config to pass such records"
    )
    kw: dict[str, Any] = dead_letter_raw(value)
    return DeadLetter(feed=feed, reason=reason, pitr=pitr, kind=DeadLetterReason.TOO_LARGE, **kw)

