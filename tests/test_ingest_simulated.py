"""Ingest against the truth the simulator knows: `adsb_responses` renders simulated traffic
as readsb responses; the flights, links, transitions and access levels ingest recovers
from them are checked against the simulation's own controlstream and surfacestream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from unifeed.core.records import ACCESS_RANK, RecordDecoder
from unifeed.ingest import AccessList, Tracker, decode_response, load_airports
from unifeed.sim.adsb import adsb_responses
from unifeed.sim.traffic import simulate

TRAFFIC: dict[str, Any] = {"seed": 11, "minutes": 25, "airports": 2, "rate": 15}
INTERVAL_MS = 10_000


@pytest.fixture(scope="module")
def truth_and_ingest() -> tuple[dict[str, Any], dict[str, Any]]:
    sim = simulate(**TRAFFIC)
    access: dict[str, str] = {}
    bodies = list(adsb_responses(interval_ms=INTERVAL_MS, access=access, **TRAFFIC))
    tracker = Tracker(nearest_airport=load_airports().nearest,
                      access=AccessList(access))  # type: ignore[arg-type]  # fmt: skip
    control: list[dict[str, Any]] = []
    surface: list[dict[str, Any]] = []
    decoders = (RecordDecoder("controlstream"), RecordDecoder("surfacestream"))
    for body in bodies:
        snap = decode_response(body)
        batch = tracker.process(snap, pitr=snap.now_ms)
        for line in batch.control:
            decoders[0].decode(line)
            control.append(json.loads(line))
        for line in batch.surface:
            decoders[1].decode(line)
            surface.append(json.loads(line))

    sim_control = [json.loads(x) for x in sim.controlstream]
    sim_surface = [json.loads(x) for x in sim.surfacestream]
    hex_of: dict[str, str] = {}  # sim flight id -> address
    link: dict[str, str] = {}
    for r in sim_control + sim_surface:
        if r["type"] in ("power_on", "surface_offblock", "surface_onblock"):
            link[r["surface_id"]] = r["id"]
    for r in sim_control:
        if r["type"] == "position":
            hex_of[r["id"]] = r["hexid"].lower()
    for r in sim_surface:
        if r["type"] == "ground_position" and r["surface_id"] in link:
            hex_of[link[r["surface_id"]]] = r["hexid"].lower()
    truth = {
        "control": sim_control,
        "hex_of": hex_of,
        "idents": {r["id"]: r["ident"] for r in sim_control if r["type"] == "flightplan"},
        "access": access,
        "vehicles": {r["surface_id"] for r in sim_surface if r["type"] == "vehicle_position"},
    }
    return truth, {"control": control, "surface": surface}


def events(records: list[dict[str, Any]], kind: str, hex_of: dict[str, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in records:
        if r["type"] == kind and r["id"] in hex_of:
            out.setdefault(hex_of[r["id"]], []).append(r["pitr"])
    return out


def test_flights_match_the_simulated_aircraft(truth_and_ingest: Any) -> None:
    truth, got = truth_and_ingest
    ident_of_hex = {h: truth["idents"][fid] for fid, h in truth["hex_of"].items()}
    plans = [r for r in got["control"] if r["type"] == "flightplan"]
    assert len(plans) > 20
    latest = {plan["id"]: plan for plan in plans}
    for plan in plans:
        assert plan["hexid"] in ident_of_hex, plan
        # Until its callsign is heard a flight goes by its address, then takes the callsign.
        assert plan["ident"] in (ident_of_hex[plan["hexid"]], plan["hexid"].upper()), plan
        assert latest[plan["id"]]["ident"] == ident_of_hex[plan["hexid"]], plan
        assert plan.get("access", "public") == truth["access"].get(plan["hexid"], "public")
    # One flight per simulated aircraft: the simulation never reuses an address.
    ids_per_hex: dict[str, set[str]] = {}
    for plan in plans:
        ids_per_hex.setdefault(plan["hexid"], set()).add(plan["id"])
    assert all(len(ids) == 1 for ids in ids_per_hex.values())
    assert any(ACCESS_RANK[a] > 0 for a in truth["access"].values())


def test_departures_and_arrivals_follow_the_simulated_ones(truth_and_ingest: Any) -> None:
    truth, got = truth_and_ingest
    flight_hex = {r["id"]: r["hexid"] for r in got["control"] if r["type"] == "flightplan"}
    for kind, window_ms in (("departure", 30_000 + INTERVAL_MS), ("arrival", 40_000 + INTERVAL_MS)):
        expected = events(truth["control"], kind, truth["hex_of"])
        seen = events(got["control"], kind, flight_hex)
        assert seen, kind
        for address, pitrs in seen.items():
            (when,) = pitrs
            (actual,) = expected[address]
            assert 0 <= when - actual <= window_ms, (kind, address, when, actual)


def test_vehicles_stay_vehicles_and_ground_tracks_are_linked(truth_and_ingest: Any) -> None:
    truth, got = truth_and_ingest
    vehicles = [r for r in got["surface"] if r["type"] == "vehicle_position"]
    assert len({r["surface_id"] for r in vehicles}) == len(truth["vehicles"])
    # In pitr order, links first at equal pitr (as the annotator applies them), every
    # ground position's track is linked when it comes.
    merged = sorted(
        [(r["pitr"], 0, r) for r in got["control"] if r["type"] in ("power_on", "power_off")]
        + [(r["pitr"], 1, r) for r in got["surface"] if r["type"] == "ground_position"],
        key=lambda e: (e[0], e[1]),
    )
    linked: set[str] = set()
    for _, _, r in merged:
        if r["type"] == "power_on":
            linked.add(r["surface_id"])
        elif r["type"] == "power_off":
            linked.discard(r["surface_id"])
        else:
            assert r["surface_id"] in linked, r
    emergencies = [r for r in got["control"] if r["type"] == "position" and r["emergency"]]
    assert emergencies
