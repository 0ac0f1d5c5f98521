"""Inputs of the golden scenarios, built by code so that `pytest --update-golden` can
rebuild them. Each builder returns ``(controlstream lines, surfacestream lines)``.

The expected outputs are written by the file pipeline and checked, on every run, against
the independent model in ``tests/reference.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

T0 = 1_700_000_000_000


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _ground(pitr: int, sid: str, fac: str = "KSFO", **extra: Any) -> bytes:
    return _line({"type": "ground_position", "pitr": pitr, "surface_id": sid, "facility": fac,
                  "clock": pitr - 400, "lat": 37.615, "lon": -122.39, "gs": 12, **extra})


def basic() -> tuple[list[bytes], list[bytes]]:
    """One departure and one arrival at KSFO, a vehicle, a de-icing pad, keepalives."""
    c: list[dict[str, Any]] = []
    s: list[bytes] = []
    fid, fid2 = "UAL1-1700000000-schedule-0001", "DAL7-1699990000-schedule-0002"
    c.append({"type": "flightplan", "pitr": T0, "id": fid, "ident": "UAL1", "orig": "KSFO",
              "dest": "KLAX"})
    c.append({"type": "flightplan", "pitr": T0 + 100, "id": fid2, "ident": "DAL7",
              "orig": "KSEA", "dest": "KSFO"})
    s.append(_ground(T0 + 500, "sfo-101"))  # before power_on: unmapped
    c.append({"type": "power_on", "pitr": T0 + 1000, "id": fid, "surface_id": "sfo-101",
              "facility": "KSFO"})
    s.append(_ground(T0 + 1000, "sfo-101"))  # same pitr as the link: the link applies
    for k in range(1, 6):
        s.append(_ground(T0 + 1000 + k * 2000, "sfo-101"))
        s.append(_line({"type": "vehicle_position", "pitr": T0 + 1500 + k * 2000,
                        "surface_id": "veh-7", "facility": "KSFO", "clock": T0 + 1400 + k * 2000,
                        "lat": 37.61, "lon": -122.38}))
    s.append(_line({"type": "location_entry", "pitr": T0 + 4000, "surface_id": "sfo-101",
                    "facility": "KSFO", "location": "deice-pad-2"}))
    s.append(_line({"type": "location_exit", "pitr": T0 + 9000, "surface_id": "sfo-101",
                    "facility": "KSFO", "location": "deice-pad-2"}))
    c.append({"type": "surface_offblock", "pitr": T0 + 3000, "id": fid, "surface_id": "sfo-101",
              "facility": "KSFO"})
    c.append({"type": "keepalive", "pitr": T0 + 6000})
    c.append({"type": "departure", "pitr": T0 + 12_000, "id": fid})
    s.append(_line({"type": "keepalive", "pitr": T0 + 12_500}))
    for k in range(3):
        c.append({"type": "position", "pitr": T0 + 13_000 + k * 5000, "id": fid, "ident": "UAL1",
                  "clock": T0 + 12_900 + k * 5000, "lat": 37.7 + k * 0.1, "lon": -122.3,
                  "alt": 3000 + 2000 * k, "gs": 250, "heading": 135, "air_ground": "A"})
    c.append({"type": "arrival", "pitr": T0 + 20_000, "id": fid2})
    c.append({"type": "surface_onblock", "pitr": T0 + 21_000, "id": fid2, "surface_id": "sfo-202",
              "facility": "KSFO"})
    for k in range(4):
        s.append(_ground(T0 + 21_000 + k * 1500, "sfo-202"))
    c.append({"type": "power_off", "pitr": T0 + 26_000, "id": fid2, "surface_id": "sfo-202",
              "facility": "KSFO"})
    s.append(_ground(T0 + 26_000, "sfo-202"))  # unlinked at this pitr: unmapped
    c.sort(key=lambda m: m["pitr"])
    s.sort(key=lambda raw: json.loads(raw)["pitr"])
    return [_line(m) for m in c], s


def catchup_desync() -> tuple[list[bytes], list[bytes]]:
    """controlstream one message a second, surfacestream one every five seconds, one hour:
    the case where one shared priority queue goes out of order in catch-up."""
    c: list[bytes] = []
    s: list[bytes] = []
    fid = "SWA9-1700000000-schedule-0009"
    c.append(_line({"type": "flightplan", "pitr": T0, "id": fid, "ident": "SWA9"}))
    c.append(_line({"type": "power_on", "pitr": T0 + 1, "id": fid, "surface_id": "oak-9",
                    "facility": "KOAK"}))
    for sec in range(1, 3600):
        c.append(_line({"type": "position", "pitr": T0 + sec * 1000, "id": fid, "clock": T0 + sec * 1000 - 300,
                        "lat": 37.72, "lon": -122.22, "alt": 0}))
    for sec in range(0, 3600, 5):
        s.append(_ground(T0 + sec * 1000 + 500, "oak-9", "KOAK"))
    return c, s


def access_change() -> tuple[list[bytes], list[bytes]]:
    """A flight linked while public, made restricted, then blocked, then public again, with
    a second surface track, an unlink and a re-link; positions at every boundary pitr."""
    c: list[dict[str, Any]] = []
    fid = "N123AB-1700000000-adhoc-0042"
    c.append({"type": "flightplan", "pitr": T0, "id": fid, "ident": "N123AB"})
    c.append({"type": "power_on", "pitr": T0 + 1000, "id": fid, "surface_id": "bos-1",
              "facility": "KBOS"})
    c.append({"type": "flightplan", "pitr": T0 + 5000, "id": fid, "ident": "N123AB",
              "access": "restricted"})
    c.append({"type": "surface_offblock", "pitr": T0 + 6000, "id": fid, "surface_id": "bos-2",
              "facility": "KBOS"})
    c.append({"type": "flightplan", "pitr": T0 + 9000, "id": fid, "ident": "N123AB",
              "access": "blocked"})
    c.append({"type": "power_off", "pitr": T0 + 12_000, "id": fid, "surface_id": "bos-1",
              "facility": "KBOS"})
    c.append({"type": "flightplan", "pitr": T0 + 15_000, "id": fid, "ident": "N123AB",
              "access": "public"})
    c.append({"type": "power_on", "pitr": T0 + 18_000, "id": fid, "surface_id": "bos-1",
              "facility": "KBOS"})
    c.append({"type": "power_off", "pitr": T0 + 21_000, "id": "OTHER-1", "surface_id": "bos-2",
              "facility": "KBOS"})  # names another flight: does not unlink bos-2
    s: list[bytes] = []
    for t in range(0, 24_000, 500):
        for sid in ("bos-1", "bos-2"):
            s.append(_ground(T0 + t, sid, "KBOS"))
    return [_line(m) for m in c], s


def bad_input() -> tuple[list[bytes], list[bytes]]:
    """The basic scenario with every kind of invalid line mixed in."""
    c, s = basic()
    c = list(c)
    s = list(s)
    c.insert(1, b"this is not json")
    c.insert(2, b'{"type":"position","pitr":true,"id":"X","clock":1,"lat":1,"lon":1}')
    c.insert(3, b"\xc3\x28 invalid utf-8")
    c.insert(4, b'["an","array"]')
    c.insert(5, b'{"type":"warp","pitr":1700000000050}')
    c.insert(6, b'{"type":"power_on","pitr":1700000000060,"id":"X","facility":"KSFO"}')
    c.insert(7, b'{"type":"departure","pitr":1699999999999,"id":"X"}')  # backwards
    c.insert(8, b"")
    c.append(b'{"type":"departure","pitr":1700000000001,"id":"late"}')  # backwards at the end
    s.insert(2, b'{"type":"ground_position","pitr":1700000000600,"surface_id":"sfo-101"}')
    s.insert(3, b'{"type":"ground_position","pitr":"soon","surface_id":"sfo-101","facility":"KSFO","clock":1,"lat":1,"lon":1}')
    s.insert(4, b"{truncated")
    s.append(b'{"type":"keepalive","pitr":9999999999999}')
    s.append(b'{"type":"vehicle_position","pitr":1700000030000,"surface_id":"v","facility":"KSFO","clock":1,"lat":1,"lon":1}')  # below the keepalive
    return c, s


def busy_airport() -> tuple[list[bytes], list[bytes]]:
    """Simulated traffic at two busy airports: about 97,000 messages."""
    from unifeed.sim.traffic import simulate

    sim = simulate(seed=2024, minutes=2.0, airports=2, rate=200.0, start_ms=T0)
    return list(sim.controlstream), list(sim.surfacestream)


SCENARIOS: dict[str, Callable[[], tuple[list[bytes], list[bytes]]]] = {
    "basic": basic,
    "catchup-desync": catchup_desync,
    "access-change": access_change,
    "bad-input": bad_input,
    "busy-airport": busy_airport,
}
#: Scenarios whose files are stored gzip-compressed.
COMPRESSED = {"busy-airport", "catchup-desync"}


def merge_three_feeds() -> dict[str, list[bytes]]:
    """Inputs of `unifeed merge`, in rank order: radar every second, ADS-B every 250 ms
    (stored compressed), MLAT every 3 s with keepalives in between. Their times coincide
    every second (ties across feeds, broken by rank) and ADS-B repeats a pitr (a tie
    within one feed, kept in line order). Each feed has bad lines: not JSON, not an
    object, no pitr, a string pitr, a negative pitr, a step back, invalid UTF-8; MLAT has
    a blank line and a CRLF line ending. Fields beyond pitr differ per feed and pass as
    they are."""
    radar: list[bytes] = []
    for k in range(31):
        radar.append(_line({"type": "plot", "pitr": T0 + k * 1000, "track": f"R{k % 3}",
                            "range_nm": round(12.5 + k * 0.25, 2), "bearing": (k * 7) % 360}))
        if k == 10:
            radar.append(b"not json at all")
        if k == 20:
            radar.append(_line({"type": "plot", "pitr": T0 + 19_500, "track": "late"}))
    adsb: list[bytes] = []
    for j in range(121):
        pitr = T0 + j * 250
        adsb.append(_line({"hex": "a1b2c3", "pitr": pitr, "alt_ft": 3000 + 25 * j,
                           "squawk": "1200"}))
        if j == 40:
            adsb.append(_line({"hex": "d4e5f6", "pitr": pitr, "alt_ft": 11000}))
        if j == 60:
            adsb.append(_line({"hex": "a1b2c3", "pitr": str(pitr)}))
        if j == 61:
            adsb.append(_line({"hex": "a1b2c3", "alt_ft": 1}))
        if j == 62:
            adsb.append(b'{"hex":"\xff\xfe","pitr":%d}' % pitr)
        if j % 40 == 0:
            adsb.append(_line({"type": "keepalive", "pitr": pitr}))
    mlat: list[bytes] = []
    for k in range(31):
        pitr = T0 + k * 1000
        if k % 3 == 0:
            mlat.append(_line({"type": "mlat_fix", "pitr": pitr, "receivers": 4 + k % 5,
                               "lat": 37.6 + k / 1000, "lon": -122.4}))
        else:
            mlat.append(_line({"type": "keepalive", "pitr": pitr}))
        if k == 5:
            mlat.append(b"[1,2,3]")
        if k == 6:
            mlat.append(_line({"type": "mlat_fix", "pitr": -5}))
        if k == 7:
            mlat.append(b"   ")
        if k == 9:
            mlat[-1] = mlat[-1] + b"\r"
    return {"radar": radar, "adsb": adsb, "mlat": mlat}


#: Scenarios of `unifeed merge`: inputs by name in rank order.
MERGE_SCENARIOS: dict[str, Callable[[], dict[str, list[bytes]]]] = {
    "merge-three-feeds": merge_three_feeds,
}
#: Merge inputs stored compressed (read transparently by `unifeed merge`).
MERGE_COMPRESSED = {("merge-three-feeds", "adsb")}
