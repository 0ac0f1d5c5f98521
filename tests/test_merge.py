"""`unifeed.merge_lines` and `Merger`: the content-agnostic merge of F feeds.

Properties against the independent model in tests/support/reference.py (one stable sort
by ``(pitr, rank)``), and the combining rule driven directly under any interleaving of
arrivals and catch-up markers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.reference import reference_merge, stable_merge
from unifeed import Combiner, Feed, Merger, merge_lines
from unifeed.core.unify import CATCHUP_CLOCK

BAD_LINES = (
    b"not json",
    b"[1,2]",
    b'{"x":1}',
    b'{"pitr":"5"}',
    b'{"pitr":-1}',
    b'{"pitr":true}',
    b'{"pitr":1.5}',
    b'{"pitr":null}',
    b"\xff\xfe{}",
    b'"just a string"',
)


@st.composite
def feed_history(draw: st.DrawFn, name: str) -> list[bytes]:
    """One feed's lines: records and keepalives whose pitr mostly rises (with ties and
    some steps back), and bad lines."""
    lines: list[bytes] = []
    pitr = draw(st.integers(0, 5))
    for i in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["rec", "rec", "rec", "keepalive", "bad"]))
        if kind == "bad":
            lines.append(draw(st.sampled_from(BAD_LINES)))
            continue
        pitr = max(0, pitr + draw(st.integers(-3, 4)))
        if kind == "keepalive":
            lines.append(b'{"type":"keepalive","pitr":%d}' % pitr)
        else:
            # Spacing and field order vary: the output must keep the bytes as they came.
            spacing = draw(st.sampled_from([b"", b" "]))
            lines.append(b'{"feed":"%s",%s"pitr":%s%d,"n":%d}' % (
                name.encode(), spacing, spacing, pitr, i))
    return lines


@st.composite
def histories(draw: st.DrawFn) -> dict[str, list[bytes]]:
    count = draw(st.integers(1, 8))
    names = [f"f{i}" for i in range(count)]
    return {name: draw(feed_history(name)) for name in names}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.sampled_from([1, 2, 7, 4096]))
def test_merge_lines_equals_the_reference_stable_merge(
    inputs: dict[str, list[bytes]], chunk: int
) -> None:
    out, stats = merge_lines(inputs, chunk=chunk)
    expected, dead = reference_merge(inputs)
    assert out == expected
    # Dead letters come in reading order (which input lags most), so compare as sets;
    # within one input they keep its line order.
    found = [(d.feed, d.line) for d in stats.dead_letters]
    assert sorted(found) == sorted(dead)
    for name in inputs:
        assert [n for f, n in found if f == name] == [n for f, n in dead if f == name]
    assert stats.output == len(out)
    assert [f.dead_letters for f in stats.feeds] == [
        sum(1 for f, _ in dead if f == name) for name in inputs
    ]
    assert sum(f.accepted + f.keepalives for f in stats.feeds) + len(dead) == sum(
        len(v) for v in inputs.values()
    )
    assert sum(f.accepted for f in stats.feeds) == len(out)


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[list[tuple[str, int]]], list[int]]:
    """Per feed, an in-order sequence of ("push" | "advance", pitr); and a schedule."""
    count = draw(st.integers(1, 8))
    feeds: list[list[tuple[str, int]]] = []
    for _ in range(count):
        pitr = draw(st.integers(0, 3))
        events: list[tuple[str, int]] = []
        for _ in range(draw(st.integers(0, 15))):
            pitr += draw(st.integers(0, 3))
            events.append((draw(st.sampled_from(["push", "push", "advance"])), pitr))
        feeds.append(events)
    schedule = draw(st.lists(st.integers(0, 3 * count + 1), max_size=200))
    return feeds, schedule


@settings(max_examples=300, deadline=None)
@given(arrivals(), st.booleans())
def test_any_interleaving_with_catch_up_markers_gives_the_same_output(
    case: tuple[list[list[tuple[str, int]]], list[int]], end_by_close: bool
) -> None:
    """Arrivals of F feeds in any interleaving, drains at any moment, and catch-up
    markers (a reader at the end of its log) whenever a feed has delivered all it has:
    the output is always the stable merge by (pitr, rank)."""
    feeds, schedule = case
    names = [f"f{i}" for i in range(len(feeds))]
    c = Combiner([Feed(n) for n in names], clock=CATCHUP_CLOCK)
    nxt = [0] * len(feeds)
    out: list[Any] = []

    def step(feed: int) -> None:
        kind, pitr = feeds[feed][nxt[feed]]
        nxt[feed] += 1
        if kind == "push":
            c.push(names[feed], pitr, (names[feed], nxt[feed]))
        else:
            c.advance(names[feed], pitr)

    for choice in schedule:
        feed, action = divmod(choice, 3)
        if feed >= len(feeds):
            out.extend(c.drain_list())
        elif action == 0 and nxt[feed] < len(feeds[feed]):
            step(feed)
        elif action == 1:
            # A reader reports the end of its log only once it has delivered everything.
            c.caught_up(names[feed], nxt[feed] == len(feeds[feed]))
        else:
            out.extend(c.drain_list())
        c._check()
    for feed in range(len(feeds)):
        while nxt[feed] < len(feeds[feed]):
            step(feed)
        if end_by_close:
            c.close(names[feed])
        else:
            c.caught_up(names[feed])
        c._check()
    out.extend(c.drain_list())
    c._check()
    expected = stable_merge(
        (n, [(p, (n, i + 1)) for i, (k, p) in enumerate(events) if k == "push"])
        for n, events in zip(names, feeds, strict=True)
    )
    assert [(e.feed, e.pitr, e.item) for e in out] == expected


def test_ties_go_to_the_input_given_first_and_keepalives_are_not_written() -> None:
    out, stats = merge_lines({
        "b": [b'{"pitr":5,"who":"b"}', b'{"type":"keepalive","pitr":6}'],
        "a": [b'{"pitr":5,"who":"a"}', b'{"pitr":6,"who":"a"}'],
    })
    assert out == [b'{"pitr":5,"who":"b"}', b'{"pitr":5,"who":"a"}', b'{"pitr":6,"who":"a"}']
    assert (stats.feed("b").accepted, stats.feed("b").keepalives) == (1, 1)
    assert stats.dead_letters == ()


def test_records_are_written_byte_for_byte_whatever_they_hold() -> None:
    odd = b'{ "pitr" : 3 , "type" : "anything", "nested": {"pitr": "x"}, "u": "\xc3\xa9" }'
    out, _ = merge_lines({"a": [odd + b"\r\n"]})
    assert out == [odd]


def test_dead_letters_have_combines_format_with_the_input_name() -> None:
    _, stats = merge_lines({"radar": [b'{"pitr":9}', b'{"pitr":2}', b'{"nopitr":1}',
                                      b"\xff"]})
    letters = [json.loads(d.encode()) for d in stats.dead_letters]
    assert [(d["feed"], d["line"]) for d in letters] == [("radar", 2), ("radar", 3), ("radar", 4)]
    assert letters[0]["raw"] == '{"pitr":2}'
    assert letters[0]["reason"].startswith("pitr 2 is lower than 9")
    assert letters[1]["reason"] == "message has no `pitr` field"
    assert letters[2]["raw_b64"] == "/w=="
    assert all("partition" not in d for d in letters)


def test_partitions_tie_after_rank_keep_their_own_order_and_are_named_in_dead_letters() -> None:
    m = Merger([("a", 1), ("b", 0), ("a", 0)], clock=CATCHUP_CLOCK, where="offset")
    assert m.keys == ("a[0]", "a[1]", "b[0]")
    m.feed("a[1]", [(10, b'{"pitr":5,"p":1}'), (11, b'{"pitr":3,"p":1}')])
    m.feed("a[0]", [(20, b'{"pitr":3,"p":0}'), (21, b'{"pitr":5,"p":0}')])
    m.feed("b[0]", [(30, b'{"pitr":5,"p":"b"}')])
    for key in m.keys:
        m.close(key)
    assert m.drain() == [b'{"pitr":3,"p":0}', b'{"pitr":5,"p":0}', b'{"pitr":5,"p":1}',
                         b'{"pitr":5,"p":"b"}']
    (letter,) = m.stats().dead_letters
    assert json.loads(letter.encode())["partition"] == 1
    assert (letter.feed, letter.offset) == ("a", 11)


def test_live_required_rules_real_time_only() -> None:
    """In real time only the inputs named live-required are waited for; in catch-up all."""
    now = 1_000_000
    m = Merger(["a", "b"], live_required=["a"], clock=lambda: now, realtime_threshold_ms=30_000)
    m.feed("a", [(1, b'{"pitr":999000}')])
    assert m.drain() == [b'{"pitr":999000}']  # real time: b is not waited for
    m2 = Merger(["a", "b"], live_required=["a"], clock=lambda: now)
    m2.feed("a", [(1, b'{"pitr":1000}')])
    assert m2.drain() == []  # catch-up: b is required
    m3 = Merger(["a", "b"], clock=lambda: now)
    m3.feed("a", [(1, b'{"pitr":999000}')])
    assert m3.drain() == []  # default: every input is live-required


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"live_required": ["c"]}, "live_required names ['c']"),
        ({"start": 5, "stop_at": 4}, "stop_at 4 is before start 5"),
        ({"live_required": "a"}, "live_required must be a collection of input names"),
    ],
)
def test_merge_arguments_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        merge_lines({"a": [], "b": []}, **kwargs)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([], "a merge needs at least one input"),
        (["a", "a"], "inputs must be unique"),
        ([("a", 0), "a"], "feed 'a' is given whole and by partition"),
        ([("a", -1)], "a partition must be an integer >= 0"),
        ([""], "an input's name must be a non-empty string"),
    ],
)
def test_merger_sources_are_checked(sources: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Merger(sources)


def test_start_and_stop_at_keep_the_window_and_still_check_order() -> None:
    lines = [b'{"pitr":1}', b'{"pitr":5}', b'{"pitr":4}', b'{"pitr":9}', b'{"pitr":12}']
    out, stats = merge_lines({"a": lines}, start=5, stop_at=9)
    assert out == [b'{"pitr":5}', b'{"pitr":9}']
    assert stats.feed("a").skipped == 2 and stats.feed("a").dead_letters == 1


def test_the_unified_feed_is_the_merge_of_controlstream_and_annotated_surfacestream() -> None:
    """`combine` is merge + mapping derivation + annotation: its output, split back into
    its controlstream and (annotated) surfacestream records, merges into itself."""
    from tests.support.golden import golden_path, read_lines

    unified = read_lines(golden_path("busy-airport", "expected.unified"))
    surface_types = (b'"type":"ground_position"', b'"type":"vehicle_position"',
                     b'"type":"location_entry"', b'"type":"location_exit"')
    is_surface = [any(t in line for t in surface_types) for line in unified]
    control = [x for x, s in zip(unified, is_surface, strict=True) if not s]
    surface = [x for x, s in zip(unified, is_surface, strict=True) if s]
    assert control and surface
    out, stats = merge_lines({"controlstream": control, "surfacestream": surface})
    assert out == unified and stats.dead_letters == ()
    # The other rank breaks ties the other way: the order of inputs matters.
    swapped, _ = merge_lines({"surfacestream": surface, "controlstream": control})
    assert swapped != unified


@st.composite
def partitioned_histories(draw: st.DrawFn) -> dict[tuple[str, int], list[bytes]]:
    """Up to 4 feeds of 1 to 3 partitions (any numbers), each partition a history."""
    out: dict[tuple[str, int], list[bytes]] = {}
    for i in range(draw(st.integers(1, 4))):
        parts = draw(st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True))
        for p in parts:
            out[(f"f{i}", p)] = draw(feed_history(f"f{i}p{p}"))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partitioned_histories(), st.randoms(use_true_random=False))
def test_partitioned_merge_is_the_stable_merge_by_pitr_rank_partition(
    history: dict[tuple[str, int], list[bytes]], rnd: Any
) -> None:
    """Each partition its own FIFO queue with its own pitr order: the merge, fed in any
    interleaving of batches, is the stable merge by (pitr, feed rank, partition)."""
    sources = list(history)
    rnd.shuffle(sources)  # the order sources are declared in does not matter, only rank
    names = sorted({n for n, _ in sources})
    ranked = sorted(sources, key=lambda s: (names.index(s[0]), s[1]))
    m = Merger(sorted(sources, key=lambda s: names.index(s[0])), clock=CATCHUP_CLOCK,
               where="offset")
    pending = {s: list(enumerate(history[s])) for s in sources}
    out: list[bytes] = []
    while pending:
        source = rnd.choice(sorted(pending))
        take = rnd.randint(1, 4)
        batch, pending[source] = pending[source][:take], pending[source][take:]
        key = f"{source[0]}[{source[1]}]"
        m.feed(key, batch)
        if not pending[source]:
            del pending[source]
            m.close(key)
        out.extend(m.drain())
    out.extend(m.drain())
    expected, dead = reference_merge({f"{n}[{p}]": history[(n, p)] for n, p in ranked})
    assert out == expected
    found = sorted((f"{d.feed}[{d.partition}]", (d.offset or 0) + 1) for d in m.stats().dead_letters)
    assert found == sorted(dead)
