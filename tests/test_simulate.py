"""The traffic simulator: deterministic, valid, realistic, lazy, and its CLI."""

from __future__ import annotations

import doctest
import gc
import re
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

import unifeed.sim.traffic as simulate_module
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM, RecordDecoder
from unifeed.sim.traffic import (
    Simulation,
    iter_traffic,
    simulate,
    write_simulation,
)
from unifeed.sim.world import MAX_AIRPORTS, SITES

T0 = 1_700_000_000_000
ROOT = Path(__file__).resolve().parent.parent
CLI = (sys.executable, "-m", "unifeed")

CONTROL_TYPES = {
    "position",
    "flightplan",
    "departure",
    "arrival",
    "cancellation",
    "power_on",
    "surface_offblock",
    "surface_onblock",
    "power_off",
    "keepalive",
}
SURFACE_TYPES = {
    "ground_position",
    "vehicle_position",
    "location_entry",
    "location_exit",
    "keepalive",
}
LINK_TYPES = {"power_on", "surface_offblock", "surface_onblock"}


@pytest.fixture(scope="module")
def busy() -> Simulation:
    """Ten airports at the default rate: about 2,000 controlstream messages per second."""
    return simulate(seed=7, minutes=0.5, airports=10)


@pytest.fixture(scope="module")
def decoded(busy: Simulation) -> dict[str, list[dict[str, Any]]]:
    return {
        CONTROLSTREAM: [msgspec.json.decode(line) for line in busy.controlstream],
        SURFACESTREAM: [msgspec.json.decode(line) for line in busy.surfacestream],
    }


# -- determinism ---------------------------------------------------------------


def test_same_arguments_give_byte_identical_output() -> None:
    a = simulate(seed=5, minutes=0.5, airports=3, rate=50)
    b = simulate(seed=5, minutes=0.5, airports=3, rate=50)
    assert a == b
    assert a.controlstream and a.surfacestream
    c = simulate(seed=6, minutes=0.5, airports=3, rate=50)
    assert c.controlstream != a.controlstream


def test_a_shorter_run_is_a_prefix_of_a_longer_one() -> None:
    short = simulate(seed=5, minutes=0.25, airports=3, rate=50)
    long = simulate(seed=5, minutes=0.5, airports=3, rate=50)
    for feed in (CONTROLSTREAM, SURFACESTREAM):
        head = getattr(short, feed)[:-1]  # all but the closing keepalive
        assert getattr(long, feed)[: len(head)] == head


def test_start_time_shifts_pitr() -> None:
    sim = simulate(seed=1, minutes=0.1, airports=2, rate=50, start_ms=T0 + 3_600_000)
    first = msgspec.json.decode(sim.controlstream[0])
    assert T0 + 3_600_000 <= first["pitr"] < T0 + 3_600_000 + 3000
    assert sim.end_ms == T0 + 3_600_000 + 6000


# -- validity --------------------------------------------------------------------


def test_every_line_is_a_valid_record_and_pitr_never_decreases(busy: Simulation) -> None:
    for feed in (CONTROLSTREAM, SURFACESTREAM):
        decoder = RecordDecoder(feed)
        last = busy.start_ms
        lines: list[bytes] = getattr(busy, feed)
        for line in lines:
            assert b"\n" not in line
            record = decoder.decode(line)
            assert record.pitr >= last, (feed, line)
            last = record.pitr
        assert busy.start_ms <= last == busy.end_ms
        assert lines[-1] == b'{"type":"keepalive","pitr":%d}' % busy.end_ms


def test_counts_match_the_lines(busy: Simulation) -> None:
    for feed in (CONTROLSTREAM, SURFACESTREAM):
        lines = getattr(busy, feed)
        kinds = Counter(msgspec.json.decode(line)["type"] for line in lines[:5000])
        for kind, n in kinds.items():
            assert busy.counts[feed][kind] >= n
        assert sum(busy.counts[feed].values()) == len(lines)


def test_iter_traffic_merges_both_feeds_in_pitr_order() -> None:
    pitrs: list[int] = []
    feeds: set[str] = set()
    control: list[bytes] = []
    for feed, pitr, line in iter_traffic(seed=3, minutes=0.2, airports=2, rate=50):
        pitrs.append(pitr)
        feeds.add(feed)
        assert msgspec.json.decode(line)["pitr"] == pitr
        if feed == CONTROLSTREAM:
            control.append(line)
    assert pitrs == sorted(pitrs)
    assert feeds == {CONTROLSTREAM, SURFACESTREAM}
    assert control == simulate(seed=3, minutes=0.2, airports=2, rate=50).controlstream


