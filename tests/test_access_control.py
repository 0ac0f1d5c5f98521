"""The security invariant (docs/guarantees.md, "Access control"): an annotated surface position carries exactly the
access level of its flight at that ``pitr``, never weaker; an unlink takes effect at
once; ``unifeed dump --audience A`` never shows a message whose access is stronger than A.

The truth is computed here, independently of unifeed and of ``tests/reference.py``: for
each position, a point-in-time question answered from the controlstream alone ("which
flight holds this track after every control event with pitr <= p, and what did that
flight's latest flightplan at or before p say?").
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.kafkatools import load, run_cli
from unifeed import unify_lines

RANK = {"public": 0, "restricted": 1, "blocked": 2}
FLIGHTS = ("F1", "F2", "F3")
TRACKS = ("S1", "S2", "S3")
LINKS = ("power_on", "surface_offblock", "surface_onblock")
T0 = 1_700_000_000_000
HOUR = 3_600_000

CASES: Counter[str] = Counter()
SEEN: Counter[str] = Counter()


class _Summary:
    """Prints how many histories each property tried and what they exercised."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if CASES:
            tried = ", ".join(f"{name}: {n}" for name, n in sorted(CASES.items()))
            terminalreporter.write_line(f"test_access_control cases tried: {tried}")
        if SEEN:
            seen = ", ".join(f"{k} {n}" for k, n in sorted(SEEN.items()))
            terminalreporter.write_line(f"test_access_control positions checked: {seen}")


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("unifeed-access-control-summary"):
        manager.register(_Summary(), "unifeed-access-control-summary")


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# -- the independent truth ---------------------------------------------------


def truth(control: list[dict[str, Any]], surface_id: str, pitr: int) -> tuple[str, str] | None:
    """``(flight, access)`` holding ``surface_id`` at ``pitr``, or None when unlinked.

    Control events at the same pitr as the position count (a link at t applies to a
    position at t; an unlink at t ends it for a position at t).
    """
    holder: str | None = None
    for m in control:
        if m["pitr"] > pitr:
            break
        if m["type"] in LINKS and m["surface_id"] == surface_id:
            holder = m["id"]
        elif m["type"] == "power_off" and m["surface_id"] == surface_id and m["id"] == holder:
            holder = None
    if holder is None:
        return None
    return holder, access_at(control, holder, pitr)


def access_at(control: list[dict[str, Any]], flight: Any, pitr: int) -> str:
    """The access of ``flight``'s latest flightplan with pitr <= ``pitr`` (public if none)."""
    access = "public"
    for m in control:
        if m["pitr"] > pitr:
            break
        if m["type"] == "flightplan" and m["id"] == flight:
            access = m.get("access", "public")
    return access


def unlinked_by_power_off(control: list[dict[str, Any]], surface_id: str, pitr: int) -> bool:
    """Whether the last event on ``surface_id`` at or before ``pitr`` is a power_off."""
    last = None
    for m in control:
        if m["pitr"] > pitr:
            break
        if m["type"] in (*LINKS, "power_off") and m["surface_id"] == surface_id:
            last = m["type"]
    return last == "power_off"


# -- random link / unlink / access-change histories ---------------------------


