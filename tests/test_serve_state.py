"""The pure part of serve: fold, staleness by feed time, viewport frames, audience."""

from __future__ import annotations

import doctest
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unifeed.serve import _source, _state
from unifeed.serve._state import Fold, Table, Viewport

LEVELS = ("public", "restricted", "blocked")
STALE = 120_000


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def reference(records: list[dict[str, Any]], stale_ms: int, audience: int) -> dict[str, dict[str, Any]]:
    """The contract's fold written out plainly: per key the latest position, the latest
    flightplan of its flight, current by feed time, visible by max(own, flight); a track's
    position without a flight at or before a position of it with one is superseded."""
    flights: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    linked: dict[str, int] = {}  # surface_id -> pitr of its latest position with a flight
    feed = 0
    for r in records:
        feed = max(feed, r["pitr"])
        if r["type"] == "flightplan":
            flights[r["id"]] = r
        elif r["type"] in ("position", "ground_position", "vehicle_position"):
            flight = r.get("id") if r["type"] != "vehicle_position" else None
            if flight is None and linked.get(r["surface_id"], -1) >= r["pitr"]:
                continue  # not after the link: the link wins
            if flight is not None and r.get("surface_id") is not None:
                linked[r["surface_id"]] = r["pitr"]
                gone = latest.get(r["surface_id"])
                if gone is not None and gone["kind"] == "vehicle":
                    del latest[r["surface_id"]]
            key = flight if flight is not None else r["surface_id"]
            latest[key] = {**r, "kind": "flight" if flight is not None else "vehicle"}
    rank = {None: 0, **{name: i for i, name in enumerate(LEVELS)}}
    out = {}
    for key, r in latest.items():
        if r["pitr"] < feed - stale_ms:
            continue
        flight_access = flights.get(key, {}).get("access") if r["kind"] == "flight" else None
        level = max(rank[r.get("access")], rank[flight_access])
        if level > audience:
            continue
        out[key] = {"lat": r["lat"], "lon": r["lon"], "pitr": r["pitr"], "kind": r["kind"],
                    "access": LEVELS[level]}
    return out


@st.composite
def feeds(draw: st.DrawFn) -> list[dict[str, Any]]:
    flights = ["F1", "F2", "F3"]
    surfaces = ["S1", "S2"]
    pitr = 1_000_000
    records = []
    for _ in range(draw(st.integers(0, 60))):
        pitr += draw(st.sampled_from([0, 1, 500, 30_000, 100_000, 200_000]))
        kind = draw(st.sampled_from(["flightplan", "position", "ground_position", "vehicle_position", "keepalive"]))
        record: dict[str, Any] = {"type": kind, "pitr": pitr}
        if kind == "flightplan":
            record |= {"id": draw(st.sampled_from(flights)), "ident": "UAL1"}
            access = draw(st.sampled_from([None, *LEVELS]))
            if access is not None:
                record["access"] = access
        elif kind != "keepalive":
            record |= {"lat": draw(st.floats(-10, 10)), "lon": draw(st.floats(-10, 10)), "clock": pitr}
            if kind == "position":
                record["id"] = draw(st.sampled_from(flights))
            else:
                record |= {"surface_id": draw(st.sampled_from(surfaces)), "facility": "KSFO"}
                if kind == "ground_position" and draw(st.booleans()):
                    record["id"] = draw(st.sampled_from(flights))
                    record["access"] = draw(st.sampled_from(LEVELS))
        records.append(record)
    return records


@settings(max_examples=300, deadline=None)
@given(feeds(), st.integers(1, 7), st.sampled_from([0, 1, 2]))
def test_state_equals_reference_fold(records: list[dict[str, Any]], batch: int, audience: int) -> None:
    table = Table(STALE)
    fold = Fold(table)
    lines = [_line(r) for r in records]
    for start in range(0, len(lines), batch):
        fold.apply(lines[start : start + batch])
        if start % 3 == 0:
            fold.expire()
    got = {a.id: {"lat": a.lat, "lon": a.lon, "pitr": a.pitr, "kind": a.kind, "access": a.access}
           for a in table.query(None, audience)}
    assert got == reference(records, STALE, audience)


@settings(max_examples=200, deadline=None)
@given(feeds(), st.integers(1, 5), st.sampled_from([0, 1, 2]),
       st.tuples(st.floats(-12, 12), st.floats(-12, 0), st.floats(-12, 12), st.floats(0, 12)))
