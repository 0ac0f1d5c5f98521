"""Deterministic, realistic synthetic traffic: controlstream and surfacestream as JSON lines.

The same arguments give byte-identical output: one `random.Random` seeded from ``seed``
drives everything, and time is simulated feed time (no wall clock). Lines are compact
JSON objects that `RecordDecoder` accepts; ``pitr`` never decreases within a feed.

The model, per simulated airport (an ICAO code as ``facility``):

* Flights are scheduled as a Poisson process whose rate is chosen so that the airport's
  departures produce about ``rate`` controlstream messages per second. Traffic starts in
  steady state: flights already under way at ``start_ms`` are picked up mid-life, each
  announced by a fresh ``flightplan`` (and its current surface link, if it has one) in
  the first seconds.
* A flight files a ``flightplan`` (``access`` absent for most, ``restricted`` for about
  5%, ``blocked`` for about 2%; a few later change it), powers on at the gate
  (``power_on`` links a new ``surface_id``), pushes back (``surface_offblock``), taxis
  out (``ground_position`` every 2-4 s, sometimes via the de-icing pad), takes off
  (``departure``), flies (``position`` every 1-3 s), lands at another simulated airport
  (``arrival``), where a new surface track is linked by ``power_on`` soon after
  touchdown, taxis in (``surface_onblock`` at the gate) and powers off (``power_off``
  unlinks the track). About 3% are cancelled before powering on. About one surface
  track in ten reports a few positions before its link event arrives, so those
  positions are unmapped.
* Ground vehicles (tugs, fuel trucks, buses...) drive around with their own
  ``surface_id``; they and cargo flights enter and leave the de-icing pad and the cargo
  ramp (``location_entry`` / ``location_exit``). Vehicles fill surfacestream up to about
  ``rate`` messages per second per airport.
* ``clock`` is the time the position was emitted, in epoch **milliseconds** (an integer,
  like ``pitr``): 0.1-2.5 s before ``pitr``, occasionally much more (MLAT, satellite), so
  consecutive positions of one aircraft are sometimes out of ``clock`` order.
* Each feed carries a ``keepalive`` every second of ``pitr``, and one at the end.

>>> sim = simulate(seed=3, minutes=0.05, airports=2, rate=50)
>>> sim.controlstream[0][:40]
b'{"type":"flightplan","pitr":170000000000'
>>> sim.surfacestream[-1]  # keepalives at +1 s, +2 s and the end, +3 s
b'{"type":"keepalive","pitr":1700000003000}'
>>> sim.counts["surfacestream"]["keepalive"]
3
>>> sim == simulate(seed=3, minutes=0.05, airports=2, rate=50)
True
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from itertools import pairwise
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, TypedDict, Unpack

import msgspec

from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM
from unifeed.sim.world import (
    ACCESS,
    AIR_INTERVAL,
    AIRLINES,
    CARGO_AIRLINES,
    CARGO_RAMP,
    CARGO_TYPES,
    DEICE,
    DEICING_PAD,
    GATE_IN,
    GATE_OUT,
    GROUND_INTERVAL,
    LEAD,
    LIFE_BEYOND_AIR_MS,
    LINK_EVENTS,
    LONG_TYPES,
    MAX_AIRPORTS,
    MAX_DELAY,
    MINUTE,
    P_ACCESS_CHANGE,
    P_AMEND,
    P_BLOCKED,
    P_CANCEL,
    P_CARGO,
    P_DEICE,
    P_LATE_LINK,
    P_RESTRICTED,
    PAD_TAXI,
    RUNWAY_TAXI,
    SECOND,
    SHORT_TYPES,
    SITES,
    TAXI_IN,
    TAXI_OUT,
    VEHICLE_INTERVAL,
    VEHICLES,
    Airport,
    Point,
    air_ms,
    bearing,
    calibrate,
    cruise_gs,
    distance_nm,
    local_nm,
)

__all__ = [
    "Scenario",
    "Simulation",
    "TrafficArgs",
    "iter_traffic",
    "simulate",
    "write_simulation",
    "write_streaming",
]

_FEEDS: Final = (CONTROLSTREAM, SURFACESTREAM)  # sorted: controlstream first at equal pitr

_encode: Final = msgspec.json.Encoder().encode


class Simulation(msgspec.Struct, frozen=True, kw_only=True):
    """A finished simulation: both feeds as lists of lines (no newline) and counts.

    ``counts[feed][type]`` is the number of messages of that type; the feeds cover
    ``start_ms <= pitr <= end_ms`` and end with a keepalive at ``end_ms``.
    """

    start_ms: int
    end_ms: int
    controlstream: list[bytes]
    surfacestream: list[bytes]
    counts: dict[str, dict[str, int]]


_Item = tuple[str, int, bytes]  # (feed, pitr, line)
_Agent = Iterator[_Item]
_Event = tuple[int, str, dict[str, Any]]  # (pitr, feed, message whose "pitr" is set last)
_Key = tuple[int, float, float]  # a keyframe of a surface track: (time, lat, lon)


class _Flight:
    """One flight's plan: every time and identifier, drawn when it is scheduled."""

    __slots__ = (
        "access",
        "aircraft_type",
        "cancel",
        "cargo",
        "changes",
        "cruise_alt",
        "deice",
        "dest",
        "end",
        "gs",
        "hexid",
        "id",
        "ident",
        "in_keys",
        "in_link",
        "in_sid",
        "orig",
        "out_keys",
        "out_link",
        "out_sid",
        "t_air_first",
        "t_air_last",
        "t_amend",
        "t_arr",
        "t_arrival_msg",
        "t_dep",
        "t_fp",
        "t_in",
        "t_off",
        "t_poff",
    )

    orig: Airport
    dest: Airport
    id: str
    ident: str
    hexid: str
    aircraft_type: str
    cargo: bool
    access: str
    changes: list[tuple[int, str]]  # (pitr, new access) of access changes
    t_fp: int
    t_amend: int | None
    cancel: int | None
    end: int
    # Departure: surface track, then airborne.
    out_sid: str
    out_link: int
    out_keys: list[_Key]
    deice: bool
    t_off: int
    t_dep: int
    gs: float
    cruise_alt: int
    t_air_first: int
    t_air_last: int
    t_arr: int
    t_arrival_msg: int
    # Arrival: a new surface track.
    in_sid: str
    in_link: int
    in_keys: list[_Key]
    t_in: int
    t_poff: int


