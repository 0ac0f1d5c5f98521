"""Live state: the unified feed folded into the latest state per aircraft (pure, no I/O).

`Fold` turns unified-feed records, in feed order, into `Changes`; `Table` holds the
resulting `Aircraft` by id with a grid index for viewport queries. Time is **feed time**
only (`Table.pitr`, the highest ``pitr`` seen): an aircraft is current while its latest
position is at most ``stale_ms`` older than the feed time, whatever the wall clock says,
so a replay or a catch-up shows the picture as of its own time.

Keys: a flight by its ``id``; a surface track without a flight (``vehicle_position``, or a
``ground_position`` not linked to a flight) by its ``surface_id``, with ``kind`` vehicle.
When a track's positions start carrying a flight ``id``, its vehicle entry goes.

Fields the feed may not carry are derived (``Fold`` docstring).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, Final

import msgspec

from unifeed.core.access import access_rank, effective_rank
from unifeed.core.geo import Bbox
from unifeed.core.records import ACCESS_LEVELS

FLIGHT: Final = "flight"
VEHICLE: Final = "vehicle"

#: Vertical rates (ft/min) beyond which a derived phase is climb or descent.
_LEVEL_FPM: Final = 250.0
#: Squawk codes that mean an emergency, and the emergency they mean.
SQUAWK_EMERGENCY: Final = {"7500": "hijack", "7600": "radio_failure", "7700": "general"}



class Aircraft(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The state of one flight or vehicle, as the API shows it.

    Frozen: a change makes a new object, so ``old is new`` tells whether anything changed.
    """

    id: str
    kind: str
    lat: float
    lon: float
    alt: float | None = None
    gs: float | None = None
    heading: float | None = None
    clock: float | None = None
    pitr: int
    ident: str | None = None
    aircraft_type: str | None = None
    registration: str | None = None
    origin: str | None = None
    destination: str | None = None
    phase: str | None = None
    emergency: str | None = None
    squawk: str | None = None
    access: str = "public"
    on_ground: bool = False
    surface_id: str | None = None
    facility: str | None = None


class _Record(msgspec.Struct, gc=False):
    """The fields the fold reads; any JSON type, checked by hand."""

    type: Any = None
    pitr: Any = None
    id: Any = None
    surface_id: Any = None
    facility: Any = None
    clock: Any = None
    lat: Any = None
    lon: Any = None
    alt: Any = None
    gs: Any = None
    heading: Any = None
    access: Any = None
    ident: Any = None
    aircrafttype: Any = None
    aircraft_type: Any = None
    reg: Any = None
    registration: Any = None
    orig: Any = None
    origin: Any = None
    dest: Any = None
    destination: Any = None
    phase: Any = None
    emergency: Any = None
    squawk: Any = None
    on_ground: Any = None
    air_ground: Any = None
    vrate: Any = None
    vertical_rate: Any = None


_decoder: Final = msgspec.json.Decoder(_Record)


class _Flight(msgspec.Struct, gc=False):
    """What controlstream said about a flight (its latest flightplan)."""

    access: object = None
    ident: str | None = None
    aircraft_type: str | None = None
    registration: str | None = None
    origin: str | None = None
    destination: str | None = None
    news: int = 0  # pitr of the latest record about it
    plan: int = 0  # pitr of the flightplan this holds


class _Motion(msgspec.Struct, gc=False):
    """Per aircraft, what derivation needs from its previous positions: the reference
    sample for the vertical rate (``alt`` at ``pitr``, at least a second old once there is
    a newer one), the phase derived last, and the pitr of its latest position."""

    own_access: object
    alt: float | None
    pitr: int
    phase: str | None
    last: int = 0