def test_viewport_frames_rebuild_the_view(
    records: list[dict[str, Any]], batch: int, audience: int, box: tuple[float, float, float, float]
) -> None:
    """A client applying the snapshot and then every update holds exactly the query's answer
    (boxes with west > east cross the antimeridian and must work too)."""
    table = Table(STALE)
    fold = Fold(table)
    view = Viewport(box, audience)
    client: dict[str, Any] = {}
    frame = json.loads(view.snapshot(table, "catchup"))
    assert frame["type"] == "snapshot" and frame["mode"] == "catchup"
    client = {a["id"]: a for a in frame["aircraft"]}
    lines = [_line(r) for r in records]
    for start in range(0, len(lines), batch):
        fold.apply(lines[start : start + batch])
        fold.expire()
        data = view.update(table, "catchup")
        if data is not None:
            frame = json.loads(data)
            assert frame["type"] == "update" and frame["pitr"] == table.pitr
            assert frame["mode"] == "catchup"
            assert frame["upsert"] or frame["remove"]
            for key in frame["remove"]:
                del client[key]
            client |= {a["id"]: a for a in frame["upsert"]}
        expected = {a.id: json.loads(msgspec.json.encode(a)) for a in table.query(box, audience)}
        assert client == expected
        assert all(a["access"] in LEVELS[: audience + 1] for a in client.values())


def test_staleness_is_by_feed_time_only() -> None:
    table = Table(STALE)
    fold = Fold(table)
    fold.apply([_line({"type": "position", "pitr": 1_000, "id": "F1", "lat": 1, "lon": 2, "clock": 1})])
    # Years of wall time have passed since pitr 1000; only feed time counts.
    assert [a.id for a in table.query(None, 0)] == ["F1"]
    fold.apply([_line({"type": "keepalive", "pitr": 1_000 + STALE})])
    assert [a.id for a in table.query(None, 0)] == ["F1"]  # exactly --stale later: current
    fold.apply([_line({"type": "keepalive", "pitr": 1_001 + STALE})])
    assert table.query(None, 0) == []
    assert table.lookup("F1", 2) is None
    assert fold.expire().removed == {"F1"}
    assert len(table) == 0


def test_flight_becoming_restricted_leaves_public_view_at_that_pitr() -> None:
    table = Table(STALE)
    fold = Fold(table)
    fold.apply([
        _line({"type": "flightplan", "pitr": 10, "id": "F1", "ident": "UAL1"}),
        _line({"type": "position", "pitr": 11, "id": "F1", "lat": 1, "lon": 2, "clock": 11}),
    ])
    view = Viewport((-180, -90, 180, 90), 0)
    assert json.loads(view.snapshot(table, "live"))["aircraft"][0]["id"] == "F1"
    changes = fold.apply([_line({"type": "flightplan", "pitr": 12, "id": "F1", "ident": "UAL1",
                                 "access": "restricted"})])
    assert changes.upserts["F1"].access == "restricted"
    assert json.loads(view.update(table, "live") or b"{}") == {
        "type": "update", "pitr": 12, "mode": "live", "upsert": [], "remove": ["F1"]}
    assert table.lookup("F1", 0) is None and table.lookup("F1", 1) is not None


def test_a_change_of_mode_alone_is_an_update() -> None:
    """Every frame says live or catchup; when only that changed, the update is empty but
    sent, once."""
    table = Table(STALE)
    fold = Fold(table)
    fold.apply([_line({"type": "position", "pitr": 11, "id": "F1", "lat": 1, "lon": 2, "clock": 11})])
    view = Viewport((-180, -90, 180, 90), 0)
    assert json.loads(view.snapshot(table, "catchup"))["mode"] == "catchup"
    assert view.update(table, "catchup") is None
    assert json.loads(view.update(table, "live") or b"{}") == {
        "type": "update", "pitr": 11, "mode": "live", "upsert": [], "remove": []}
    assert view.update(table, "live") is None


def test_squawk_is_the_positions_own() -> None:
    """A position's squawk (string, or a number written as four digits) is in the state
    and its history row; a later position without one has none, and the emergency it
    meant goes with it."""
    table = Table(STALE)
    fold = Fold(table)
    changes = fold.apply([
        _line({"type": "position", "pitr": 1, "id": "F1", "lat": 1, "lon": 2, "clock": 1, "squawk": "7500"}),
        _line({"type": "position", "pitr": 2, "id": "F2", "lat": 1, "lon": 2, "clock": 1, "squawk": 1200}),
        _line({"type": "position", "pitr": 2, "id": "F3", "lat": 1, "lon": 2, "clock": 1, "squawk": 17}),
        _line({"type": "ground_position", "pitr": 3, "surface_id": "S1", "facility": "KSFO",
               "lat": 1, "lon": 2, "clock": 1, "squawk": "7700"}),
        _line({"type": "position", "pitr": 4, "id": "F4", "lat": 1, "lon": 2, "clock": 1, "squawk": True}),
    ])
    got = {a.id: (a.squawk, a.emergency) for a in table.all()}
    assert got == {"F1": ("7500", "hijack"), "F2": ("1200", None), "F3": ("0017", None),
                   "S1": ("7700", "general"), "F4": (None, None)}
    assert [(a.id, a.squawk) for a in changes.positions][:2] == [("F1", "7500"), ("F2", "1200")]
    assert json.loads(msgspec.json.encode(table.get("F1")))["squawk"] == "7500"
    fold.apply([_line({"type": "position", "pitr": 5, "id": "F1", "lat": 1, "lon": 2, "clock": 5})])
    f1 = table.get("F1")
    assert f1 is not None and (f1.squawk, f1.emergency) == (None, None)


