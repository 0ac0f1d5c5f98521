"""The whole pipeline over complete inputs, against the independent reference model."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.reference import assert_matches_reference, reference_unified
from unifeed import unify_lines
from unifeed.core.records import ACCESS_RANK
from unifeed.core.unify import derive_mapping_lines

FLIGHTS = ["F1", "F2", "F3"]
TRACKS = ["S1", "S2", "S3", "S4"]


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """Random link/unlink/access-change histories and the surface positions around them."""
    control: list[bytes] = []
    surface: list[bytes] = []
    t_control = t_surface = 1_000
    for _ in range(draw(st.integers(1, 60))):
        if draw(st.booleans()):
            t_control += draw(st.integers(0, 3))
            f = draw(st.sampled_from(FLIGHTS))
            kind = draw(
                st.sampled_from(
                    ["flightplan", "power_on", "surface_offblock", "surface_onblock",
                     "power_off", "position", "keepalive"]
                )
            )
            if kind == "flightplan":
                msg: dict[str, Any] = {"type": kind, "pitr": t_control, "id": f, "ident": "X" + f}
                access = draw(st.sampled_from([None, "public", "restricted", "blocked"]))
                if access is not None:
                    msg["access"] = access
            elif kind == "position":
                msg = {"type": kind, "pitr": t_control, "id": f, "clock": t_control, "lat": 1.5,
                       "lon": 2}
            elif kind == "keepalive":
                msg = {"type": kind, "pitr": t_control}
            else:
                msg = {"type": kind, "pitr": t_control, "id": f,
                       "surface_id": draw(st.sampled_from(TRACKS)), "facility": "KSFO"}
            control.append(line(msg))
        else:
            t_surface += draw(st.integers(0, 3))
            kind = draw(st.sampled_from(["ground_position", "ground_position",
                                         "vehicle_position", "location_entry", "keepalive"]))
            sid = draw(st.sampled_from(TRACKS))
            if kind in ("ground_position", "vehicle_position"):
                msg = {"type": kind, "pitr": t_surface, "surface_id": sid, "facility": "KSFO",
                       "clock": t_surface - 1, "lat": 37.5, "lon": -122.25}
                if draw(st.integers(0, 9)) == 0:
                    msg["id"] = "stale"  # an existing id is overwritten when linked
            elif kind == "location_entry":
                msg = {"type": kind, "pitr": t_surface, "surface_id": sid, "facility": "KSFO",
                       "location": "deice-1"}
            else:
                msg = {"type": kind, "pitr": t_surface}
            surface.append(line(msg))
    return control, surface


@given(histories())
@settings(max_examples=400, deadline=None)
def test_pipeline_matches_reference_on_random_histories(
    case: tuple[list[bytes], list[bytes]],
) -> None:
    control, surface = case
    out, run = unify_lines(control, surface)
    assert_matches_reference(out, reference_unified(control, surface))
    assert run.dead_letters == []


@given(histories())
@settings(max_examples=200, deadline=None)
def test_access_is_exactly_the_flights_at_that_pitr(case: tuple[list[bytes], list[bytes]]) -> None:
    """The security invariant, checked from the output alone: every annotated position
    carries the access of the flight's latest flightplan at or before its pitr."""
    control, surface = case
    out, _ = unify_lines(control, surface)
    access: dict[str, str] = {}
    flightplans = sorted(
        (json.loads(c) for c in control if b'"flightplan"' in c), key=lambda m: m["pitr"]
    )
    for raw in out:
        msg = json.loads(raw)
        while flightplans and flightplans[0]["pitr"] <= msg["pitr"]:
            fp = flightplans.pop(0)
            access[fp["id"]] = fp.get("access", "public")
        if msg["type"] == "ground_position" and msg.get("id") in FLIGHTS:
            assert msg["access"] == access.get(msg["id"], "public")
            assert ACCESS_RANK[msg["access"]] >= ACCESS_RANK[access.get(msg["id"], "public")]
        if msg["type"] in ("vehicle_position", "location_entry"):
            assert raw in surface  # never annotated, bytes unchanged


@given(histories())
@settings(max_examples=150, deadline=None)
def test_external_mappingstream_gives_the_same_output(
    case: tuple[list[bytes], list[bytes]],
) -> None:
    control, surface = case
    mapping, dead = derive_mapping_lines(control)
    assert dead == []
    derived, _ = unify_lines(control, surface)
    external, _ = unify_lines(control, surface, mapping)
    assert derived == external


