"""SBS-1 BaseStation lines (the CSV of port 30003) into readsb-like aircraft states.

A ``MSG`` line has 22 comma-separated fields: ``MSG``, transmission type (1-8),
session, aircraft and flight IDs, date and time generated, date and time logged,
callsign, altitude (ft), ground speed (kt), track, latitude, longitude, vertical rate
(ft/min), squawk, alert, emergency, SPI, is-on-ground (flags: ``-1`` or ``1`` true, ``0``
false, empty unknown). Each transmission type fills some of them:

=====  ==============================  ==========================================
type   what                            fields
=====  ==============================  ==========================================
1      ES identification, category     callsign
2      ES surface position             altitude, speed, track, lat, lon, on ground
3      ES airborne position            altitude, lat, lon, flags, on ground
4      ES airborne velocity            speed, track, vertical rate
5      surveillance altitude           altitude, flags, on ground
6      surveillance ID (squawk)        altitude, squawk, flags, on ground
7      air-to-air                      altitude, on ground
8      all-call reply                  on ground
=====  ==============================  ==========================================

`SbsDecoder` keeps the latest value of each field per address and `snapshot` turns them
into the `Aircraft` states a readsb response would hold, so that the same `Tracker`
takes both. The line's own timestamps are in the sender's local time, which the line
does not say, so a position's time is when the line was received. Other message types
(``SEL``, ``ID``, ``AIR``, ``STA``, ``CLK``) carry nothing ingest needs and are ignored.

Pure: lines and receive times in, snapshots out.
"""

from __future__ import annotations

import re
from typing import Final

from ._readsb import Aircraft, Snapshot

__all__ = ["SbsDecoder"]

_FIELDS: Final = 22
_ADDRESS: Final = re.compile(r"~?[0-9a-f]{6}")
_IGNORED: Final = frozenset({"SEL", "ID", "AIR", "STA", "CLK"})


class _State:
    __slots__ = ("alt", "callsign", "emergency", "gs", "lat", "lon", "on_ground", "pos_ms",
                 "seen_ms", "squawk", "track", "vrate")  # fmt: skip

    def __init__(self) -> None:
        self.callsign: str | None = None
        self.alt: float | None = None
        self.gs: float | None = None
        self.track: float | None = None
        self.lat: float | None = None
        self.lon: float | None = None
        self.vrate: float | None = None
        self.squawk: str | None = None
        self.emergency = False
        self.on_ground: bool | None = None
        self.pos_ms: int | None = None
        self.seen_ms = 0


def _flag(text: str) -> bool | None:
    if text in ("-1", "1"):
        return True
    if text == "0":
        return False
    if text == "":
        return None
    raise ValueError(f"flag must be -1, 0 or 1, got {text!r}")


def _number(text: str) -> float | None:
    return float(text) if text else None


