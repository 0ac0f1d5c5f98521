"""Access across time: late surface messages and restarts (docs/guarantees.md, "Access
across late arrivals and restarts").

A late surface message is annotated with its flight as of its own pitr, never weaker
than that flight is now; a restart keeps every link and access level whatever
``--lookback`` (the state travels with the checkpoint).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.kafkatools import keepalive, load, read_all, run_cli, start_cli, wait_for
from unifeed import unify_lines
from unifeed._unify import derive_mapping_lines

pytestmark = pytest.mark.kafka

HOUR = 3_600_000
# The restart's log line: the flightplan's access level came from the saved state, read
# from an offset past it (not from a replay of the whole topic).
RESTORED = re.compile(rb"restored \d+ links and [1-9]\d* access levels saved at \S+ offset [1-9]")


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def combine_args(bootstrap: str, ctl: str, srf: str, out: str, *extra: str) -> list[str]:
    return ["combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
            "--output", f"kafka:{out}", "--bootstrap-servers", bootstrap,
            "--instance", f"i-{out}", "--checkpoint-topic", f"{out}.checkpoints",
            "--status-interval", "0", *extra]


def ground_positions(records: list[bytes]) -> list[dict[str, Any]]:
    return [m for m in map(json.loads, records) if m["type"] == "ground_position"]


def test_late_surface_messages_get_the_link_and_access_of_their_own_pitr(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """Live, default rule: F1 (restricted) is linked to S1 from t-9 s to t-4 s; F2
    (restricted) is linked to S2 and becomes public at t-4 s. Positions of S1 and S2 at
    t-6 s arrive after all of that was written. Both must say F1/F2 ``restricted``, as the
    file run does, and ``dump --audience public`` must show neither."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    t = int(time.time() * 1000)
    stop_at = t + 3_000
    control = [
        line({"type": "flightplan", "pitr": t - 20_000, "id": "F1", "ident": "A1",
              "access": "restricted"}),
        line({"type": "flightplan", "pitr": t - 20_000, "id": "F2", "ident": "A2",
              "access": "restricted"}),
        line({"type": "power_on", "pitr": t - 10_000, "id": "F2", "surface_id": "S2",
              "facility": "KSFO"}),
        line({"type": "power_on", "pitr": t - 9_000, "id": "F1", "surface_id": "S1",
              "facility": "KSFO"}),
        line({"type": "power_off", "pitr": t - 4_000, "id": "F1", "surface_id": "S1",
              "facility": "KSFO"}),
        line({"type": "flightplan", "pitr": t - 4_000, "id": "F2", "ident": "A2",
              "access": "public"}),
        keepalive(t - 1_000),
    ]
    surface = [
        line({"type": "ground_position", "pitr": t - 6_000, "surface_id": s,
              "facility": "KSFO", "clock": t - 6_000, "lat": 37.6, "lon": -122.4})
        for s in ("S1", "S2")
    ]
    expected, _ = unify_lines(control, surface)
    assert [(m["id"], m["access"]) for m in ground_positions(expected)] == [
        ("F1", "restricted"), ("F2", "restricted")]

    load(kafka_bootstrap, ctl, control)
    proc = start_cli(combine_args(kafka_bootstrap, ctl, srf, out, "--stop-at", str(stop_at)))
    try:
        # Every control message is written (so every mapping was applied) before the
        # surface positions are produced.
        wait_for(lambda: len(read_all(kafka_bootstrap, out)) >= 6, 60, "the control messages")
        time.sleep(1.5)
        load(kafka_bootstrap, srf, surface)
        wait_for(lambda: len(read_all(kafka_bootstrap, out)) >= 8, 60, "the surface messages")
        load(kafka_bootstrap, ctl, [keepalive(stop_at + 1)])
        load(kafka_bootstrap, srf, [keepalive(stop_at + 1)])
        rc = proc.wait(timeout=60)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert rc == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    written = read_all(kafka_bootstrap, out)
    assert [(m.get("id"), m.get("access")) for m in ground_positions(written)] == [
        ("F1", "restricted"), ("F2", "restricted")]
    assert sorted(written) == sorted(expected)
    public = run_cli(["dump", f"kafka:{out}", "--bootstrap-servers", kafka_bootstrap,
                      "--audience", "public"], timeout_s=60)
    assert public.returncode == 0, public.stderr.decode()
    assert ground_positions(public.stdout.splitlines()) == []


