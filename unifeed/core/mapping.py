"""Mapping derivation: controlstream surface events → mappingstream (README, "What it is").

Pure: feed it controlstream records in order, it returns the mappingstream lines they
cause. State (each flight's access level, the active links) is rebuilt after a restart
by replaying controlstream from ``pitr - lookback``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, assert_never

import msgspec

from unifeed.core.records import (
    Access,
    Arrival,
    Cancellation,
    ControlRecord,
    Departure,
    FlightPlan,
    Ident,
    Keepalive,
    Mapping,
    Position,
    PowerOff,
    PowerOn,
    SurfaceOffblock,
    SurfaceOnblock,
)

_encode: Final = msgspec.json.Encoder().encode

#: A flight unseen for this long (pitr time) is forgotten: two days covers any flight.
DEFAULT_FLIGHT_TTL_MS: Final = 48 * 3600 * 1000
#: A link with no link event for this long is treated as stale and dropped.
DEFAULT_LINK_TTL_MS: Final = 24 * 3600 * 1000
_PRUNE_EVERY_MS: Final = 60_000


MappingOut = Mapping | Keepalive


class DeriverState(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """Everything a `MappingDeriver` knows, as of one point of its controlstream.

    Restoring it and going on from that point gives exactly the output of a deriver that
    never stopped (a restart needs it whatever ``--lookback``). ``floor`` is the highest
    pitr of the messages before that point (the intake's order floor).
    """

    floor: int
    last_keepalive: int
    next_prune: int
    #: (flight id, access, pitr last seen)
    access: list[tuple[Ident, Access, int]]
    #: (surface_id, flight id, facility, pitr of the link event, access it was given)
    links: list[tuple[Ident, Ident, str, int, Access]]
    #: (flight id, its surface tracks in link order)
    tracks: list[tuple[Ident, list[Ident]]]


_state_encoder: Final = msgspec.json.Encoder()
_state_decoder: Final = msgspec.json.Decoder(DeriverState)


def encode_state(state: DeriverState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(raw: bytes) -> DeriverState:
    """Raises ``msgspec.DecodeError`` (or ``ValidationError``) on a bad value."""
    return _state_decoder.decode(raw)


def encode_mapping(m: MappingOut) -> bytes:
    """The mappingstream line of a mapping or keepalive (field order is fixed)."""
    return _encode(m)


class DeriverStats(msgspec.Struct, frozen=True, gc=False):
    links: int
    unlinks: int
    access_changes: int
    keepalives: int
    active_links: int
    known_flights: int
    expired_links: int
    unmatched_unlinks: int


class MappingDeriver:
    """Turns controlstream records into mappingstream records (`Mapping` or `Keepalive`).

    * ``power_on``, ``surface_offblock``, ``surface_onblock`` link ``surface_id`` to ``id``,
      with the access level of that flight's latest ``flightplan`` (``public`` if none);
    * ``power_off`` unlinks it (when it is linked to that flight);
    * a ``flightplan`` that changes the access of a linked flight emits a fresh ``link``
      for each of its surface tracks at that ``pitr``;
    * a ``keepalive`` is written with the first controlstream message of every
      ``keepalive_interval_ms`` of ``pitr`` (so at least once a second of controlstream
      time), and for every controlstream keepalive.

    >>> d = MappingDeriver()
    >>> from unifeed.core.records import PowerOn
    >>> out = d.process(PowerOn(pitr=5, id="F1", surface_id="S1", facility="KSFO"))
    >>> for m in out: print(encode_mapping(m).decode())
    {"type":"mapping","pitr":5,"surface_id":"S1","id":"F1","action":"link","access":"public","facility":"KSFO"}
    {"type":"keepalive","pitr":5}
    """

    def __init__(
        self,
        *,
        keepalive_interval_ms: int = 1000,
        flight_ttl_ms: int = DEFAULT_FLIGHT_TTL_MS,
        link_ttl_ms: int = DEFAULT_LINK_TTL_MS,
    ) -> None:
        if keepalive_interval_ms < 1:
            raise ValueError("keepalive_interval_ms must be >= 1")
        self._interval = keepalive_interval_ms
        self._flight_ttl = flight_ttl_ms
        self._link_ttl = link_ttl_ms
        # flight id -> (access, last pitr seen)
        self._access: dict[Ident, tuple[Access, int]] = {}
        # surface_id -> (flight id, facility, pitr of the link event, access given)
        self._links: dict[Ident, tuple[Ident, str, int, Access]] = {}
        # flight id -> its linked surface tracks, in link order
        self._tracks: dict[Ident, dict[Ident, None]] = {}
        self._last_keepalive = -(2**63)
        self._next_prune = -(2**63)
        self._n_links = 0
        self._n_unlinks = 0
        self._n_access = 0
        self._n_keepalives = 0
        self._n_expired = 0
        self._n_unmatched = 0

    def access_of(self, flight: Ident, pitr: int | None = None) -> Access:
        """The flight's access level (``public`` when unknown or forgotten at ``pitr``)."""
        entry = self._access.get(flight)
        if entry is None or (pitr is not None and pitr - entry[1] > self._keep_ms(entry[0])):
            return "public"
        return entry[0]

    def _keep_ms(self, access: str) -> int:
        # A restricted or blocked flight is remembered seven times longer: forgetting it
        # is what would make its next link weaker than it should be.
        return self._flight_ttl if access == "public" else 7 * self._flight_ttl

    def snapshot(self, floor: int) -> DeriverState:
        """The deriver's state now (``floor``: the intake's, see `DeriverState`).

        Runtime complexity: O(flights + links).
        """
        return DeriverState(
            floor=floor,
            last_keepalive=self._last_keepalive,
            next_prune=self._next_prune,
            access=[(f, a, t) for f, (a, t) in self._access.items()],
            links=[(s, *entry) for s, entry in self._links.items()],
            tracks=[(f, list(t)) for f, t in self._tracks.items()],
        )

    @classmethod
    def restore(cls, state: DeriverState, **options: int) -> MappingDeriver:
        """A deriver that goes on exactly where the one `snapshot` was taken of stood."""
        d = cls(**options)
        d._last_keepalive = state.last_keepalive
        d._next_prune = state.next_prune
        d._access = {f: (a, t) for f, a, t in state.access}
        d._links = {s: (f, fac, t, a) for s, f, fac, t, a in state.links}
        d._tracks = {f: dict.fromkeys(t) for f, t in state.tracks}
        return d

    def _linked(self, surface_id: Ident, pitr: int) -> tuple[Ident, str, int, Access] | None:
        # Staleness is judged from pitr alone, so pruning (which only frees memory) never
        # changes the output, whenever it runs.
        linked = self._links.get(surface_id)
        if linked is None or pitr - linked[2] > self._link_ttl:
            return None
        return linked

    def _mapping(
        self, pitr: int, surface_id: Ident, flight: Ident, action: str, facility: str
    ) -> Mapping:
        return Mapping(
            pitr=pitr,
            surface_id=surface_id,
            id=flight,
            action=action,  # type: ignore[arg-type]
            access=self.access_of(flight, pitr),
            facility=facility,
        )

    def _link(self, pitr: int, flight: Ident, surface_id: Ident, facility: str) -> Mapping:
        old = self._links.get(surface_id)
        if old is not None and old[0] != flight:
            self._tracks.get(old[0], {}).pop(surface_id, None)
        self._tracks.setdefault(flight, {})[surface_id] = None
        self._touch(flight, pitr)
        self._n_links += 1
        m = self._mapping(pitr, surface_id, flight, "link", facility)
        self._links[surface_id] = (flight, facility, pitr, m.access)
        return m

    def _touch(self, flight: Ident, pitr: int) -> None:
        self._access[flight] = (self.access_of(flight, pitr), pitr)

    def process_many(self, records: Iterable[ControlRecord]) -> list[MappingOut]:
        """`process` over a batch, in order; positions that cause nothing are skipped fast.

        Runtime complexity: O(len(records)).
        """
        out: list[MappingOut] = []
        process = self.process
        interval = self._interval
        # A position only matters for the keepalive grid and the pruning clock: below
        # `quiet` (the next grid point and the next prune, whichever comes first) it
        # changes nothing.
        quiet = min((self._last_keepalive // interval + 1) * interval, self._next_prune)
        for rec in records:
            if type(rec) is Position and rec.pitr < quiet:
                continue
            out.extend(process(rec))
            quiet = min((self._last_keepalive // interval + 1) * interval, self._next_prune)
        return out

    def process(self, rec: ControlRecord) -> list[MappingOut]:
        """The mappingstream records caused by one controlstream record, in order.

        Runtime complexity: O(1), or O(tracks of the flight) on an access change.
        """
        out: list[MappingOut] = []
        pitr = rec.pitr
        if pitr >= self._next_prune:
            self._prune(pitr)
        match rec:
            case Position() | Departure() | Arrival() | Cancellation():
                pass
            case FlightPlan(id=flight, access=access):
                old_access = self.access_of(flight, pitr)
                self._access[flight] = (access, pitr)
                if access != old_access:
                    tracks = [s for s in self._tracks.get(flight, ()) if self._linked(s, pitr)]
                    if tracks:
                        self._n_access += 1
                    for surface_id in tracks:
                        facility = self._links[surface_id][1]
                        out.append(self._link(pitr, flight, surface_id, facility))
            case PowerOn() | SurfaceOffblock() | SurfaceOnblock():
                out.append(self._link(pitr, rec.id, rec.surface_id, rec.facility))
            case PowerOff(id=flight, surface_id=surface_id, facility=facility):
                linked = self._linked(surface_id, pitr)
                if linked is not None and linked[0] == flight:
                    del self._links[surface_id]
                    self._tracks.get(flight, {}).pop(surface_id, None)
                    self._n_unlinks += 1
                    out.append(self._mapping(pitr, surface_id, flight, "unlink", facility))
                else:
                    self._n_unmatched += 1
            case Keepalive():
                self._last_keepalive = pitr
                self._n_keepalives += 1
                out.append(Keepalive(pitr=pitr))
                return out
            case _:
                assert_never(rec)
        # Keepalives fall on a fixed grid of pitr (the first message of each interval), so
        # a deriver rebuilt by replaying from any earlier point writes the same ones.
        if pitr // self._interval != self._last_keepalive // self._interval:
            self._last_keepalive = pitr
            self._n_keepalives += 1
            out.append(Keepalive(pitr=pitr))
        return out

    def _prune(self, pitr: int) -> None:
        """Forget flights and links nobody has mentioned for their TTL (pitr time)."""
        self._next_prune = pitr + _PRUNE_EVERY_MS
        link_cut = pitr - self._link_ttl
        for surface_id in [s for s, (_, _, t, _) in self._links.items() if t < link_cut]:
            flight = self._links.pop(surface_id)[0]
            self._tracks.get(flight, {}).pop(surface_id, None)
            self._n_expired += 1
        for flight in [f for f, (a, t) in self._access.items() if pitr - t > self._keep_ms(a)]:
            del self._access[flight]
            if not self._tracks.get(flight):
                self._tracks.pop(flight, None)

    def stats(self) -> DeriverStats:
        return DeriverStats(
            links=self._n_links,
            unlinks=self._n_unlinks,
            access_changes=self._n_access,
            keepalives=self._n_keepalives,
            active_links=len(self._links),
            known_flights=len(self._access),
            expired_links=self._n_expired,
            unmatched_unlinks=self._n_unmatched,
        )