class Changes:
    """What a batch of records changed: the last state per id, ids removed, every position
    state in feed order (for history), and the records that could not be used."""

    __slots__ = ("bad", "position_index", "positions", "removed", "upserts")

    def __init__(self) -> None:
        self.upserts: dict[str, Aircraft] = {}
        self.removed: set[str] = set()
        self.positions: list[Aircraft] = []
        #: For each of `positions`, the index of the record (in the batch) that made it.
        self.position_index: list[int] = []
        self.bad = 0

    def upsert(self, aircraft: Aircraft) -> None:
        self.upserts[aircraft.id] = aircraft
        self.removed.discard(aircraft.id)

    def remove(self, key: str) -> None:
        self.upserts.pop(key, None)
        self.removed.add(key)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.removed)


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _key(value: object) -> str | None:
    """Flight and surface ids are strings or integers in the feed; the API speaks strings."""
    return _text(value)


def squawk_of(value: object) -> str | None:
    """A record's ``squawk`` as the four octal digits it is: a string as given (``"0123"``),
    an integer zero-padded (``123`` -> ``"0123"``); anything else (a bool, a float, a
    negative or too large number) is no squawk.

    >>> squawk_of("7700"), squawk_of(1200), squawk_of(17), squawk_of(True), squawk_of(77000)
    ('7700', '1200', '0017', None, None)
    """
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7777:
        return f"{value:04d}"
    return None


def derive_emergency(emergency: object, squawk: str | None) -> str | None:
    """The record's own ``emergency`` when it says one, else what its squawk (`squawk_of`)
    means.

    >>> derive_emergency(None, "7700"), derive_emergency("medical", None), derive_emergency(False, "7600")
    ('general', 'medical', 'radio_failure')
    """
    if isinstance(emergency, str) and emergency.lower() not in ("", "none", "false", "no"):
        return emergency
    if emergency is True:
        return "general"
    return SQUAWK_EMERGENCY.get(squawk) if squawk is not None else None


def derive_on_ground(record_type: str, on_ground: object, air_ground: object) -> bool:
    """``on_ground`` when the record has it, else ``air_ground`` ``G``/``A``, else the type."""
    if isinstance(on_ground, bool):
        return on_ground
    if air_ground == "G":
        return True
    if air_ground == "A":
        return False
    return record_type != "position"


def derive_phase(
    on_ground: bool,
    alt: float | None,
    pitr: int,
    vertical_rate: float | None,
    previous: _Motion | None,
) -> str:
    """``ground`` on the ground; airborne: ``climb``/``descent`` beyond 250 ft/min (the
    record's vertical rate, else the altitude change since the reference sample of the
    same aircraft, a position at least a second earlier), ``cruise`` within it; the
    previous phase while less than a second has passed; ``airborne`` when nothing tells.

    >>> derive_phase(False, 10_000.0, 61_000, None, _Motion(None, 9_000.0, 1_000, None))
    'climb'
    """
    if on_ground:
        return "ground"
    rate = vertical_rate
    if rate is None and previous is not None and alt is not None and previous.alt is not None:
        elapsed = pitr - previous.pitr
        if elapsed >= 1_000:
            rate = (alt - previous.alt) * 60_000.0 / elapsed
        elif previous.phase is not None and previous.phase != "ground":
            return previous.phase
    if rate is None:
        if previous is not None and previous.phase not in (None, "ground"):
            return previous.phase or "airborne"
        return "airborne"
    if rate > _LEVEL_FPM:
        return "climb"
    if rate < -_LEVEL_FPM:
        return "descent"
    return "cruise"


