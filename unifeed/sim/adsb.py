"""The simulated traffic (`unifeed.sim.traffic`) as an ADS-B aggregator serves it: readsb
JSON responses (``unifeed simulate --format adsb``), the input `unifeed ingest` reads.

Deterministic as the traffic is: the same arguments give the same bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Unpack

import msgspec

from unifeed.core.records import ACCESS_RANK
from unifeed.sim.traffic import Scenario, TrafficArgs, iter_traffic
from unifeed.sim.world import LINK_EVENTS

__all__ = ["adsb_responses", "write_adsb"]

_SECOND: Final = 1000
_encode: Final = msgspec.json.Encoder().encode


class _SimLine(msgspec.Struct, gc=False):
    """The fields of a simulated line that its ADS-B rendering needs."""

    type: str
    pitr: int
    id: str | None = None
    surface_id: str | None = None
    clock: int | None = None
    lat: float | None = None
    lon: float | None = None
    alt: int | None = None
    gs: float | None = None
    heading: float | None = None
    ident: str | None = None
    hexid: str | None = None
    access: str | None = None
    aircrafttype: str | None = None
    callsign: str | None = None


_sim_line: Final = msgspec.json.Decoder(_SimLine)
#: How long a response keeps an aircraft after its last position (readsb: 60 s).
_ADSB_KEEP_MS: Final = 60 * _SECOND


class _AdsbState(msgspec.Struct, gc=False):
    hex: str
    pitr: int
    clock: int
    lat: float
    lon: float
    ground: bool
    flight: str | None = None
    t: str | None = None
    alt: int | None = None
    gs: float | None = None
    track: float | None = None
    rate: int | None = None
    squawk: str | None = None
    emergency: str | None = None
    category: str = "A3"


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def adsb_responses(
    *,
    interval_ms: int = 10 * _SECOND,
    access: dict[str, str] | None = None,
    **traffic: Unpack[TrafficArgs],
) -> Iterator[bytes]:
    """The simulated traffic (``traffic``: `unifeed.sim.traffic.TrafficArgs`) as readsb
    aggregator responses, one every ``interval_ms``.

    Each response (``{"ac": [...], "msg": "No error", "now": <ms>, "total": N, "ctime":
    <ms>, "ptime": 0}``) holds every aircraft and vehicle heard within the last 60 s with
    its latest state: ``hex`` from the flight's ``hexid`` (vehicles get a non-ICAO
    ``~`` address derived from their track), ``flight`` the space-padded callsign once
    the flight is known, ``alt_baro`` (``"ground"`` on the surface), ``gs``, ``track``,
    ``baro_rate`` from the last two altitudes, ``squawk``, ``category`` (``A3``; ``C1`` for
    follow-me and operations vehicles, ``C2`` for the others), ``seen_pos`` and ``seen``
    (0.1 s). About one flight in forty squawks 7700 while airborne and one in forty
    reports ``emergency: "minfuel"``. When ``access`` is given it is filled with the
    strongest access level of each non-public flight's address (an access list).
    """
    if interval_ms <= 0:
        raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
    scenario = Scenario(**traffic)
    states: dict[str, _AdsbState] = {}  # by address
    flights: dict[str, tuple[str, str | None, str]] = {}  # id -> (ident, type, access)
    links: dict[str, str] = {}  # surface_id -> flight id
    next_at = scenario.start_ms + interval_ms
    encode = _encode

    def response(now: int) -> bytes:
        cut = now - _ADSB_KEEP_MS
        for key in [k for k, s in states.items() if s.pitr < cut]:
            del states[key]
        ac: list[dict[str, Any]] = []
        for s in states.values():
            entry: dict[str, Any] = {"hex": s.hex, "type": "adsb_icao"}
            if s.flight is not None:
                entry["flight"] = f"{s.flight:<8}"
            if s.t is not None:
                entry["t"] = s.t
            entry["alt_baro"] = "ground" if s.ground else s.alt
            if s.gs is not None:
                entry["gs"] = s.gs
            if s.track is not None:
                entry["track"] = s.track
            if s.rate is not None and not s.ground:
                entry["baro_rate"] = s.rate
            if s.squawk is not None:
                entry["squawk"] = s.squawk
            entry["emergency"] = s.emergency or "none"
            entry["category"] = s.category
            entry["lat"] = s.lat
            entry["lon"] = s.lon
            entry["seen_pos"] = round((now - s.clock) / 1000, 1)
            entry["seen"] = round((now - s.pitr) / 1000, 1)
            ac.append(entry)
        return encode({"ac": ac, "msg": "No error", "now": now, "total": len(ac), "ctime": now,
                       "ptime": 0})  # fmt: skip

    for _feed, pitr, raw in iter_traffic(**traffic):
        while pitr >= next_at:
            yield response(next_at)
            next_at += interval_ms
        line = _sim_line.decode(raw)
        kind = line.type
        if kind == "flightplan" and line.id is not None:
            old = flights.get(line.id)
            level = line.access or "public"
            if old is not None and ACCESS_RANK[old[2]] > ACCESS_RANK[level]:
                level = old[2]
            flights[line.id] = (line.ident or "", line.aircrafttype, level)
        elif kind in LINK_EVENTS and line.surface_id is not None and line.id is not None:
            links[line.surface_id] = line.id
        elif kind in ("position", "ground_position", "vehicle_position"):
            assert line.clock is not None and line.lat is not None and line.lon is not None
            if kind == "vehicle_position":
                sid = line.surface_id or ""
                address = f"~{_crc(sid) & 0xFFFFFF:06x}"
                flight_id = None
            else:
                address = (line.hexid or "").lower()
                flight_id = line.id if kind == "position" else links.get(line.surface_id or "")
            state = states.get(address)
            if state is None:
                state = states[address] = _AdsbState(
                    address, pitr, line.clock, line.lat, line.lon, kind == "ground_position"
                )
            elif line.clock <= state.clock:
                state.pitr = pitr  # an older position arriving late: heard, not moved
                continue
            if kind == "position" and line.alt is not None:
                if state.alt is not None and not state.ground:
                    state.rate = round((line.alt - state.alt) * 60_000 / (line.clock - state.clock))
                state.alt = line.alt
            state.pitr, state.clock, state.lat, state.lon = pitr, line.clock, line.lat, line.lon
            state.ground = kind != "position"
            state.gs, state.track = line.gs, line.heading
            if kind == "vehicle_position":
                callsign = line.callsign or ""
                state.flight = callsign
                state.category = "C1" if callsign.startswith(("FOLLOW", "OPS")) else "C2"
            elif flight_id is not None and flight_id in flights:
                ident, aircraft_type, level = flights[flight_id]
                state.flight, state.t = ident, aircraft_type
                mark = _crc(flight_id) % 40
                state.squawk = "7700" if mark == 0 and not state.ground else (
                    f"{_crc(ident) % 0o7000 + 0o1000:o}"
                )
                state.emergency = "minfuel" if mark == 1 else None
                if access is not None and level != "public":
                    old_level = access.get(address, "public")
                    if ACCESS_RANK[level] > ACCESS_RANK[old_level]:
                        access[address] = level
    end = scenario.end_ms
    while next_at <= end:
        yield response(next_at)
        next_at += interval_ms


def write_adsb(
    out_dir: Path, *, interval_ms: int = 10 * _SECOND, **traffic: Unpack[TrafficArgs]
) -> int:
    """Write ``adsb.jsonl`` (`adsb_responses`, one per line) and ``access.txt`` (the
    non-public addresses, one ``HEX LEVEL`` per line) in ``out_dir``; the response count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    access: dict[str, str] = {}
    count = 0
    with (out_dir / "adsb.jsonl").open("wb") as out:
        for body in adsb_responses(interval_ms=interval_ms, access=access, **traffic):
            out.write(body + b"\n")
            count += 1
    lines = [f"{address} {level}\n" for address, level in sorted(access.items())]
    (out_dir / "access.txt").write_text("# non-public addresses of the simulation\n" + "".join(lines))
    return count
