"""The audience rule, the one place it is written down (pure: no I/O).

Access levels, weakest first: ``public`` < ``restricted`` < ``blocked``. A record is
visible to an audience when the stronger of its own ``access`` and its flight's
``access`` (from the flight's latest ``flightplan``) is at most the audience:

>>> visible("public", "restricted", "public")
False
>>> visible(None, None, "public")          # neither known: public
True
>>> visible("restricted", "public", "restricted")
True
>>> visible("secret", None, "restricted")  # an unknown level counts as blocked
False

`unifeed dump --audience` and `unifeed serve` both judge with this function.
"""

from __future__ import annotations

from typing import Final

from unifeed.core.records import ACCESS_LEVELS, ACCESS_RANK

PUBLIC: Final = ACCESS_RANK["public"]
BLOCKED: Final = ACCESS_RANK["blocked"]


def access_rank(level: object) -> int:
    """The rank of an ``access`` value: ``None`` (absent) is public; anything that is not
    a known level is blocked, so a malformed value hides rather than shows."""
    if level is None:
        return PUBLIC
    if isinstance(level, str):
        return ACCESS_RANK.get(level, BLOCKED)
    return BLOCKED


def audience_rank(audience: str) -> int:
    """The rank of an audience name; `ValueError` naming the allowed ones otherwise."""
    try:
        return ACCESS_RANK[audience]
    except KeyError:
        raise ValueError(
            f"audience must be one of {', '.join(ACCESS_LEVELS)}, got {audience!r}"
        ) from None


def effective_rank(own: object, flight: object) -> int:
    """max(rank of the record's own ``access``, rank of its flight's ``access``)."""
    own_rank = access_rank(own)
    flight_rank = access_rank(flight)
    return own_rank if own_rank >= flight_rank else flight_rank


def visible(own: object, flight: object, audience: str | int) -> bool:
    """Whether a record with access ``own`` of a flight with access ``flight`` may be shown
    to ``audience`` (a level name or its rank)."""
    limit = audience if isinstance(audience, int) else audience_rank(audience)
    return effective_rank(own, flight) <= limit


class FlightLevels:
    """Each flight's access as its latest ``flightplan`` gave it, and the audience rule
    over a stream of records read in order: what ``dump --audience``, the demo's check
    and any other reader of a unified feed judge with.

    >>> levels = FlightLevels()
    >>> levels.see("flightplan", "F1", "restricted")
    >>> levels.visible("F1", "public", "public")   # own level public, flight restricted
    False
    >>> levels.see("flightplan", "F1", None)        # refiled without access: public again
    >>> levels.visible("F1", None, "public")
    True
    """

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: dict[object, object] = {}

    def see(self, kind: object, flight: object, access: object) -> None:
        """Take note of one record (only a ``flightplan`` with a flight ID changes anything)."""
        if kind == "flightplan" and _is_flight_id(flight):
            self._levels[flight] = access

    def visible(self, flight: object, own: object, audience: str | int) -> bool:
        """Whether a record of ``flight`` (None: none) with its own ``access`` ``own`` may
        be shown to ``audience``."""
        level = self._levels.get(flight) if _is_flight_id(flight) else None
        return visible(own, level, audience)


def _is_flight_id(flight: object) -> bool:
    return isinstance(flight, str | int) and not isinstance(flight, bool)
