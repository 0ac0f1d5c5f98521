"""The combining rule: unit tests and hypothesis properties (docs/guarantees.md, "Ordering")."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.reference import naive_priority_queue_merge, stable_merge
from unifeed import Combiner, Emitted, Feed, FeedOrderError, Mode

FAR_FUTURE = 10**13  # a clock for which every pitr below is old: catch-up


def catchup_clock() -> int:
    return FAR_FUTURE


def two_feeds(**kw: object) -> Combiner:
    return Combiner(
        [
            Feed("controlstream", required_realtime=True, required_catchup=True),
            Feed("surfacestream", required_realtime=False, required_catchup=True),
        ],
        **kw,  # type: ignore[arg-type]
    )


def items(out: list[Emitted]) -> list[object]:
    return [e.item for e in out]


# -- unit tests --------------------------------------------------------------


def test_candidate_waits_for_required_feed_in_catchup() -> None:
    c = two_feeds(clock=catchup_clock)
    c.push("controlstream", 10, "c10")
    c._check()
    assert c.pop() is None  # surfacestream could still send something before 10
    c.push("surfacestream", 12, "s12")
    c._check()
    assert items(c.drain_list()) == ["c10"]
    assert c.pop() is None  # controlstream could still send something before 12
    c.push("controlstream", 12, "c12")
    # Equal pitr: controlstream first, and it may still send another 12.
    assert items(c.drain_list()) == ["c12"]
    c.advance("controlstream", 13)
    assert items(c.drain_list()) == ["s12"]
    assert c.last_mode is Mode.CATCHUP or c.last_mode is None
    c._check()


def test_realtime_needs_only_controlstream() -> None:
    now = 1_000_000
    c = two_feeds(clock=lambda: now, realtime_threshold_ms=30_000)
    c.push("controlstream", now - 10, "c")
    assert items(c.drain_list()) == ["c"]
    assert c.last_mode is Mode.REALTIME
    # A surface message is held until controlstream is settled for it.
    c.push("surfacestream", now - 5, "s")
    assert c.drain_list() == []
    c.advance("controlstream", now - 4)
    assert items(c.drain_list()) == ["s"]
    c._check()


def test_late_surface_message_is_emitted_at_once_and_counted() -> None:
    now = 1_000_000
    c = two_feeds(clock=lambda: now)
    c.push("controlstream", now - 100, "c1")
    assert items(c.drain_list()) == ["c1"]
    c.advance("controlstream", now - 50)
    c.push("surfacestream", now - 200, "late")
    assert c.late == 1
    assert items(c.drain_list()) == ["late"]
    c._check()


def test_strict_order_waits_for_surfacestream_live() -> None:
    now = 1_000_000
    c = Combiner(
        [Feed("controlstream"), Feed("surfacestream")], clock=lambda: now
    )  # both required in both modes
    c.push("controlstream", now - 100, "c1")
    assert c.drain_list() == []
    c.advance("surfacestream", now - 99)
    assert items(c.drain_list()) == ["c1"]


def test_marker_equal_pitr_respects_rank() -> None:
    c = two_feeds(clock=catchup_clock)
    c.push("surfacestream", 5, "s5")
    c.advance("controlstream", 5)  # controlstream may still send pitr 5, which goes first
    assert c.drain_list() == []
    c.advance("controlstream", 6)
    assert items(c.drain_list()) == ["s5"]
    c.push("controlstream", 7, "c7")
    c.advance("surfacestream", 7)  # a future surface 7 sorts after c7: settled
    assert items(c.drain_list()) == ["c7"]


def test_feed_order_error_leaves_queue_intact() -> None:
    c = two_feeds(clock=catchup_clock)
    c.push("controlstream", 10, "a")
    c.push("controlstream", 11, "b")
    before = c.stats()
    with pytest.raises(FeedOrderError, match="pitr 9 is below"):
        c.push("controlstream", 9, "x")
    with pytest.raises(FeedOrderError):
        c.push_many("controlstream", [12, 13, 11], ["p", "q", "r"])
    c.advance("surfacestream", 100)
    with pytest.raises(FeedOrderError, match="progress"):
        c.push("surfacestream", 50, "y")
    c._check()
    assert c.stats().feeds[0] == before.feeds[0]
    c.close("surfacestream")
    assert items(c.drain_list()) == ["a", "b"]


def test_caught_up_lets_catchup_pass_a_silent_feed() -> None:
    c = two_feeds(clock=catchup_clock)
    c.push_many("controlstream", [1, 2, 3], ["c1", "c2", "c3"])
    assert c.drain_list() == []
    c.caught_up("surfacestream")
    assert items(c.drain_list()) == ["c1", "c2", "c3"]
    c.push("surfacestream", 2, "s2")  # arrives after all: emitted at once, counted late
    assert items(c.drain_list()) == ["s2"]
    assert c.late == 1


def test_caught_up_does_not_apply_to_realtime_candidates() -> None:
    now = 1_000_000
    c = Combiner([Feed("a"), Feed("b")], clock=lambda: now)
    c.push("a", now - 1, "a")
    c.caught_up("b")
    assert c.drain_list() == []


def test_closed_feed_never_holds_back() -> None:
    c = two_feeds(clock=catchup_clock)
    c.push("controlstream", 1, "c1")
    c.close("surfacestream")
    assert items(c.drain_list()) == ["c1"]
    with pytest.raises(ValueError, match="closed"):
        c.push("surfacestream", 5, "s")
    c.close("controlstream")
    assert c.exhausted()


def test_bounded_queue_signals_pause() -> None:
    c = Combiner([Feed("a", capacity=3), Feed("b")], clock=catchup_clock)
    assert c.push("a", 1, 1)
    assert c.push("a", 2, 2)
    assert not c.push("a", 3, 3)  # full: pause the reader
    assert c.room("a") == 0
    assert not c.push_many("a", [4], [4])
    c.close("b")
    c.drain_list()
    assert c.room("a") == 3


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Combiner([])
    with pytest.raises(ValueError, match="unique"):
        Combiner([Feed("a"), Feed("a")])
    with pytest.raises(ValueError, match="capacity"):
        Feed("a", capacity=0)
    with pytest.raises(KeyError, match="unknown feed"):
        Combiner([Feed("a")]).push("b", 1, 1)


# -- properties --------------------------------------------------------------

sorted_pitrs = st.lists(st.integers(0, 60), max_size=40).map(sorted)


@st.composite
def feeds_and_arrivals(draw: st.DrawFn, n_feeds: int = 3) -> tuple[list[list[int]], list[int]]:
    """Sorted pitr lists per feed and an arrival order: the feed that delivers next."""
    feeds = [draw(sorted_pitrs) for _ in range(draw(st.integers(1, n_feeds)))]
    order = [f for f, pitrs in enumerate(feeds) for _ in pitrs]
    arrivals = draw(st.permutations(order))
    return feeds, list(arrivals)


def _reference(feeds: list[list[int]]) -> list[tuple[str, int, object]]:
    return stable_merge((f"f{i}", [(p, (i, k)) for k, p in enumerate(ps)]) for i, ps in enumerate(feeds))


@given(feeds_and_arrivals(), st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_catchup_output_is_the_stable_merge_whatever_the_interleaving(
    case: tuple[list[list[int]], list[int]], drain_every: int
) -> None:
    feeds, arrivals = case
    c = Combiner([Feed(f"f{i}") for i in range(len(feeds))], clock=catchup_clock)
    cursors = [0] * len(feeds)
    out: list[Emitted] = []
    for step, f in enumerate(arrivals):
        k = cursors[f]
        cursors[f] += 1
        c.push(f"f{f}", feeds[f][k], (f, k))
        if drain_every and step % drain_every == 0:
            out += c.drain_list()
            c._check()
        # Never backwards: everything emitted so far is a prefix of the stable merge.
        got = [(e.feed, e.pitr, e.item) for e in out]
        assert got == _reference(feeds)[: len(got)]
    for i in range(len(feeds)):
        c.close(f"f{i}")
    out += c.drain_list()
    c._check()
    assert [(e.feed, e.pitr, e.item) for e in out] == _reference(feeds)
    assert c.late == 0


@given(feeds_and_arrivals(n_feeds=2), st.booleans())
@settings(max_examples=200, deadline=None)
def test_realtime_and_catchup_agree_on_complete_inputs(
    case: tuple[list[list[int]], list[int]], strict: bool
) -> None:
    feeds, arrivals = case
    results = []
    for clock in (catchup_clock, lambda: 60):  # every pitr <= 60: all real time
        c = Combiner(
            [Feed(f"f{i}", required_realtime=(i == 0 or strict)) for i in range(len(feeds))],
            clock=clock,
        )
        cursors = [0] * len(feeds)
        for f in arrivals:  # inputs complete: everything is queued before anything is drained
            k = cursors[f]
            cursors[f] += 1
            c.push(f"f{f}", feeds[f][k], (f, k))
        for i in range(len(feeds)):
            c.close(f"f{i}")
        results.append([(e.feed, e.pitr, e.item) for e in c.drain_list()])
    assert results[0] == results[1] == _reference(feeds)


@given(feeds_and_arrivals(n_feeds=2))
@settings(max_examples=200, deadline=None)
def test_realtime_strict_order_is_the_stable_merge_whatever_the_interleaving(
    case: tuple[list[list[int]], list[int]],
) -> None:
    feeds, arrivals = case
    c = Combiner([Feed(f"f{i}") for i in range(len(feeds))], clock=lambda: 60)
    cursors = [0] * len(feeds)
    out: list[Emitted] = []
    for f in arrivals:
        k = cursors[f]
        cursors[f] += 1
        c.push(f"f{f}", feeds[f][k], (f, k))
        out += c.drain_list()
    for i in range(len(feeds)):
        c.close(f"f{i}")
    out += c.drain_list()
    assert [(e.feed, e.pitr, e.item) for e in out] == _reference(feeds)


def _desync_feeds() -> tuple[list[int], list[int]]:
    """Feed A: one message a second; feed B: one every five seconds; one hour."""
    t0 = 1_700_000_000_000
    a = [t0 + s * 1000 for s in range(3600)]
    b = [t0 + s * 1000 + 500 for s in range(0, 3600, 5)]
    return a, b


def test_naive_priority_queue_desynchronises_in_catchup_and_combiner_does_not() -> None:
    a, b = _desync_feeds()
    # In catch-up both readers deliver as fast as they can: one message each in turn.
    arrivals: list[tuple[str, int, object]] = []
    for k in range(max(len(a), len(b))):
        if k < len(a):
            arrivals.append(("A", a[k], ("A", k)))
        if k < len(b):
            arrivals.append(("B", b[k], ("B", k)))
    naive = [p for _, p, _ in naive_priority_queue_merge(arrivals)]
    assert naive != sorted(naive), "the naive combiner should go out of order in catch-up"

    c = Combiner([Feed("A"), Feed("B")], clock=catchup_clock)
    out: list[Emitted] = []
    for feed, pitr, item in arrivals:
        c.push(feed, pitr, item)
        out += c.drain_list()
    c.close("A")
    c.close("B")
    out += c.drain_list()
    pitrs = [e.pitr for e in out]
    assert pitrs == sorted(pitrs)
    assert len(out) == len(a) + len(b)
    assert max(c.stats().feeds[0].queued, c.stats().feeds[1].queued) == 0


def test_push_many_counts_late_messages_exactly() -> None:
    now = 1_000_000
    c = two_feeds(clock=lambda: now)
    c.push("controlstream", now - 10, "c")
    c.drain_list()
    c.advance("controlstream", now)
    c.push_many("surfacestream", [now - 30, now - 20, now - 10, now - 5], list("abcd"))
    assert c.late == 2  # (now-10, surface) sorts after (now-10, control): not late
    assert items(c.drain_list()) == list("abcd")


def test_push_emitted_hands_on_entries_with_the_same_rules() -> None:
    c = two_feeds(clock=catchup_clock)
    entries = [Emitted("surfacestream", p, f"s{p}") for p in (3, 5, 5)]
    assert c.push_emitted("surfacestream", entries)
    with pytest.raises(FeedOrderError):
        c.push_emitted("surfacestream", [Emitted("surfacestream", 4, "x")])
    with pytest.raises(ValueError, match="cannot be pushed"):
        c.push_emitted("surfacestream", [Emitted("controlstream", 9, "x")])
    # A labelled batch (its caller vouches for every label) is checked at its ends, and
    # its order always.
    other = [Emitted("surfacestream", 9, "x"), Emitted("controlstream", 9, "x")]
    with pytest.raises(ValueError, match="cannot be pushed"):
        c.push_emitted("surfacestream", other, labelled=True)
    with pytest.raises(FeedOrderError):
        c.push_emitted("surfacestream", [Emitted("surfacestream", p, "x") for p in (9, 8, 9)],
                       labelled=True)
    assert c.push_emitted("surfacestream", [Emitted("surfacestream[2]", 6, "s6")], labelled=True)
    c._check()
    c.close("controlstream")
    assert items(c.drain_list()) == ["s3", "s5", "s5", "s6"]


def _draw_operations(
    draw: st.DrawFn, feeds: int, steps: int, kinds: list[str]
) -> list[tuple[str, int, int]]:
    """Up to ``steps`` random operations (drawn from ``kinds``) on ``feeds`` feeds,
    each feed's pitrs never going backwards and no push or marker after its close."""
    ops: list[tuple[str, int, int]] = []
    floor = [0] * feeds
    closed = [False] * feeds
    for _ in range(draw(st.integers(1, steps))):
        f = draw(st.integers(0, feeds - 1))
        kind = draw(st.sampled_from(kinds))
        if kind in ("push", "advance") and not closed[f]:
            floor[f] += draw(st.integers(0, 3))
            ops.append((kind, f, floor[f]))
        elif kind == "close" and draw(st.integers(0, 4)) == 0:
            closed[f] = True
            ops.append((kind, f, 0))
        elif kind in ("caught_up", "clock", "drain"):
            ops.append((kind, f, draw(st.integers(0, 80))))
    return ops


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """Random pushes, progress markers, caught-up flags, closes, clock moves and drains
    on two feeds."""
    kinds = ["push", "push", "push", "advance", "caught_up", "close", "clock", "drain"]
    return _draw_operations(draw, 2, 60, kinds)


