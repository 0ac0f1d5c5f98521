"""Annotation: surface positions gain the flight ID and access level of their flight.

Pure. The link table is fed mappingstream records in ``pitr`` order, interleaved with
the surfacestream by the combining rule (mappings win ties, so a link at ``t`` applies
to a position at ``t``). Output bytes are the input bytes with ``"id"`` and ``"access"``
spliced in before the closing brace; only a message that already carries one of those
keys is decoded and re-encoded in full.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import msgspec
from msgspec import UNSET

from unifeed.core.combine import Emitted
from unifeed.core.records import (
    ACCESS_LEVELS,
    ACCESS_RANK,
    MAPPINGSTREAM,
    Access,
    GroundPosition,
    Ident,
    Mapping,
)

_encode: Final = msgspec.json.Encoder().encode
_decode_object: Final = msgspec.json.Decoder(dict[str, Any]).decode

#: A link with no link event for this long (pitr time) expires. The mapping deriver ages
#: links the same way, so both sides agree on which links are alive: an access change or
#: an unlink is never lost on a link one side still uses.
DEFAULT_LINK_TTL_MS: Final = 24 * 3600 * 1000
#: How far back (pitr time, behind the latest mapping applied) the link history reaches: a
#: surface message that arrives after later mappings were applied (a *late* message) is
#: annotated from the history as of its own pitr. One hour covers any live delay; a
#: message later than that gets no guess (see `LateBeyondHistory`).
DEFAULT_LATE_WINDOW_MS: Final = 3600 * 1000
_PRUNE_EVERY_MS: Final = 60_000
_ACCESS_JSON: Final = {a: b'"%s"' % a.encode() for a in ACCESS_LEVELS}


class AnnotatorStats(msgspec.Struct, frozen=True, gc=False):
    annotated: int
    unmapped: int
    passed: int
    active_links: int
    expired_links: int
    unmatched_unlinks: int
    reencoded: int
    late: int = 0
    too_late: int = 0


class LateBeyondHistory(Exception):
    """A surface message's pitr lies before what the link history still holds: which
    flight its track belonged to then is no longer known. The caller dead-letters it
    (a guess could show a restricted flight's position to the public).

    ``horizon``: the oldest pitr the history reaches; ``applied``: the pitr of the latest
    mapping applied when the message came.
    """

    def __init__(self, pitr: int, horizon: int, applied: int) -> None:
        super().__init__(pitr, horizon, applied)
        self.pitr = pitr
        self.horizon = horizon
        self.applied = applied


def _stronger(a: str, b: str) -> str:
    return a if ACCESS_RANK[a] >= ACCESS_RANK[b] else b


class Annotator:
    """The link table and the byte splice.

    >>> a = Annotator()
    >>> a.apply(Mapping(pitr=1, surface_id="S1", id="F1", action="link",
    ...                 access="restricted", facility="KSFO"))
    >>> a.annotate_ground(b'{"type":"ground_position","pitr":2,"surface_id":"S1"}', "S1", 2)
    b'{"type":"ground_position","pitr":2,"surface_id":"S1","id":"F1","access":"restricted"}'
    """

    def __init__(
        self,
        *,
        link_ttl_ms: int = DEFAULT_LINK_TTL_MS,
        late_window_ms: int = DEFAULT_LATE_WINDOW_MS,
    ) -> None:
        if link_ttl_ms < 1:
            raise ValueError("link_ttl_ms must be >= 1")
        if late_window_ms < 0:
            raise ValueError("late_window_ms must be >= 0")
        self._ttl = link_ttl_ms
        self._late_window = late_window_ms
        # surface_id -> (splice suffix bytes, flight id, access, pitr of the link event)
        self._links: dict[Ident, list[Any]] = {}
        #: pitr of the latest mapping applied: a surface message below it is late.
        self.applied = -(2**63)
        # surface_id -> [(pitr of a change, the entry before it (None: unlinked))], in pitr
        # order: undoing the changes after a pitr gives the table as of that pitr. Changes
        # at or before `_horizon` are dropped, so a lookup is exact for pitr >= _horizon.
        self._history: dict[Ident, list[tuple[int, list[Any] | None]]] = {}
        self._horizon = -(2**63)
        # flight id -> (latest access a mapping gave it, pitr): "now" for late messages.
        self._flight_access: dict[Ident, tuple[str, int]] = {}
        self._next_prune = -(2**63)
        self.late = 0
        self.too_late = 0
        self.annotated = 0
        self.unmapped = 0
        self.passed = 0
        self.expired = 0
        self.unmatched_unlinks = 0
        self.reencoded = 0

    def apply(self, m: Mapping) -> None:
        """Apply one mapping: a link (re)binds the track, an unlink ends it at once."""
        if m.pitr >= self._next_prune:
            self._prune(m.pitr)
        if m.pitr > self.applied:
            self.applied = m.pitr
        self._flight_access[m.id] = (m.access, m.pitr)
        linked = self._links.get(m.surface_id)
        if m.action == "link":
            splice = b',"id":' + _encode(m.id) + b',"access":' + _ACCESS_JSON[m.access] + b"}"
            self._remember(m.surface_id, m.pitr, linked)
            self._links[m.surface_id] = [splice, m.id, m.access, m.pitr]
            return
        if linked is not None and linked[1] == m.id and m.pitr - linked[3] <= self._ttl:
            self._remember(m.surface_id, m.pitr, linked)
            del self._links[m.surface_id]
        else:
            self.unmatched_unlinks += 1

    def seed(self, links: Sequence[tuple[Ident, Ident, str, int, str]], pitr: int) -> None:
        """Start from the links a mapping deriver held at ``pitr`` (a restart from saved
        state): ``(surface_id, flight, facility, pitr of the link event, access)``. The
        history starts there: a late message from before ``pitr`` is a dead letter."""
        for surface_id, flight, _, linked_at, access in links:
            splice = b',"id":' + _encode(flight) + b',"access":' + _ACCESS_JSON[access] + b"}"
            self._links[surface_id] = [splice, flight, access, linked_at]
            self._flight_access[flight] = (access, linked_at)
        self.applied = max(self.applied, pitr)
        self._horizon = max(self._horizon, pitr)

    def _remember(self, surface_id: Ident, pitr: int, before: list[Any] | None) -> None:
        """Record that the track's entry changes at ``pitr`` (it was ``before`` until then)."""
        if self._late_window:
            hist = self._history.get(surface_id)
            if hist is None:
                self._history[surface_id] = [(pitr, before)]
            else:
                hist.append((pitr, before))

    def _dropped(self, surface_id: Ident, entry: list[Any]) -> None:
        """An expired entry leaves the table: in the history it ends where it expired."""
        self._remember(surface_id, entry[3] + self._ttl + 1, entry)

    def link_at(self, surface_id: Ident, pitr: int) -> list[Any] | None:
        """The track's table entry as of ``pitr`` (None: unlinked or expired then).

        Raises `LateBeyondHistory` when ``pitr`` is older than the history holds.
        Runtime complexity: O(changes of the track after ``pitr``).
        """
        if not self._late_window:
            raise LateBeyondHistory(pitr, self.applied, self.applied)
        entry = self._links.get(surface_id)
        hist = self._history.get(surface_id)
        if hist:
            for changed, before in reversed(hist):
                if changed <= pitr:
                    break
                entry = before
        if pitr < self._horizon or (entry is not None and entry[3] > pitr):
            # An entry newer than pitr with no change recorded: the history does not reach.
            raise LateBeyondHistory(pitr, self._horizon, self.applied)
        if entry is not None and pitr - entry[3] > self._ttl:
            return None
        return entry

    def annotate_late(self, raw: bytes, surface_id: Ident, pitr: int) -> bytes:
        """A late ``ground_position``'s output bytes: the link as of its own pitr, with the
        stronger of its flight's access then and the latest access known for that flight
        (a late message never shows a flight weaker than it is now).

        Raises `LateBeyondHistory` when the history does not reach back to ``pitr``.
        """
        try:
            linked = self.link_at(surface_id, pitr)
        except LateBeyondHistory:
            self.too_late += 1
            raise
        self.late += 1
        if linked is None:
            self.unmapped += 1
            return raw
        flight = linked[1]
        access = linked[2]
        latest = self._flight_access.get(flight)
        if latest is not None:
            access = _stronger(access, latest[0])
        if access != linked[2]:
            splice = b',"id":' + _encode(flight) + b',"access":' + _ACCESS_JSON[access] + b"}"
            linked = [splice, flight, access, linked[3]]
        return self._splice(raw, linked)

    def link_of(self, surface_id: Ident) -> tuple[Ident, str] | None:
        """The (flight id, access) a track is linked to now, or None."""
        linked = self._links.get(surface_id)
        return None if linked is None else (linked[1], linked[2])

    def links(self) -> list[tuple[Ident, Ident, str, int, Access]]:
        """The links held now, in the form `seed` takes: ``(surface_id, flight, facility
        (not kept: ""), pitr of the link event, access)``."""
        return [(s, e[1], "", e[3], e[2]) for s, e in self._links.items()]

    def annotate_ground(self, raw: bytes, surface_id: Ident, pitr: int) -> bytes:
        """A ``ground_position``'s output bytes. Runtime complexity: O(len(raw))."""
        if pitr < self.applied:
            return self.annotate_late(raw, surface_id, pitr)
        linked = self._links.get(surface_id)
        if linked is None or pitr - linked[3] > self._ttl:
            if linked is not None:
                # Expiry is judged at use, from pitr alone, so it is the same live,
                # in catch-up and after a restart; pruning only frees the memory.
                del self._links[surface_id]
                self._dropped(surface_id, linked)
                self.expired += 1
            self.unmapped += 1
            return raw
        return self._splice(raw, linked)

    def annotate_merged(
        self, entries: Iterable[Emitted]
    ) -> tuple[list[Emitted], list[tuple[bytes, LateBeyondHistory]]]:
        """Apply the mappings and annotate the surface messages of a run of the combining
        rule over (mappingstream, surfacestream), in its order.

        A mapping is an `Emitted` of `MAPPINGSTREAM` holding a `Mapping`; a surface message
        is an `Emitted` holding its raw bytes, with its decoded record as ``rec``. Returns
        the surface messages as output (an entry that is not a ``ground_position`` goes on
        as it is; an annotated one holds its output bytes as ``item``) and the late messages
        the link history does not reach, with why (they are not output).

        Each message gets the bytes `annotate_ground` gives it. The common case (linked,
        in time, no ``id``/``access`` of its own, ending in ``}``) is spliced here;
        everything else takes `annotate_ground`. Runtime complexity: O(len(entries)) for
        in-time messages.
        """
        out: list[Emitted] = []
        too_late: list[tuple[bytes, LateBeyondHistory]] = []
        append = out.append
        apply = self.apply
        annotate = self.annotate_ground
        links = self._links
        ttl = self._ttl
        applied = self.applied
        passed = 0
        annotated = 0
        for e in entries:
            if e.feed == MAPPINGSTREAM:
                apply(e.item)
                applied = self.applied
                continue
            rec = e.rec  # type: ignore[attr-defined]  # a surface entry carries its record
            if type(rec) is GroundPosition:
                raw = e.item
                linked = links.get(rec.surface_id)
                if (
                    linked is not None
                    and e.pitr >= applied
                    and e.pitr - linked[3] <= ttl
                    and rec.given_id is UNSET
                    and rec.given_access is UNSET
                    and raw[-1:] == b"}"
                ):
                    annotated += 1
                    # The entry's label goes on: surfacestream, or one of its partitions.
                    append(Emitted(e.feed, e.pitr, raw[:-1] + linked[0]))
                else:
                    try:
                        out_raw = annotate(raw, rec.surface_id, e.pitr)
                    except LateBeyondHistory as late:
                        too_late.append((raw, late))
                        continue
                    append(e if out_raw is raw else Emitted(e.feed, e.pitr, out_raw))
            else:
                # Unchanged: the entry itself goes on, with its label.
                passed += 1
                append(e)
        self.passed += passed
        self.annotated += annotated
        return out, too_late

    def _splice(self, raw: bytes, linked: list[Any]) -> bytes:
        self.annotated += 1
        body = raw if raw[-1:] == b"}" else raw.rstrip()
        # `find`, not `in`: CPython 3.11's `bytes in bytes` first tries the needle as an
        # integer and builds (then drops) a TypeError every time; `find` does not.
        if body.find(b'"id"') >= 0 or body.find(b'"access"') >= 0 or body[-1:] != b"}":
            # Rare: the bytes name an id or access somewhere, or end oddly: decode to see.
            obj = _decode_object(raw)
            if "id" not in obj and "access" not in obj and body[-1:] == b"}":
                # Only inside a value or a nested object: the splice is exact.
                spliced: bytes = body[:-1] + linked[0]
                return spliced
            # The message carries its own id or access: overwrite them (re-encoded).
            self.reencoded += 1
            obj["id"] = linked[1]
            obj["access"] = linked[2]
            return _encode(obj)
        splice: bytes = linked[0]
        return body[:-1] + splice

    def pass_through(self) -> None:
        """Count a surface message that never gets a flight ID (vehicles, locations)."""
        self.passed += 1

    def _prune(self, pitr: int) -> None:
        self._next_prune = pitr + _PRUNE_EVERY_MS
        cut = pitr - self._ttl
        # Only links that every later use would find expired: freeing them changes nothing.
        stale = [s for s, entry in self._links.items() if entry[3] < cut]
        for surface_id in stale:
            self._dropped(surface_id, self._links.pop(surface_id))
        self.expired += len(stale)
        for flight in [f for f, (_, t) in self._flight_access.items() if t < cut]:
            del self._flight_access[flight]
        # The history keeps the changes a late message may still need: those after
        # `applied - late window`. Older ones are dropped; lookups before the horizon fail.
        horizon = self.applied - self._late_window
        if horizon > self._horizon:
            self._horizon = horizon
            history = self._history
            for surface_id in list(history):
                hist = history[surface_id]
                if hist[-1][0] <= horizon:
                    del history[surface_id]
                elif hist[0][0] <= horizon:
                    history[surface_id] = [c for c in hist if c[0] > horizon]

    def expire(self, pitr: int) -> None:
        """Drop links unused for the TTL as of ``pitr`` (also done as mappings arrive)."""
        self._prune(pitr)

    def stats(self) -> AnnotatorStats:
        return AnnotatorStats(
            annotated=self.annotated,
            unmapped=self.unmapped,
            passed=self.passed,
            active_links=len(self._links),
            expired_links=self.expired,
            unmatched_unlinks=self.unmatched_unlinks,
            reencoded=self.reencoded,
            late=self.late,
            too_late=self.too_late,
        )