@st.composite
def histories(draw: st.DrawFn, step_ms: st.SearchStrategy[int]) -> tuple[list[bytes], list[bytes]]:
    """controlstream (flightplans, links, unlinks, positions) and surfacestream around it.

    Small steps put many messages at the same pitr, where "at once" is decided.
    """
    control: list[bytes] = []
    t = T0
    for _ in range(draw(st.integers(1, 14))):
        t += draw(step_ms)
        kind = draw(st.sampled_from(["flightplan", "flightplan", *LINKS, "power_off",
                                     "power_off", "position", "departure"]))
        flight = draw(st.sampled_from(FLIGHTS))
        msg: dict[str, Any] = {"type": kind, "pitr": t, "id": flight}
        if kind == "flightplan":
            msg["ident"] = "UAL" + flight[1:]
            access = draw(st.sampled_from([None, "public", "restricted", "blocked"]))
            if access is not None:
                msg["access"] = access
        elif kind == "position":
            msg.update(clock=t - 500, lat=37.6, lon=-122.4)
        elif kind != "departure":
            msg.update(surface_id=draw(st.sampled_from(TRACKS)), facility="KSFO")
        control.append(line(msg))
    surface: list[bytes] = []
    s = T0
    for seq in range(draw(st.integers(1, 14))):
        s += draw(step_ms)
        sid = draw(st.sampled_from(TRACKS))
        kind = draw(st.sampled_from(["ground_position"] * 4 + ["vehicle_position"]))
        pos: dict[str, Any] = {"type": kind, "pitr": s, "surface_id": sid, "facility": "KSFO",
                               "clock": s - 300, "lat": 37.61, "lon": -122.38, "seq": seq}
        if draw(st.integers(0, 4)) == 0:
            # Upstream values that must never survive annotation (nor leak a weaker level).
            pos.update(id=draw(st.sampled_from(FLIGHTS)), access="public")
        surface.append(line(pos))
    return control, surface


def check_history(control: list[bytes], surface: list[bytes], *, exact: bool) -> None:
    """``exact``: every position is annotated exactly as the truth says. Otherwise (links
    older than the link TTL) only: an annotated position is exactly right, and a position
    whose track was unlinked is not annotated."""
    out, run = unify_lines(control, surface)
    assert run.dead_letters == []
    events = [json.loads(c) for c in control]
    by_seq = {json.loads(s)["seq"]: s for s in surface}
    seen_seqs = []
    for raw in out:
        msg = json.loads(raw)
        if "seq" not in msg:
            continue
        seen_seqs.append(msg["seq"])
        original = by_seq[msg["seq"]]
        if msg["type"] != "ground_position":
            assert raw == original, "only ground_position is ever annotated"
            continue
        want = truth(events, msg["surface_id"], msg["pitr"])
        if want is None:
            assert raw == original, f"unlinked track annotated: {raw!r}"
            SEEN["unlinked"] += 1
            if unlinked_by_power_off(events, msg["surface_id"], msg["pitr"]):
                SEEN["after an unlink"] += 1
                at_unlink = any(e["type"] == "power_off" and e["pitr"] == msg["pitr"]
                                and e["surface_id"] == msg["surface_id"] for e in events)
                SEEN["at the unlink's pitr"] += at_unlink
            continue
        upstream = json.loads(original)
        if raw == original and (upstream.get("id"), upstream.get("access")) != want:
            # Not annotated (an upstream id/access equal to the truth is rewritten as is).
            assert not exact, f"linked track not annotated: {raw!r} (truth {want})"
            SEEN["expired (TTL)"] += 1
            continue
        flight, access = want
        assert (msg["id"], msg["access"]) == (flight, access), (raw, want)
        assert RANK[msg["access"]] >= RANK[access], "weaker than the flight's access"
        SEEN[f"annotated {access}"] += 1
    assert sorted(seen_seqs) == list(range(len(surface))), "every surface message once"


def test_annotated_access_is_exactly_the_flights_at_that_pitr(
    record_property: Callable[[str, object], None],
) -> None:
    @given(histories(st.integers(0, 2)))
    @settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(case: tuple[list[bytes], list[bytes]]) -> None:
        CASES["histories (pitr steps 0-2 ms)"] += 1
        check_history(*case, exact=True)

    check()
    record_property("hypothesis_cases", CASES["histories (pitr steps 0-2 ms)"])


def test_annotated_access_is_never_wrong_across_days(
    record_property: Callable[[str, object], None],
) -> None:
    """Steps of hours, so links outlive the 24 h link TTL: whatever expires, an annotated
    position is still exactly right, and an unlinked track is never annotated."""

    @given(histories(st.sampled_from([0, 1, HOUR, 6 * HOUR, 13 * HOUR])))
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(case: tuple[list[bytes], list[bytes]]) -> None:
        CASES["histories (pitr steps up to 13 h)"] += 1
        check_history(*case, exact=False)

    check()
    record_property("hypothesis_cases", CASES["histories (pitr steps up to 13 h)"])


