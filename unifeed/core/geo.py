"""Areas on the map: a bounding box and the test whether a point lies inside it.

Pure. `unifeed ingest --bbox` keeps the states inside one, and `unifeed serve` answers
viewport queries with one; both ask `inside`, so a box means the same in both.
"""

from __future__ import annotations

__all__ = ["Bbox", "inside"]

#: ``(west, south, east, north)`` in degrees; ``west > east`` crosses the antimeridian.
Bbox = tuple[float, float, float, float]


def inside(bbox: Bbox | None, lat: float, lon: float) -> bool:
    """Whether ``(lat, lon)`` lies in ``bbox``, edges included (None: everywhere).

    >>> inside((170.0, -10.0, -170.0, 10.0), 0.0, 179.5)  # across the antimeridian
    True
    >>> inside((-10.0, 40.0, 10.0, 50.0), 51.0, 0.0)
    False
    """
    if bbox is None:
        return True
    west, south, east, north = bbox
    if not south <= lat <= north:
        return False
    if west <= east:
        return west <= lon <= east
    return lon >= west or lon <= east
