"""The world the traffic simulator draws from: airports, fleets and a flight's timetable.

`SITES` are the airports a simulation can use (``airports=K`` takes the first K), each
with a ground layout drawn once per simulation (`Airport`: gate, cargo ramp, de-icing
pad, taxiway corners, holding point, runway exit). Airlines and aircraft types by
region, the probabilities of a flight's events and the ranges its durations are drawn
from are constants here; `calibrate` picks each airport's flight rate and vehicle count
so that it makes about ``rate`` messages per second per feed. `unifeed.sim.traffic`
plays flights and vehicles through this world.

Pure arithmetic and data: no randomness of its own (the caller's `random.Random` draws).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ACCESS",
    "AIRLINES",
    "AIR_INTERVAL",
    "CARGO_AIRLINES",
    "CARGO_RAMP",
    "CARGO_TYPES",
    "DEICE",
    "DEICING_PAD",
    "GATE_IN",
    "GATE_OUT",
    "GROUND_INTERVAL",
    "LEAD",
    "LIFE_BEYOND_AIR_MS",
    "LINK_EVENTS",
    "LONG_TYPES",
    "MAX_AIRPORTS",
    "MAX_DELAY",
    "MINUTE",
    "PAD_TAXI",
    "P_ACCESS_CHANGE",
    "P_AMEND",
    "P_BLOCKED",
    "P_CANCEL",
    "P_CARGO",
    "P_DEICE",
    "P_LATE_LINK",
    "P_RESTRICTED",
    "RUNWAY_TAXI",
    "SECOND",
    "SHORT_TYPES",
    "SITES",
    "TAXI_IN",
    "TAXI_OUT",
    "VEHICLES",
    "VEHICLE_INTERVAL",
    "Airport",
    "Point",
    "Site",
    "air_ms",
    "bearing",
    "calibrate",
    "cruise_gs",
    "distance_nm",
    "local_nm",
]

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND

@dataclass(frozen=True, slots=True)
class Site:
    code: str
    lat: float
    lon: float
    region: str  # "US" or "EU": picks airlines and transponder addresses
    cold: bool  # de-icing happens here


# The order is the order `airports=K` takes them: nearby airports first, so that small
# simulations have short flights between them.
SITES: Final = (
    Site("KSFO", 37.6189, -122.3750, "US", False),
    Site("KLAX", 33.9416, -118.4085, "US", False),
    Site("KSEA", 47.4502, -122.3088, "US", True),
    Site("KDEN", 39.8561, -104.6737, "US", True),
    Site("KORD", 41.9742, -87.9073, "US", True),
    Site("KJFK", 40.6413, -73.7781, "US", True),
    Site("KATL", 33.6407, -84.4277, "US", False),
    Site("EGLL", 51.4700, -0.4543, "EU", True),
    Site("EHAM", 52.3105, 4.7683, "EU", True),
    Site("EDDF", 50.0379, 8.5622, "EU", True),
    Site("KDFW", 32.8998, -97.0403, "US", False),
    Site("LFPG", 49.0097, 2.5479, "EU", True),
    Site("KBOS", 42.3656, -71.0096, "US", True),
    Site("LEMD", 40.4983, -3.5676, "EU", False),
    Site("KMIA", 25.7959, -80.2870, "US", False),
    Site("LIRF", 41.8003, 12.2389, "EU", False),
    Site("KPHX", 33.4352, -112.0101, "US", False),
    Site("LSZH", 47.4582, 8.5555, "EU", True),
    Site("EKCH", 55.6180, 12.6508, "EU", True),
    Site("ESSA", 59.6519, 17.9186, "EU", True),
)
#: How many airports a simulation can have.
MAX_AIRPORTS: Final = len(SITES)

# Airline ICAO code -> ICAO 24-bit address prefix of its fleet's country.
AIRLINES: Final = {
    "US": (("UAL", "A"), ("AAL", "A"), ("DAL", "A"), ("SWA", "A"), ("ASA", "A"), ("JBU", "A")),
    "EU": (("BAW", "40"), ("KLM", "48"), ("DLH", "3C"), ("AFR", "39"), ("EZY", "40"),
           ("IBE", "34"), ("SWR", "4B"), ("SAS", "47")),
}  # fmt: skip
CARGO_AIRLINES: Final = {"US": (("FDX", "A"), ("UPS", "A")), "EU": (("DHK", "40"),)}
SHORT_TYPES: Final = ("A320", "B738", "A321", "B739", "E175", "A20N", "B38M", "CRJ9")
LONG_TYPES: Final = ("B789", "B77W", "A359", "A333", "B772", "A35K")
CARGO_TYPES: Final = ("B763", "B77L", "MD11", "A306")
VEHICLES: Final = ("TUG", "FUEL", "BUS", "CATER", "OPS", "FOLLOW", "DEICE", "BAG")
ACCESS: Final = ("public", "restricted", "blocked")
#: The controlstream events that link a surface track to a flight.
LINK_EVENTS: Final = frozenset({"power_on", "surface_offblock", "surface_onblock"})
DEICING_PAD: Final = "deicing_pad"
CARGO_RAMP: Final = "cargo_ramp"

# Probabilities per flight.
P_CARGO: Final = 0.06
P_RESTRICTED: Final = 0.05
P_BLOCKED: Final = 0.02
P_CANCEL: Final = 0.03
P_ACCESS_CHANGE: Final = 0.04
P_AMEND: Final = 0.25  # a re-filed flightplan before power-on, same access
P_DEICE: Final = 0.3  # at a cold airport
P_LATE_LINK: Final = 0.1  # the track reports before its link event arrives

# Durations in ms, drawn uniformly from (low, high).
LEAD: Final = (45 * MINUTE, 150 * MINUTE)  # flightplan filed before scheduled off-block
GATE_OUT: Final = (15 * MINUTE, 40 * MINUTE)  # powered at the gate before off-block
TAXI_OUT: Final = (8 * MINUTE, 22 * MINUTE)
DEICE: Final = (4 * MINUTE, 10 * MINUTE)
PAD_TAXI: Final = (3 * MINUTE, 8 * MINUTE)  # gate to de-icing pad
RUNWAY_TAXI: Final = (3 * MINUTE, 10 * MINUTE)  # de-icing pad to runway
MAX_DELAY: Final = 45 * MINUTE
TAXI_IN: Final = (4 * MINUTE, 14 * MINUTE)
GATE_IN: Final = (3 * MINUTE, 10 * MINUTE)  # powered at the gate after on-block
AIR_INTERVAL: Final = (1 * SECOND, 3 * SECOND)
GROUND_INTERVAL: Final = (2 * SECOND, 4 * SECOND)
VEHICLE_INTERVAL: Final = (1 * SECOND, 3 * SECOND)
_CLIMB_OVERHEAD_S: Final = 720.0  # climb, approach and holding beyond cruise time
_MIN_VEHICLES: Final = 2
# The longest a flight can live besides its time in the air.
LIFE_BEYOND_AIR_MS: Final = (
    LEAD[1]
    + MAX_DELAY
    + max(TAXI_OUT[1], PAD_TAXI[1] + DEICE[1] + RUNWAY_TAXI[1])
    + 40 * SECOND
    + TAXI_IN[1]
    + GATE_IN[1]
)


def _mean(span: tuple[int, int]) -> float:
    return (span[0] + span[1]) / 2


# Expected messages per (non-cancelled) flight, used to pick the flight rate for `rate`.
_CONTROL_EVENTS: Final = 7 + P_ACCESS_CHANGE  # power_on .. power_off, access change
_FLIGHTPLANS: Final = 1 + P_AMEND
_GROUND_OUT_MS: Final = _mean(GATE_OUT) + _mean(TAXI_OUT)
_GROUND_IN_MS: Final = _mean(TAXI_IN) + _mean(GATE_IN) + 5 * SECOND


Point = tuple[float, float]


def distance_nm(a: Point, b: Point) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 3440.065 * math.asin(math.sqrt(h))


def bearing(a: Point, b: Point) -> float:
    """Heading in degrees from a to b on a local flat map (good for airports and legs)."""
    dx = (b[1] - a[1]) * math.cos(math.radians((a[0] + b[0]) / 2))
    dy = b[0] - a[0]
    return math.degrees(math.atan2(dx, dy)) % 360.0


def local_nm(a: Point, b: Point) -> float:
    dx = (b[1] - a[1]) * math.cos(math.radians(a[0]))
    return math.hypot(dx, b[0] - a[0]) * 60.0


class Airport:
    """An airport's fixed geometry and traffic parameters."""

    __slots__ = (
        "air_max_ms",
        "cargo",
        "code",
        "corner_in",
        "corner_out",
        "dest_cum",
        "dests",
        "exit",
        "flights_per_ms",
        "gate",
        "hold",
        "index",
        "lat",
        "lon",
        "mean_air_ms",
        "pad",
        "site",
        "vehicles",
    )

    def __init__(self, index: int, site: Site, rng: random.Random) -> None:
        self.index = index
        self.site = site
        self.code = site.code
        self.lat = site.lat
        self.lon = site.lon
        k = 1.0 / math.cos(math.radians(site.lat))  # degrees of longitude per degree of lat

        def spot(dlat: float, dlon: float) -> Point:
            jitter = 0.0015
            return (
                site.lat + dlat + rng.uniform(-jitter, jitter),
                site.lon + (dlon + rng.uniform(-jitter, jitter)) * k,
            )

        self.gate = spot(-0.004, -0.004)
        self.cargo = spot(-0.009, 0.006)
        self.pad = spot(0.005, -0.011)
        self.corner_out = spot(0.003, 0.002)
        self.corner_in = spot(-0.001, 0.008)
        self.hold = spot(0.011, 0.009)
        self.exit = spot(0.008, -0.012)
        self.dests: list[int] = []
        self.dest_cum: list[float] = []
        self.mean_air_ms = 0.0
        self.air_max_ms: dict[int, int] = {}
        self.flights_per_ms = 0.0
        self.vehicles = 0

    @property
    def point(self) -> Point:
        return (self.lat, self.lon)