# -- realism -----------------------------------------------------------------------


def test_rate_is_within_20_percent_for_ten_airports(busy: Simulation) -> None:
    # Steady state: after the first seconds, in which flights under way at the start
    # are announced.
    lo = busy.start_ms + 5000
    seconds = (busy.end_ms - lo) / 1000
    for feed in (CONTROLSTREAM, SURFACESTREAM):
        pitrs = [msgspec.json.decode(line, type=_Pitr).pitr for line in getattr(busy, feed)]
        per_second = sum(1 for p in pitrs if lo <= p < busy.end_ms) / seconds
        assert 0.8 * 2000 <= per_second <= 1.2 * 2000, (feed, per_second)


def test_every_message_type_occurs(busy: Simulation) -> None:
    assert set(busy.counts[CONTROLSTREAM]) == CONTROL_TYPES
    assert set(busy.counts[SURFACESTREAM]) == SURFACE_TYPES
    # Positions dominate both feeds.
    assert busy.counts[CONTROLSTREAM]["position"] > 0.8 * len(busy.controlstream)


def test_records_look_like_flight_tracking(decoded: dict[str, list[dict[str, Any]]]) -> None:
    sites = {site.code: site for site in SITES[:10]}
    flight_id = re.compile(r"^[A-Z]{3}\d{1,4}-\d{10}-schedule-\d{4}$")
    position_fields = {
        "type",
        "pitr",
        "id",
        "clock",
        "lat",
        "lon",
        "alt",
        "gs",
        "heading",
        "ident",
        "hexid",
        "air_ground",
        "updateType",
    }
    for m in decoded[CONTROLSTREAM]:
        if m["type"] == "position":
            assert set(m) == position_fields
            assert flight_id.match(m["id"]) and m["id"].startswith(m["ident"] + "-")
            assert m["clock"] < m["pitr"]
            assert 0 <= m["alt"] <= 40_000 and 100 <= m["gs"] <= 500
            assert re.fullmatch(r"[0-9A-F]{6}", m["hexid"])
        elif m["type"] == "flightplan":
            assert m["orig"] in sites and m["dest"] in sites and m["orig"] != m["dest"]
        elif m["type"] in LINK_TYPES or m["type"] == "power_off":
            assert m["facility"] in sites
    for m in decoded[SURFACESTREAM]:
        if m["type"] in ("ground_position", "vehicle_position"):
            site = sites[m["facility"]]
            assert abs(m["lat"] - site.lat) < 0.05 and abs(m["lon"] - site.lon) < 0.08
            assert m["pitr"] - 1500 <= m["clock"] < m["pitr"]
            assert "id" not in m  # surfacestream has no flight IDs
        elif m["type"] in ("location_entry", "location_exit"):
            assert m["location"] in ("deicing_pad", "cargo_ramp")


def test_clock_is_sometimes_out_of_order(decoded: dict[str, list[dict[str, Any]]]) -> None:
    last: dict[str, int] = {}
    inversions = positions = 0
    for m in decoded[CONTROLSTREAM]:
        if m["type"] == "position":
            positions += 1
            if m["clock"] < last.get(m["id"], 0):
                inversions += 1
            last[m["id"]] = m["clock"]
    assert 0.01 * positions < inversions < 0.2 * positions


def test_some_ground_positions_precede_their_link(
    decoded: dict[str, list[dict[str, Any]]],
) -> None:
    first_link: dict[str, int] = {}
    for m in decoded[CONTROLSTREAM]:
        if m["type"] in LINK_TYPES:
            first_link.setdefault(m["surface_id"], m["pitr"])
    grounds = [m for m in decoded[SURFACESTREAM] if m["type"] == "ground_position"]
    unmapped = [m for m in grounds if m["pitr"] < first_link.get(m["surface_id"], 2**63)]
    assert 0 < len(unmapped) < 0.02 * len(grounds)
    vehicles = {m["surface_id"] for m in decoded[SURFACESTREAM] if m["type"] == "vehicle_position"}
    assert vehicles and not vehicles & set(first_link)  # vehicles are never linked


