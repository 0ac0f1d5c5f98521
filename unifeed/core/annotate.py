"""Annotation: surface positions gain the flight ID and access level of their flight.

Pure. The link table is fed mappingstream records in ``pitr`` order, interleaved with
the surfacestream by the combining rule (mappings win ties, so a link at ``t`` applies
to a position at ``t``). Output bytes are the input bytes with ``"id"`` and ``"access"``
spliced in before the closing brace; only a message that already carries one of those
keys is decoded and re-encoded in full.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec import UNSET

from unifeed.core.records import ACCESS_LEVELS, GroundPosition, Ident, Mapping

_encode: Final = msgspec.json.Encoder().encode
_decode_object: Final = msgspec.json.Decoder(dict[str, Any]).decode

#: A link with no link event for this long (pitr time) expires. The mapping deriver ages
#: links the same way, so both sides agree on which links are alive: an access change or
#: an unlink is never lost on a link one side still uses.
DEFAULT_LINK_TTL_MS: Final = 24 * 3600 * 1000
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


class Annotator:
    """The link table and the byte splice.

    >>> a = Annotator()
    >>> a.apply(Mapping(pitr=1, surface_id="S1", id="F1", action="link",
    ...                 access="restricted", facility="KSFO"))
    >>> a.annotate_ground(b'{"type":"ground_position","pitr":2,"surface_id":"S1"}', "S1", 2)
    b'{"type":"ground_position","pitr":2,"surface_id":"S1","id":"F1","access":"restricted"}'
    """

    def __init__(self, *, link_ttl_ms: int = DEFAULT_LINK_TTL_MS) -> None:
        if link_ttl_ms < 1:
            raise ValueError("link_ttl_ms must be >= 1")
        self._ttl = link_ttl_ms
        # surface_id -> (splice suffix bytes, flight id, access, pitr of the link event)
        self._links: dict[Ident, list[Any]] = {}
        self._next_prune = -(2**63)
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
        if m.action == "link":
            splice = b',"id":' + _encode(m.id) + b',"access":' + _ACCESS_JSON[m.access] + b"}"
            self._links[m.surface_id] = [splice, m.id, m.access, m.pitr]
            return
        linked = self._links.get(m.surface_id)
        if linked is not None and linked[1] == m.id and m.pitr - linked[3] <= self._ttl:
            del self._links[m.surface_id]
        else:
            self.unmatched_unlinks += 1

    def link_of(self, surface_id: Ident) -> tuple[Ident, str] | None:
        """The (flight id, access) a track is linked to now, or None."""
        linked = self._links.get(surface_id)
        return None if linked is None else (linked[1], linked[2])

    def annotate_ground(self, raw: bytes, surface_id: Ident, pitr: int) -> bytes:
        """A ``ground_position``'s output bytes. Runtime complexity: O(len(raw))."""
        linked = self._links.get(surface_id)
        if linked is None or pitr - linked[3] > self._ttl:
            if linked is not None:
                # Expiry is judged at use, from pitr alone, so it is the same live,
                # in catch-up and after a restart; pruning only frees the memory.
                del self._links[surface_id]
                self.expired += 1
            self.unmapped += 1
            return raw
        self.annotated += 1
        body = raw if raw[-1:] == b"}" else raw.rstrip()
        # `find`, not `in`: CPython 3.11's `bytes in bytes` first tries the needle as an
        # integer and builds (then drops) a TypeError every time, measured 3x slower.
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

    def annotate_position(self, raw: bytes, rec: GroundPosition) -> bytes:
        """`annotate_ground` for a decoded ``ground_position``: the same bytes, faster
        (the decoder has already told whether the message names an ``id`` or ``access``).
        """
        linked = self._links.get(rec.surface_id)
        if (
            linked is None
            or rec.pitr - linked[3] > self._ttl
            or rec.given_id is not UNSET
            or rec.given_access is not UNSET
            or raw[-1:] != b"}"
        ):
            return self.annotate_ground(raw, rec.surface_id, rec.pitr)
        self.annotated += 1
        out: bytes = raw[:-1] + linked[0]
        return out

    def pass_through(self) -> None:
        """Count a surface message that never gets a flight ID (vehicles, locations)."""
        self.passed += 1

    def _prune(self, pitr: int) -> None:
        self._next_prune = pitr + _PRUNE_EVERY_MS
        cut = pitr - self._ttl
        # Only links that every later use would find expired: freeing them changes nothing.
        stale = [s for s, entry in self._links.items() if entry[3] < cut]
        for surface_id in stale:
            del self._links[surface_id]
        self.expired += len(stale)

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
        )