def _drain_list_matches_pop(
    feeds: list[tuple[str, bool]], ops: list[tuple[str, int, int]]
) -> None:
    """Plays ``ops`` on two Combiners over ``feeds`` (name, required in real time), one
    drained with `drain_list` (its fast paths), one with repeated `pop` (the plain rule):
    after every drain both emitted the same messages, counted the same late ones and are
    in the same mode."""
    now = [0]
    names = [name for name, _ in feeds]
    made = [
        Combiner([Feed(n, required_realtime=r) for n, r in feeds],
                 realtime_threshold_ms=30, clock=lambda: now[0])
        for _ in range(2)
    ]
    outs: list[list[tuple[str, int, object]]] = [[], []]

    def drain() -> None:
        outs[0] += [(e.feed, e.pitr, e.item) for e in made[0].drain_list()]
        while (e := made[1].pop()) is not None:
            outs[1].append((e.feed, e.pitr, e.item))
        for c in made:
            c._check()
        assert outs[0] == outs[1]
        assert made[0].last_mode == made[1].last_mode
        assert made[0].late == made[1].late

    for n, (kind, f, v) in enumerate(ops):
        for c in made:
            if kind == "push":
                c.push(names[f], v, n)
            elif kind == "advance":
                c.advance(names[f], v)
            elif kind == "caught_up":
                c.caught_up(names[f], v % 2 == 0)
            elif kind == "close":
                c.close(names[f])
        if kind == "clock":
            now[0] += v
        elif kind == "drain":
            drain()
    drain()