class SbsDecoder:
    """Aircraft states from SBS ``MSG`` lines.

    >>> d = SbsDecoder()
    >>> d.feed(b"MSG,1,1,1,4CA2D6,1,2008/11/28,14:53:49.986,2008/11/28,14:53:49.986,RYR1427 ,,,,,,,,,,,", 1000)
    >>> d.feed(b"MSG,3,1,1,4CA2D6,1,2008/11/28,14:53:50.594,2008/11/28,14:53:50.594,,37000,,,51.45735,-1.02826,,,0,0,0,0", 2000)
    >>> ac = d.snapshot(2500).aircraft[0]
    >>> ac.hex, ac.flight, ac.alt_baro, ac.lat, ac.seen_pos
    ('4ca2d6', 'RYR1427', 37000.0, 51.45735, 0.5)
    >>> d.feed(b"MSG,3,1,1,NOTHEX", 3000)
    'MSG line has 5 fields, expected 22'
    """

    def __init__(self, max_age_ms: int = 60_000) -> None:
        self._max_age_ms = max_age_ms
        self._states: dict[str, _State] = {}
        self.lines = 0
        self.ignored = 0

    def feed(self, line: bytes, received_ms: int) -> str | None:
        """Take one line; the reason it is bad, or None (also for lines that are ignored)."""
        self.lines += 1
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            return "SBS line is not ASCII"
        if not text:
            self.ignored += 1
            return None
        fields = text.split(",")
        kind = fields[0].strip()
        if kind != "MSG":
            if kind in _IGNORED:
                self.ignored += 1
                return None
            return f"not an SBS message: type {kind[:20]!r}"
        if len(fields) != _FIELDS:
            return f"MSG line has {len(fields)} fields, expected {_FIELDS}"
        hexid = fields[4].strip().lower()
        if not _ADDRESS.fullmatch(hexid):
            return f"MSG line has no valid address: {fields[4][:20]!r}"
        try:
            transmission = int(fields[1])
            if not 1 <= transmission <= 8:
                return f"MSG transmission type must be 1 to 8, got {transmission}"
            state = self._states.get(hexid)
            fresh = state is None
            if state is None:
                state = _State()
            self._apply(state, transmission, fields, received_ms)
        except ValueError as exc:
            return f"MSG line has a bad value: {exc}"
        if fresh:
            self._states[hexid] = state
        state.seen_ms = received_ms
        return None

    @staticmethod
    def _apply(state: _State, transmission: int, f: list[str], received_ms: int) -> None:
        # Parse everything first: a bad value leaves the state untouched.
        if transmission == 1:
            callsign = f[10].strip()
            if callsign:
                state.callsign = callsign
            return
        alt = _number(f[11]) if transmission in (2, 3, 5, 6, 7) else None
        ground = _flag(f[21]) if transmission != 4 else None
        if transmission == 2:
            ground = True  # a surface position is sent only on the ground
        if transmission in (2, 3):
            lat, lon = _number(f[14]), _number(f[15])
            gs = _number(f[12]) if transmission == 2 else None
            track = _number(f[13]) if transmission == 2 else None
            if lat is not None and lon is not None:
                state.lat, state.lon, state.pos_ms = lat, lon, received_ms
            if gs is not None:
                state.gs = gs
            if track is not None:
                state.track = track
        elif transmission == 4:
            gs, track, vrate = _number(f[12]), _number(f[13]), _number(f[16])
            if gs is not None:
                state.gs = gs
            if track is not None:
                state.track = track
            if vrate is not None:
                state.vrate = vrate
        if transmission in (3, 6):
            emergency = _flag(f[19])
            if emergency is not None:
                state.emergency = emergency
        if transmission == 6 and f[17].strip():
            squawk = f[17].strip()
            if not (len(squawk) == 4 and squawk.isdigit()):
                raise ValueError(f"squawk must be 4 digits, got {squawk!r}")
            state.squawk = squawk
        if alt is not None:
            state.alt = alt
        if ground is not None:
            state.on_ground = ground

    def snapshot(self, now_ms: int) -> Snapshot:
        """The states heard from within ``max_age_ms`` of ``now_ms``, as a readsb response would
        hold them; older addresses are forgotten."""
        cut = now_ms - self._max_age_ms
        for hexid in [h for h, s in self._states.items() if s.seen_ms < cut]:
            del self._states[hexid]
        aircraft: list[Aircraft] = []
        for hexid, s in self._states.items():
            aircraft.append(
                Aircraft(
                    hex=hexid,
                    flight=s.callsign,
                    alt_baro="ground" if s.on_ground else s.alt,
                    gs=s.gs,
                    track=s.track,
                    baro_rate=s.vrate,
                    squawk=s.squawk,
                    emergency="general" if s.emergency else None,
                    lat=s.lat,
                    lon=s.lon,
                    seen_pos=None if s.pos_ms is None else (now_ms - s.pos_ms) / 1000,
                    seen=(now_ms - s.seen_ms) / 1000,
                    source_type="other",
                )
            )
        return Snapshot(now_ms, aircraft)
