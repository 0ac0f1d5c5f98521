"""Seek by ``pitr``: the offset of the first record of a partition at or after a point in time.

`find_offset_for_pitr` asks the broker (``offsets_for_times``, record timestamp = pitr),
verifies its answer against the records, and otherwise bisects over offsets reading
each probe's pitrs; `record_pitr` reads a record's pitr. Every read is bounded
(`unifeed.kafka.clients.PartitionReader`): one deadline for the whole search, and a
bounded number of steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Literal

import msgspec
from confluent_kafka import KafkaException, Message

from unifeed.core.errors import KafkaRuntimeError
from unifeed.kafka.clients import (
    CALL_TIMEOUT_S,
    PartitionConsumer,
    PartitionReader,
    Target,
    exception_text,
    watermarks,
)

__all__ = [
    "PitrSeek",
    "SeekMethod",
    "find_offset_for_pitr",
    "record_pitr",
]

log = logging.getLogger("unifeed.kafka")


class _PitrOnly(msgspec.Struct, gc=False):
    pitr: int


_pitr_decoder: Final = msgspec.json.Decoder(_PitrOnly)


def record_pitr(message: Message) -> int | None:
    """The ``pitr`` of a record's JSON value, or None if it has none (or is not JSON).

    >>> from confluent_kafka import Message
    >>> record_pitr(Message(value=b'{"type":"keepalive","pitr":1700000000000}'))
    1700000000000
    >>> record_pitr(Message(value=b'not json')) is None
    True
    """
    value = message.value()
    if value is None:
        return None
    try:
        pitr = _pitr_decoder.decode(value).pitr
    except (msgspec.DecodeError, RecursionError):
        return None
    return pitr if pitr >= 0 else None


SeekMethod = Literal["empty", "offsets_for_times", "after_last", "bisection"]


class PitrSeek(msgspec.Struct, frozen=True, gc=False):
    """Where `find_offset_for_pitr` landed and how.

    ``offset``: offset of the first readable record whose ``pitr >=`` the asked one (the
    high watermark when there is none). ``method``: ``offsets_for_times`` (broker's answer,
    verified), ``after_last`` (every record is older), ``bisection`` or ``empty``.
    ``broker_answer``: what ``offsets_for_times`` said (-1: unknown/none; None: not asked).
    ``reads``: positioned reads done; ``records``: records looked at.
    """

    offset: int
    method: SeekMethod
    reads: int
    records: int
    broker_answer: int | None
    low: int
    high: int


_PitrOf = Callable[[Message], int | None]

#: Records read at each probe of the search by pitr (see `find_offset_for_pitr`).
_PROBE: Final = 16


def find_offset_for_pitr(
    consumer: PartitionConsumer,
    target: Target,
    pitr: int,
    pitr_of: Callable[[Message], int | None] = record_pitr,
    *,
    timeout_s: float = CALL_TIMEOUT_S,
    use_offsets_for_times: bool = True,
) -> PitrSeek:
    """Find the offset of the first record of ``target`` whose pitr is ``>= pitr``.

    Records are assumed in non-decreasing pitr order (a feed's contract); records whose
    pitr ``pitr_of`` cannot read (None) and offsets without a record (transaction
    markers) are stepped over, so the offset found always holds a readable record, or is
    the high watermark when no record is that late. Among equal pitrs the first one is
    found, so a checkpoint's ``skip`` can be applied from there.

    First asks the broker (``offsets_for_times``, by record timestamp = pitr) and verifies
    the answer by reading the record it points at and the readable record before it; a
    broker that answers -1 (the embedded broker always does; a real one when every record
    is older) is checked against the last record's pitr. Anything unverified falls back to
    a bisection over offsets, reading pitrs from the records: O(log n) positioned reads.
    An offset deleted under our feet raises `KafkaRuntimeError`.
    """
    deadline = time.monotonic() + timeout_s
    low, high = watermarks(consumer, target, timeout_s)
    if low >= high:
        return PitrSeek(high, "empty", 0, 0, None, low, high)
    reader = PartitionReader(consumer, target, deadline)

    def done(offset: int, method: SeekMethod, answer: int | None) -> PitrSeek:
        log.debug(
            "%s: pitr %d found at offset %d by %s (broker's answer %s, %d reads)",
            target,
            pitr,
            offset,
            method,
            answer,
            reader.reads,
        )
        return PitrSeek(offset, method, reader.reads, reader.records, answer, low, high)

    # Invariant: the answer lies in [lo, hi]; hi_record is the offset of the first
    # readable record at or after hi (high when there is none).
    lo, hi, hi_record = low, high, high
    answer: int | None = None
    if use_offsets_for_times:
        answer = _broker_offset_for_time(consumer, target, pitr, deadline)
        if 0 <= answer <= high:
            # Verify: the record at the answer is new enough, the one before it is older.
            start = max(answer, low)
            first = _window_from(reader, start, high, pitr_of, 1) if start < high else []
            after, after_offset = first[0] if first else (None, high)
            last = _window_before(reader, start, low, pitr_of, 1)
            before, before_offset = last[0] if last else (None, low)
            after_ok = after is None or after >= pitr
            before_ok = before is None or before < pitr
            if after_ok and before_ok:
                return done(after_offset, "offsets_for_times", answer)
            log.info(
                "%s: the broker's offset %d for pitr %d does not match the records' pitr "
                "(record timestamps differ from pitr?); bisecting",
                target,
                answer,
                pitr,
            )
            if not after_ok:
                lo = after_offset + 1
            if not before_ok:
                hi = hi_record = before_offset
        else:
            # -1: "unknown" on brokers that cannot answer, "nothing that late" on the rest.
            tail = _window_before(reader, high, low, pitr_of, _PROBE)
            if not tail or max(p for p, _ in tail) < pitr:
                return done(high, "after_last", answer)
            hi = hi_record = next(o for p, o in tail if p >= pitr)
    # A feed's pitr never decreases, but its partition can hold records that break the
    # order (a backwards pitr is a dead letter, not a reason to stop), and one of them
    # must not steer the search past the answer. So the search is for the first record
    # at which the largest pitr so far reaches the target, and every probe reads a window
    # of records: the answer is after the window only when every pitr in it is below the
    # target. (Only a run of more than _PROBE backwards records in a row can still
    # mislead it; a restart from a checkpoint does not depend on this search alone.)
    for _step in range(128):  # 2**128 offsets is more than any partition holds
        if lo >= hi:
            break
        mid = (lo + hi) // 2
        # The window may reach past hi: a window cut short there could hold nothing but
        # backwards records and send the search past an earlier answer.
        window = _window_from(reader, mid, high, pitr_of, _PROBE)
        if not window or window[0][1] >= hi:
            hi = mid  # nothing readable in [mid, hi): the first match is still hi_record
        elif max(p for p, _ in window) >= pitr:
            hi = mid
            hi_record = min(hi_record, next(o for p, o in window if p >= pitr))
        else:
            lo = window[-1][1] + 1
    return done(hi_record, "bisection", answer)


def _broker_offset_for_time(
    consumer: PartitionConsumer, target: Target, pitr: int, deadline: float
) -> int:
    """``offsets_for_times`` for one partition; -1 when the broker cannot tell."""
    timeout = max(0.1, deadline - time.monotonic())
    try:
        answers = consumer.offsets_for_times([target.topic_partition(pitr)], timeout=timeout)
    except KafkaException as exc:
        log.info("%s: offsets_for_times failed (%s); bisecting", target, exception_text(exc))
        return -1
    for answer in answers:
        if answer.error is not None:
            log.info("%s: offsets_for_times failed (%s); bisecting", target, answer.error.str())
            return -1
        return int(answer.offset)
    return -1


def _window_from(
    reader: PartitionReader, start: int, end: int, pitr_of: _PitrOf, size: int
) -> list[tuple[int, int]]:
    """``(pitr, offset)`` of the first ``size`` records in ``[start, end)`` with a
    readable pitr (fewer at the end)."""
    out: list[tuple[int, int]] = []
    for message in reader.scan(start, end, batch=max(16, size)):
        pitr = pitr_of(message)
        if pitr is not None:
            out.append((pitr, _offset(message)))
            if len(out) >= size:
                break
    return out


def _window_before(
    reader: PartitionReader, end: int, low: int, pitr_of: _PitrOf, size: int
) -> list[tuple[int, int]]:
    """``(pitr, offset)`` of the last ``size`` records in ``[low, end)`` with a readable
    pitr, in offset order (fewer when the partition holds fewer)."""
    window = max(8, size)
    upper = end
    found: list[tuple[int, int]] = []
    while upper > low and len(found) < size:
        start = max(low, upper - window)
        chunk = [
            (pitr, _offset(m))
            for m in reader.scan(start, upper)
            if (pitr := pitr_of(m)) is not None
        ]
        found = chunk + found
        upper = start
        window = min(window * 4, 65536)
    return found[-size:]


def _offset(message: Message) -> int:
    offset = message.offset()
    if offset is None:
        raise KafkaRuntimeError("a record arrived without an offset")
    return offset
