"""Access levels of aircraft from a privacy list (``--access-file``).

Programmes such as the FAA's LADD and PIA ask that some aircraft are not shown to
everyone. The list names them, one per line::

    # key            level (restricted when left out)
    a1b2c3           blocked
    ~0f1e2d          restricted     # a non-ICAO address, written with its ~
    N123AB                          # registration: restricted
    UAL123,restricted               # a comma works as a separator too

A key is compared, without regard to case, with the aircraft's address (``hex``), its
callsign and its registration (``r``): a key that could be either is matched against
all three, which errs on the side of privacy. When several keys match, the strongest
level wins. Everything not listed is ``public``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from unifeed.core.records import ACCESS_RANK, Access

__all__ = ["AccessList", "BadAccessLine"]

_SPLIT: Final = re.compile(r"[\s,;]+")
_LEVELS: Final[dict[str, Access]] = {"restricted": "restricted", "blocked": "blocked",
                                     "public": "public"}  # fmt: skip


class BadAccessLine(ValueError):
    """A line of an access list that is not ``KEY [LEVEL]``; the message names the line."""


class AccessList:
    """Key -> level, and `level` of an aircraft.

    >>> a = AccessList.parse(["A1B2C3 blocked", "ual123", "# comment", ""])
    >>> a.level("a1b2c3", "", ""), a.level("abcdef", "UAL123", ""), a.level("abcdef", "", "")
    ('blocked', 'restricted', 'public')
    """

    __slots__ = ("_levels",)

    def __init__(self, levels: dict[str, Access] | None = None) -> None:
        self._levels: dict[str, Access] = {k.lower(): v for k, v in (levels or {}).items()}

    def __len__(self) -> int:
        return len(self._levels)

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "access list") -> AccessList:
        """Read ``KEY [LEVEL]`` lines (``#`` starts a comment); `BadAccessLine` on a bad one."""
        levels: dict[str, Access] = {}
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = [p for p in _SPLIT.split(text) if p]
            if len(parts) > 2:
                raise BadAccessLine(
                    f"{source} line {number}: expected KEY [LEVEL], got {line.strip()!r}"
                )
            level_name = parts[1].lower() if len(parts) == 2 else "restricted"
            level = _LEVELS.get(level_name)
            if level is None:
                raise BadAccessLine(
                    f"{source} line {number}: level must be restricted, blocked or public, "
                    f"got {parts[1]!r}"
                )
            key = parts[0].lower()
            old = levels.get(key)
            if old is None or ACCESS_RANK[level] > ACCESS_RANK[old]:
                levels[key] = level
        return cls(levels)

    def level(self, hexid: str, callsign: str, registration: str) -> Access:
        """The strongest level listed for any of the three (all lower case or not: any case)."""
        if not self._levels:
            return "public"
        best: Access = "public"
        for key in (hexid, callsign, registration):
            if key:
                found = self._levels.get(key.lower())
                if found is not None and ACCESS_RANK[found] > ACCESS_RANK[best]:
                    best = found
        return best