@given(operations(), st.booleans())
@settings(max_examples=400, deadline=None)
def test_drain_list_fast_paths_match_popping_one_at_a_time(
    ops: list[tuple[str, int, int]], strict: bool
) -> None:
    """`drain_list` (with its fast paths) and repeated `pop` (the plain rule) emit the same
    messages and end in the same mode, in real time, catch-up and in between."""
    _drain_list_matches_pop([("a", True), ("b", strict)], ops)


@st.composite
def many_feed_operations(draw: st.DrawFn) -> tuple[list[bool], list[tuple[str, int, int]]]:
    """As `operations`, on 1 to 6 feeds, each required in real time or not."""
    n = draw(st.integers(1, 6))
    required = [draw(st.booleans()) for _ in range(n)]
    kinds = ["push", "push", "push", "push", "advance", "caught_up", "close", "clock", "drain"]
    return required, _draw_operations(draw, n, 80, kinds)


@given(many_feed_operations())
@settings(max_examples=500, deadline=None)
def test_drain_list_of_any_number_of_feeds_matches_popping_one_at_a_time(
    case: tuple[list[bool], list[tuple[str, int, int]]],
) -> None:
    """With other than two feeds `drain_list` takes its general fast path (every entry
    settled by the lowest marker, merged at once); it emits what repeated `pop` (the
    plain rule) does, counts the same late messages and ends in the same mode."""
    required, ops = case
    _drain_list_matches_pop([(f"f{i}", r) for i, r in enumerate(required)], ops)
