"""Access across time: late surface messages and restarts (docs/guarantees.md, "Access
across late arrivals and restarts").

A late surface message is annotated with its flight as of its own pitr, never weaker
than that flight is now; a restart keeps every link and access level whatever
``--lookback`` (the state travels with the checkpoint).
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.kafkatools import (
    ROOT,
    combine_feeding_surface_later,
    keepalive,
    load,
    read_all,
    run_cli,
)
from tests.support.reference import ACCESS, reference_unified
from unifeed import unify_lines
from unifeed.checkpoint.store import CheckpointStore
from unifeed.core.annotate import DEFAULT_LATE_WINDOW_MS
from unifeed.core.mapping import (
    DeriverState,
    MappingDeriver,
    decode_state,
    encode_mapping,
    encode_state,
)
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM
from unifeed.core.stages import ControlIntake
from unifeed.core.unify import Unifier, derive_mapping_lines
from unifeed.runtime import saved

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


@pytest.mark.kafka
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
    # surfacestream's topic appears only when its producer starts, as in a live deployment.
    # Partition 0 named: the topic is created after the start (a topic read whole that is
    # created with several partitions, as the embedded broker does, stops the run).
    # Every control message is written (so every mapping was applied) before the surface
    # positions are produced.
    written = combine_feeding_surface_later(
        kafka_bootstrap,
        combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, "--stop-at", str(stop_at),
                     "--wait-for-topics"),
        (ctl, srf, out), surface, before=6, after=8, pause_s=1.5, end_at=stop_at + 1,
    )
    assert [(m.get("id"), m.get("access")) for m in ground_positions(written)] == [
        ("F1", "restricted"), ("F2", "restricted")]
    assert sorted(written) == sorted(expected)
    public = run_cli(["dump", f"kafka:{out}", "--bootstrap-servers", kafka_bootstrap,
                      "--audience", "public"], timeout_s=60)
    assert public.returncode == 0, public.stderr.decode()
    assert ground_positions(public.stdout.splitlines()) == []


@pytest.mark.kafka
def test_catchup_past_a_silent_surfacestream_annotates_its_later_messages_as_of_their_pitr(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """Catch-up (old pitr): surfacestream sits at its end for the grace period, so the
    combine passes it and applies every mapping; then positions from before the unlink
    and the access change arrive. They are annotated as the file run annotates them."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    t0 = 1_700_000_000_000
    stop_at = t0 + 200_000
    control = [
        line({"type": "flightplan", "pitr": t0, "id": "F1", "ident": "A1",
              "access": "restricted"}),
        line({"type": "flightplan", "pitr": t0, "id": "F2", "ident": "A2",
              "access": "restricted"}),
        line({"type": "power_on", "pitr": t0 + 5_000, "id": "F2", "surface_id": "S2",
              "facility": "KSFO"}),
        line({"type": "power_on", "pitr": t0 + 10_000, "id": "F1", "surface_id": "S1",
              "facility": "KSFO"}),
        line({"type": "power_off", "pitr": t0 + 60_000, "id": "F1", "surface_id": "S1",
              "facility": "KSFO"}),
        line({"type": "flightplan", "pitr": t0 + 60_000, "id": "F2", "ident": "A2",
              "access": "public"}),
        keepalive(t0 + 120_000),
    ]
    surface = [keepalive(t0)] + [
        line({"type": "ground_position", "pitr": t0 + 30_000, "surface_id": s,
              "facility": "KSFO", "clock": t0 + 30_000, "lat": 37.6, "lon": -122.4})
        for s in ("S1", "S2")
    ]
    expected, _ = unify_lines(control, surface)
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface[:1])
    written = combine_feeding_surface_later(
        kafka_bootstrap,
        combine_args(kafka_bootstrap, ctl, srf, out, "--stop-at", str(stop_at),
                     "--end-of-log-grace", "300ms"),
        (ctl, srf, out), surface[1:], before=6, after=8, pause_s=1.0, end_at=stop_at + 1,
    )
    assert [(m.get("id"), m.get("access")) for m in ground_positions(written)] == [
        ("F1", "restricted"), ("F2", "restricted")]
    assert sorted(written) == sorted(expected)


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


@pytest.mark.kafka
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