def _day_long_link() -> tuple[list[bytes], list[bytes], int, int]:
    """A track linked at 0 and reporting every minute for 27 h; an access change at 25 h,
    a power_off at 26 h."""
    change, off = 25 * HOUR, 26 * HOUR
    control = [
        line({"type": "flightplan", "pitr": T0, "id": "F1", "ident": "UAL1"}),
        line({"type": "power_on", "pitr": T0, "id": "F1", "surface_id": "S1",
              "facility": "KSFO"}),
        line({"type": "flightplan", "pitr": T0 + change, "id": "F1", "ident": "UAL1",
              "access": "blocked"}),
        line({"type": "power_off", "pitr": T0 + off, "id": "F1", "surface_id": "S1",
              "facility": "KSFO"}),
    ]
    surface = [line({"type": "ground_position", "pitr": T0 + p, "surface_id": "S1",
                     "facility": "KSFO", "clock": T0 + p, "lat": 1, "lon": 2, "seq": n})
               for n, p in enumerate(range(60_000, 27 * HOUR, 60_000))]
    return control, surface, change, off


def test_access_change_after_a_day_long_link_is_never_weaker() -> None:
    """A flight parked and powered on for more than a day (positions all along) becomes
    blocked: no later position may still say public."""
    control, surface, change, _ = _day_long_link()
    out, _ = unify_lines(control, surface)
    later = [json.loads(o) for o in out
             if b"ground_position" in o and json.loads(o)["pitr"] >= T0 + change]
    weaker = [m for m in later if "access" in m and m["access"] != "blocked"]
    assert weaker == [], f"{len(weaker)} positions after the change say {weaker[0]['access']}"


def test_power_off_after_a_day_long_link_unlinks_at_once() -> None:
    control, surface, _, off = _day_long_link()
    out, _ = unify_lines(control, surface)
    after = [json.loads(o) for o in out
             if b"ground_position" in o and json.loads(o)["pitr"] >= T0 + off]
    still = [m for m in after if "id" in m]
    assert after and still == [], f"{len(still)} positions after power_off still carry {still[:1]}"


# -- unifeed dump --audience ---------------------------------------------------


def _fp(pitr: int, flight: str, access: str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "flightplan", "pitr": pitr, "id": flight, "ident": flight[:4]}
    if access is not None:
        msg["access"] = access
    return msg


def audience_scenario() -> tuple[list[bytes], list[bytes]]:
    """A public, a restricted, a blocked and an access-changing flight, each with control
    messages of every kind and linked surface positions; an unplanned flight; vehicles."""
    control: list[dict[str, Any]] = []
    surface: list[dict[str, Any]] = []
    t = T0
    flights = {"PUB1": None, "RES2": "restricted", "BLK3": "blocked", "CHG4": "public"}
    for n, (flight, access) in enumerate(flights.items()):
        control.append(_fp(t + n, flight, access))
    t += 10
    control.append({"type": "power_on", "pitr": t, "id": "NOFP5", "surface_id": "s-5",
                    "facility": "KSFO"})
    for n, flight in enumerate(flights):
        control.append({"type": "power_on", "pitr": t + 1 + n, "id": flight,
                        "surface_id": f"s-{n}", "facility": "KSFO"})
    t += 10
    changes = {60: "restricted", 120: "public", 180: "blocked"}
    for k in range(240):
        t += 1000
        if k in changes:
            control.append(_fp(t, "CHG4", changes[k]))
            t += 1
        flight = list(flights)[k % 4]
        kind = ["position", "surface_offblock", "departure", "position", "arrival"][k % 5]
        msg: dict[str, Any] = {"type": kind, "pitr": t, "id": flight}
        if kind == "position":
            msg.update(clock=t - 700, lat=37.0 + k / 1000, lon=-122.0, alt=3000)
        elif kind == "surface_offblock":
            msg.update(surface_id=f"s-{k % 4}", facility="KSFO")
        control.append(msg)
        for track in range(6):
            surface.append({"type": "ground_position", "pitr": t + 300 + track,
                            "surface_id": f"s-{track}", "facility": "KSFO",
                            "clock": t + 100, "lat": 37.6, "lon": -122.4})
        surface.append({"type": "vehicle_position", "pitr": t + 400, "surface_id": "tug-1",
                        "facility": "KSFO", "clock": t + 390, "lat": 37.6, "lon": -122.4})
    for n, flight in enumerate(flights):
        control.append({"type": "power_off", "pitr": t + 500 + n, "id": flight,
                        "surface_id": f"s-{n}", "facility": "KSFO"})
    return [line(m) for m in control], [line(m) for m in surface]


