"""Flights from ADS-B tracks: readsb aircraft states in, controlstream and surfacestream out.

Pure: `Tracker.process` takes a decoded response (`Snapshot`) and the time it was
received (``pitr``) and returns the records it causes; no I/O, no clock, no threads, so
the same responses always give the same bytes.

ADS-B has no flight IDs, so a flight is made from the track of one aircraft address:

* a flight is one address with one callsign. It ends, and the next state starts a new
  one, when the callsign changes to another (a first callsign where none was known only
  amends the flight's ``flightplan``), when the aircraft has been on the ground for
  ``flight_gap_ms`` after a landing, or after ``flight_gap_ms`` of silence;
* its ``id`` is ``<ident>-<first seen, epoch s>-adsb-<hex>`` (``ident``: the callsign,
  else the registration, else the address; first seen: the time of its first position,
  ``now - seen_pos``), so two ingests of the same responses make the same IDs;
* controlstream: a ``flightplan`` when a flight starts (``ident``, ``hexid``,
  ``registration``, ``aircrafttype``, ``access`` when not public); ``position`` for
  airborne states; ``departure`` / ``arrival`` on a ground/air change seen between two
  states; ``power_on`` before the first ground state of a flight that is not linked,
  linking it to the surface track ``adsb-<hex>`` at the nearest airport (``facility``);
  ``power_off`` when that ground track has had no state for ``surface_timeout_ms``
  (also after take-off) or the flight ends; a ``keepalive`` every poll;
* surfacestream: ``ground_position`` for aircraft on the ground (``alt_baro`` is
  ``"ground"``), ``vehicle_position`` for surface vehicles (``category`` ``C1``
  emergency and ``C2`` service vehicles), which never get a flight; a ``keepalive``
  every poll. A position whose flight or vehicle is not public carries its ``access``
  too, so that it is hidden downstream even if it were never linked;
* every position (``position``, ``ground_position``) has ``phase`` (``ground``; else
  ``climb`` / ``descent`` beyond ±2 m/s of vertical rate, ``baro_rate`` or else
  ``geom_rate``, and ``cruise`` otherwise, also when no rate is known) and
  ``emergency`` (squawk 7500, 7600 or 7700, or an ``emergency`` other than ``none``);
* ``pitr`` is when the state was received, never below the previous poll's; ``clock``
  is the position's own time, ``now - seen_pos`` (epoch ms);
* a state whose position is not newer than the last one of its address (by more than
  ``dedupe_ms``: readsb rounds ``seen_pos`` to 0.1 s) is not emitted again; states are
  skipped, and counted by reason, when they have no position, an impossible value
  (latitude beyond ±90, longitude beyond ±180, negative ground speed, a malformed
  address), a position older than ``max_age_ms`` at ``pitr``, or lie outside ``bbox``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import msgspec

from unifeed.core.geo import inside
from unifeed.core.records import ACCESS_RANK, Access

from ._access import AccessList
from ._readsb import Aircraft, Snapshot

__all__ = ["IngestBatch", "Tracker", "TrackerConfig", "is_emergency", "phase_of"]

_encode: Final = msgspec.json.Encoder().encode

#: ±2 m/s in feet per minute: beyond it an aircraft climbs or descends.
_LEVEL_FPM: Final = 2.0 * 60 / 0.3048
_EMERGENCY_SQUAWKS: Final = frozenset({"7500", "7600", "7700"})
_VEHICLE_CATEGORIES: Final = frozenset({"C1", "C2"})
_ADDRESS: Final = re.compile(r"~?[0-9a-f]{6}")
_PRUNE_EVERY_MS: Final = 60_000
#: A vehicle's facility is looked up again once it is this far (degrees) from where it was.
_VEHICLE_MOVE_DEG: Final = 0.05
#: Skip reasons, in the order status lines list them.
SKIP_REASONS: Final = ("no_position", "impossible", "stale", "outside_bbox", "unchanged",
                       "invalid")  # fmt: skip


def phase_of(on_ground: bool, rate_fpm: float | None) -> str:
    """``ground``, ``climb``, ``descent`` or ``cruise``.

    >>> phase_of(False, 1500), phase_of(False, -500), phase_of(False, 300), phase_of(True, 900)
    ('climb', 'descent', 'cruise', 'ground')
    """
    if on_ground:
        return "ground"
    if rate_fpm is None:
        return "cruise"
    if rate_fpm > _LEVEL_FPM:
        return "climb"
    if rate_fpm < -_LEVEL_FPM:
        return "descent"
    return "cruise"


def is_emergency(squawk: str | None, emergency: str | None) -> bool:
    """Squawk 7500/7600/7700, or an ADS-B emergency status other than ``none``.

    >>> is_emergency("7700", None), is_emergency("1200", "none"), is_emergency(None, "minfuel")
    (True, False, True)
    """
    return squawk in _EMERGENCY_SQUAWKS or (emergency is not None and emergency != "none")


class TrackerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How flights are cut and states filtered (see the module doc)."""

    flight_gap_ms: int = 30 * 60_000
    max_age_ms: int = 60_000
    surface_timeout_ms: int = 60_000
    dedupe_ms: int = 100
    #: (west, south, east, north) in degrees; west > east crosses the antimeridian.
    bbox: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("flight_gap_ms", "max_age_ms", "surface_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.dedupe_ms < 0:
            raise ValueError("dedupe_ms must be >= 0")
        if self.bbox is not None:
            west, south, east, north = self.bbox
            if not (-90 <= south < north <= 90 and -180 <= west <= 180 and -180 <= east <= 180):
                raise ValueError(
                    "bbox must be W,S,E,N with -90 <= S < N <= 90 and W, E within ±180, "
                    f"got {self.bbox}"
                )


class IngestBatch(msgspec.Struct, gc=False):
    """The records of one poll, in order: controlstream and surfacestream lines."""

    pitr: int
    control: list[bytes]
    surface: list[bytes]


# --- output records (field order is the wire order) -------------------------


class _PositionOut(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False,
                   tag_field="type", tag="position"):  # fmt: skip
    pitr: int
    id: str
    clock: int
    lat: float
    lon: float
    alt: int | None = None
    gs: float | None = None
    heading: float | None = None
    vrate: int | None = None
    ident: str | None = None
    hexid: str
    squawk: str | None = None
    air_ground: str
    updateType: str
    phase: str
    emergency: bool


class _SurfaceOut(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The first fields of a surface position (a subclass's own fields follow them)."""

    pitr: int
    surface_id: str
    facility: str
    clock: int
    lat: float
    lon: float
    gs: float | None = None
    heading: float | None = None


class _GroundOut(_SurfaceOut, kw_only=True, omit_defaults=True, gc=False,
                 tag_field="type", tag="ground_position"):  # fmt: skip
    hexid: str
    squawk: str | None = None
    air_ground: str
    phase: str
    emergency: bool
    access: str | None = None


class _VehicleOut(_SurfaceOut, kw_only=True, omit_defaults=True, gc=False,
                  tag_field="type", tag="vehicle_position"):  # fmt: skip
    callsign: str | None = None
    hexid: str
    category: str
    emergency: bool
    access: str | None = None


_UPDATE_TYPES: Final = {"mlat": "M", "adsc": "S", "tisb_icao": "T", "tisb_other": "T",
                        "tisb_trackfile": "T", "mode_s": "Z", "other": "O"}  # fmt: skip


class _Track:
    """What the tracker knows of one aircraft address."""

    __slots__ = (
        "access",
        "callsign",
        "facility",
        "first_seen_s",
        "flight_id",
        "hexid",
        "ident",
        "landed_at",
        "last_ground_pitr",
        "last_pitr",
        "on_ground",
        "pos_ms",
        "registration",
        "surface_id",
    )

    def __init__(self, hexid: str) -> None:
        self.hexid = hexid
        self.surface_id = f"adsb-{hexid}"
        self.callsign = ""
        self.registration = ""
        self.ident = ""
        self.flight_id = ""
        self.access: Access = "public"
        self.first_seen_s = 0
        self.last_pitr = 0
        self.pos_ms = -(2**62)
        self.on_ground: bool | None = None
        self.landed_at: int | None = None
        self.facility: str | None = None  # set while linked to the surface track
        self.last_ground_pitr = 0


class _Vehicle:
    __slots__ = ("access", "fac_lat", "fac_lon", "facility", "last_pitr", "pos_ms", "surface_id")

    def __init__(self, hexid: str) -> None:
        self.surface_id = f"adsb-{hexid}"
        self.pos_ms = -(2**62)
        self.facility = ""
        self.fac_lat = 1e9
        self.fac_lon = 1e9
        self.last_pitr = 0
        self.access: Access = "public"


class Tracker:
    """Turns successive readsb responses into controlstream and surfacestream records.

    ``nearest_airport(lat, lon)`` gives the ICAO code of the facility of a surface track
    (`unifeed.ingest.load_airports().nearest` in the command). ``access`` is the privacy
    list (`AccessList`).

    >>> from unifeed.ingest import decode_response
    >>> t = Tracker(nearest_airport=lambda lat, lon: "KSFO")
    >>> body = (b'{"now":1700000000,"aircraft":[{"hex":"a1b2c3","flight":"UAL1    ",'
    ...         b'"alt_baro":"ground","lat":37.61,"lon":-122.38,"seen_pos":0.5}]}')
    >>> batch = t.process(decode_response(body), pitr=1_700_000_000_200)
    >>> for line in batch.control: print(line.decode())
    {"type":"flightplan","pitr":1700000000200,"id":"UAL1-1699999999-adsb-a1b2c3","ident":"UAL1","hexid":"a1b2c3"}
    {"type":"power_on","pitr":1700000000200,"id":"UAL1-1699999999-adsb-a1b2c3","surface_id":"adsb-a1b2c3","facility":"KSFO"}
    {"type":"keepalive","pitr":1700000000200}
    >>> print(batch.surface[0].decode())
    {"type":"ground_position","pitr":1700000000200,"surface_id":"adsb-a1b2c3","facility":"KSFO","clock":1699999999500,"lat":37.61,"lon":-122.38,"hexid":"a1b2c3","air_ground":"G","phase":"ground","emergency":false}

    Runtime complexity of `process`: O(aircraft in the response + linked surface tracks).
    """

    def __init__(
        self,
        config: TrackerConfig | None = None,
        *,
        nearest_airport: Callable[[float, float], str],
        access: AccessList | None = None,
    ) -> None:
        self.config = config or TrackerConfig()
        self._nearest = nearest_airport
        self._access = access or AccessList()
        self._tracks: dict[str, _Track] = {}
        self._vehicles: dict[str, _Vehicle] = {}
        self._linked: dict[str, _Track] = {}
        self._last_pitr = 0
        self._next_prune = 0
        #: States skipped, by reason (`SKIP_REASONS`).
        self.skipped: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self.flights = 0
        self.states = 0

    @property
    def last_pitr(self) -> int:
        return self._last_pitr

    # -- polls ------------------------------------------------------------

    def keepalive(self, pitr: int) -> IngestBatch:
        """A poll that brought no response: stale links end, and both feeds get a keepalive."""
        pitr = max(pitr, self._last_pitr)
        self._last_pitr = pitr
        control: list[bytes] = []
        self._sweep(pitr, control)
        return self._close(pitr, control, [])

    def process(self, snapshot: Snapshot, pitr: int) -> IngestBatch:
        """The records caused by one response received at ``pitr`` (raised to the last pitr)."""
        pitr = max(pitr, self._last_pitr)
        self._last_pitr = pitr
        control: list[bytes] = []
        surface: list[bytes] = []
        skipped = self.skipped
        if snapshot.invalid:
            skipped["invalid"] += snapshot.invalid
        cfg = self.config
        oldest_ms = pitr - cfg.max_age_ms
        dedupe = cfg.dedupe_ms
        bbox = cfg.bbox
        now_ms = snapshot.now_ms
        tracks = self._tracks
        vehicles = self._vehicles
        self.states += len(snapshot.aircraft)
        for ac in snapshot.aircraft:
            lat, lon = ac.lat, ac.lon
            if lat is None or lon is None:
                skipped["no_position"] += 1
                continue
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (
                ac.gs is not None and not ac.gs >= 0.0
            ):
                skipped["impossible"] += 1
                continue
            seen_pos = ac.seen_pos if ac.seen_pos is not None else ac.seen
            pos_ms = now_ms if seen_pos is None else now_ms - round(seen_pos * 1000)
            if pos_ms < oldest_ms:
                skipped["stale"] += 1
                continue
            if bbox is not None and not inside(bbox, lat, lon):
                skipped["outside_bbox"] += 1
                continue
            hexid = ac.hex
            if ac.category in _VEHICLE_CATEGORIES:
                vehicle = vehicles.get(hexid)
                if vehicle is None:
                    hexid = hexid.strip().lower()
                    if not _ADDRESS.fullmatch(hexid):
                        skipped["impossible"] += 1
                        continue
                    vehicle = vehicles.get(hexid)
                    if vehicle is None:
                        vehicle = vehicles[ac.hex] = vehicles[hexid] = _Vehicle(hexid)
                if pos_ms <= vehicle.pos_ms + dedupe:
                    skipped["unchanged"] += 1
                    continue
                self._vehicle(vehicle, ac, hexid, pitr, pos_ms, surface)
                continue
            track = tracks.get(hexid)
            if track is None:
                hexid = hexid.strip().lower()
                if not _ADDRESS.fullmatch(hexid):
                    skipped["impossible"] += 1
                    continue
                track = tracks.get(hexid)
                if track is None:
                    track = _Track(hexid)
                    tracks[hexid] = track
                if ac.hex != hexid:
                    tracks[ac.hex] = track
            if pos_ms <= track.pos_ms + dedupe:
                skipped["unchanged"] += 1
                continue
            self._aircraft(track, ac, pitr, pos_ms, control, surface)
        self._sweep(pitr, control)
        return self._close(pitr, control, surface)

    def _close(self, pitr: int, control: list[bytes], surface: list[bytes]) -> IngestBatch:
        keepalive = b'{"type":"keepalive","pitr":%d}' % pitr
        control.append(keepalive)
        surface.append(keepalive)
        return IngestBatch(pitr, control, surface)

    # -- one state ----------------------------------------------------------

    def _aircraft(
        self,
        track: _Track,
        ac: Aircraft,
        pitr: int,
        pos_ms: int,
        control: list[bytes],
        surface: list[bytes],
    ) -> None:
        callsign = ac.flight.strip().upper() if ac.flight else ""
        on_ground = ac.alt_baro == "ground"
        gap = self.config.flight_gap_ms
        new_registration = bool(ac.r) and not track.registration and bool(track.flight_id)
        if new_registration:
            track.registration = ac.r  # type: ignore[assignment]
        if not track.flight_id or pitr - track.last_pitr >= gap:
            track.on_ground = None  # what it did before the silence says nothing now
            self._start_flight(track, ac, callsign, pitr, pos_ms, control)
        elif callsign and callsign != track.callsign:
            if track.callsign:
                self._start_flight(track, ac, callsign, pitr, pos_ms, control)
            else:
                track.callsign = track.ident = callsign
                self._amend(track, ac, pitr, control)
        elif on_ground and track.landed_at is not None and pitr - track.landed_at >= gap:
            # The same callsign (a state without one keeps the known one) on a new flight.
            self._start_flight(track, ac, callsign or track.callsign, pitr, pos_ms, control)
        elif new_registration and (
            self._access.level(track.hexid, track.callsign, track.registration) != track.access
        ):
            self._amend(track, ac, pitr, control)
        track.last_pitr = pitr
        track.pos_ms = pos_ms
        was_on_ground = track.on_ground
        track.on_ground = on_ground
        if was_on_ground is not None and was_on_ground != on_ground:
            if on_ground:
                track.landed_at = pitr
                control.append(b'{"type":"arrival","pitr":%d,"id":%s}' % (pitr, _encode(track.flight_id)))
            else:
                track.landed_at = None
                control.append(b'{"type":"departure","pitr":%d,"id":%s}' % (pitr, _encode(track.flight_id)))
        emergency = is_emergency(ac.squawk, ac.emergency)
        gs = ac.gs
        if on_ground:
            facility = track.facility
            if facility is None:
                facility = track.facility = self._nearest(ac.lat, ac.lon)  # type: ignore[arg-type]
                self._linked[track.hexid] = track
                control.append(
                    _encode({"type": "power_on", "pitr": pitr, "id": track.flight_id,
                             "surface_id": track.surface_id, "facility": facility})
                )  # fmt: skip
            track.last_ground_pitr = pitr
            surface.append(
                _encode(
                    _GroundOut(
                        pitr=pitr,
                        surface_id=track.surface_id,
                        facility=facility,
                        clock=pos_ms,
                        lat=ac.lat,  # type: ignore[arg-type]
                        lon=ac.lon,  # type: ignore[arg-type]
                        gs=gs,
                        heading=ac.track,
                        hexid=track.hexid,
                        squawk=ac.squawk,
                        air_ground="G",
                        phase="ground",
                        emergency=emergency,
                        access=None if track.access == "public" else track.access,
                    )
                )
            )
            return
        rate = ac.baro_rate if ac.baro_rate is not None else ac.geom_rate
        alt = ac.alt_baro if ac.alt_baro is not None else ac.alt_geom
        source_type = ac.source_type
        control.append(
            _encode(
                _PositionOut(
                    pitr=pitr,
                    id=track.flight_id,
                    clock=pos_ms,
                    lat=ac.lat,  # type: ignore[arg-type]
                    lon=ac.lon,  # type: ignore[arg-type]
                    alt=None if alt is None or isinstance(alt, str) else round(alt),
                    gs=gs,
                    heading=ac.track,
                    vrate=None if rate is None else round(rate),
                    ident=track.callsign or None,
                    hexid=track.hexid,
                    squawk=ac.squawk,
                    air_ground="A",
                    updateType=(
                        "A" if source_type is None else _UPDATE_TYPES.get(source_type, "A")
                    ),
                    phase=phase_of(False, rate),
                    emergency=emergency,
                )
            )
        )

    def _start_flight(
        self,
        track: _Track,
        ac: Aircraft,
        callsign: str,
        pitr: int,
        pos_ms: int,
        control: list[bytes],
    ) -> None:
        if track.facility is not None:
            self._power_off(track, pitr, control)
        track.callsign = callsign
        track.registration = ac.r or track.registration
        track.ident = callsign or track.registration or track.hexid.lstrip("~").upper()
        # From the data, not from when it was received: the same responses give the same
        # IDs however long they took to arrive.
        track.first_seen_s = pos_ms // 1000
        track.flight_id = f"{track.ident}-{track.first_seen_s}-adsb-{track.hexid}"
        track.access = "public"
        track.landed_at = None
        self.flights += 1
        self._amend(track, ac, pitr, control)

    def _amend(self, track: _Track, ac: Aircraft, pitr: int, control: list[bytes]) -> None:
        """A ``flightplan`` for the flight as it is known now; access never weakens in a flight."""
        level = self._access.level(track.hexid, track.callsign, track.registration)
        if ACCESS_RANK[level] > ACCESS_RANK[track.access]:
            track.access = level
        plan: dict[str, object] = {
            "type": "flightplan",
            "pitr": pitr,
            "id": track.flight_id,
            "ident": track.ident,
            "hexid": track.hexid,
        }
        if track.registration:
            plan["registration"] = track.registration
        if ac.t:
            plan["aircrafttype"] = ac.t
        if track.access != "public":
            plan["access"] = track.access
        control.append(_encode(plan))

    def _power_off(self, track: _Track, pitr: int, control: list[bytes]) -> None:
        control.append(
            _encode({"type": "power_off", "pitr": pitr, "id": track.flight_id,
                     "surface_id": track.surface_id, "facility": track.facility})
        )  # fmt: skip
        track.facility = None
        self._linked.pop(track.hexid, None)

    def _vehicle(
        self, vehicle: _Vehicle, ac: Aircraft, hexid: str, pitr: int, pos_ms: int,
        surface: list[bytes],
    ) -> None:  # fmt: skip
        lat: float = ac.lat  # type: ignore[assignment]
        lon: float = ac.lon  # type: ignore[assignment]
        if abs(lat - vehicle.fac_lat) > _VEHICLE_MOVE_DEG or abs(lon - vehicle.fac_lon) > _VEHICLE_MOVE_DEG:
            vehicle.facility = self._nearest(lat, lon)
            vehicle.fac_lat, vehicle.fac_lon = lat, lon
        callsign = ac.flight.strip() if ac.flight else None
        level = self._access.level(hexid, callsign or "", ac.r or "")
        if ACCESS_RANK[level] > ACCESS_RANK[vehicle.access]:
            vehicle.access = level
        vehicle.pos_ms = pos_ms
        vehicle.last_pitr = pitr
        surface.append(
            _encode(
                _VehicleOut(
                    pitr=pitr,
                    surface_id=vehicle.surface_id,
                    facility=vehicle.facility,
                    clock=pos_ms,
                    lat=lat,
                    lon=lon,
                    gs=ac.gs,
                    heading=ac.track,
                    callsign=callsign or None,
                    hexid=vehicle.surface_id[5:],
                    category=ac.category or "",
                    emergency=is_emergency(ac.squawk, ac.emergency),
                    access=None if vehicle.access == "public" else vehicle.access,
                )
            )
        )

    # -- time passing -------------------------------------------------------

    def _sweep(self, pitr: int, control: list[bytes]) -> None:
        """End ground tracks gone stale; forget addresses silent for a flight gap."""
        timeout = self.config.surface_timeout_ms
        stale = [t for t in self._linked.values() if pitr - t.last_ground_pitr >= timeout]
        for track in stale:
            self._power_off(track, pitr, control)
        if pitr >= self._next_prune:
            # Forgetting only frees memory: a state after a flight gap of silence starts a
            # new flight whether its address is remembered or not.
            self._next_prune = pitr + _PRUNE_EVERY_MS
            gap = self.config.flight_gap_ms
            for key in [k for k, t in self._tracks.items() if pitr - t.last_pitr >= gap]:
                track = self._tracks.pop(key)
                if track.facility is not None:
                    self._power_off(track, pitr, control)
            for key in [k for k, v in self._vehicles.items() if pitr - v.last_pitr >= gap]:
                del self._vehicles[key]