def test_unlink_takes_effect_at_once() -> None:
    control = [
        line({"type": "power_on", "pitr": 10, "id": "F1", "surface_id": "S1", "facility": "K"}),
        line({"type": "power_off", "pitr": 20, "id": "F1", "surface_id": "S1", "facility": "K"}),
    ]
    pos = {"type": "ground_position", "surface_id": "S1", "facility": "K", "clock": 1,
           "lat": 1, "lon": 1}
    surface = [line({**pos, "pitr": p}) for p in (9, 10, 19, 20, 21)]
    out, run = unify_lines(control, surface)
    ground = [json.loads(o) for o in out if b"ground_position" in o]
    assert [g.get("id") for g in ground] == [None, "F1", "F1", None, None]
    assert run.stats().unmapped == 3 and run.stats().annotated == 2


def test_access_change_relinks_at_its_pitr() -> None:
    control = [
        line({"type": "flightplan", "pitr": 1, "id": "F1", "ident": "A"}),
        line({"type": "power_on", "pitr": 2, "id": "F1", "surface_id": "S1", "facility": "K"}),
        line({"type": "flightplan", "pitr": 5, "id": "F1", "ident": "A", "access": "blocked"}),
    ]
    pos = {"type": "ground_position", "surface_id": "S1", "facility": "K", "clock": 1,
           "lat": 1, "lon": 1}
    surface = [line({**pos, "pitr": p}) for p in (4, 5, 6)]
    out, _ = unify_lines(control, surface)
    access = [json.loads(o)["access"] for o in out if b"ground_position" in o]
    assert access == ["public", "blocked", "blocked"]
    mapping, _ = derive_mapping_lines(control)
    links = [json.loads(m) for m in mapping if b'"mapping"' in m]
    assert [(m["pitr"], m["action"], m["access"]) for m in links] == [
        (2, "link", "public"),
        (5, "link", "blocked"),
    ]


def test_existing_id_and_access_are_overwritten_exactly() -> None:
    control = [
        line({"type": "flightplan", "pitr": 1, "id": "F1", "ident": "A", "access": "restricted"}),
        line({"type": "power_on", "pitr": 2, "id": "F1", "surface_id": "S1", "facility": "K"}),
    ]
    surface = [
        b'{"type":"ground_position","pitr":3,"surface_id":"S1","facility":"K","clock":1,'
        b'"lat":1,"lon":1,"id":"wrong","access":"public","extra":{"nested":[1,2]}}'
    ]
    out, _ = unify_lines(control, surface)
    assert json.loads(out[-1]) == {
        "type": "ground_position", "pitr": 3, "surface_id": "S1", "facility": "K", "clock": 1,
        "lat": 1, "lon": 1, "id": "F1", "access": "restricted", "extra": {"nested": [1, 2]},
    }


def test_keepalives_are_consumed_and_blank_lines_skipped() -> None:
    control = [b'{"type":"keepalive","pitr":1}', b"", b"  ",
               b'{"type":"departure","pitr":2,"id":"F1"}']
    surface = [b'{"type":"keepalive","pitr":1}']
    out, run = unify_lines(control, surface)
    assert out == [b'{"type":"departure","pitr":2,"id":"F1"}']
    assert run.dead_letters == []


_EXTRAS = st.sampled_from(
    [
        {},
        {"id": "stale"},
        {"access": "public"},
        {"id": None, "access": ["x"]},
        {"callsign": '"id"'},  # the bytes "id" inside a value
        {"note": 'has "access" in it'},
        {"extra": {"id": 7, "access": "blocked"}},  # only in a nested object
        {"list": [{"id": 1}]},
    ]
)


