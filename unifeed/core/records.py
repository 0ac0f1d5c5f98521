"""Feed records (README, "Records") as msgspec structs.

Each feed has one tagged union, decoded once per message. A struct declares only
the fields unifeed needs or must check are present; every other field is skipped
by the decoder and kept untouched in the raw bytes, which are what flows on.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

import msgspec

from unifeed.core.errors import BadRecordError, DeadLetterReason

CONTROLSTREAM: Final = "controlstream"
SURFACESTREAM: Final = "surfacestream"
MAPPINGSTREAM: Final = "mappingstream"
FEED_NAMES: Final = (CONTROLSTREAM, SURFACESTREAM, MAPPINGSTREAM)

Access = Literal["public", "restricted", "blocked"]
#: Access levels, weakest first.
ACCESS_LEVELS: Final[tuple[str, ...]] = ("public", "restricted", "blocked")
ACCESS_RANK: Final[dict[str, int]] = {name: rank for rank, name in enumerate(ACCESS_LEVELS)}

Pitr = Annotated[int, msgspec.Meta(ge=0)]
# Flight and surface track identifiers: strings in every feed we know; integers are
# accepted so that numeric track IDs of some surface sources pass.
Ident = str | int
Number = float  # msgspec accepts JSON integers for float fields


class Head(msgspec.Struct, frozen=True, gc=False):
    """Just ``type`` and ``pitr``: what a reader needs to order a message."""

    type: str
    pitr: Pitr


# --- controlstream ---------------------------------------------------------


class Position(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="position"):
    pitr: Pitr
    id: Ident
    clock: Number
    lat: Number
    lon: Number


class FlightPlan(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="flightplan"):
    pitr: Pitr
    id: Ident
    ident: str
    access: Access = "public"


class _FlightEvent(msgspec.Struct, frozen=True, gc=False):
    """The fields of a flight's events without a surface track."""

    pitr: Pitr
    id: Ident


class Departure(_FlightEvent, frozen=True, gc=False, tag_field="type", tag="departure"):
    pass


class Arrival(_FlightEvent, frozen=True, gc=False, tag_field="type", tag="arrival"):
    pass


class Cancellation(_FlightEvent, frozen=True, gc=False, tag_field="type", tag="cancellation"):
    pass


class _TrackEvent(msgspec.Struct, frozen=True, gc=False):
    """The fields of a flight's events on a surface track."""

    pitr: Pitr
    id: Ident
    surface_id: Ident
    facility: str


class PowerOn(_TrackEvent, frozen=True, gc=False, tag_field="type", tag="power_on"):
    pass


class SurfaceOffblock(_TrackEvent, frozen=True, gc=False, tag_field="type", tag="surface_offblock"):
    pass


class SurfaceOnblock(_TrackEvent, frozen=True, gc=False, tag_field="type", tag="surface_onblock"):
    pass


class PowerOff(_TrackEvent, frozen=True, gc=False, tag_field="type", tag="power_off"):
    pass


class Keepalive(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="keepalive"):
    pitr: Pitr


ControlRecord = (
    Position
    | FlightPlan
    | Departure
    | Arrival
    | Cancellation
    | PowerOn
    | SurfaceOffblock
    | SurfaceOnblock
    | PowerOff
    | Keepalive
)
#: controlstream events that link a surface track to a flight.
LinkEvent = PowerOn | SurfaceOffblock | SurfaceOnblock

# --- surfacestream ---------------------------------------------------------


class _SurfacePosition(msgspec.Struct, frozen=True, gc=False):
    """The fields of a position on the surface."""

    pitr: Pitr
    surface_id: Ident
    facility: str
    clock: Number
    lat: Number
    lon: Number


class GroundPosition(_SurfacePosition, frozen=True, gc=False, tag_field="type", tag="ground_position"):
    # Not checked, only noticed: an ``id`` or ``access`` the message already carries is
    # overwritten by annotation, which then re-encodes the message instead of splicing.
    # UNSET (the usual case) costs the decoder nothing.
    given_id: Any = msgspec.field(default=msgspec.UNSET, name="id")
    given_access: Any = msgspec.field(default=msgspec.UNSET, name="access")


class VehiclePosition(_SurfacePosition, frozen=True, gc=False, tag_field="type", tag="vehicle_position"):
    pass


class _LocationEvent(msgspec.Struct, frozen=True, gc=False):
    """The fields of a track entering or leaving a named location."""

    pitr: Pitr
    surface_id: Ident
    facility: str
    location: str


class LocationEntry(_LocationEvent, frozen=True, gc=False, tag_field="type", tag="location_entry"):
    pass