class _Traffic:
    """The simulation engine: agents (flights, vehicles, keepalives) merged in pitr order.

    Feed time is cut into one-second slices (a calendar queue). Each agent is a generator
    of ``(feed, pitr, line)`` in ``pitr`` order that waits in the bucket of the slice of
    its next item. A slice runs its agents until they pass the slice's end, sorts what
    they made by ``(pitr, feed)`` (stable, so ties keep the order agents made them) and
    hands it out. That costs far less per message than a heap over every agent.
    """

    def __init__(self, scenario: Scenario) -> None:
        airports = scenario.airports
        self.rng = random.Random(scenario.seed)
        self.start = scenario.start_ms
        self.end = scenario.end_ms
        self.airports = [Airport(i, SITES[i], self.rng) for i in range(airports)]
        calibrate(self.airports, scenario.rate)
        self._flight_no = 0
        self._surface_no = 0
        self._first_spawn = [0] * airports  # t0 of each airport's first flight after start

    def _draw(self, low: int, high: int) -> int:
        """A uniform integer in ``[low, high)`` from exactly one ``random()`` draw (the
        sequence of draws is the simulation: same draws, same bytes)."""
        return low + int(self.rng.random() * (high - low))

    def _next_gap(self, ap: Airport) -> int:
        return 1 + int(self.rng.expovariate(ap.flights_per_ms))

    def _destination(self, ap: Airport) -> Airport:
        r = self.rng.random()
        return self.airports[ap.dests[next(i for i, c in enumerate(ap.dest_cum) if r <= c)]]

    def _warm_start(self, ap: Airport) -> Iterator[tuple[_Agent, int]]:
        """Flights filed before ``start`` and not over by then, picked up mid-life."""
        start = self.start
        t0 = start - LIFE_BEYOND_AIR_MS - max(ap.air_max_ms.values())
        while True:
            t0 += self._next_gap(ap)
            if t0 >= start:
                self._first_spawn[ap.index] = t0
                return
            dest = self._destination(ap)
            if t0 + LIFE_BEYOND_AIR_MS + ap.air_max_ms[dest.index] <= start:
                continue  # over before `start`, whatever the other draws
            flight = self._plan(ap, dest, t0)
            if flight.end > start:
                begin = min(start + self._draw(0, 3 * SECOND), flight.end)
                yield from self._flight(flight, begin=begin)

    def __iter__(self) -> Iterator[tuple[str, int, bytes]]:
        start, end = self.start, self.end
        # Slice index -> (the next items of agents waiting there, the agents to resume
        # there). An agent that has not started yet waits without an item, in the slice
        # of the earliest time its first item can have: it costs nothing until then.
        # Two lists rather than (item, agent) pairs: far fewer objects for the garbage
        # collector to track.
        buckets: dict[int, tuple[list[_Item], list[_Agent]]] = {}

        def schedule(agent: _Agent, not_before: int) -> None:
            later = (not_before - start) // SECOND
            bucket = buckets.get(later)
            if bucket is None:
                buckets[later] = ([], [agent])
            else:
                bucket[1].append(agent)

        for feed in _FEEDS:
            schedule(self._keepalives(feed), start)
        for ap in self.airports:
            for number in range(1, ap.vehicles + 1):
                schedule(self._vehicle(ap, number), start)
        for ap in self.airports:
            for agent, not_before in self._warm_start(ap):
                schedule(agent, not_before)
        spawns = [(t0, index) for index, t0 in enumerate(self._first_spawn)]
        heapq.heapify(spawns)

        by_time = itemgetter(1, 0)
        index = 0
        slice_end = start
        while slice_end < end:
            slice_end += SECOND
            while spawns[0][0] < slice_end:
                t0, ap_index = spawns[0]
                ap = self.airports[ap_index]
                for agent, not_before in self._flight(
                    self._plan(ap, self._destination(ap), t0), begin=t0
                ):
                    schedule(agent, not_before)
                heapq.heapreplace(spawns, (t0 + self._next_gap(ap), ap_index))
            items, agents = buckets.pop(index, ([], []))
            append = items.append
            for agent in agents:
                for item in agent:
                    if item[1] >= slice_end:
                        later = (item[1] - start) // SECOND
                        bucket = buckets.get(later)
                        if bucket is None:
                            buckets[later] = ([item], [agent])
                        else:
                            bucket[0].append(item)
                            bucket[1].append(agent)
                        break
                    append(item)
            items.sort(key=by_time)
            if slice_end > end:
                items = [item for item in items if item[1] < end]
            yield from items
            index += 1
        closing = b'{"type":"keepalive","pitr":%d}' % end
        yield CONTROLSTREAM, end, closing
        yield SURFACESTREAM, end, closing

    # -- agents -------------------------------------------------------------

    def _keepalives(self, feed: str) -> _Agent:
        t = self.start + SECOND
        while True:
            yield feed, t, b'{"type":"keepalive","pitr":%d}' % t
            t += SECOND

    def _plan(self, ap: Airport, dest: Airport, t0: int) -> _Flight:
        """Draw one flight from ``ap`` to ``dest`` whose flightplan is filed at ``t0``."""
        rng = self.rng
        uniform, random_, draw = rng.uniform, rng.random, self._draw
        f = _Flight()
        self._flight_no += 1
        dist = distance_nm(ap.point, dest.point)
        f.orig, f.dest = ap, dest
        f.cargo = random_() < P_CARGO
        region = ap.site.region if random_() < 0.8 else dest.site.region
        airline, prefix = rng.choice((CARGO_AIRLINES if f.cargo else AIRLINES)[region])
        f.ident = f"{airline}{draw(1, 3000 if dist < 1500 else 200)}"
        f.hexid = f"{prefix}{draw(0, 16 ** (6 - len(prefix))):0{6 - len(prefix)}X}"
        if f.cargo:
            f.aircraft_type = rng.choice(CARGO_TYPES)
        else:
            f.aircraft_type = rng.choice(LONG_TYPES if dist > 2500 else SHORT_TYPES)
        r = random_()
        if r < P_BLOCKED:
            f.access = "blocked"
        elif r < P_BLOCKED + P_RESTRICTED:
            f.access = "restricted"
        else:
            f.access = "public"
        f.changes = []

        f.t_fp = t0
        sched_off = t0 + draw(*LEAD)
        delay = draw(-2 * MINUTE, 5 * MINUTE) if random_() < 0.7 else draw(5 * MINUTE, MAX_DELAY)
        f.t_off = sched_off + delay
        t_pon = f.t_off - draw(*GATE_OUT)
        f.id = f"{f.ident}-{sched_off // 1000}-schedule-{self._flight_no % 10000:04d}"
        f.t_amend = draw(t0 + 1, t_pon) if random_() < P_AMEND else None
        f.cancel = draw(t0 + MINUTE, t_pon - MINUTE) if random_() < P_CANCEL else None
        if f.cancel is not None:
            f.end = f.cancel
            return f

        # Departure surface track: gate, taxi (perhaps via the de-icing pad), runway.
        self._surface_no += 1
        f.out_sid = f"{ap.code}-{self._surface_no:07d}"
        base = ap.cargo if f.cargo else ap.gate
        gate = (base[0] + uniform(-0.002, 0.002), base[1] + uniform(-0.003, 0.003))
        late = random_() < P_LATE_LINK
        out_start = t_pon - (draw(3 * SECOND, 30 * SECOND) if late else 0)
        f.out_link = t_pon
        f.deice = ap.site.cold and random_() < P_DEICE
        if f.deice:
            t_pad = f.t_off + draw(*PAD_TAXI)
            t_pad_exit = t_pad + draw(*DEICE)
            f.t_dep = t_pad_exit + draw(*RUNWAY_TAXI)
            taxi_via = [(t_pad, *ap.pad), (t_pad_exit, *ap.pad)]
        else:
            taxi = draw(*TAXI_OUT)
            f.t_dep = f.t_off + taxi
            taxi_via = [(f.t_off + int(taxi * uniform(0.3, 0.6)), *ap.corner_out)]
        f.out_keys = [(out_start, *gate), (f.t_off, *gate), *taxi_via, (f.t_dep, *ap.hold)]

        # Airborne.
        f.gs = uniform(*cruise_gs(dist))
        f.cruise_alt = draw(33, 40) * 1000 if dist > 600 else draw(22, 32) * 1000
        f.t_arr = f.t_dep + int(air_ms(dist, f.gs))
        f.t_air_first = f.t_dep + draw(5 * SECOND, 30 * SECOND)
        f.t_air_last = f.t_arr - draw(0, 5 * SECOND)
        f.t_arrival_msg = f.t_arr + draw(1 * SECOND, 8 * SECOND)

        # Arrival surface track: runway exit, taxi, gate until power-off.
        self._surface_no += 1
        f.in_sid = f"{dest.code}-{self._surface_no:07d}"
        in_start = f.t_arr + draw(10 * SECOND, 40 * SECOND)
        if random_() < P_LATE_LINK:
            f.in_link = in_start + draw(3 * SECOND, 30 * SECOND)
        else:
            f.in_link = in_start - draw(0, 2 * SECOND)
        taxi = draw(*TAXI_IN)
        f.t_in = in_start + taxi
        f.t_poff = f.t_in + draw(*GATE_IN)
        base = dest.cargo if f.cargo else dest.gate
        gate = (base[0] + uniform(-0.002, 0.002), base[1] + uniform(-0.003, 0.003))
        f.in_keys = [
            (in_start, *dest.exit),
            (in_start + int(taxi * uniform(0.3, 0.6)), *dest.corner_in),
            (f.t_in, *gate),
            (f.t_poff, *gate),
        ]
        f.end = f.t_poff

        if random_() < P_ACCESS_CHANGE:
            # While a surface track is linked, so that the link must carry the new access.
            if random_() < 0.6:
                t = draw(max(f.out_link, out_start) + 1, f.t_dep)
            else:
                t = draw(max(f.in_link, in_start) + 1, f.t_poff)
            others = [a for a in ACCESS if a != f.access]
            f.changes.append((t, rng.choice(others)))
        return f

    def _flight(self, f: _Flight, *, begin: int) -> list[tuple[_Agent, int]]:
        """A flight's agents from ``begin`` on, each with the earliest time it can speak:
        its events, and its positions unless it is cancelled.
        """
        agents = [(self._events(f, begin), begin)]
        if f.cancel is None:
            agents.append((self._positions(f, begin), max(begin, f.out_keys[0][0])))
        return agents

    def _events(self, f: _Flight, begin: int) -> _Agent:
        """A flight's events from ``begin`` on, built when the first one is due."""
        yield from self._event_lines(f, begin)

    def _event_lines(self, f: _Flight, begin: int) -> list[_Item]:
        """A flight's events from ``begin`` on, in ``pitr`` order.

        A flight picked up mid-life (``begin`` after its filing) first re-announces its
        flightplan and, if a surface track is linked, that link, at ``begin``.
        """
        orig, dest = f.orig.code, f.dest.code
        fid = f.id
        events: list[_Event] = []

        def flightplan(access: str, explicit: bool) -> dict[str, Any]:
            msg: dict[str, Any] = {
                "type": "flightplan",
                "pitr": 0,
                "id": fid,
                "ident": f.ident,
                "orig": orig,
                "dest": dest,
                "aircrafttype": f.aircraft_type,
            }
            if explicit or access != "public":
                msg["access"] = access
            return msg

        def control(kind: str, **fields: str) -> dict[str, Any]:
            return {"type": kind, "pitr": 0, "id": fid, **fields}

        def area(kind: str, sid: str, facility: str, where: str) -> dict[str, Any]:
            return {
                "type": kind,
                "pitr": 0,
                "surface_id": sid,
                "facility": facility,
                "location": where,
            }

        plans = [(f.t_fp, False)]
        if f.t_amend is not None and (f.cancel is None or f.t_amend < f.cancel):
            plans.append((f.t_amend, False))
        plans.extend((t, True) for t, _ in f.changes)
        plans.sort()
        changes = dict(f.changes)
        access = f.access
        for t, explicit in plans:
            access = changes.get(t, access)
            events.append((t, CONTROLSTREAM, flightplan(access, explicit)))
        if f.cancel is not None:
            events.append((f.cancel, CONTROLSTREAM, control("cancellation")))
        else:
            out_sid, in_sid = f.out_sid, f.in_sid
            events += [
                (f.out_link, CONTROLSTREAM, control("power_on", surface_id=out_sid, facility=orig)),
                (f.t_off, CONTROLSTREAM, control("surface_offblock", surface_id=out_sid, facility=orig)),
                (f.t_dep, CONTROLSTREAM, control("departure")),
                (f.t_arrival_msg, CONTROLSTREAM, control("arrival")),
                (f.in_link, CONTROLSTREAM, control("power_on", surface_id=in_sid, facility=dest)),
                (f.t_in, CONTROLSTREAM, control("surface_onblock", surface_id=in_sid, facility=dest)),
                (f.t_poff, CONTROLSTREAM, control("power_off", surface_id=in_sid, facility=dest)),
            ]  # fmt: skip
            if f.deice:
                t_pad, t_pad_exit = f.out_keys[2][0], f.out_keys[3][0]
                events += [
                    (t_pad, SURFACESTREAM, area("location_entry", out_sid, orig, DEICING_PAD)),
                    (t_pad_exit, SURFACESTREAM, area("location_exit", out_sid, orig, DEICING_PAD)),
                ]  # fmt: skip
            if f.cargo:
                events += [
                    (f.t_off, SURFACESTREAM, area("location_exit", out_sid, orig, CARGO_RAMP)),
                    (f.t_in, SURFACESTREAM, area("location_entry", in_sid, dest, CARGO_RAMP)),
                ]  # fmt: skip
        events.sort(key=itemgetter(0))

        if begin > f.t_fp:
            events = self._resume(f, events, begin)
        lines: list[_Item] = []
        for t, feed, msg in events:
            msg["pitr"] = t
            lines.append((feed, t, _encode(msg)))
        return lines

    @staticmethod
    def _resume(f: _Flight, events: list[_Event], begin: int) -> list[_Event]:
        """The events from ``begin`` on, led by the current flightplan and surface link."""
        past = [e for e in events if e[0] < begin]
        snapshot = [next(e for e in reversed(past) if e[2]["type"] == "flightplan")]
        if f.cancel is None:
            for sid, link, first, last in (
                (f.out_sid, f.out_link, f.out_keys[0][0], f.t_dep),
                (f.in_sid, f.in_link, f.in_keys[0][0], f.t_poff),
            ):
                if link < begin and first < begin < last:
                    snapshot.append(
                        next(
                            e
                            for e in reversed(past)
                            if e[2]["type"] in LINK_EVENTS and e[2]["surface_id"] == sid
                        )
                    )
        return [(begin, feed, msg) for _, feed, msg in snapshot] + [
            e for e in events if e[0] >= begin
        ]

    def _positions(self, f: _Flight, begin: int) -> _Agent:
        """A flight's ground, airborne and ground positions from ``begin`` on."""
        yield from self._ground(f.out_sid, f.orig.code, f.out_keys, begin, f.t_dep, f.hexid)
        yield from self._airborne(f, max(begin, f.t_air_first))
        yield from self._ground(f.in_sid, f.dest.code, f.in_keys, begin, f.t_poff, f.hexid)

    def _ground(
        self, sid: str, facility: str, keys: list[_Key], t_from: int, t_to: int, hexid: str
    ) -> _Agent:
        """``ground_position``s along keyframes, every 2-4 s, from ``t_from`` until ``t_to``.

        The track starts at its first keyframe (or ``t_from`` if later) and holds still
        after its last one.
        """
        rand = self.rng.random
        lo, span = GROUND_INTERVAL[0], GROUND_INTERVAL[1] - GROUND_INTERVAL[0]
        head = (
            b'{"type":"ground_position","pitr":%%d,"surface_id":"%s","facility":"%s","clock":%%d,'
            % (
                sid.encode(),
                facility.encode(),
            )
        )
        tail = b',"hexid":"%s","air_ground":"G"}' % hexid.encode()
        moving = head + b'"lat":%.5f,"lon":%.5f,"gs":%d,"heading":%d' + tail
        speeds, headings = _segments(keys)
        heading = next((h for s, h in zip(speeds, headings, strict=True) if s), 0)
        t = max(t_from, keys[0][0]) + int(rand() * lo)
        # Each segment between keyframes, then standing still at the last one.
        for j, (ta, la, oa) in enumerate(keys):
            if j + 1 < len(keys):
                tb, lb, ob = keys[j + 1]
                gs = speeds[j]
            else:
                tb, lb, ob, gs = t_to, la, oa, 0
            tb = min(tb, t_to)
            if gs:
                heading = headings[j]
                t = yield from _drive(moving, t, (ta, la, oa), (tb, lb, ob), gs, heading, rand, lo, span)
            elif t < tb:
                still = head + b'"lat":%.5f,"lon":%.5f,"gs":0,"heading":%d' % (la, oa, heading)
                still += tail
                while t < tb:
                    yield SURFACESTREAM, t, still % (t, t - 100 - int(rand() * 1400))
                    t += lo + int(rand() * span)

    def _airborne(self, f: _Flight, t_from: int) -> _Agent:
        """Airborne ``position``s every 1-3 s from ``t_from`` until just before landing."""
        rand = self.rng.random
        lo, span = AIR_INTERVAL[0], AIR_INTERVAL[1] - AIR_INTERVAL[0]
        a, b = f.orig.hold, f.dest.exit
        t_dep, t_arr = f.t_dep, f.t_arr
        duration = t_arr - t_dep
        lat0, lon0 = a
        dlat, dlon = b[0] - a[0], b[1] - a[1]
        cruise_alt = f.cruise_alt
        cruise_gs = f.gs
        # Most aircraft are tracked by ADS-B, some by multilateration or radar.
        r = rand()
        update = b"A" if r < 0.85 else b"M" if r < 0.95 else b"Z"
        head = b'{"type":"position","pitr":%%d,"id":"%s","clock":%%d,"lat":%%.5f,"lon":%%.5f,' % (
            f.id.encode()
        )
        rest = b'"alt":%%d,"gs":%%d,"heading":%d,"ident":"%s","hexid":"%s","air_ground":"A",' % (
            int(bearing(a, b)),
            f.ident.encode(),
            f.hexid.encode(),
        )
        rest += b'"updateType":"%s"}'
        oceanic = f.orig.site.region != f.dest.site.region
        # The part after "lon" changes only while climbing or descending: keep the last one.
        last: tuple[int, bytes] = (-1, b"")
        tail = b""
        t = t_from
        t_last = f.t_air_last
        while t <= t_last:
            frac = (t - t_dep) / duration
            lon = lon0 + dlon * frac
            # Climb at 2,500 ft/min, descend at 1,800 ft/min.
            alt = (t - t_dep) // 24
            descent = (t_arr - t) // 33
            if descent < alt:
                alt = descent
            if alt > cruise_alt:
                alt = cruise_alt
            alt = alt // 25 * 25
            # Space-based ADS-B over the Atlantic.
            source = b"S" if oceanic and -55.0 < lon < -12.0 else update
            if (alt, source) != last:
                last = (alt, source)
                gs = cruise_gs if alt >= 12_000 else 150 + (cruise_gs - 150) * alt / 12_000
                tail = rest % (alt, gs, source)
            r = rand()
            # Usually 0.3-2.5 s from antenna to us; now and then much longer.
            latency = 300 + int(r * 2200) if r < 0.97 else 3000 + int(rand() * 9000)
            yield CONTROLSTREAM, t, head % (t, t - latency, lat0 + dlat * frac, lon) + tail
            t += lo + int(rand() * span)

    def _vehicle(self, ap: Airport, number: int) -> _Agent:
        """A ground vehicle driving between spots of its airport, forever."""
        rng = self.rng
        rand, uniform = rng.random, rng.uniform
        kind = VEHICLES[(number - 1) % len(VEHICLES)]
        sid = f"{ap.code}-V{number:04d}"
        code = ap.code
        head = (
            b'{"type":"vehicle_position","pitr":%%d,"surface_id":"%s","facility":"%s","clock":%%d,'
            % (
                sid.encode(),
                code.encode(),
            )
        )
        tail = b',"callsign":"%s%d"}' % (kind.encode(), number)
        tail = tail.replace(b"%", b"%%")
        moving = head + b'"lat":%.5f,"lon":%.5f,"gs":%d,"heading":%d' + tail
        lo, span = VEHICLE_INTERVAL[0], VEHICLE_INTERVAL[1] - VEHICLE_INTERVAL[0]
        k = 1.0 / math.cos(math.radians(ap.lat))
        here: Point = (ap.lat + uniform(-0.01, 0.01), ap.lon + uniform(-0.012, 0.012) * k)
        t = self.start + int(rand() * lo)
        while True:
            r = rand()
            where = DEICING_PAD if r < 0.08 else CARGO_RAMP if r < 0.16 else None
            if where is None:
                there = (ap.lat + uniform(-0.01, 0.01), ap.lon + uniform(-0.012, 0.012) * k)
            else:
                spot = ap.pad if where == DEICING_PAD else ap.cargo
                there = (spot[0] + uniform(-5e-4, 5e-4), spot[1] + uniform(-5e-4, 5e-4))
            speed = uniform(8.0, 25.0)
            arrive = t + max(5 * SECOND, int(local_nm(here, there) / speed * 3_600_000))
            leave = arrive + self._draw(20 * SECOND, 300 * SECOND)
            course = int(bearing(here, there))
            # Drive there...
            lat0, lon0 = here
            t = yield from _drive(
                moving, t, (t, lat0, lon0), (arrive, *there), int(speed), course, rand, lo, span
            )
            if where is not None:
                yield SURFACESTREAM, arrive, self._area("location_entry", arrive, sid, code, where)
            # ... and wait there.
            still = head + b'"lat":%.5f,"lon":%.5f,"gs":0,"heading":%d' % (*there, course) + tail
            while t < leave:
                yield SURFACESTREAM, t, still % (t, t - 100 - int(rand() * 1400))
                t += lo + int(rand() * span)
            if where is not None:
                yield SURFACESTREAM, leave, self._area("location_exit", leave, sid, code, where)
            here = there

    @staticmethod
    def _area(kind: str, pitr: int, sid: str, facility: str, where: str) -> bytes:
        msg = {
            "type": kind,
            "pitr": pitr,
            "surface_id": sid,
            "facility": facility,
            "location": where,
        }
        return _encode(msg)