@pytest.mark.kafka
def test_restart_with_an_external_mappingstream_keeps_links_older_than_the_lookback(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """`combine --mapping kafka:…` stopped 300 s after a link and restarted with
    ``--lookback 1m``: the link comes back from the saved state (the mappingstream is
    read again from the snapshot's offset, not from a minute before the checkpoint)."""
    ctl, srf, mp, out = (unique_topic(x) for x in ("ctl", "srf", "map", "out"))
    control, surface, stop = _old_flightplan_scenario()
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    derived = run_cli(["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{mp}",
                       "--bootstrap-servers", kafka_bootstrap, "--instance", f"m-{mp}",
                       "--checkpoint-topic", f"{mp}.checkpoints", "--status-interval", "0",
                       "--exit-at-end"])
    assert derived.returncode == 0, derived.stderr.decode()
    mapping = read_all(kafka_bootstrap, mp)
    expected, _ = unify_lines(control, surface, mapping)
    assert {m.get("access") for m in ground_positions(expected)} == {"restricted"}
    args = [*combine_args(kafka_bootstrap, ctl, srf, out, "--exit-at-end", "--lookback", "1m"),
            "--mapping", f"kafka:{mp}"]
    first = run_cli([*args, "--stop-at", str(stop)])
    assert first.returncode == 0, first.stderr.decode()
    assert 0 < len(read_all(kafka_bootstrap, out)) < len(expected)
    second = run_cli(args)
    assert second.returncode == 0, second.stderr.decode()
    assert b"restored" in second.stderr, second.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected


@pytest.mark.kafka
def test_a_checkpoint_without_saved_state_resumes_from_the_lookback(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """A checkpoint written before state was saved (no ``state``) still resumes: the
    restart replays --lookback, as before, and is exact when that reaches the flightplan."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface, stop = _old_flightplan_scenario()
    expected, _ = unify_lines(control, surface)
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    first = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, "--exit-at-end",
                                 "--stop-at", str(stop)))
    assert first.returncode == 0, first.stderr.decode()
    instance = f"i-{out}"
    with CheckpointStore(kafka_bootstrap, f"{out}.checkpoints") as store:
        cp, _ = store.load(instance)
        assert cp is not None and not isinstance(cp.state, msgspec.UnsetType)
        store.write(instance, msgspec.structs.replace(cp, state=msgspec.UNSET))
    second = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, "--exit-at-end",
                                  "--lookback", "8h"))
    assert second.returncode == 0, second.stderr.decode()
    assert b"restored" not in second.stderr, second.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected


@pytest.mark.kafka
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


# --- the property: random late arrivals, restarts and lookbacks, in process -----------

MINUTE = 60_000
CASES = {"histories": 0, "late positions": 0, "restarts": 0, "restored links": 0,
         "too late (dead letters)": 0}


@st.composite
def late_histories(draw: st.DrawFn) -> tuple[list[bytes], list[tuple[int, bytes]], list[int], int]:
    """Flights filing (any access, refiled), tracks linked and unlinked, over up to 12 h;
    ground positions, each arriving after a random delay (often after later control
    messages: late); restart moments; a lookback."""
    t = 1_700_000_000_000
    control: list[bytes] = []
    surface: list[tuple[int, bytes]] = []  # (arrival, line)
    flights = [f"F{i}" for i in range(draw(st.integers(1, 4)))]
    tracks = [f"S{i}" for i in range(draw(st.integers(1, 3)))]
    n = 0
    arrived = 0  # surfacestream arrives in its own order, however late
    for _ in range(draw(st.integers(5, 60))):
        t += draw(st.sampled_from([0, 1, 1000, 5000, 30_000, 10 * MINUTE, 2 * HOUR]))
        kind = draw(st.sampled_from(["fp", "fp", "on", "off", "pos", "pos", "pos"]))
        flight, track = draw(st.sampled_from(flights)), draw(st.sampled_from(tracks))
        if kind == "fp":
            control.append(line({"type": "flightplan", "pitr": t, "id": flight, "ident": "X",
                                 "access": draw(st.sampled_from(ACCESS))}))
        elif kind == "on":
            control.append(line({"type": draw(st.sampled_from(["power_on", "surface_offblock"])),
                                 "pitr": t, "id": flight, "surface_id": track,
                                 "facility": "KSFO"}))
        elif kind == "off":
            control.append(line({"type": "power_off", "pitr": t, "id": flight,
                                 "surface_id": track, "facility": "KSFO"}))
        else:
            delay = draw(st.sampled_from([0, 500, 1500, 20_000, 5 * MINUTE, 3 * HOUR]))
            n += 1
            arrived = max(arrived, t + delay)
            surface.append((arrived, line({"type": "ground_position", "pitr": t,
                                             "surface_id": track, "facility": "KSFO",
                                             "clock": t, "lat": 1.0, "lon": 2.0, "n": n})))
    restarts = draw(st.lists(st.integers(0, 80), max_size=3))
    lookback = draw(st.sampled_from([0, MINUTE, HOUR, 6 * HOUR]))
    return control, surface, restarts, lookback


class _InProcessCombine:
    """`unifeed combine`'s restart protocol around a `Unifier`, without Kafka: the
    deriver snapshots (taken before each control message, as the reader takes them before
    a batch), the commit's choice of one (`StateSnapshots.take`, a late window behind the
    feeds' positions), and a restart from it, or from ``--lookback`` when there is none."""

    def __init__(self, control: list[bytes], lookback_ms: int) -> None:
        self.control = control
        self.pitrs = [json.loads(x)["pitr"] for x in control]
        self.lookback_ms = lookback_ms
        self.now = 0
        self.saved: tuple[int, DeriverState] | None = None
        self.out: list[bytes] = []
        self.dead: list[Any] = []
        self._start(None, 0)

    def _start(self, state: DeriverState | None, control_from: int) -> None:
        u = Unifier(clock=lambda: self.now)
        if state is not None:
            assert u.control.deriver is not None
            u.control.deriver = MappingDeriver.restore(state)
            u.control.floor = state.floor
            u.annotate.annotator.seed(state.links, state.floor)
        self.u = u
        self.snapshots = saved.StateSnapshots()
        self.next_control = control_from
        self.next_surface = 0
        self.written = {CONTROLSTREAM: 0, SURFACESTREAM: 0}  # last pitr written

    def feed_control(self, upto: int) -> None:
        d = self.u.control.deriver
        assert d is not None
        while self.next_control < upto:
            i = self.next_control
            if self.snapshots.due(i, self.u.control.floor):
                self.snapshots.add(i, d.snapshot(self.u.control.floor))
            self.u.feed(CONTROLSTREAM, [(i + 1, self.control[i])])
            self.next_control += 1
        self.drain()

    def feed_surface(self, lines: list[bytes]) -> None:
        self.u.feed(SURFACESTREAM, [(1, x) for x in lines])
        self.drain()

    def drain(self) -> None:
        for e in self.u.drain_emitted():
            self.out.append(e.item)
            self.written[e.feed] = e.pitr
        self.dead += self.u.dead_letters
        self.u.dead_letters.clear()

    def commit(self) -> None:
        lowest = min(self.written.values())
        taken = self.snapshots.take(lowest - DEFAULT_LATE_WINDOW_MS)
        if taken is not None:
            offset, state, _starts = taken
            self.saved = (offset, decode_state(encode_state(state)))  # as stored

    def restart(self, surface_done: int) -> int:
        """Stop and start again from the last commit; returns where surface resumes."""
        self.commit()
        if self.saved is not None:
            offset, state = self.saved
            CASES["restored links"] += len(state.links)
            self._start(state, offset)
        else:
            start = min(self.written.values()) - self.lookback_ms
            self._start(None, next((i for i, p in enumerate(self.pitrs) if p >= start),
                                   len(self.pitrs)))
        return surface_done


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(late_histories())
def test_no_output_is_weaker_than_the_reference_whatever_late_arrivals_and_restarts(
    case: tuple[list[bytes], list[tuple[int, bytes]], list[int], int],
) -> None:
    """Every annotated (or unannotated) ground position carries an access at least as
    strong as the reference fold's for its flight at its pitr, with surface messages
    arriving late and the run restarted at random moments under a random lookback."""
    with pytest.MonkeyPatch.context() as patch:
        # Snapshots as often as the rule allows, so that restarts restore real state.
        patch.setattr(saved, "SNAPSHOT_EVERY_MESSAGES", 1)
        patch.setattr(saved, "SNAPSHOT_EVERY_PITR_MS", 1)
        _check_late_and_restarts(*case)


def _check_late_and_restarts(
    control: list[bytes], surface: list[tuple[int, bytes]], restarts: list[int], lookback: int
) -> None:
    CASES["histories"] += 1
    run = _InProcessCombine(control, lookback)
    arrivals = sorted(
        [(p, 0, i, b"") for i, p in enumerate(run.pitrs)]
        + [(arrive, 1, i, raw) for i, (arrive, raw) in enumerate(surface)]
    )
    surface_lines = [raw for _, raw in surface]
    by_n = {json.loads(raw)["n"]: raw for raw in surface_lines}
    surface_arrived = 0
    for step, (arrive, kind, i, raw) in enumerate(arrivals):
        run.now = arrive
        if step in restarts:
            CASES["restarts"] += 1
            run.restart(0)
            # Every surface message that arrived so far and was not written is read again.
            done = {json.loads(x).get("n") for x in run.out}
            run.feed_control(len([a for a in arrivals[:step] if a[1] == 0]))
            run.feed_surface([by_n[k] for k in sorted(by_n) if k not in done
                              and k <= surface_arrived])
        if kind == 0:
            run.feed_control(i + 1)
        else:
            surface_arrived = json.loads(raw)["n"]
            run.feed_surface([raw])
        run.commit()
    run.u.close(CONTROLSTREAM)
    run.u.close(SURFACESTREAM)
    run.drain()

    expected = {m["n"]: m.get("access", "public") for _, m in
                reference_unified(control, sorted(surface_lines, key=lambda x: json.loads(x)["pitr"]))
                if m["type"] == "ground_position"}
    written: dict[int, list[str]] = {}
    for x in run.out:
        m = json.loads(x)
        if m["type"] == "ground_position":
            written.setdefault(m["n"], []).append(m.get("access", "public"))
    late_dead = {json.loads(d.raw)["n"] for d in run.dead}
    CASES["too late (dead letters)"] += len(late_dead)
    CASES["late positions"] += run.u.stats().late
    # Nothing is lost: each position is written (restarts may write one again, as a
    # crash between two commits does) or, older than the link history, a dead letter.
    assert set(written) | late_dead == set(expected)
    for n, got in written.items():
        for access in got:
            assert ACCESS.index(access) >= ACCESS.index(expected[n]), (n, access, expected[n])


class _Summary:
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if CASES["histories"]:
            tried = ", ".join(f"{name} {n}" for name, n in CASES.items())
            terminalreporter.write_line(f"test_access_state cases tried: {tried}")


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("unifeed-access-state-summary"):
        manager.register(_Summary(), "unifeed-access-state-summary")


def test_zz_property_exercised_restarts_and_late_messages() -> None:
    """The property above restarted runs and saw late messages (it runs first; how many
    links the restarts restored is printed at the end of the run)."""
    if CASES["histories"]:
        assert CASES["restarts"] > 0
        assert CASES["late positions"] > 0


def test_a_restored_deriver_goes_on_exactly_as_one_that_never_stopped() -> None:
    """Snapshot (through its stored form) and restore at several points of the busy
    airport's controlstream: the mappingstream is the uninterrupted one, byte for byte."""
    path = ROOT / "golden/busy-airport/controlstream.jsonl.gz"
    lines = gzip.decompress(path.read_bytes()).splitlines()
    intake = ControlIntake()
    records = [a.rec for a in intake.process(list(enumerate(lines, 1)))[0]]
    whole = [encode_mapping(m) for m in MappingDeriver().process_many(records)]
    for cut in (1, 997, len(records) // 3, len(records) // 2, len(records) - 5):
        first = MappingDeriver()
        out = [encode_mapping(m) for m in first.process_many(records[:cut])]
        state = decode_state(encode_state(first.snapshot(records[cut - 1].pitr)))
        assert state.links or cut < 1000
        again = MappingDeriver.restore(state)
        out += [encode_mapping(m) for m in again.process_many(records[cut:])]
        assert out == whole, cut
