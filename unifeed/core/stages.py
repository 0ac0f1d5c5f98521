"""The unified-feed pipeline as pure stages, shared by the file pipeline and the Kafka runtime.

    controlstream ──► ControlIntake ──(control)────────────────────────► WriterStage ──► unified
                          │ MappingDeriver                                   ▲
                          └──(mappings)──► AnnotateStage ──(annotated)───────┘
    surfacestream ──► FeedIntake ─────────────▲

Each stage owns its state and is driven from outside: the file pipeline calls them in
one thread, the Kafka runtime gives each its own thread and passes batches between them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, Unpack, cast

import msgspec
import msgspec.structs

from unifeed.core.annotate import (
    DEFAULT_LATE_WINDOW_MS,
    DEFAULT_LINK_TTL_MS,
    Annotator,
    LateBeyondHistory,
)
from unifeed.core.combine import Combiner, CombinerOptions, Emitted, Feed
from unifeed.core.errors import BadRecordError, DeadLetterReason
from unifeed.core.mapping import MappingDeriver
from unifeed.core.records import (
    CONTROLSTREAM,
    MAPPINGSTREAM,
    SURFACESTREAM,
    Keepalive,
    Mapping,
    RecordDecoder,
    StampedDecoder,
    dead_letter_raw,
)

_dl_encode: Final = msgspec.json.Encoder().encode


class _DeadLetterRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A dead letter as written (binding fields: feed, line or offset, reason, raw/raw_b64)."""

    feed: str
    line: int | None = None
    offset: int | None = None
    #: The Kafka partition of the input message (inputs read from several partitions).
    partition: int | None = None
    reason: str
    raw: str | None = None
    raw_b64: str | None = None
    #: Set when a Kafka dead-letter record had to be cut to fit the broker's size limit.
    raw_truncated: bool | None = None
    raw_size: int | None = None
    raw_sha256: str | None = None
    #: For a valid message that could not be written (no input offset is known then).
    pitr: int | None = None


_RECORD_FIELDS: Final = _DeadLetterRecord.__struct_fields__