def test_derived_fields() -> None:
    table = Table(STALE)
    fold = Fold(table)
    fold.apply([
        _line({"type": "flightplan", "pitr": 1, "id": "F1", "ident": "UAL1", "orig": "KSFO",
               "dest": "KJFK", "aircrafttype": "B738", "reg": "N1"}),
        _line({"type": "position", "pitr": 60_000, "id": "F1", "lat": 1, "lon": 2, "clock": 1,
               "alt": 5000, "air_ground": "A"}),
        _line({"type": "position", "pitr": 120_000, "id": "F1", "lat": 1, "lon": 2, "clock": 1,
               "alt": 7000, "squawk": "7700"}),
        _line({"type": "position", "pitr": 120_000, "id": "F2", "lat": 1, "lon": 2, "clock": 1,
               "phase": "taxi", "emergency": "medical", "on_ground": True}),
        _line({"type": "vehicle_position", "pitr": 120_000, "surface_id": "V1", "facility": "KSFO",
               "lat": 1, "lon": 2, "clock": 1}),
    ])
    f1, f2, v1 = (table.get(k) for k in ("F1", "F2", "V1"))
    assert f1 is not None and f2 is not None and v1 is not None
    assert (f1.phase, f1.emergency, f1.on_ground) == ("climb", "general", False)
    assert (f1.ident, f1.origin, f1.destination, f1.aircraft_type, f1.registration) == (
        "UAL1", "KSFO", "KJFK", "B738", "N1")
    assert (f2.phase, f2.emergency, f2.on_ground) == ("taxi", "medical", True)
    assert (v1.kind, v1.phase, v1.on_ground) == ("vehicle", "ground", True)


def test_bad_records_are_counted_not_applied() -> None:
    table = Table(STALE)
    changes = Fold(table).apply([b"not json", b"[1]", b'{"type":"position","pitr":"x"}',
                                 _line({"type": "position", "pitr": 5, "id": "F1", "lat": 95, "lon": 0}),
                                 _line({"type": "position", "pitr": 5, "lat": 1, "lon": 0})])
    assert changes.bad == 5 and len(table) == 0


@pytest.mark.parametrize(("box", "reason"), [
    ((0, 10, 1, 5), "south must not exceed north"),
    ((0, -91, 1, 5), "within -90..90"),
    ((-181, 0, 1, 5), "within -180..180"),
    ((float("nan"), 0, 1, 5), "finite"),
])
def test_bad_bbox_has_a_reason(box: tuple[float, float, float, float], reason: str) -> None:
    assert reason in (_state.valid_bbox(box) or "")


@pytest.mark.parametrize("module", [_state, _source], ids=lambda m: m.__name__)
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _record_key(record: dict[str, Any]) -> str:
    if record["type"] == "keepalive":
        return "keepalive"
    if record["type"] != "vehicle_position" and "id" in record:
        return str(record["id"])
    return str(record["surface_id"])


@settings(max_examples=300, deadline=None)
@given(feeds(), st.integers(2, 4), st.randoms(use_true_random=False), st.sampled_from([0, 1, 2]))
def test_partitions_interleaved_give_the_state_of_the_feed(
    records: list[dict[str, Any]], partitions: int, rng: Any, audience: int
) -> None:
    """Records spread over partitions by aircraft, each partition in order, read in any
    interleaving: the same state as the feed in pitr order (older records do not win)."""
    queues: list[list[dict[str, Any]]] = [[] for _ in range(partitions)]
    for record in records:
        queues[hash(_record_key(record)) % partitions].append(record)
    merged: list[dict[str, Any]] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        merged.append(queue.pop(0))
    table = Table(STALE)
    fold = Fold(table)
    fold.apply([_line(r) for r in merged])
    got = {a.id: {"lat": a.lat, "lon": a.lon, "pitr": a.pitr, "kind": a.kind, "access": a.access}
           for a in table.query(None, audience)}
    assert got == reference(records, STALE, audience)


def test_phase_from_positions_closer_than_a_second() -> None:
    """Positions every 200 ms: the rate is measured over a second or more, not never."""
    table = Table(STALE)
    fold = Fold(table)
    lines = [
        _line({"type": "position", "pitr": 1_000 + 200 * k, "id": "F1", "lat": 1, "lon": 2,
               "clock": 1, "alt": 10_000 + 20 * k, "air_ground": "A"})  # 6,000 ft/min
        for k in range(12)
    ] + [
        _line({"type": "position", "pitr": 4_000 + 200 * k, "id": "F2", "lat": 1, "lon": 2,
               "clock": 1, "alt": 30_000, "air_ground": "A"})
        for k in range(12)
    ]
    fold.apply(lines)
    phases = {a.id: a.phase for a in table.all()}
    assert phases == {"F1": "climb", "F2": "cruise"}