class LocationExit(_LocationEvent, frozen=True, gc=False, tag_field="type", tag="location_exit"):
    pass


SurfaceRecord = GroundPosition | VehiclePosition | LocationEntry | LocationExit | Keepalive

# --- mappingstream ---------------------------------------------------------


class Mapping(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="mapping"):
    """One link or unlink of a surface track to a flight (field order is the wire order)."""

    pitr: Pitr
    surface_id: Ident
    id: Ident
    action: Literal["link", "unlink"]
    access: Access
    facility: str


MappingRecord = Mapping | Keepalive
AnyRecord = ControlRecord | SurfaceRecord | MappingRecord

_TYPES: Final[dict[str, frozenset[str]]] = {
    CONTROLSTREAM: frozenset(
        {
            "position",
            "flightplan",
            "departure",
            "arrival",
            "cancellation",
            "power_on",
            "surface_offblock",
            "surface_onblock",
            "power_off",
            "keepalive",
        }
    ),
    SURFACESTREAM: frozenset(
        {"ground_position", "vehicle_position", "location_entry", "location_exit", "keepalive"}
    ),
    MAPPINGSTREAM: frozenset({"mapping", "keepalive"}),
}

_UNIONS: Final[dict[str, object]] = {
    CONTROLSTREAM: ControlRecord,
    SURFACESTREAM: SurfaceRecord,
    MAPPINGSTREAM: MappingRecord,
}

_probe: Final = msgspec.json.Decoder()

#: The reason of a message nested deeper than msgspec decodes (it raises `RecursionError`,
#: not `msgspec.DecodeError`, also for a deep value inside a field nobody reads).
TOO_DEEP: Final = (
    "message is nested too deeply to decode (arrays or objects inside each other "
    "beyond the decoder's depth limit)"
)


R = TypeVar("R")


class _CheckedDecoder(Generic[R]):
    """What `RecordDecoder` and `StampedDecoder` share: ``decode`` checks what
    ``decode_ascii`` (msgspec alone) takes on trust, and says why a message is refused."""

    __slots__ = ("_decoder", "decode_ascii", "feed")

    feed: str
    #: msgspec's decode alone, for bytes known to be ASCII (so valid UTF-8); it raises
    #: `msgspec.DecodeError` with msgspec's own words: `decode` says it better.
    decode_ascii: Callable[[bytes], R]

    def decode(self, raw: bytes | None) -> R:
        """Decode one message; raise `BadRecordError` with a readable reason if it is invalid."""
        if raw is None:
            raise BadRecordError(
                self.feed,
                "message is not valid JSON (the Kafka record's value is null)",
                DeadLetterReason.NOT_JSON,
            )
        try:
            if not raw.isascii():
                # msgspec checks only the strings it decodes; skipped fields pass unchecked.
                raw.decode("utf-8")
            return self.decode_ascii(raw)
        except UnicodeDecodeError as exc:
            raise BadRecordError(
                self.feed,
                f"message is not valid UTF-8 (byte {exc.start}: {exc.reason})",
                DeadLetterReason.NOT_UTF8,
            ) from None
        except msgspec.DecodeError as exc:
            reason, kind = self._explain(raw, exc)
            raise BadRecordError(self.feed, _clip(reason), kind) from None
        except RecursionError:
            raise BadRecordError(self.feed, TOO_DEEP, DeadLetterReason.INVALID_FIELD) from None

    def _explain(self, raw: bytes, exc: msgspec.DecodeError) -> tuple[str, DeadLetterReason]:
        raise NotImplementedError


class RecordDecoder(_CheckedDecoder[AnyRecord]):
    """Decodes and checks the messages of one feed; built once, reused for every message.

    >>> d = RecordDecoder("controlstream")
    >>> d.decode(b'{"type":"departure","pitr":5,"id":"UAL1-1"}')
    Departure(pitr=5, id='UAL1-1')
    """

    __slots__ = ()

    def __init__(self, feed: str) -> None:
        if feed not in _UNIONS:
            raise ValueError(f"feed must be one of {', '.join(FEED_NAMES)}, not {feed!r}")
        self.feed = feed
        self._decoder: msgspec.json.Decoder[AnyRecord] = msgspec.json.Decoder(_UNIONS[feed])
        self.decode_ascii = self._decoder.decode

    def _explain(self, raw: bytes, exc: msgspec.DecodeError) -> tuple[str, DeadLetterReason]:
        """Turn msgspec's message into a sentence that says what was expected and what
        came, and its kind."""
        try:
            value = _probe.decode(raw)
        except RecursionError:
            return TOO_DEEP, DeadLetterReason.INVALID_FIELD
        except msgspec.DecodeError as inner:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return "message is not valid UTF-8", DeadLetterReason.NOT_UTF8
            return f"message is not valid JSON ({inner})", DeadLetterReason.NOT_JSON
        if not isinstance(value, dict):
            return (
                f"message must be a JSON object, got {type(value).__name__}",
                DeadLetterReason.NOT_OBJECT,
            )
        kind = value.get("type")
        if kind is None:
            return "message has no `type` field", DeadLetterReason.UNKNOWN_TYPE
        if not isinstance(kind, str) or kind not in _TYPES[self.feed]:
            allowed = ", ".join(sorted(_TYPES[self.feed]))
            shown = _clip(repr(kind), 60)
            return (
                f"unknown message type {shown} for {self.feed} (expected one of {allowed})",
                DeadLetterReason.UNKNOWN_TYPE,
            )
        return _pitr_problem(value, f"{kind} message") or (
            f"invalid {kind} message: {exc}",
            DeadLetterReason.INVALID_FIELD,
        )