def _drive(
    moving: bytes,
    t: int,
    start: tuple[int, float, float],
    end: tuple[int, float, float],
    gs: float,
    heading: int,
    rand: Callable[[], float],
    lo: int,
    span: int,
) -> Generator[tuple[str, int, bytes], None, int]:
    """Positions (``moving`` filled with pitr, clock, lat, lon, gs, heading) on the
    straight line from ``start`` to ``end`` (each ``(pitr, lat, lon)``), from ``t`` until
    the end's pitr, one every ``lo`` to ``lo + span`` ms; returns the pitr after the last."""
    ta, la, oa = start
    tb, lb, ob = end
    dlat, dlon, dt = lb - la, ob - oa, tb - ta
    while t < tb:
        frac = (t - ta) / dt
        clock = t - 100 - int(rand() * 1400)
        yield SURFACESTREAM, t, moving % (t, clock, la + dlat * frac, oa + dlon * frac, gs, heading)
        t += lo + int(rand() * span)
    return t


def _segments(keys: list[_Key]) -> tuple[list[int], list[int]]:
    """Ground speed (knots) and heading (degrees) of each segment between keyframes."""
    speeds: list[int] = []
    headings: list[int] = []
    for (ta, la, oa), (tb, lb, ob) in pairwise(keys):
        hours = (tb - ta) / 3_600_000
        dist = local_nm((la, oa), (lb, ob))
        moving = hours > 0 and dist > 0.01
        speeds.append(max(1, round(dist / hours)) if moving else 0)
        headings.append(int(bearing((la, oa), (lb, ob))) if moving else 0)
    return speeds, headings


