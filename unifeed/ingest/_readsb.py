"""readsb-format responses: the aggregator API form and the receiver's ``aircraft.json``.

Two forms carry the same aircraft objects (readsb's ``README-json.md``):

* the aggregator API (airplanes.live, adsb.lol, ADS-B Exchange v2):
  ``{"ac": [...], "now": <epoch ms>, "msg": ..., "total": ..., "ctime": ..., "ptime": ...}``;
* a receiver's ``aircraft.json``: ``{"now": <epoch s, float>, "messages": ..., "aircraft": [...]}``.

``now`` is told apart by its size (above 1e11 it is milliseconds), so either list key
with either unit works. Only the fields ingest uses are decoded; the others are skipped.
An aircraft object with a field of the wrong type does not spoil the response: the
response is decoded again loosely and that one aircraft is counted as ``invalid``.

Pure: bytes in, values out; no I/O.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

__all__ = [
    "Aircraft",
    "BadResponse",
    "Snapshot",
    "decode_response",
]

#: ``now`` values above this are epoch milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD: Final = 1e11


class Aircraft(msgspec.Struct, gc=False):
    """One aircraft object of a readsb response (the fields ingest reads).

    ``alt_baro`` is feet or the string ``"ground"``; ``seen_pos`` and ``seen`` are seconds
    before the response's ``now``; a ``hex`` starting with ``~`` is a non-ICAO address.
    """

    hex: str
    flight: str | None = None
    r: str | None = None
    t: str | None = None
    alt_baro: float | str | None = None
    alt_geom: float | None = None
    gs: float | None = None
    track: float | None = None
    baro_rate: float | None = None
    geom_rate: float | None = None
    squawk: str | None = None
    emergency: str | None = None
    category: str | None = None
    lat: float | None = None
    lon: float | None = None
    seen_pos: float | None = None
    seen: float | None = None
    source_type: str | None = msgspec.field(default=None, name="type")


class Snapshot(msgspec.Struct, frozen=True, gc=False):
    """A decoded response: its time (epoch ms), its aircraft, and how many were invalid."""

    now_ms: int
    aircraft: list[Aircraft]
    invalid: int = 0


class BadResponse(Exception):
    """A response body that is not a readsb document; ``reason`` says why, in one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Response(msgspec.Struct, gc=False):
    now: float | None = None
    ac: list[Aircraft] | None = None
    aircraft: list[Aircraft] | None = None


class _LooseResponse(msgspec.Struct, gc=False):
    now: float | None = None
    ac: list[msgspec.Raw] | None = None
    aircraft: list[msgspec.Raw] | None = None


_decoder: Final = msgspec.json.Decoder(_Response)
_loose_decoder: Final = msgspec.json.Decoder(_LooseResponse)
_aircraft_decoder: Final = msgspec.json.Decoder(Aircraft)
_any_decoder: Final = msgspec.json.Decoder()


def _now_ms(now: float | None) -> int:
    if now is None:
        raise BadResponse("not a readsb response: no `now` field")
    if not math.isfinite(now) or now <= 0:
        raise BadResponse(f"not a readsb response: `now` is {now!r}")
    return round(now) if now > _MS_THRESHOLD else round(now * 1000)


def decode_response(body: bytes) -> Snapshot:
    """Decode one response body; raise `BadResponse` when it is not one.

    >>> s = decode_response(b'{"now":1700000000.5,"aircraft":[{"hex":"~a1b2c3","alt_baro":"ground"}]}')
    >>> s.now_ms, s.aircraft[0].hex, s.aircraft[0].alt_baro
    (1700000000500, '~a1b2c3', 'ground')
    >>> decode_response(b'{"ac":[],"now":1700000000123,"msg":"No error"}').now_ms
    1700000000123
    """
    try:
        response = _decoder.decode(body)
    except msgspec.DecodeError:
        return _decode_loosely(body)
    aircraft = response.ac if response.ac is not None else response.aircraft
    if aircraft is None:
        raise BadResponse("not a readsb response: no `ac` or `aircraft` list")
    return Snapshot(_now_ms(response.now), aircraft)


def _decode_loosely(body: bytes) -> Snapshot:
    """The slow path: say what is wrong with the body, or keep the aircraft that are valid."""
    try:
        loose = _loose_decoder.decode(body)
    except msgspec.DecodeError as exc:
        try:
            value = _any_decoder.decode(body)
        except msgspec.DecodeError:
            if not body.strip():
                raise BadResponse("empty body") from None
            raise BadResponse(f"not JSON or truncated ({exc})") from None
        if not isinstance(value, dict):
            raise BadResponse(
                f"not a readsb response: a JSON {type(value).__name__}, not an object"
            ) from None
        raise BadResponse(f"not a readsb response ({exc})") from None
    raws = loose.ac if loose.ac is not None else loose.aircraft
    if raws is None:
        raise BadResponse("not a readsb response: no `ac` or `aircraft` list")
    now_ms = _now_ms(loose.now)
    aircraft: list[Aircraft] = []
    invalid = 0
    for raw in raws:
        try:
            aircraft.append(_aircraft_decoder.decode(raw))
        except msgspec.DecodeError:
            invalid += 1
    return Snapshot(now_ms, aircraft, invalid)
