"""The nearest airport to a position, from the ``airportsdata`` package (ICAO codes).

A one-degree grid over every airport with an ICAO code (about 28,000, loaded on first
use, about 0.1 s); a look-up searches rings of cells outwards until no unsearched cell
can hold anything nearer. Distances are great-circle. There is always an answer: far
from every airport it is still the nearest one, however far.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

__all__ = ["NearestAirport", "load_airports"]

_EARTH_KM: Final = 6371.0
_KM_PER_DEG: Final = 2 * math.pi * _EARTH_KM / 360


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(
        math.radians(lon2 - lon1) / 2
    ) ** 2
    return 2 * _EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


class NearestAirport:
    """``nearest(lat, lon)`` -> the code of the nearest of the given airports.

    >>> n = NearestAirport([("KSFO", 37.6188, -122.3754), ("KOAK", 37.7213, -122.2208)])
    >>> n.nearest(37.62, -122.38), n.nearest(37.72, -122.22)
    ('KSFO', 'KOAK')

    Runtime complexity: O(airports in the cells searched), a handful near any airport.
    """

    def __init__(self, airports: Iterable[tuple[str, float, float]]) -> None:
        self._cells: dict[tuple[int, int], list[tuple[str, float, float]]] = {}
        count = 0
        for code, lat, lon in airports:
            self._cells.setdefault((math.floor(lat), math.floor(lon)), []).append((code, lat, lon))
            count += 1
        if not count:
            raise ValueError("NearestAirport needs at least one airport")

    def nearest(self, lat: float, lon: float) -> str:
        cell_lat, cell_lon = math.floor(lat), math.floor(lon)
        best: tuple[float, str] | None = None
        for ring in range(0, 181):
            for dlat in range(-ring, ring + 1):
                row = cell_lat + dlat
                if not -91 <= row <= 90:
                    continue
                edge = abs(dlat) == ring
                step = 1 if edge else 2 * ring
                for dlon in range(-ring, ring + 1, max(step, 1)):
                    col = (cell_lon + dlon + 180) % 360 - 180
                    for code, alat, alon in self._cells.get((row, col), ()):
                        d = _km(lat, lon, alat, alon)
                        if best is None or (d, code) < best:
                            best = (d, code)
            # An airport not searched yet lies at least `ring` degrees of latitude or of
            # longitude away; a degree of longitude is shortest at the highest latitude
            # either point can have.
            if best is not None:
                widest = min(abs(lat) + ring + 1, 90.0)
                if best[0] <= ring * _KM_PER_DEG * math.cos(math.radians(widest)):
                    return best[1]
        assert best is not None
        return best[1]


_shared: NearestAirport | None = None


def load_airports() -> NearestAirport:
    """The index over ``airportsdata``'s ICAO airports, built once per process."""
    global _shared
    if _shared is None:
        import airportsdata

        data = airportsdata.load("ICAO")
        _shared = NearestAirport(
            (code, float(a["lat"]), float(a["lon"])) for code, a in data.items()
        )
    return _shared
