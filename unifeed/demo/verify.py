"""The demo's checks of what a run wrote: the output against the file pipeline's, the
access levels of annotated positions against their flights', and what ``unifeed dump
--audience public`` shows against the core's audience rule. Pure: lines in, verdicts out.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from unifeed.core.access import FlightLevels
from unifeed.core.records import ACCESS_RANK

__all__ = [
    "AccessReport",
    "Verdict",
    "public_view",
    "verify_access",
    "verify_audience",
    "verify_output",
]


class Verdict(msgspec.Struct, frozen=True):
    """One check of the demo: its name, whether it passed, and the numbers behind it."""

    name: str
    ok: bool
    detail: str


class _View(msgspec.Struct, gc=False):
    type: Any = None
    pitr: Any = None
    id: Any = None
    access: Any = None


_view: Final = msgspec.json.Decoder(_View)
_BLOCKED: Final = ACCESS_RANK["blocked"]


def _decode(line: bytes) -> _View | None:
    try:
        return _view.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return None


def _rank(value: object) -> int:
    return ACCESS_RANK.get(value, _BLOCKED) if isinstance(value, str) else _BLOCKED


def verify_output(got: Sequence[bytes], expected: Sequence[bytes]) -> list[Verdict]:
    """Ordered, complete, no duplicates, identical to the file pipeline's output.

    >>> [v.ok for v in verify_output([b'{"pitr":1}', b'{"pitr":2}'], [b'{"pitr":1}', b'{"pitr":2}'])]
    [True, True, True, True]
    >>> [v.ok for v in verify_output([b'{"pitr":2}', b'{"pitr":2}'], [b'{"pitr":1}', b'{"pitr":2}'])]
    [False, True, False, False]
    """
    pitrs = [v.pitr if (v := _decode(line)) is not None else None for line in got]
    backwards = sum(
        1
        for a, b in itertools.pairwise(pitrs)
        if isinstance(a, int) and isinstance(b, int) and b < a
    )
    have, want = collections.Counter(got), collections.Counter(expected)
    missing = sum((want - have).values())
    extra = sum((have - want).values())
    if list(got) == list(expected):
        same = Verdict(
            "identical to the file pipeline (unify_lines)",
            True,
            f"{len(got):,} messages, byte for byte",
        )
    else:
        first = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
            min(len(got), len(expected)),
        )
        same = Verdict(
            "identical to the file pipeline (unify_lines)",
            False,
            f"{len(got):,} messages, expected {len(expected):,}; first difference at "
            f"position {first}",
        )
    return [
        same,
        Verdict("ordered by pitr", backwards == 0, f"{backwards} steps backwards"),
        Verdict(
            "complete", missing == 0, f"{len(expected) - missing:,} of {len(expected):,} present"
        ),
        Verdict("nothing duplicated", extra == 0, f"{extra} extra copies"),
    ]


@dataclass
class AccessReport:
    """Ground positions in the output and how their access compares with their flight's."""

    ground_positions: int = 0
    annotated: int = 0
    weaker: int = 0
    stronger: int = 0
    restricted: int = 0
    verdict: Verdict | None = None


def verify_access(got: Iterable[bytes]) -> AccessReport:
    """No annotated ground position carries an access weaker than its flight's at that point.

    The flight's access is the one of its last ``flightplan`` earlier in the output
    (``public`` when it has none).
    """
    report = AccessReport()
    flight_access: dict[object, int] = {}
    for line in got:
        view = _decode(line)
        if view is None:
            continue
        if view.type == "flightplan" and view.id is not None:
            flight_access[view.id] = _rank("public" if view.access is None else view.access)
        elif view.type == "ground_position":
            report.ground_positions += 1
            if view.id is None:
                continue
            report.annotated += 1
            own = _rank(view.access)
            flight = flight_access.get(view.id, ACCESS_RANK["public"])
            if own < flight:
                report.weaker += 1
            elif own > flight:
                report.stronger += 1
            if own > ACCESS_RANK["public"]:
                report.restricted += 1
    report.verdict = Verdict(
        "no access leak (annotated positions vs their flight)",
        report.weaker == 0,
        f"{report.annotated:,} annotated, {report.weaker} weaker than their flight, "
        f"{report.restricted:,} restricted or blocked",
    )
    return report


def public_view(got: Iterable[bytes]) -> list[bytes]:
    """What an audience ``public`` may see of ``got``: the core's audience rule, the one
    ``unifeed dump --audience`` applies. A line that cannot be judged is hidden."""
    shown: list[bytes] = []
    levels = FlightLevels()
    for line in got:
        view = _decode(line)
        if view is None:
            continue
        levels.see(view.type, view.id, view.access)
        if levels.visible(view.id, view.access, "public"):
            shown.append(line)
    return shown


def verify_audience(got: Sequence[bytes], shown: Sequence[bytes]) -> Verdict:
    """``dump --audience public`` shows exactly the public part and nothing stronger."""
    strong = 0
    for line in shown:
        view = _decode(line)
        if view is None or (view.access is not None and _rank(view.access) > 0):
            strong += 1
    expected = public_view(got)
    ok = strong == 0 and list(shown) == expected
    return Verdict(
        "dump --audience public shows nothing restricted or blocked",
        ok,
        f"{len(shown):,} shown, {len(got) - len(shown):,} hidden, {strong} too strong"
        + ("" if list(shown) == expected else f", expected {len(expected):,} shown"),
    )
