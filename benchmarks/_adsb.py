"""Synthetic readsb aggregator responses the size of an airplanes.live world query.

Aircraft ``i`` keeps its address and callsign from response to response and moves a
little each time (``seen_pos`` stays fresh), so that every response after the first is
a steady-state poll: new positions for every aircraft, no new flights. Every aircraft
object carries the ~50 fields airplanes.live sends (readsb's ``README-json.md``), most of
which ingest skips. Mix: 1 in 50 a surface vehicle (``C2``), 1 in 10 on the ground
(both taxiing slowly at one of 300 real airports), 1 in 33 without a position, the rest
airborne anywhere between 60 S and 60 N.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

T0: Final = 1_700_000_000_000
_AIRLINES: Final = ("UAL", "AAL", "DAL", "SWA", "BAW", "DLH", "AFR", "KLM")
_encode: Final = msgspec.json.Encoder().encode


def _airports() -> list[tuple[float, float]]:
    """Where aircraft on the ground are: 300 airports with an IATA code."""
    import airportsdata

    data = airportsdata.load("ICAO")
    coded = sorted((code, a["lat"], a["lon"]) for code, a in data.items() if a["iata"])
    return [(lat, lon) for _, lat, lon in coded[:: max(len(coded) // 300, 1)][:300]]


_AT: Final = _airports()


def _aircraft(i: int, step: int) -> dict[str, Any]:
    ground = i % 10 == 1
    vehicle = i % 50 == 0
    if ground or vehicle:
        lat0, lon0 = _AT[i % len(_AT)]
        lat0 += (i % 13 - 6) * 0.001
        lon0 += (i % 11 - 5) * 0.001 - step * 0.0099  # so that it ends where it started
    else:
        lat0 = -60 + (i * 0.0137) % 120
        lon0 = -179 + (i * 0.0419) % 358
    entry: dict[str, Any] = {
        "hex": f"{0xA00000 + i:06x}",
        "type": "adsb_icao",
        "flight": f"{_AIRLINES[i % 8]}{i % 9000 + 1}".ljust(8),
        "r": f"N{10000 + i}",
        "t": "B738",
        "desc": "BOEING 737-800",
        "alt_baro": "ground" if ground or vehicle else 30000 + i % 9000,
        "alt_geom": 30500 + i % 9000,
        "gs": 10.0 if ground else 450.5,
        "ias": 280,
        "tas": 460,
        "mach": 0.78,
        "wd": 270,
        "ws": 40,
        "oat": -45,
        "tat": -20,
        "track": 87.5,
        "track_rate": 0.0,
        "roll": 0.2,
        "mag_heading": 84.2,
        "true_heading": 87.9,
        "baro_rate": (i % 7 - 3) * 640,
        "geom_rate": (i % 7 - 3) * 640,
        "squawk": "7700" if i % 997 == 0 else f"{1000 + i % 6000:04d}",
        "emergency": "none",
        "category": "C2" if vehicle else "A3",
        "nav_qnh": 1013.2,
        "nav_altitude_mcp": 32000,
        "nav_heading": 85.0,
        "nav_modes": ["autopilot", "althold", "tcas"],
        "lat": lat0 + step * (0.0001 if ground or vehicle else 0.01),
        "lon": lon0 + step * 0.01,
        "nic": 8,
        "rc": 186,
        "seen_pos": 0.1 + (i % 40) / 10,
        "version": 2,
        "nic_baro": 1,
        "nac_p": 9,
        "nac_v": 1,
        "sil": 3,
        "sil_type": "perhour",
        "gva": 2,
        "sda": 2,
        "alert": 0,
        "spi": 0,
        "mlat": [],
        "tisb": [],
        "messages": 12000 + step,
        "seen": 0.1,
        "rssi": -21.4,
    }
    if i % 33 == 5:
        del entry["lat"], entry["lon"], entry["seen_pos"]
    return entry


def response(aircraft: int, step: int, interval_ms: int = 10_000) -> bytes:
    """Response number ``step`` (0, 1, ...) of ``aircraft`` aircraft, ``interval_ms`` apart."""
    now = T0 + step * interval_ms
    ac = [_aircraft(i, step) for i in range(aircraft)]
    return _encode({"ac": ac, "msg": "No error", "now": now, "total": len(ac), "ctime": now,
                    "ptime": 35})  # fmt: skip