class Fold:
    """Unified-feed records, in feed order, into aircraft states.

    Per record type (others only advance feed time):

    * ``flightplan``: the flight's data (``ident``, ``aircrafttype``/``aircraft_type``,
      ``reg``/``registration``, ``orig``/``origin``, ``dest``/``destination``) and its
      ``access`` (absent: public); an aircraft of that flight on the map is re-judged at
      once, so a flight that becomes restricted leaves public views at that pitr.
    * ``position`` (``id``), ``ground_position`` (with ``id``: a flight; without: a
      vehicle keyed by ``surface_id``), ``vehicle_position``: a new state. ``access`` is
      max(the record's own, the flight's), the core's audience rule.
    * A position or flightplan older (by ``pitr``) than what is held for its aircraft or
      flight, as records of several partitions may arrive, goes to history only (a
      position) and leaves the live state as it is.
    * ``phase`` and ``emergency`` are the record's own when present, else derived:
      `derive_phase` (ground / vertical rate), `derive_emergency` (squawk 7500/7600/7700).
    * ``squawk`` is the position's own (``position`` and ``ground_position`` carry it in
      the unified feed; `squawk_of`), like ``alt`` and ``gs``: a position without one has
      none, so an emergency squawked once does not stay on the map after the code changed.

    A record that is not a JSON object with an integer ``pitr``, or a position without
    finite ``lat``/``lon`` in range, is counted in `Changes.bad` and otherwise ignored.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self._flights: dict[str, _Flight] = {}
        self._motion: dict[str, _Motion] = {}
        #: surface_id -> pitr at which its track was seen with a flight id: a position of
        #: the track without one that is older belongs before the link.
        self._linked: dict[str, int] = {}

    def apply(self, lines: Iterable[bytes]) -> Changes:
        changes = Changes()
        positions = changes.positions
        index = changes.position_index
        for number, line in enumerate(lines):
            made = len(positions)
            self._apply_one(line, changes)
            if len(positions) != made:
                index.append(number)
        return changes

    def _apply_one(self, line: bytes, changes: Changes) -> None:
        try:
            record = _decoder.decode(line)
        except msgspec.DecodeError:
            changes.bad += 1
            return
        pitr = record.pitr
        if type(pitr) is not int or pitr < 0 or not isinstance(record.type, str):
            changes.bad += 1
            return
        table = self.table
        if pitr > table.pitr:
            table.pitr = pitr
        kind = record.type
        if kind == "flightplan":
            self._flightplan(record, pitr, changes)
        elif kind in ("position", "ground_position", "vehicle_position"):
            self._position(record, pitr, changes)

    def _flightplan(self, record: _Record, pitr: int, changes: Changes) -> None:
        key = _key(record.id)
        if key is None:
            changes.bad += 1
            return
        known = self._flights.get(key)
        if known is not None and known.plan > pitr:
            return  # an older flightplan (from another partition) changes nothing
        flight = _Flight(
            access=record.access,
            ident=_text(record.ident),
            aircraft_type=_text(record.aircrafttype) or _text(record.aircraft_type),
            registration=_text(record.reg) or _text(record.registration),
            origin=_text(record.orig) or _text(record.origin),
            destination=_text(record.dest) or _text(record.destination),
            news=max(pitr, known.news if known is not None else 0),
            plan=pitr,
        )
        self._flights[key] = flight
        current = self.table.get(key)
        motion = self._motion.get(key)
        if current is None or motion is None or current.kind != FLIGHT:
            return
        updated = msgspec.structs.replace(
            current,
            ident=flight.ident or current.ident,
            aircraft_type=flight.aircraft_type,
            registration=flight.registration,
            origin=flight.origin,
            destination=flight.destination,
            access=ACCESS_LEVELS[effective_rank(motion.own_access, flight.access)],
        )
        self.table.put(updated)
        changes.upsert(updated)

    def _position(self, record: _Record, pitr: int, changes: Changes) -> None:
        lat, lon = _number(record.lat), _number(record.lon)
        if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            changes.bad += 1
            return
        kind = record.type
        flight_key = _key(record.id) if kind != "vehicle_position" else None
        surface_key = _key(record.surface_id)
        if kind == "position" and flight_key is None:
            changes.bad += 1
            return
        key = flight_key if flight_key is not None else surface_key
        if key is None:
            changes.bad += 1
            return
        table = self.table
        previous = self._motion.get(key)
        # Older than the state held (records from several partitions interleave): history
        # keeps it, the live state does not go back.
        late = previous is not None and previous.last > pitr
        if flight_key is None and surface_key is not None:
            # At the same pitr as the link the order is unknowable across partitions:
            # the link wins.
            late = late or self._linked.get(surface_key, -1) >= pitr
        if flight_key is not None and surface_key is not None and surface_key != flight_key:
            if pitr > self._linked.get(surface_key, -1):
                self._linked[surface_key] = pitr
            gone = table.get(surface_key)
            if gone is not None and gone.kind == VEHICLE and gone.pitr <= pitr:
                table.drop(surface_key)
                self._motion.pop(surface_key, None)
                changes.remove(surface_key)
        flight = self._flights.get(flight_key) if flight_key is not None else None
        if flight is not None and pitr > flight.news:
            flight.news = pitr
        on_ground = derive_on_ground(kind, record.on_ground, record.air_ground)
        alt = _number(record.alt)
        phase = _text(record.phase)
        if phase is None:
            rate = _number(record.vrate)
            if rate is None:
                rate = _number(record.vertical_rate)
            phase = derive_phase(on_ground, alt, pitr, rate, previous)
        squawk = squawk_of(record.squawk)
        own_access = record.access
        access = effective_rank(own_access, flight.access if flight is not None else None)
        aircraft = Aircraft(
            id=key,
            kind=FLIGHT if flight_key is not None else VEHICLE,
            lat=lat,
            lon=lon,
            alt=alt,
            gs=_number(record.gs),
            heading=_number(record.heading),
            clock=_number(record.clock),
            pitr=pitr,
            ident=(flight.ident if flight is not None else None) or _text(record.ident),
            aircraft_type=flight.aircraft_type if flight is not None else None,
            registration=flight.registration if flight is not None else None,
            origin=flight.origin if flight is not None else None,
            destination=flight.destination if flight is not None else None,
            phase=phase,
            emergency=derive_emergency(record.emergency, squawk),
            squawk=squawk,
            access=ACCESS_LEVELS[access],
            on_ground=on_ground,
            surface_id=surface_key,
            facility=_text(record.facility),
        )
        changes.positions.append(aircraft)
        if late:
            return
        if previous is not None and previous.alt is not None and alt is not None and pitr - previous.pitr < 1_000:
            # Positions come more often than a second: the rate is taken over a second
            # or more, from the reference sample.
            self._motion[key] = _Motion(own_access, previous.alt, previous.pitr, phase, pitr)
        else:
            self._motion[key] = _Motion(own_access, alt, pitr, phase, pitr)
        table.put(aircraft)
        changes.upsert(aircraft)

    def expire(self, changes: Changes | None = None, forget_flights_ms: int = 86_400_000) -> Changes:
        """Drop aircraft no longer current by feed time (and flight data with no news for
        ``forget_flights_ms``); the removals go into ``changes``."""
        changes = changes if changes is not None else Changes()
        for key in self.table.expire():
            self._motion.pop(key, None)
            changes.remove(key)
        stale = self.table.pitr - self.table.stale_ms
        for key in [k for k, t in self._linked.items() if t < stale]:
            del self._linked[key]
        horizon = self.table.pitr - forget_flights_ms
        if horizon > 0 and len(self._flights) > 0:
            for key in [k for k, f in self._flights.items() if f.news < horizon]:
                if key not in self._motion:
                    del self._flights[key]
        return changes


def valid_bbox(bbox: Bbox) -> str | None:
    """Why ``bbox`` is not a box (``None`` when it is). West may exceed east: the box then
    crosses the antimeridian."""
    west, south, east, north = bbox
    for name, value in (("west", west), ("south", south), ("east", east), ("north", north)):
        if not math.isfinite(value):
            return f"bbox {name} must be a finite number, got {value}"
    if not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0):
        return f"bbox west and east must be within -180..180, got {west:g} and {east:g}"
    if not (-90.0 <= south <= 90.0 and -90.0 <= north <= 90.0):
        return f"bbox south and north must be within -90..90, got {south:g} and {north:g}"
    if south > north:
        return f"bbox south must not exceed north, got {south:g} > {north:g}"
    return None


#: Side of a grid cell, degrees: a 10% viewport of a world map covers about 180 cells.
CELL_DEG: Final = 5.0
#: Rank of each level, for the hot loops (an `Aircraft` holds a known level).
_RANK: Final = {name: rank for rank, name in enumerate(ACCESS_LEVELS)}


def _cell(lat: float, lon: float) -> tuple[int, int]:
    return (math.floor(lat / CELL_DEG), math.floor(lon / CELL_DEG))


class Table:
    """Aircraft by id, indexed by 1-degree cells, with the feed time and staleness.

    `query` costs O(cells covered + aircraft in them), or O(aircraft) for boxes covering
    more cells than there are aircraft.
    """

    def __init__(self, stale_ms: int) -> None:
        if stale_ms <= 0:
            raise ValueError("stale_ms must be > 0")
        self.stale_ms = stale_ms
        self.pitr = 0
        self._by_id: dict[str, Aircraft] = {}
        self._cells: dict[tuple[int, int], dict[str, Aircraft]] = {}
        self._encoded: dict[str, tuple[Aircraft, bytes]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, key: str) -> Aircraft | None:
        return self._by_id.get(key)

    def put(self, aircraft: Aircraft) -> None:
        old = self._by_id.get(aircraft.id)
        if old is not None:
            self._cells[_cell(old.lat, old.lon)].pop(old.id, None)
        self._by_id[aircraft.id] = aircraft
        self._cells.setdefault(_cell(aircraft.lat, aircraft.lon), {})[aircraft.id] = aircraft

    def drop(self, key: str) -> None:
        old = self._by_id.pop(key, None)
        if old is not None:
            cell = _cell(old.lat, old.lon)
            members = self._cells[cell]
            members.pop(key, None)
            if not members:
                del self._cells[cell]
        self._encoded.pop(key, None)

    def current(self, aircraft: Aircraft) -> bool:
        """Whether ``aircraft`` had news within ``stale_ms`` of the feed time."""
        return aircraft.pitr >= self.pitr - self.stale_ms

    def expire(self) -> list[str]:
        """Drop every aircraft that is no longer current; their ids."""
        horizon = self.pitr - self.stale_ms
        gone = [key for key, a in self._by_id.items() if a.pitr < horizon]
        for key in gone:
            self.drop(key)
        return gone

    def lookup(self, key: str, audience: int) -> Aircraft | None:
        """The aircraft if it is current and visible to ``audience`` (a rank), else None."""
        aircraft = self._by_id.get(key)
        if aircraft is None or not self.current(aircraft):
            return None
        if access_rank(aircraft.access) > audience:
            return None
        return aircraft

    def query(self, bbox: Bbox | None, audience: int, *, ordered: bool = True) -> list[Aircraft]:
        """Current aircraft inside ``bbox`` (all without one) visible to ``audience``, by
        id unless ``ordered`` is false."""
        horizon = self.pitr - self.stale_ms
        rank = _RANK.get
        found: list[Aircraft] = []
        if bbox is None:
            found = [a for a in self._by_id.values() if a.pitr >= horizon and rank(a.access, 2) <= audience]
        else:
            west, south, east, north = bbox
            crosses = west > east
            for members in self._candidates(bbox):
                for a in members:
                    if a.pitr < horizon or rank(a.access, 2) > audience:
                        continue
                    lat, lon = a.lat, a.lon
                    if not south <= lat <= north:
                        continue
                    if (lon >= west or lon <= east) if crosses else (west <= lon <= east):
                        found.append(a)
        if ordered:
            found.sort(key=lambda a: a.id)
        return found

    def _candidates(self, bbox: Bbox) -> list[Iterable[Aircraft]]:
        """Groups of aircraft that may be inside ``bbox``: the cells it covers, or
        everything when it covers more cells than are occupied."""
        west, south, east, north = bbox
        lat_cells = range(math.floor(south / CELL_DEG), math.floor(north / CELL_DEG) + 1)
        if west <= east:
            lon_ranges = [range(math.floor(west / CELL_DEG), math.floor(east / CELL_DEG) + 1)]
        else:
            lon_ranges = [
                range(math.floor(west / CELL_DEG), math.floor(180.0 / CELL_DEG) + 1),
                range(math.floor(-180.0 / CELL_DEG), math.floor(east / CELL_DEG) + 1),
            ]
        covered = len(lat_cells) * sum(len(r) for r in lon_ranges)
        if covered > len(self._cells):
            return [self._by_id.values()]
        cells = self._cells
        groups: list[Iterable[Aircraft]] = []
        for lat in lat_cells:
            for lons in lon_ranges:
                for lon in lons:
                    members = cells.get((lat, lon))
                    if members:
                        groups.append(members.values())
        return groups

    def encoded(self, aircraft: Aircraft) -> bytes:
        """``aircraft`` as JSON, encoded once per state however many clients get it."""
        cached = self._encoded.get(aircraft.id)
        if cached is not None and cached[0] is aircraft:
            return cached[1]
        data = msgspec.json.encode(aircraft)
        if self._by_id.get(aircraft.id) is aircraft:
            self._encoded[aircraft.id] = (aircraft, data)
        return data

    def all(self) -> Iterator[Aircraft]:
        return iter(self._by_id.values())


class Viewport:
    """One client's view: what it was last sent, and the frames that bring it up to date.

    The diff is by identity (states are frozen), so an aircraft whose state changed, that
    entered the box, or became visible is in ``upsert``; one that left the box, went stale
    or became hidden is in ``remove``.

    Every frame carries ``mode`` (``live`` or ``catchup``, as ``/api/aircraft`` says it);
    when only the mode changed, the update is empty but still sent, so a client's live /
    catch-up indicator never needs to ask.
    """

    __slots__ = ("audience", "bbox", "mode", "sent")

    def __init__(self, bbox: Bbox, audience: int) -> None:
        self.bbox = bbox
        self.audience = audience
        self.sent: dict[str, Aircraft] = {}
        self.mode = ""

    def snapshot(self, table: Table, mode: str) -> bytes:
        """``{"type":"snapshot","pitr":…,"mode":…,"aircraft":[…]}``; what it holds counts as
        sent."""
        found = table.query(self.bbox, self.audience)
        self.sent = {a.id: a for a in found}
        self.mode = mode
        body = b",".join(table.encoded(a) for a in found)
        return b'{"type":"snapshot","pitr":%d,"mode":"%s","aircraft":[%s]}' % (
            table.pitr,
            mode.encode(),
            body,
        )

    def update(self, table: Table, mode: str) -> bytes | None:
        """``{"type":"update","pitr":…,"mode":…,"upsert":[…],"remove":[ids]}``, or None when
        nothing in the view changed and the mode is the one last sent."""
        found = table.query(self.bbox, self.audience, ordered=False)
        sent = self.sent
        upsert = [a for a in found if sent.get(a.id) is not a]
        now = {a.id: a for a in found}
        remove = sorted(key for key in sent if key not in now)
        if not upsert and not remove and mode == self.mode:
            return None
        self.sent = now
        self.mode = mode
        body = b",".join(table.encoded(a) for a in upsert)
        return b'{"type":"update","pitr":%d,"mode":"%s","upsert":[%s],"remove":%s}' % (
            table.pitr,
            mode.encode(),
            body,
            msgspec.json.encode(remove),
        )


def aircraft_json(table: Table, found: Iterable[Aircraft]) -> bytes:
    """A JSON array of states, each encoded once (`Table.encoded`)."""
    return b"[" + b",".join(table.encoded(a) for a in found) + b"]"