@given(
    extra=_EXTRAS,
    spaces=st.sampled_from(["", " ", "\n", " \t "]),
    linked=st.booleans(),
    compact=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_pipeline_annotation_is_the_public_annotators_byte_for_byte(
    extra: dict[str, Any], spaces: str, linked: bool, compact: bool
) -> None:
    """The annotator stage (`Annotator.annotate_merged`) and `Annotator.annotate_ground`
    agree exactly,
    and the result has the flight's id and access at the top level and nothing else changed."""
    from unifeed import Annotator
    from unifeed.core.records import MAPPINGSTREAM, SURFACESTREAM, Mapping
    from unifeed.core.stages import AnnotateStage, FeedIntake

    msg = {"type": "ground_position", "pitr": 5, "surface_id": "S1", "facility": "K",
           "clock": 4, "lat": 1.5, "lon": 2, **extra}
    # A spaced layout tells a splice (which keeps it) from a re-encoding (which does not).
    raw = (line(msg) if compact else json.dumps(msg).encode()) + spaces.encode()
    link = Mapping(pitr=2, surface_id="S1", id="F1", action="link", access="restricted",
                   facility="K")
    stage = AnnotateStage()
    public = Annotator()
    if linked:
        stage.push_mappings([link])
        public.apply(link)
    good, dead = FeedIntake(SURFACESTREAM).process([(1, raw)])
    assert not dead
    stage.push_surface(good)
    stage.combiner.close(MAPPINGSTREAM)
    stage.combiner.close(SURFACESTREAM)
    [out] = [e.item for e in stage.drain()]
    assert out == public.annotate_ground(raw, "S1", 5)
    want = {**msg, "id": "F1", "access": "restricted"} if linked else msg
    assert json.loads(out) == want
    if not linked:
        assert out == raw
    elif "id" not in extra and "access" not in extra:
        assert out == raw.rstrip()[:-1] + b',"id":"F1","access":"restricted"}'


@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.booleans()), min_size=0, max_size=40
    ),
    cut=st.integers(0, 40),
)
@settings(max_examples=300, deadline=None)
def test_pushing_runs_between_keepalives_is_pushing_one_at_a_time(
    steps: list[tuple[int, bool]], cut: int
) -> None:
    """`push_control`'s fast path (runs between a batch's keepalives), its plain-list path
    and a push or advance per message leave the combiner in the same state."""
    from unifeed.core.combine import Combiner, Feed
    from unifeed.core.records import CONTROLSTREAM
    from unifeed.core.stages import FeedIntake, Intake, _push_runs

    pitr = 100
    lines = []
    for step, keepalive in steps:
        pitr += step
        lines.append(
            line({"type": "keepalive", "pitr": pitr}) if keepalive
            else line({"type": "departure", "pitr": pitr, "id": f"F{len(lines)}"})
        )
    batches = []
    intake = FeedIntake(CONTROLSTREAM)
    for chunk in (lines[:cut], lines[cut:]):
        good, dead = intake.process(list(enumerate(chunk)))
        assert not dead and type(good) is Intake
        batches.append(good)

    def state(c: Combiner) -> tuple[Any, ...]:
        s = c.stats()
        return s, [(e.feed, e.pitr, e.item) for e in c.drain_list()], c.stats()

    def fresh() -> Combiner:
        return Combiner([Feed(CONTROLSTREAM), Feed("other")], clock=lambda: 10**15)

    fast, plain, single = fresh(), fresh(), fresh()
    for batch in batches:
        _push_runs(fast, CONTROLSTREAM, batch)
        _push_runs(plain, CONTROLSTREAM, list(batch))
        for a in batch:
            if a.rec.__class__.__name__ == "Keepalive":
                single.advance(CONTROLSTREAM, a.pitr)
            else:
                single.push(CONTROLSTREAM, a.pitr, a.item)
    for c in (fast, plain, single):
        c.caught_up("other")
    assert state(fast) == state(plain) == state(single)


def test_annotator_links_seed_an_annotator_that_annotates_the_same() -> None:
    """`Annotator.links` is what `Annotator.seed` takes: a seeded copy annotates every
    track as the original does (the saved-links restart relies on it)."""
    from unifeed import Annotator
    from unifeed.core.records import Mapping

    a = Annotator()
    a.apply(Mapping(pitr=1, surface_id="S1", id="F1", action="link", access="restricted",
                    facility="K"))
    a.apply(Mapping(pitr=2, surface_id="S2", id="F2", action="link", access="public",
                    facility="K"))
    a.apply(Mapping(pitr=3, surface_id="S2", id="F2", action="unlink", access="public",
                    facility="K"))
    a.apply(Mapping(pitr=4, surface_id="S3", id="F3", action="link", access="blocked",
                    facility="K"))
    assert sorted(a.links()) == [("S1", "F1", "", 1, "restricted"), ("S3", "F3", "", 4, "blocked")]
    b = Annotator()
    b.seed(a.links(), 4)
    for track in ("S1", "S2", "S3", "S4"):
        raw = line({"type": "ground_position", "pitr": 5, "surface_id": track})
        assert b.annotate_ground(raw, track, 5) == a.annotate_ground(raw, track, 5)