class DeadLetter(_DeadLetterRecord, frozen=True, kw_only=True, omit_defaults=True):
    """One refused input message: the record written, and its `DeadLetterReason` (``kind``,
    for metrics; not written: the ``reason`` text says it for people)."""

    kind: DeadLetterReason = DeadLetterReason.INVALID_FIELD

    def encode(self) -> bytes:
        return _dl_encode(_DeadLetterRecord(**{f: getattr(self, f) for f in _RECORD_FIELDS}))

    def fitted(self, limit: int) -> DeadLetter:
        """This dead letter, its raw text cut to fit in ``limit`` bytes when encoded.

        Kafka brokers refuse records above ``message.max.bytes`` (1 MB by default); the
        cut keeps the beginning, the original size and its SHA-256, and says so.
        """
        encoded = self.encode()
        if len(encoded) <= limit:
            return self
        original = (
            (self.raw or "").encode() if self.raw is not None else (self.raw_b64 or "").encode()
        )
        keep = max(0, limit - len(encoded) + len(original) - 512)
        digest = hashlib.sha256(
            original if self.raw is not None else base64.b64decode(original)
        ).hexdigest()
        size = len(original) if self.raw is not None else len(base64.b64decode(original))
        cut = original[:keep].decode("utf-8", "ignore")
        return msgspec.structs.replace(
            self,
            raw=cut if self.raw is not None else None,
            raw_b64=None if self.raw is not None else cut[: len(cut) // 4 * 4],
            raw_truncated=True,
            raw_size=size,
            raw_sha256=digest,
        )


def make_dead_letter(
    feed: str,
    where: Where,
    loc: int,
    reason: str,
    raw: bytes,
    kind: DeadLetterReason,
    partition: int | None = None,
) -> DeadLetter:
    """``where`` is ``"line"`` (file input) or ``"offset"`` (Kafka input)."""
    kw: dict[str, Any] = dead_letter_raw(raw)
    kw[where] = loc
    return DeadLetter(feed=feed, reason=reason, kind=kind, partition=partition, **kw)


class Accepted(Emitted, frozen=True, gc=False):
    """A valid, in-order message: an `Emitted` of its feed whose ``item`` is its raw bytes,
    plus its decoded record. Being an `Emitted`, it goes into a `Combiner` queue as it is.
    """

    rec: Any


class Intake(list[Accepted]):
    """The accepted messages of a batch, in order, with the indexes of its keepalives:
    a consumer pushes the runs between them without looking at every record. Its
    messages are labelled for one feed's queue (`FeedIntake`'s), or for its partitions
    (a feed's merge, `unifeed.runtime.feedmerge`): they are not checked one by one."""

    __slots__ = ("keepalive_at",)

    def __init__(
        self, items: Iterable[Accepted] = (), keepalive_at: list[int] | None = None
    ) -> None:
        """``keepalive_at``: the indexes of the keepalives among ``items`` (none by
        default)."""
        super().__init__(items)
        self.keepalive_at: list[int] = [] if keepalive_at is None else keepalive_at


def keepalives_at(batch: Sequence[Accepted]) -> list[int]:
    """The indexes of the keepalives in ``batch``: an `Intake` knows them, any other
    batch is searched."""
    if type(batch) is Intake:
        return batch.keepalive_at
    return [i for i, a in enumerate(batch) if type(a.rec) is Keepalive]


def _push_runs(c: Combiner, feed: str, batch: Iterable[Accepted]) -> bool:
    """Queue a feed's accepted messages; a keepalive advances the feed instead.

    Pushing the runs between keepalives and advancing after each is exactly pushing and
    advancing one message at a time (nothing is drained in between). An `Intake` knows
    where its keepalives are, and its messages are labelled for the feed's queue; any
    other batch is searched for both.
    """
    labelled = type(batch) is Intake
    items = batch if isinstance(batch, list) else list(batch)
    keepalive_at = keepalives_at(items)
    if not keepalive_at:
        return c.push_emitted(feed, items, labelled=labelled)
    start = 0
    for i in keepalive_at:
        if i > start:
            c.push_emitted(feed, items[start:i], labelled=labelled)
        c.advance(feed, items[i].pitr)
        start = i + 1
    if start < len(items):
        c.push_emitted(feed, items[start:], labelled=labelled)
    return c.room(feed) > 0


_BACKWARDS: Final = DeadLetterReason.PITR_BACKWARDS
#: How a dead letter names its message's place: a line of a file, or a Kafka offset.
Where = Literal["line", "offset"]


def _backwards(pitr: int, floor: int) -> str:
    return (
        f"pitr {pitr} is lower than {floor}, the feed's previous pitr or "
        "keepalive; a feed's pitr must never decrease"
    )


class FeedIntake:
    """Validates one feed's messages (README, "Records") and keeps its ``pitr`` order.

    A message that is invalid, or whose ``pitr`` is below the previous one or the last
    keepalive, becomes a `DeadLetter`; the feed carries on as if it had not been there.

    ``decoder`` defaults to the feed's schema (`RecordDecoder`); `unifeed merge` gives a
    `StampedDecoder`, which asks only for an integer ``pitr``. An intake reading one
    partition of a feed names it in its dead letters (``partition``); its ``pitr`` order
    is that partition's own.
    """

    def __init__(
        self,
        feed: str,
        *,
        where: Where = "line",
        decoder: RecordDecoder | StampedDecoder | None = None,
        partition: int | None = None,
        queue: str | None = None,
    ) -> None:
        if where not in ("line", "offset"):
            raise ValueError("where must be 'line' or 'offset'")
        self.feed = feed
        self.queue = feed if queue is None else queue
        self.where = where
        self.partition = partition
        self._decoder = RecordDecoder(feed) if decoder is None else decoder
        self.floor = -1  # highest pitr seen (message or keepalive)
        self.accepted = 0
        self.dead = 0

    def process(self, batch: Iterable[tuple[int, bytes]]) -> tuple[list[Accepted], list[DeadLetter]]:
        """Split a batch of ``(line or offset, raw)`` into accepted messages and dead letters.

        Keepalives are accepted (as `Keepalive` records) so that callers can advance.
        """
        rows = batch if isinstance(batch, list) else list(batch)
        return self.process_values([raw for _, raw in rows], lambda i: rows[i][0])

    def process_values(
        self, values: Sequence[bytes | None], loc_of: Callable[[int], int]
    ) -> tuple[Intake, list[DeadLetter]]:
        """`process` for messages given as values alone: ``loc_of(i)`` is the line or
        offset of ``values[i]``, asked only for a dead letter. ``None`` (a Kafka record
        without a value) is a dead letter.
        """
        good = Intake()
        dead: list[DeadLetter] = []
        append = good.append
        keepalive_at = good.keepalive_at
        decode = self._decoder.decode
        fast_decode = self._decoder.decode_ascii
        feed = self.feed
        queue = self.queue
        floor = self.floor
        # The one intake check: this loop runs once per input message.
        # A None value never gets past `decode`; for the type checker they are all bytes.
        for raw in cast(Sequence[bytes], values):
            try:
                # `RecordDecoder.decode`'s common case inlined (no call frame per message);
                # anything unusual goes through it for the checks and the reason.
                rec = fast_decode(raw) if raw.isascii() else decode(raw)
            except (BadRecordError, msgspec.DecodeError, AttributeError, RecursionError):
                try:
                    rec = decode(raw)
                except BadRecordError as exc:
                    i = len(good) + len(dead)
                    dead.append(
                        make_dead_letter(
                            feed, self.where, loc_of(i), exc.reason, raw or b"", exc.kind, self.partition
                        )
                    )
                    continue
            pitr = rec.pitr
            if pitr < floor:
                i = len(good) + len(dead)
                reason = _backwards(pitr, floor)
                dead.append(
                    make_dead_letter(
                        feed, self.where, loc_of(i), reason, raw, _BACKWARDS, self.partition
                    )
                )
                continue
            floor = pitr
            if type(rec) is Keepalive:
                keepalive_at.append(len(good))
            append(Accepted(queue, pitr, raw, rec))
        self.floor = floor
        self.accepted += len(good)
        self.dead += len(dead)
        return good, dead


class AnnotateStage:
    """The combining rule over (mappingstream, surfacestream), then annotation.

    Mappings win ties. mappingstream is required in both modes; surfacestream in
    catch-up only (in both with ``strict_order``).
    """

    def __init__(
        self,
        *,
        strict_order: bool = False,
        link_ttl_ms: int = DEFAULT_LINK_TTL_MS,
        late_window_ms: int = DEFAULT_LATE_WINDOW_MS,
        capacity: int = 100_000,
        **options: Unpack[CombinerOptions],
    ) -> None:
        self.combiner = Combiner(
            [
                Feed(MAPPINGSTREAM, True, True, capacity),
                Feed(SURFACESTREAM, strict_order, True, capacity),
            ],
            **options,
        )
        self.annotator = Annotator(link_ttl_ms=link_ttl_ms, late_window_ms=late_window_ms)
        #: Late surface messages older than the link history: taken by the caller.
        self.dead: list[DeadLetter] = []

    def push_mappings(self, batch: Iterable[Mapping | Keepalive]) -> bool:
        """Queue mappingstream records; a keepalive advances the feed."""
        c = self.combiner
        room = True
        for m in batch:
            if type(m) is Mapping:
                room = c.push(MAPPINGSTREAM, m.pitr, m)
            else:
                c.advance(MAPPINGSTREAM, m.pitr)
        return room

    def push_surface(self, batch: Iterable[Accepted]) -> bool:
        return _push_runs(self.combiner, SURFACESTREAM, batch)

    def drain(self) -> list[Emitted]:
        """Apply every emittable mapping; return the annotated surface messages.

        Each returned `Emitted` holds the output bytes as ``item``.
        """
        out, too_late = self.annotator.annotate_merged(self.combiner.drain_list())
        if too_late:
            self.dead.extend(_too_late(raw, late) for raw, late in too_late)
        return out

    def progress(self) -> int | None:
        """Lower bound of the pitr of every annotated message still to come."""
        return self.combiner.progress(SURFACESTREAM)

    def finished(self) -> bool:
        """surfacestream is closed and everything from it has been annotated."""
        c = self.combiner
        return c.is_closed(SURFACESTREAM) and c.queued(SURFACESTREAM) == 0


def _too_late(raw: bytes, late: LateBeyondHistory) -> DeadLetter:
    reason = (
        f"late surface message: pitr {late.pitr} is older than the link history reaches "
        f"(mappings up to pitr {late.applied} were applied; history from {late.horizon}), so the "
        "flight its track belonged to then is unknown; it is not written rather than "
        "annotated with a guess"
    )
    kw: dict[str, Any] = dead_letter_raw(raw)
    return DeadLetter(
        feed=SURFACESTREAM, reason=reason, pitr=late.pitr, kind=DeadLetterReason.TOO_LATE, **kw
    )


class MergeStage:
    """The combining rule over any number of feeds of `Accepted` messages: a merge.

    Each feed's keepalives advance it instead of being queued, so they are never
    forwarded. `unifeed merge` is this stage over its inputs; the unified feed's writer
    is this stage over controlstream and the annotated surfacestream (`WriterStage`).
    """

    def __init__(self, feeds: Sequence[Feed], **options: Unpack[CombinerOptions]) -> None:
        self.combiner = Combiner(feeds, **options)

    def push(self, feed: str, batch: Iterable[Accepted]) -> bool:
        """Queue a feed's accepted messages (a keepalive advances it); False when full."""
        return _push_runs(self.combiner, feed, batch)

    def drain(self) -> list[Emitted]:
        return self.combiner.drain_list()


class WriterStage(MergeStage):
    """The merge of controlstream and the annotated surfacestream: the unified feed."""

    def __init__(
        self,
        *,
        strict_order: bool = False,
        capacity: int = 100_000,
        **options: Unpack[CombinerOptions],
    ) -> None:
        super().__init__(
            [
                Feed(CONTROLSTREAM, True, True, capacity),
                Feed(SURFACESTREAM, strict_order, True, capacity),
            ],
            **options,
        )

    def push_control(self, batch: Iterable[Accepted]) -> bool:
        return self.push(CONTROLSTREAM, batch)

    def push_annotated(self, batch: list[Emitted]) -> bool:
        return self.combiner.push_emitted(SURFACESTREAM, batch)


class ControlIntake(FeedIntake):
    """controlstream intake that also derives mappings (when no mapping feed is given)."""

    def __init__(self, *, where: Where = "line", derive: bool = True) -> None:
        super().__init__(CONTROLSTREAM, where=where)
        self.deriver = MappingDeriver() if derive else None

    def derive(self, good: Iterable[Accepted]) -> list[Mapping | Keepalive]:
        """The mappingstream records caused by accepted control messages, in order."""
        deriver = self.deriver
        if deriver is None:
            return []
        out: list[Mapping | Keepalive] = []
        out.extend(deriver.process_many([a.rec for a in good]))
        return out