def air_ms(dist_nm: float, gs_kt: float) -> float:
    return (dist_nm / gs_kt * 3600.0 + _CLIMB_OVERHEAD_S) * 1000.0


def cruise_gs(dist_nm: float) -> tuple[float, float]:
    return (430.0, 490.0) if dist_nm > 1500 else (360.0, 450.0)


def calibrate(airports: list[Airport], rate: float) -> None:
    """Choose flight and vehicle counts so each airport makes about ``rate`` msgs/s per feed."""
    for ap in airports:
        weights: list[float] = []
        air: list[float] = []
        for other in airports:
            if other is ap:
                continue
            dist = distance_nm(ap.point, other.point)
            ap.dests.append(other.index)
            # Most flights are short: weight by closeness.
            weights.append(1.0 / (dist + 200.0) ** 2)
            air.append(air_ms(dist, sum(cruise_gs(dist)) / 2))
            ap.air_max_ms[other.index] = math.ceil(air_ms(dist, cruise_gs(dist)[0]))
        total = sum(weights)
        acc = 0.0
        for w in weights:
            acc += w / total
            ap.dest_cum.append(acc)
        ap.dest_cum[-1] = 1.0
        ap.mean_air_ms = sum(w * a for w, a in zip(weights, air, strict=True)) / total
        positions = ap.mean_air_ms / _mean(AIR_INTERVAL)
        per_flight = (1 - P_CANCEL) * (positions + _CONTROL_EVENTS) + P_CANCEL + _FLIGHTPLANS
        ap.flights_per_ms = rate / 1000.0 / per_flight
    for ap in airports:
        departing = ap.flights_per_ms * (1 - P_CANCEL) * _GROUND_OUT_MS
        arriving = 0.0
        for other in airports:
            if other is ap:
                continue
            i = other.dests.index(ap.index)
            share = other.dest_cum[i] - (other.dest_cum[i - 1] if i else 0.0)
            arriving += other.flights_per_ms * (1 - P_CANCEL) * share * _GROUND_IN_MS
        aircraft_rate = (departing + arriving) / _mean(GROUND_INTERVAL) * 1000.0
        missing = rate - aircraft_rate
        ap.vehicles = max(_MIN_VEHICLES, round(missing * _mean(VEHICLE_INTERVAL) / 1000.0))