def test_restricted_blocked_and_access_changes(
    decoded: dict[str, list[dict[str, Any]]],
) -> None:
    access: dict[str, str] = {}
    linked: set[str] = set()
    changes = 0
    for m in decoded[CONTROLSTREAM]:
        if m["type"] == "flightplan":
            level = m.get("access", "public")
            if m["id"] in access and access[m["id"]] != level and m["id"] in linked:
                changes += 1
            access[m["id"]] = level
        elif m["type"] in LINK_TYPES:
            linked.add(m["id"])
    levels = Counter(access.values())
    assert changes >= 1
    assert 0.02 * len(access) < levels["restricted"] < 0.1 * len(access)
    assert 0.005 * len(access) < levels["blocked"] < 0.05 * len(access)
    assert levels["public"] > 0.85 * len(access)


def test_flight_life_cycle_in_order(decoded: dict[str, list[dict[str, Any]]]) -> None:
    order = ["flightplan", "power_on", "surface_offblock", "departure", "arrival"]
    seen: dict[str, list[str]] = {}
    for m in decoded[CONTROLSTREAM]:
        if m["type"] in order or m["type"] in ("surface_onblock", "power_off"):
            seen.setdefault(m["id"], []).append(m["type"])
    complete = 0
    for kinds in seen.values():
        if "departure" in kinds and kinds[0] == "flightplan":
            steps = [k for k in kinds if k in order]
            assert steps.index("departure") > steps.index("surface_offblock")
            complete += 1
    assert complete > 0


# -- laziness and memory ---------------------------------------------------------


def test_iter_traffic_is_lazy_and_checks_arguments_at_once() -> None:
    it = iter_traffic(minutes=60 * 24, airports=2)
    assert isinstance(it, types.GeneratorType)
    assert next(it)[0] in (CONTROLSTREAM, SURFACESTREAM)
    it.close()
    bad_arguments: list[dict[str, Any]] = [
        {"airports": 1},
        {"airports": MAX_AIRPORTS + 1},
        {"minutes": 0},
        {"minutes": float("inf")},
        {"rate": 0},
        {"rate": float("nan")},
    ]
    for bad in bad_arguments:
        with pytest.raises(ValueError, match=next(iter(bad))):
            iter_traffic(**bad)
    with pytest.raises(ValueError, match="start_ms"):
        iter_traffic(start_ms=-1)


def test_memory_does_not_grow_with_minutes() -> None:
    # Memory blocks in use after each simulated minute: flat, since nothing accumulates.
    blocks: list[int] = []
    mark = T0 + 60_000
    for _, pitr, _ in iter_traffic(seed=2, minutes=10, airports=2, rate=40):
        if pitr >= mark:
            gc.collect()
            blocks.append(sys.getallocatedblocks())
            mark += 60_000
    assert len(blocks) == 10
    assert max(blocks[2:]) < 1.1 * blocks[0] + 2000, blocks


# -- files and CLI -------------------------------------------------------------


def test_write_simulation(tmp_path: Path) -> None:
    sim = write_simulation(tmp_path / "out", seed=4, minutes=0.2, airports=2, rate=40)
    for feed in (CONTROLSTREAM, SURFACESTREAM):
        data = (tmp_path / "out" / f"{feed}.jsonl").read_bytes()
        assert data == b"".join(line + b"\n" for line in getattr(sim, feed))


def test_cli_writes_the_same_bytes(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *CLI,
            "simulate",
            "--out-dir",
            str(tmp_path),
            "--seed",
            "9",
            "--minutes",
            "0.2",
            "--airports",
            "2",
            "--rate",
            "40",
            "--start",
            "2023-11-14T22:13:20Z",
        ],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    sim = simulate(seed=9, minutes=0.2, airports=2, rate=40, start_ms=T0)
    for feed in (CONTROLSTREAM, SURFACESTREAM):
        data = (tmp_path / f"{feed}.jsonl").read_bytes()
        assert data == b"".join(line + b"\n" for line in getattr(sim, feed))
    summary = done.stderr.decode().splitlines()
    assert len(summary) == 2
    assert summary[0].endswith("MB") and "controlstream.jsonl" in summary[0]
    assert f"{len(sim.controlstream):,} messages" in summary[0]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--airports", "1", b"airports must be between 2 and"),
        ("--rate", "-3", b"rate must be a positive number"),
        ("--start", "yesterday", b"--start must be epoch milliseconds or ISO-8601"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, option: str, value: str, message: bytes) -> None:
    done = subprocess.run(
        [*CLI, "simulate", "--out-dir", str(tmp_path), option, value],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not list(tmp_path.iterdir())


def test_doctests() -> None:
    assert doctest.testmod(simulate_module).failed == 0


class _Pitr(msgspec.Struct):
    pitr: int