def _old_flightplan_scenario() -> tuple[list[bytes], list[bytes], int]:
    """F1 filed restricted at t0, powered on at t0+7h, positions every 10 s for 10 min;
    keepalives every 500 ms in between (enough records for a restart to seek past t0)."""
    t0 = 1_700_000_000_000
    on = t0 + 7 * HOUR
    control = [
        line({"type": "flightplan", "pitr": t0, "id": "F1", "ident": "UAL1",
              "access": "restricted"}),
        line({"type": "flightplan", "pitr": t0 + 1000, "id": "F9", "ident": "PUB9"}),
    ]
    control += [keepalive(p) for p in range(t0 + 1500, on, 500)]
    control.append(line({"type": "power_on", "pitr": on, "id": "F1", "surface_id": "S1",
                         "facility": "KSFO"}))
    surface: list[bytes] = []
    for k in range(60):
        p = on + 1000 + k * 10_000
        control.append(line({"type": "position", "pitr": p, "id": "F9", "clock": p,
                             "lat": 1.0, "lon": 2.0}))
        surface.append(line({"type": "ground_position", "pitr": p + 1, "surface_id": "S1",
                             "facility": "KSFO", "clock": p, "lat": 37.6, "lon": -122.4}))
    return control, surface, on + 300_000


def test_restart_keeps_access_older_than_the_lookback(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """A run stopped at t0+7h+300s and restarted (default --lookback 6h) writes what an
    uninterrupted run writes: every position of F1 ``restricted``."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface, stop = _old_flightplan_scenario()
    expected, _ = unify_lines(control, surface)
    assert {m["access"] for m in ground_positions(expected)} == {"restricted"}
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    first = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, "--exit-at-end",
                                 "--stop-at", str(stop)))
    assert first.returncode == 0, first.stderr.decode()
    part = read_all(kafka_bootstrap, out)
    assert 0 < len(part) < len(expected)
    second = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, "--exit-at-end"))
    assert second.returncode == 0, second.stderr.decode()
    assert RESTORED.search(second.stderr), second.stderr.decode()
    written = read_all(kafka_bootstrap, out)
    assert [m.get("access") for m in ground_positions(written)] == ["restricted"] * 60
    assert written == expected


def test_mappings_restart_keeps_access_older_than_the_lookback(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """`unifeed mappings` stopped and restarted: the same mappingstream as one run."""
    ctl, mp = unique_topic("ctl"), unique_topic("map")
    control, _, stop = _old_flightplan_scenario()
    control.append(line({"type": "power_off", "pitr": stop + 600_000, "id": "F1",
                         "surface_id": "S1", "facility": "KSFO"}))
    expected, _ = derive_mapping_lines(control)
    load(kafka_bootstrap, ctl, control)
    args = ["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{mp}",
            "--bootstrap-servers", kafka_bootstrap, "--instance", f"m-{mp}",
            "--checkpoint-topic", f"{mp}.checkpoints", "--status-interval", "0",
            "--exit-at-end"]
    first = run_cli([*args, "--stop-at", str(stop - 200_000)])
    assert first.returncode == 0, first.stderr.decode()
    assert 0 < len(read_all(kafka_bootstrap, mp)) < len(expected)
    second = run_cli(args)
    assert second.returncode == 0, second.stderr.decode()
    assert RESTORED.search(second.stderr), second.stderr.decode()
    written = read_all(kafka_bootstrap, mp)
    unlinks = [m for m in map(json.loads, written) if m.get("action") == "unlink"]
    assert [m["access"] for m in unlinks] == ["restricted"]
    assert written == expected