def _clip(text: str, limit: int = 300) -> str:
    """A reason stays a sentence: a huge value inside it is cut (the raw text is kept)."""
    return text if len(text) <= limit else text[: limit - 12] + f"... ({len(text)} chars)"


def dead_letter_raw(raw: bytes) -> dict[str, str]:
    """The ``raw`` (or ``raw_b64`` when not UTF-8) part of a dead-letter record."""
    try:
        return {"raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw_b64": base64.b64encode(raw).decode("ascii")}


# --- merge inputs: any JSON object with an integer pitr ----------------------


class Stamped(msgspec.Struct, frozen=True, gc=False):
    """A message of a `unifeed merge` input: only its ``pitr`` is read (and ``type``, to
    tell a keepalive); every other field stays in the raw bytes, untouched."""

    pitr: Pitr
    type: Any = None


class StampedDecoder(_CheckedDecoder[Stamped | Keepalive]):
    """Decodes the messages of a content-agnostic input (`unifeed merge`).

    A message is any JSON object with an integer ``pitr`` >= 0; one whose ``type`` is
    ``"keepalive"`` decodes as a `Keepalive` (progress, never forwarded). Same interface
    as `RecordDecoder`, so the same intake validates both kinds of feed.

    >>> d = StampedDecoder("radar")
    >>> d.decode(b'{"pitr":5,"anything":[1,2]}')
    Stamped(pitr=5, type=None)
    >>> d.decode(b'{"type":"keepalive","pitr":7}')
    Keepalive(pitr=7)
    """

    __slots__ = ()

    def __init__(self, feed: str) -> None:
        if not feed:
            raise ValueError("feed name must not be empty")
        self.feed = feed
        self._decoder: msgspec.json.Decoder[Stamped] = msgspec.json.Decoder(Stamped)
        self.decode_ascii = self._decode_valid

    def _decode_valid(self, raw: bytes) -> Stamped | Keepalive:
        rec = self._decoder.decode(raw)
        return Keepalive(rec.pitr) if rec.type == "keepalive" else rec

    def _explain(self, raw: bytes, exc: msgspec.DecodeError) -> tuple[str, DeadLetterReason]:
        return _explain_stamped(raw, exc)


def _explain_stamped(raw: bytes, exc: msgspec.DecodeError) -> tuple[str, DeadLetterReason]:
    try:
        value = _probe.decode(raw)
    except RecursionError:
        return TOO_DEEP, DeadLetterReason.INVALID_FIELD
    except msgspec.DecodeError as inner:
        return f"message is not valid JSON ({inner})", DeadLetterReason.NOT_JSON
    if not isinstance(value, dict):
        return (
            f"message must be a JSON object, got {type(value).__name__}",
            DeadLetterReason.NOT_OBJECT,
        )
    return _pitr_problem(value, "message") or (
        f"invalid message: {exc}",
        DeadLetterReason.INVALID_FIELD,
    )


def _pitr_problem(value: dict[str, Any], what: str) -> tuple[str, DeadLetterReason] | None:
    """Why a message's ``pitr`` is refused (``what``: the message, as the reason names
    it), or None when it is a non-negative integer."""
    if "pitr" not in value:
        return f"{what} has no `pitr` field", DeadLetterReason.BAD_PITR
    pitr = value["pitr"]
    if type(pitr) is not int:
        shown = msgspec.json.encode(pitr).decode()[:40]
        return (
            f"`pitr` must be an integer (epoch milliseconds), got {shown}",
            DeadLetterReason.BAD_PITR,
        )
    if pitr < 0:
        return f"`pitr` must not be negative, got {pitr}", DeadLetterReason.BAD_PITR
    return None
