"""The pure part of ingest: readsb decoding, SBS lines, flights from tracks, access lists."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from unifeed.core.records import RecordDecoder
from unifeed.ingest import (
    AccessList,
    BadAccessLine,
    BadResponse,
    NearestAirport,
    SbsDecoder,
    Tracker,
    TrackerConfig,
    decode_response,
)

T0 = 1_700_000_000_000
CONTROL = RecordDecoder("controlstream")
SURFACE = RecordDecoder("surfacestream")
AIRPORTS = NearestAirport([("KSFO", 37.6188, -122.3754), ("KOAK", 37.7213, -122.2208)])


def ac(hex_: str = "a1b2c3", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"hex": hex_, "flight": "UAL1    ", "lat": 37.5, "lon": -122.0,
                            "alt_baro": 12000, "seen_pos": 0.5}  # fmt: skip
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def response(now_ms: int, *aircraft: dict[str, Any]) -> bytes:
    return json.dumps({"ac": list(aircraft), "now": now_ms, "msg": "No error"}).encode()


class Run:
    """A tracker fed response by response; every record is checked against unifeed's own
    validation, and pitr never decreases per feed."""

    def __init__(self, **config: Any) -> None:
        access = config.pop("access", None)
        self.tracker = Tracker(TrackerConfig(**config), nearest_airport=AIRPORTS.nearest,
                               access=access)  # fmt: skip
        self.control: list[dict[str, Any]] = []
        self.surface: list[dict[str, Any]] = []

    def poll(self, now_ms: int, *aircraft: dict[str, Any], pitr: int | None = None) -> None:
        batch = self.tracker.process(decode_response(response(now_ms, *aircraft)),
                                     pitr=now_ms if pitr is None else pitr)  # fmt: skip
        for line in batch.control:
            CONTROL.decode(line)
            self.control.append(json.loads(line))
        for line in batch.surface:
            SURFACE.decode(line)
            self.surface.append(json.loads(line))
        for feed in (self.control, self.surface):
            pitrs = [r["pitr"] for r in feed]
            assert pitrs == sorted(pitrs)

    def types(self, feed: str = "control") -> list[str]:
        records = self.control if feed == "control" else self.surface
        return [r["type"] for r in records if r["type"] != "keepalive"]

    def flight_ids(self) -> list[str]:
        return list(dict.fromkeys(r["id"] for r in self.control if r["type"] == "flightplan"))


def test_decode_both_forms_and_units() -> None:
    agg = decode_response(b'{"ac":[{"hex":"a1b2c3"}],"now":1700000000123,"total":1}')
    rcv = decode_response(b'{"now":1700000000.123,"messages":5,"aircraft":[{"hex":"~a1b2c3"}]}')
    assert agg.now_ms == rcv.now_ms == 1_700_000_000_123
    assert rcv.aircraft[0].hex == "~a1b2c3"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b'{"ac":[{"hex":"a1b2c3"},{"hex":', "not JSON or truncated"),
        (b'{"now":1700000000}', "no `ac` or `aircraft`"),
        (b'{"ac":[]}', "no `now`"),
        (b"[1,2]", "not an object"),
        (b"", "empty"),
    ],
)
def test_bad_bodies_say_why(body: bytes, words: str) -> None:
    with pytest.raises(BadResponse) as info:
        decode_response(body)
    assert words in info.value.reason


def test_one_bad_aircraft_does_not_spoil_the_response() -> None:
    snap = decode_response(b'{"now":1700000000,"aircraft":[{"hex":"a1b2c3","lat":"x"},'
                           b'{"hex":"b1b2c3","lat":1.0,"lon":2.0}]}')  # fmt: skip
    assert [a.hex for a in snap.aircraft] == ["b1b2c3"] and snap.invalid == 1


def test_airborne_flight_positions_phase_and_emergency() -> None:
    run = Run()
    run.poll(T0, ac(baro_rate=1800, squawk="1200"))
    run.poll(T0 + 10_000, ac(alt_baro=30000, baro_rate=-100, geom_rate=-3000, seen_pos=0.2))
    run.poll(T0 + 20_000, ac(geom_rate=-3000, squawk="7700", seen_pos=0.1))
    run.poll(T0 + 30_000, ac(emergency="minfuel", seen_pos=0.3))
    positions = [r for r in run.control if r["type"] == "position"]
    assert [p["phase"] for p in positions] == ["climb", "cruise", "descent", "cruise"]
    assert [p["emergency"] for p in positions] == [False, False, True, True]
    assert positions[0]["clock"] == T0 - 500 and positions[0]["alt"] == 12000
    # First seen: the time of the first position (0.5 s before `now`), not its receipt.
    assert run.flight_ids() == [f"UAL1-{(T0 - 500) // 1000}-adsb-a1b2c3"]
    assert run.types("surface") == []


def test_unchanged_position_is_not_emitted_again() -> None:
    run = Run()
    run.poll(T0, ac(seen_pos=1.0))
    run.poll(T0 + 10_000, ac(seen_pos=11.0))  # the same position, ten seconds older
    run.poll(T0 + 20_000, ac(seen_pos=1.05))
    assert run.types().count("position") == 2
    assert run.tracker.skipped["unchanged"] == 1


def test_skips_are_counted_by_reason() -> None:
    run = Run(bbox=(-123.0, 37.0, -121.0, 38.0))
    run.poll(
        T0,
        ac("000001", lat=None),
        ac("000002", lat=91.0),
        ac("000003", gs=-5),
        ac("000004", seen_pos=75.0),
        ac("000005", lat=40.0),
        ac("zzzzzz"),
        ac("000006"),
    )
    skipped = run.tracker.skipped
    assert (skipped["no_position"], skipped["impossible"], skipped["stale"],
            skipped["outside_bbox"]) == (1, 3, 1, 1)  # fmt: skip
    assert run.types() == ["flightplan", "position"]


def test_ground_link_departure_arrival_and_power_off() -> None:
    run = Run(surface_timeout_ms=30_000)
    run.poll(T0, ac(alt_baro="ground", lat=37.62, lon=-122.38, gs=5))
    run.poll(T0 + 10_000, ac(alt_baro="ground", lat=37.621, lon=-122.38, gs=12))
    run.poll(T0 + 20_000, ac(alt_baro=800, baro_rate=2000, lat=37.63))
    run.poll(T0 + 40_000, ac(alt_baro=3000, baro_rate=2000, lat=37.65))
    run.poll(T0 + 60_000, ac(alt_baro=3000, baro_rate=2000, lat=37.66))
    run.poll(T0 + 70_000, ac(alt_baro="ground", lat=37.72, lon=-122.22))
    assert run.types() == ["flightplan", "power_on", "departure", "position", "position",
                           "power_off", "position", "arrival", "power_on"]  # fmt: skip
    flight = run.flight_ids()[0]
    links = [(r["type"], r["facility"]) for r in run.control if r["type"].startswith("power")]
    assert links == [("power_on", "KSFO"), ("power_off", "KSFO"), ("power_on", "KOAK")]
    assert all(r["id"] == flight for r in run.control if "id" in r)
    grounds = [r for r in run.surface if r["type"] == "ground_position"]
    assert [g["facility"] for g in grounds] == ["KSFO", "KSFO", "KOAK"]
    assert {g["surface_id"] for g in grounds} == {"adsb-a1b2c3"}
    assert all(g["phase"] == "ground" and "id" not in g for g in grounds)


def test_callsign_change_starts_a_new_flight_and_moves_the_link() -> None:
    run = Run()
    run.poll(T0, ac(flight=None, r="N123AB", alt_baro="ground", lat=37.62, lon=-122.38))
    run.poll(T0 + 10_000, ac(flight="SWA12 ", alt_baro="ground", lat=37.62, lon=-122.38))
    run.poll(T0 + 20_000, ac(flight="SWA99", alt_baro="ground", lat=37.62, lon=-122.38))
    first, second = run.flight_ids()
    assert first == f"N123AB-{(T0 - 500) // 1000}-adsb-a1b2c3"  # registration until a callsign
    assert second == f"SWA99-{(T0 + 20_000 - 500) // 1000}-adsb-a1b2c3"
    plans = [(r["id"], r["ident"]) for r in run.control if r["type"] == "flightplan"]
    assert plans == [(first, "N123AB"), (first, "SWA12"), (second, "SWA99")]
    assert [(r["type"], r["id"]) for r in run.control if r["type"].startswith("power")] == [
        ("power_on", first), ("power_off", first), ("power_on", second)]  # fmt: skip


def test_landing_then_flight_gap_on_the_ground_starts_a_new_flight() -> None:
    run = Run(flight_gap_ms=600_000)
    run.poll(T0, ac(alt_baro=1500, baro_rate=-800))
    run.poll(T0 + 10_000, ac(alt_baro="ground", seen_pos=0.1))
    run.poll(T0 + 500_000, ac(alt_baro="ground", seen_pos=0.2))
    assert len(run.flight_ids()) == 1
    run.poll(T0 + 610_000, ac(alt_baro="ground", seen_pos=0.3))
    assert len(run.flight_ids()) == 2


def test_silence_for_a_flight_gap_starts_a_new_flight() -> None:
    run = Run(flight_gap_ms=600_000)
    run.poll(T0, ac())
    run.poll(T0 + 599_000, ac())
    run.poll(T0 + 1_199_000, ac(alt_baro="ground"))
    assert len(run.flight_ids()) == 2
    assert "arrival" not in run.types()  # nothing is known of what happened in the silence


def test_vehicles_never_get_flights_and_keep_their_access() -> None:
    access = AccessList.parse(["~c0ffee restricted"])
    run = Run(access=access)
    run.poll(T0, ac("~C0FFEE", category="C1", flight="FOLLOW1", alt_baro="ground", lat=37.62, lon=-122.38),
             ac("~0ddba1", category="C2", flight="TUG7", alt_baro="ground"))  # fmt: skip
    assert run.types() == []
    vehicles = run.types("surface")
    assert vehicles == ["vehicle_position", "vehicle_position"]
    v1, v2 = (r for r in run.surface if r["type"] == "vehicle_position")
    assert (v1["surface_id"], v1["facility"], v1["access"]) == ("adsb-~c0ffee", "KSFO", "restricted")
    assert "access" not in v2 and v2["callsign"] == "TUG7"


def test_access_list_marks_flight_and_its_ground_positions() -> None:
    access = AccessList.parse(["# LADD", "a1b2c3 blocked", "dal5 restricted", "N77 "])
    run = Run(access=access)
    run.poll(T0, ac(alt_baro="ground"), ac("d00d00", flight="DAL5"), ac("e00e00", r="n77"),
             ac("f00f00", flight="AAL9"))  # fmt: skip
    plans = {r["hexid"]: r.get("access", "public") for r in run.control if r["type"] == "flightplan"}
    assert plans == {"a1b2c3": "blocked", "d00d00": "restricted", "e00e00": "restricted",
                     "f00f00": "public"}  # fmt: skip
    assert [r["access"] for r in run.surface if r["type"] == "ground_position"] == ["blocked"]


def test_access_file_errors_name_the_line() -> None:
    with pytest.raises(BadAccessLine, match="line 2"):
        AccessList.parse(["a1b2c3", "b1b2c3 secret"])


def test_pitr_never_decreases_and_clock_is_the_positions_time() -> None:
    run = Run()
    run.poll(T0, ac(), pitr=T0 + 900)
    run.poll(T0 + 10_000, ac(seen_pos=0.1), pitr=T0 + 500)  # received "earlier": held
    pitrs = [r["pitr"] for r in run.control]
    assert pitrs[-1] == T0 + 900
    assert [r["clock"] for r in run.control if r["type"] == "position"] == [T0 - 500, T0 + 9_900]


def test_same_responses_give_the_same_bytes() -> None:
    bodies = [response(T0 + i * 10_000, ac(alt_baro="ground" if i < 2 else 1000 * i,
                                            seen_pos=0.1 * i)) for i in range(5)]  # fmt: skip

    def run() -> list[bytes]:
        t = Tracker(nearest_airport=AIRPORTS.nearest)
        out: list[bytes] = []
        for i, body in enumerate(bodies):
            batch = t.process(decode_response(body), pitr=T0 + i * 10_000 + 7)
            out += batch.control + batch.surface
        return out

    assert run() == run()


def test_sbs_lines_become_states_and_flights() -> None:
    d = SbsDecoder()
    lines = [
        b"MSG,1,1,1,4CA2D6,1,2008/11/28,14:53:49.986,2008/11/28,14:53:49.986,RYR1427 ,,,,,,,,,,,",
        b"MSG,2,1,1,4CA2D6,1,2008/11/28,14:53:50.594,2008/11/28,14:53:50.594,,,12.5,90.0,51.47,-0.45,,,,,,-1",
        b"MSG,6,1,1,4CA2D6,1,2008/11/28,14:53:50.700,2008/11/28,14:53:50.700,,,,,,,,7700,0,-1,0,-1",
        b"STA,,5,179,400AE7,10103,2008/11/28,14:58:51.153,2008/11/28,14:58:51.153,RM",
    ]
    assert [d.feed(line, T0 + i) for i, line in enumerate(lines)] == [None] * 4
    assert d.feed(b"MSG,9,1,1,4CA2D6,1,,,,,,,,,,,,,,,,", T0) == "MSG transmission type must be 1 to 8, got 9"
    assert "bad value" in (d.feed(b"MSG,3,1,1,4CA2D6,1,,,,,,abc,,,,,,,,,,0", T0) or "")
    snap = d.snapshot(T0 + 1000)
    (state,) = snap.aircraft
    assert (state.flight, state.alt_baro, state.squawk, state.emergency) == (
        "RYR1427", "ground", "7700", "general")  # fmt: skip
    assert state.seen_pos == pytest.approx(0.999)
    t = Tracker(nearest_airport=lambda lat, lon: "EGLL")
    batch = t.process(snap, pitr=T0 + 1000)
    kinds = [msgspec.json.decode(x)["type"] for x in batch.control]
    assert kinds == ["flightplan", "power_on", "keepalive"]
    assert b'"emergency":true' in batch.surface[0]
    assert d.snapshot(T0 + 61_500).aircraft == []  # forgotten after a minute


def test_nearest_airport_from_airportsdata() -> None:
    from unifeed.ingest import load_airports

    nearest = load_airports().nearest
    assert nearest(37.6189 + 0.011, -122.375 + 0.012) == "KSFO"
    assert nearest(51.4700 - 0.009, -0.4543 - 0.012) == "EGLL"
    assert nearest(52.3105, 4.7683) == "EHAM"


def test_nearest_airport_agrees_with_a_brute_force_search() -> None:
    import random

    import airportsdata

    from unifeed.ingest import load_airports
    from unifeed.ingest._airports import _km

    data = [(code, a["lat"], a["lon"]) for code, a in airportsdata.load("ICAO").items()]
    rng = random.Random(2024)
    points = [(rng.uniform(-70, 70), rng.uniform(-180, 180)) for _ in range(12)]
    points += [(lat + rng.uniform(-0.05, 0.05), lon + rng.uniform(-0.05, 0.05))
               for _, lat, lon in rng.sample(data, 12)]  # fmt: skip
    points += [(89.95, 10.0), (-89.5, 0.0), (0.5, 179.99), (10.0, -179.99)]
    nearest = load_airports().nearest
    for lat, lon in points:
        expected = min((_km(lat, lon, a, o), code) for code, a, o in data)[1]
        assert nearest(lat, lon) == expected, (lat, lon)
        assert nearest(lat, lon) == expected  # the second look-up uses the cell's candidates


def test_flight_ids_do_not_depend_on_when_responses_arrive() -> None:
    ids = []
    for delay in (0, 2_700):
        run = Run()
        run.poll(T0, ac(), ac("b1b2c3", flight="DLH4", alt_baro="ground"), pitr=T0 + delay)
        run.poll(T0 + 10_000, ac(seen_pos=0.1), pitr=T0 + 10_000 + delay)
        ids.append(run.flight_ids())
    assert ids[0] == ids[1] and len(ids[0]) == 2


def test_a_registration_heard_later_can_only_strengthen_access() -> None:
    run = Run(access=AccessList.parse(["N5XY blocked"]))
    run.poll(T0, ac(alt_baro="ground"))
    run.poll(T0 + 10_000, ac(alt_baro="ground", r="N5XY", seen_pos=0.1))
    plans = [r for r in run.control if r["type"] == "flightplan"]
    assert [p.get("access", "public") for p in plans] == ["public", "blocked"]
    assert len({p["id"] for p in plans}) == 1 and plans[1]["registration"] == "N5XY"
    grounds = [r.get("access", "public") for r in run.surface if r["type"] == "ground_position"]
    assert grounds == ["public", "blocked"]


def test_the_ingest_package_imports_only_what_its_docstring_allows() -> None:
    """Core records and errors, the file and Kafka output helpers, metrics; never the CLI.
    The pure modules import nothing of unifeed beyond the core."""
    import ast
    from pathlib import Path

    import unifeed.ingest

    allowed = {"_records", "_errors", "_unify", "_kafkautil", "_metrics"}
    pure = {"_readsb.py", "_sbs.py", "_tracker.py", "_access.py", "_airports.py"}
    for path in Path(unifeed.ingest.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                module = (node.module or "").split(".")[0]
                assert module in allowed, f"{path.name} imports unifeed.{module}"
                if path.name in pure:
                    assert module in {"_records", "_errors"}, f"{path.name} imports {module}"
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not [n for n in names if n.startswith("unifeed")], path.name
            if path.name in pure:
                io = {"socket", "urllib.request", "threading", "confluent_kafka", "queue"}
                assert not io & set(names), f"{path.name} does I/O"


def test_a_source_that_breaks_ends_the_run_with_one_line() -> None:
    import io
    import queue
    import threading

    from unifeed.core.errors import UnifeedError
    from unifeed.ingest._run import FileSink, IngestRun, Outputs
    from unifeed.ingest._sources import Counters, Source

    class Broken(Source):
        def work(self) -> None:
            raise OSError(5, "Input/output error")

    polls: queue.Queue[Any] = queue.Queue(maxsize=4)
    stop = threading.Event()
    counters = Counters()
    sink = FileSink(io.BytesIO())
    run = IngestRun(
        tracker=Tracker(nearest_airport=AIRPORTS.nearest),
        outputs=Outputs(sink, sink, sink),
        sources=[Broken("replay.jsonl", polls, stop, counters, interval_s=1.0)],
        polls=polls,
        stop=stop,
        counters=counters,
        status_interval_s=0.0,
    )
    with pytest.raises(UnifeedError, match=r"^replay.jsonl: OSError: \[Errno 5\] Input/output error$"):
        run.run()
    assert stop.is_set()