def message_access(msg: dict[str, Any], control: list[dict[str, Any]]) -> str:
    """The access a message of the unified feed has, from the controlstream alone."""
    if msg["type"] == "flightplan":
        return str(msg.get("access", "public"))
    if msg["type"] == "ground_position":
        linked = truth(control, msg["surface_id"], msg["pitr"])
        return "public" if linked is None else linked[1]
    if msg["type"] in ("vehicle_position", "location_entry", "location_exit"):
        return "public"
    return access_at(control, msg["id"], msg["pitr"])


def dump(bootstrap: str, topic: str, *extra: str) -> list[bytes]:
    done = run_cli(["dump", f"kafka:{topic}", "--bootstrap-servers", bootstrap, *extra],
                   timeout_s=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.splitlines()


@pytest.mark.kafka
def test_dump_audience_never_shows_a_stronger_message(kafka_bootstrap: str) -> None:
    control, surface = audience_scenario()
    unified, run = unify_lines(control, surface)
    assert run.dead_letters == []
    events = [json.loads(c) for c in control]
    levels = [message_access(json.loads(m), events) for m in unified]
    kinds = Counter((json.loads(m)["type"], a) for m, a in zip(unified, levels, strict=True))
    # The feed really holds controlstream and surface messages of each level.
    for kind in ("position", "departure", "surface_offblock", "ground_position"):
        assert all(kinds[(kind, a)] > 0 for a in RANK), (kind, kinds)
    topic = f"unified-{uuid.uuid4().hex[:12]}"
    load(kafka_bootstrap, topic, unified)
    assert dump(kafka_bootstrap, topic) == unified
    for audience in ("public", "restricted", "blocked"):
        shown = dump(kafka_bootstrap, topic, "--audience", audience)
        allowed = [m for m, a in zip(unified, levels, strict=True)
                   if RANK[a] <= RANK[audience]]
        stronger = [m for m in shown if m not in allowed]
        assert stronger == [], f"--audience {audience} showed {len(stronger)}: {stronger[:2]}"
        assert shown == allowed, f"--audience {audience} hid messages it may show"


@pytest.mark.kafka
def test_dump_judges_a_control_message_by_its_flight_not_by_a_weaker_own_field(
    kafka_bootstrap: str,
) -> None:
    """controlstream messages pass through with unknown fields untouched (README, "Records"), so an
    upstream ``"access":"public"`` on a restricted flight's position reaches the output;
    the position's access is still its flight's, and a public audience must not see it."""
    control = [
        line(_fp(T0, "RES2", "restricted")),
        line({"type": "position", "pitr": T0 + 1000, "id": "RES2", "clock": T0 + 900,
              "lat": 37.6, "lon": -122.4, "access": "public"}),
        line({"type": "departure", "pitr": T0 + 2000, "id": "RES2", "access": "public"}),
    ]
    unified, _ = unify_lines(control, [])
    assert unified == control
    topic = f"unified-{uuid.uuid4().hex[:12]}"
    load(kafka_bootstrap, topic, unified)
    shown = dump(kafka_bootstrap, topic, "--audience", "public")
    assert shown == [], f"a public audience saw the restricted flight: {shown}"