class TrafficArgs(TypedDict, total=False):
    """The keywords that choose a simulation, taken by `iter_traffic`, `simulate`,
    `write_simulation`, `write_streaming` and `unifeed.sim.adsb`; `Scenario` holds their
    defaults and meaning."""

    seed: int
    minutes: float
    airports: int
    rate: float
    start_ms: int


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One simulation's arguments, checked when made (`ValueError`).

    ``seed`` picks the draws; ``minutes`` of feed time from ``start_ms`` (epoch ms);
    ``airports`` (2 to `MAX_AIRPORTS`); ``rate``, the target controlstream messages per
    second per airport (surfacestream gets about as many).
    """

    seed: int = 1
    minutes: float = 10.0
    airports: int = 3
    rate: float = 200.0
    start_ms: int = 1_700_000_000_000

    @property
    def end_ms(self) -> int:
        """The pitr of the last keepalive of both feeds."""
        return self.start_ms + round(self.minutes * MINUTE)

    def __post_init__(self) -> None:
        minutes, airports, rate, start_ms = self.minutes, self.airports, self.rate, self.start_ms
        if not (minutes > 0 and math.isfinite(minutes)):
            raise ValueError(f"minutes must be a positive number, got {minutes}")
        if not 2 <= airports <= MAX_AIRPORTS:
            raise ValueError(f"airports must be between 2 and {MAX_AIRPORTS}, got {airports}")
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of messages per second, got {rate}")
        if start_ms < 0:
            raise ValueError(f"start_ms must be >= 0 (epoch milliseconds), got {start_ms}")


def iter_traffic(**args: Unpack[TrafficArgs]) -> Iterator[tuple[str, int, bytes]]:
    """Yield ``(feed, pitr, line)`` for both feeds merged in ``pitr`` order, lazily.

    Keywords: `TrafficArgs` (defaults in `Scenario`). ``line`` has no newline. Memory
    depends on ``rate`` and ``airports`` (the traffic in the air at once), not on
    ``minutes``. Arguments are checked at once (`ValueError`), before the first message
    is asked for.

    >>> feed, pitr, line = next(iter_traffic(seed=1, minutes=1, airports=2))
    >>> feed, pitr >= 1_700_000_000_000, line.startswith(b'{"type":')
    ('controlstream', True, True)
    """
    return iter(_Traffic(Scenario(**args)))


def simulate(**args: Unpack[TrafficArgs]) -> Simulation:
    """Run `iter_traffic` to the end and keep both feeds in memory.

    >>> sim = simulate(minutes=0.5, airports=2, rate=20)
    >>> sorted(sim.counts)
    ['controlstream', 'surfacestream']
    >>> len(sim.controlstream) == sum(sim.counts["controlstream"].values())
    True
    """
    scenario = Scenario(**args)
    control: list[bytes] = []
    surface: list[bytes] = []
    for feed, _, line in _Traffic(scenario):
        (control if feed == CONTROLSTREAM else surface).append(line)
    return Simulation(
        start_ms=scenario.start_ms,
        end_ms=scenario.end_ms,
        controlstream=control,
        surfacestream=surface,
        counts={CONTROLSTREAM: _count_types(control), SURFACESTREAM: _count_types(surface)},
    )


def _message_type(line: bytes) -> str:
    # Every line the simulator writes starts with {"type":"
    return line[9 : line.index(b'"', 9)].decode()


def _count_types(lines: list[bytes]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        kind = _message_type(line)
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def write_simulation(out_dir: Path, **args: Unpack[TrafficArgs]) -> Simulation:
    """`simulate`, then write ``controlstream.jsonl`` and ``surfacestream.jsonl`` in ``out_dir``.

    The directory is created if needed; existing files are replaced.
    """
    sim = simulate(**args)
    out_dir.mkdir(parents=True, exist_ok=True)
    for feed, lines in ((CONTROLSTREAM, sim.controlstream), (SURFACESTREAM, sim.surfacestream)):
        with (out_dir / f"{feed}.jsonl").open("wb") as out:
            out.writelines(line + b"\n" for line in lines)
    return sim


# -- command line -----------------------------------------------------------


def write_streaming(out_dir: Path, **args: Unpack[TrafficArgs]) -> dict[str, tuple[int, int]]:
    """Write both files with memory independent of duration; ``{feed: (lines, bytes)}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {CONTROLSTREAM: [0, 0], SURFACESTREAM: [0, 0]}
    batches: dict[str, list[bytes]] = {CONTROLSTREAM: [], SURFACESTREAM: []}
    with (
        (out_dir / f"{CONTROLSTREAM}.jsonl").open("wb") as control,
        (out_dir / f"{SURFACESTREAM}.jsonl").open("wb") as surface,
    ):
        files = {CONTROLSTREAM: control, SURFACESTREAM: surface}

        def flush(feed: str) -> None:
            batch = batches[feed]
            if batch:
                data = b"\n".join(batch) + b"\n"
                files[feed].write(data)
                stats[feed][0] += len(batch)
                stats[feed][1] += len(data)
                batch.clear()

        for feed, _, line in iter_traffic(**args):
            batch = batches[feed]
            batch.append(line)
            if len(batch) >= 10_000:
                flush(feed)
        flush(CONTROLSTREAM)
        flush(SURFACESTREAM)
    return {feed: (n, size) for feed, (n, size) in stats.items()}
