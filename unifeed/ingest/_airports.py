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


#: Look-ups are answered from candidate lists kept per cell of this many degrees.
_CACHE_DEG: Final = 0.25


class NearestAirport:
    """``nearest(lat, lon)`` -> the code of the nearest of the given airports.

    >>> n = NearestAirport([("KSFO", 37.6188, -122.3754), ("KOAK", 37.7213, -122.2208)])
    >>> n.nearest(37.62, -122.38), n.nearest(37.72, -122.22)
    ('KSFO', 'KOAK')

    The first look-up in a quarter-degree cell finds, by a search over a one-degree grid,
    every airport that can be the nearest one to some point of that cell (those within
    D + 2h of its centre, D the distance from the centre to its nearest airport and h the
    cell's half-diagonal); later look-ups in the cell compare only those, nearest to the
    centre first, and stop once no further one can be nearer.

    Runtime complexity: O(candidates of the cell), a handful near any airport.
    """

    def __init__(self, airports: Iterable[tuple[str, float, float]]) -> None:
        self._cells: dict[tuple[int, int], list[tuple[str, float, float]]] = {}
        self._candidates: dict[tuple[int, int], list[tuple[float, str, float, float]]] = {}
        count = 0
        for code, lat, lon in airports:
            self._cells.setdefault((math.floor(lat), math.floor(lon)), []).append((code, lat, lon))
            count += 1
        if not count:
            raise ValueError("NearestAirport needs at least one airport")

    def nearest(self, lat: float, lon: float) -> str:
        key = (math.floor(lat / _CACHE_DEG), math.floor(lon / _CACHE_DEG))
        clat, clon = (key[0] + 0.5) * _CACHE_DEG, (key[1] + 0.5) * _CACHE_DEG
        candidates = self._candidates.get(key)
        if candidates is None:
            half_diagonal = _km(clat, clon, key[0] * _CACHE_DEG, key[1] * _CACHE_DEG)
            reach = self._search(clat, clon, None)[0] + 2 * half_diagonal + 1e-6
            candidates = sorted(
                (_km(clat, clon, a, o), code, a, o) for code, a, o in self._within(clat, clon, reach)
            )
            self._candidates[key] = candidates
        off_centre = _km(lat, lon, clat, clon)
        best: tuple[float, str] | None = None
        for from_centre, code, alat, alon in candidates:
            if best is not None and from_centre - off_centre > best[0]:
                break
            d = _km(lat, lon, alat, alon)
            if best is None or (d, code) < best:
                best = (d, code)
        assert best is not None
        return best[1]

    def _rings(self, lat: float, lon: float) -> Iterable[tuple[int, list[tuple[str, float, float]]]]:
        """``(ring, airports of one cell)`` for the cells around ``lat, lon``, ring by ring."""
        cell_lat, cell_lon = math.floor(lat), math.floor(lon)
        for ring in range(0, 181):
            for dlat in range(-ring, ring + 1):
                row = cell_lat + dlat
                if not -91 <= row <= 90:
                    continue
                step = 1 if abs(dlat) == ring else max(2 * ring, 1)
                for dlon in range(-ring, ring + 1, step):
                    found = self._cells.get((row, (cell_lon + dlon + 180) % 360 - 180))
                    if found:
                        yield ring, found
            yield ring, []

    @staticmethod
    def _unseen_beyond(lat: float, ring: int) -> float:
        """A lower bound (km) on the distance to any airport outside rings 0..``ring``: it is
        ``ring`` degrees of latitude or of longitude away, and a degree of longitude is
        shortest at the highest latitude either point can have."""
        widest = min(abs(lat) + ring + 1, 90.0)
        return ring * _KM_PER_DEG * math.cos(math.radians(widest))

    def _search(self, lat: float, lon: float, _: None) -> tuple[float, str]:
        best: tuple[float, str] | None = None
        last_ring = 0
        for ring, airports in self._rings(lat, lon):
            if ring != last_ring:
                if best is not None and best[0] <= self._unseen_beyond(lat, last_ring):
                    return best
                last_ring = ring
            for code, alat, alon in airports:
                if best is not None and abs(alat - lat) * _KM_PER_DEG > best[0]:
                    continue
                d = _km(lat, lon, alat, alon)
                if best is None or (d, code) < best:
                    best = (d, code)
        assert best is not None
        return best

    def _within(self, lat: float, lon: float, radius: float) -> list[tuple[str, float, float]]:
        found: list[tuple[str, float, float]] = []
        last_ring = 0
        for ring, airports in self._rings(lat, lon):
            if ring != last_ring:
                if radius <= self._unseen_beyond(lat, last_ring):
                    return found
                last_ring = ring
            for code, alat, alon in airports:
                if abs(alat - lat) * _KM_PER_DEG <= radius and _km(lat, lon, alat, alon) <= radius:
                    found.append((code, alat, alon))
        return found


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
