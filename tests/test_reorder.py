"""The reorder buffer: seeded examples and hypothesis properties."""

from __future__ import annotations

import doctest
import random
from collections import Counter
from itertools import pairwise

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unifeed.core.reorder as reorder_module
from unifeed.core.errors import BadRecordError
from unifeed.core.reorder import ReorderBuffer, ReorderStats, reorder_lines
from unifeed.sim.traffic import simulate

# -- seeded examples -------------------------------------------------------------


def test_release_waits_for_the_window_then_sorts_by_key() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(window_ms=1000)
    buf.push(10_000, 9_800, "a")
    buf.push(10_200, 9_300, "b")
    buf.push(10_900, 10_500, "c")
    buf._check()
    assert len(buf) == 3
    assert buf.next_due() == 10_300
    assert buf.release(10_299) == []
    assert buf.release(10_300) == ["b"]
    assert buf.release(10_800) == ["a"]
    buf._check()
    assert buf.release(11_499) == []
    assert buf.release(11_500) == ["c"]
    assert len(buf) == 0 and buf.next_due() is None
    assert buf.stats() == ReorderStats(held=0, pushed=3, released=3, late=0)
    buf._check()


def test_equal_keys_keep_push_order() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(window_ms=50)
    for n in range(20):
        buf.push(1000 + n, 900, n)
        buf._check()
    assert buf.release(1019) == list(range(20))


def test_a_key_ahead_of_its_pitr_is_held_only_the_window() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(window_ms=100)
    buf.push(1000, 5_000_000, "clock far ahead")  # e.g. a clock in the wrong unit
    buf.push(1000, 990, "normal")
    buf._check()
    assert buf.next_due() == 1090
    assert buf.release(1090) == ["normal"]
    assert buf.release(1100) == ["clock far ahead"]
    buf._check()


def test_an_item_later_than_the_window_comes_out_at_once_and_is_counted() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(window_ms=100)
    buf.push(1000, 990, "on time")
    assert buf.release(1100) == ["on time"]
    buf.push(1200, 500, "very late")  # 700 ms late, the window is 100
    assert buf.release(1200) == ["very late"]
    assert buf.stats().late == 1
    buf._check()


def test_zero_window_releases_what_is_due_at_once() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(window_ms=0)
    buf.push(10, 10, "now")
    buf.push(10, 8, "older")
    assert buf.release(10) == ["older", "now"]


def test_flush_releases_everything_in_key_order() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(window_ms=10_000)
    buf.push(5, 3, "c")
    buf.push(6, 9, "ahead")
    buf.push(7, 1, "a")
    buf.push(8, 2, "b")
    assert buf.flush() == ["a", "b", "c", "ahead"]
    assert buf.flush() == []
    buf._check()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window_ms must be >= 0"):
        ReorderBuffer(window_ms=-1)
    buf: ReorderBuffer[str] = ReorderBuffer(window_ms=1)
    with pytest.raises(ValueError, match="NaN"):
        buf.push(1, float("nan"), "x")
    assert len(buf) == 0
    with pytest.raises(ValueError, match="window_ms must be >= 0"):
        reorder_lines([], window_ms=-5)  # checked at the call, not at the first line


def test_seeded_random_stress() -> None:
    rng = random.Random(42)
    buf: ReorderBuffer[int] = ReorderBuffer(window_ms=500)
    pitr = 0
    out: list[int] = []
    keys: dict[int, float] = {}
    for n in range(3000):
        pitr += rng.randrange(0, 50)
        key = pitr - rng.randrange(-100, 800)
        keys[n] = key
        buf.push(pitr, key, n)
        if n % 7 == 0:
            out.extend(buf.release(pitr))
            buf._check()
    out.extend(buf.flush())
    buf._check()
    assert sorted(out) == list(range(3000))
    stats = buf.stats()
    assert stats.released == stats.pushed == 3000 and stats.held == 0
    inversions = sum(1 for a, b in pairwise(out) if keys[b] < keys[a])
    assert stats.late >= inversions > 0


# -- properties ---------------------------------------------------------------------

WINDOW = st.integers(0, 2000)


@st.composite
def arrivals(draw: st.DrawFn, max_lateness: int | None = None) -> tuple[int, list[tuple[int, int]]]:
    """A window and (pitr, key) pairs with non-decreasing pitr.

    With ``max_lateness``, every key is 0 to max_lateness - 1 below its pitr; otherwise
    keys are anywhere around it (late, on time or ahead).
    """
    window = draw(WINDOW if max_lateness is None else st.integers(1, 2000))
    pitr = draw(st.integers(0, 10**6))
    pairs = []
    for _ in range(draw(st.integers(0, 80))):
        pitr += draw(st.integers(0, 300))
        if max_lateness is None:
            key = pitr - draw(st.integers(-1000, 5000))
        else:
            key = pitr - draw(st.integers(0, window - 1))
        pairs.append((pitr, key))
    return window, pairs


def run(
    window: int, pairs: list[tuple[int, int]], every: int = 1
) -> tuple[list[int], ReorderBuffer[int]]:
    """Push each pair (item = its index), releasing at the latest pitr every ``every`` pushes."""
    buf: ReorderBuffer[int] = ReorderBuffer(window_ms=window)
    out: list[int] = []
    for n, (pitr, key) in enumerate(pairs):
        buf.push(pitr, key, n)
        if n % every == 0:
            now = pitr
            released = buf.release(now)
            # Exactly what is due at `now` left, in (key, push order).
            due = [k for k, _ in sorted((pairs[i][1], i) for i in released)]
            assert [pairs[i][1] for i in released] == due
            for i in released:
                assert min(pairs[i]) + window <= now  # not released early
            due_next = buf.next_due()
            assert due_next is None or due_next > now  # nothing due left behind
            out.extend(released)
            buf._check()
    out.extend(buf.flush())
    buf._check()
    return out, buf


@settings(max_examples=100, deadline=None)
@given(arrivals())
def test_output_is_a_permutation_of_the_input(case: tuple[int, list[tuple[int, int]]]) -> None:
    window, pairs = case
    out, buf = run(window, pairs)
    assert sorted(out) == list(range(len(pairs)))
    stats = buf.stats()
    assert stats.pushed == stats.released == len(pairs) and stats.held == 0


@settings(max_examples=100, deadline=None)
@given(arrivals(max_lateness=2000), st.integers(1, 5))
def test_sorted_by_key_when_lateness_is_below_the_window(
    case: tuple[int, list[tuple[int, int]]], every: int
) -> None:
    window, pairs = case
    out, buf = run(window, pairs, every)
    keys = [pairs[i][1] for i in out]
    assert keys == sorted(keys)
    # Ties keep push order.
    assert out == sorted(range(len(pairs)), key=lambda i: (pairs[i][1], i))
    assert buf.stats().late == 0


@settings(max_examples=60, deadline=None)
@given(arrivals())
def test_deterministic_and_held_at_most_the_window(
    case: tuple[int, list[tuple[int, int]]],
) -> None:
    window, pairs = case
    first, _ = run(window, pairs)
    second, _ = run(window, pairs)
    assert first == second
    # Whatever its key, nothing is held once feed time is a window past its pitr.
    buf: ReorderBuffer[int] = ReorderBuffer(window_ms=window)
    for n, (pitr, key) in enumerate(pairs):
        buf.push(pitr, key, n)
    if pairs:
        assert len(buf.release(pairs[-1][0] + window)) == len(pairs)


def line(pitr: int, clock: int | None, extra: str = "") -> bytes:
    clock_part = "" if clock is None else f',"clock":{clock}'
    return f'{{"type":"position","pitr":{pitr}{clock_part}{extra}}}'.encode()


@settings(max_examples=60, deadline=None)
@given(arrivals())
def test_reorder_lines_matches_the_buffer(case: tuple[int, list[tuple[int, int]]]) -> None:
    window, pairs = case
    lines = [line(pitr, key, f',"n":{n}') for n, (pitr, key) in enumerate(pairs)]
    out = list(reorder_lines(lines, window))
    expected, _ = run(window, pairs)
    assert out == [lines[i] for i in expected]


# -- reorder_lines --------------------------------------------------------------------


def test_reorder_lines_keeps_bytes_and_skips_blank_lines() -> None:
    feed = [
        line(1000, 900) + b"\n",
        b"\n",
        line(1100, 700) + b"\n",
        b'{"type":"keepalive","pitr":1150}\n',
        line(1200, None) + b"\n",  # no clock: its pitr is its key
        b'{"type":"position","pitr":1300,"clock":null}\n',
        b"   ",
    ]
    out = list(reorder_lines(feed, window_ms=250))
    assert out == [feed[2], feed[0], feed[3], feed[4], feed[5]]


def test_reorder_lines_by_another_field_or_by_pitr() -> None:
    feed = [
        b'{"type":"position","pitr":10,"clock":1,"emitted":9}',
        b'{"type":"position","pitr":11,"clock":2,"emitted":5}',
    ]
    assert list(reorder_lines(feed, 100, field="emitted")) == [feed[1], feed[0]]
    assert list(reorder_lines(feed, 100, field="pitr")) == feed
    assert list(reorder_lines(feed, 100)) == feed


def test_reorder_lines_accepts_float_keys() -> None:
    feed = [line(10, 9), b'{"type":"position","pitr":11,"clock":8.5}']
    assert list(reorder_lines(feed, 5)) == [feed[1], feed[0]]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"{not json", "line 2: "),
        (b'{"type":"position","clock":5}', "line 2: Object missing required field `pitr`"),
        (b'{"type":"position","pitr":true}', "line 2: Expected `int`"),
        (b'{"type":"position","pitr":3,"clock":"5"}', "line 2: Expected `int | float | null`"),
    ],
)
def test_reorder_lines_names_the_bad_line(bad: bytes, reason: str) -> None:
    with pytest.raises(BadRecordError, match=reason) as info:
        list(reorder_lines([line(1, 1), bad], 10))
    assert info.value.feed == "input"


def test_reorder_lines_on_simulated_traffic() -> None:
    sim = simulate(seed=11, minutes=0.5, airports=2, rate=100)
    window = 3000
    out = list(reorder_lines(sim.controlstream, window))
    assert Counter(out) == Counter(sim.controlstream)

    def keys(lines: list[bytes]) -> list[int]:
        stamps = [msgspec.json.decode(x, type=_Stamp) for x in lines]
        return [s.pitr if s.clock is None else s.clock for s in stamps]

    def inversions(values: list[int]) -> int:
        top, count = -1, 0
        for v in values:
            if v < top:
                count += 1
            top = max(top, v)
        return count

    before, after = inversions(keys(sim.controlstream)), inversions(keys(out))
    # Most positions reach us within 2.5 s: only the few slower ones stay out of order.
    assert after < 0.05 * before
    assert after < 0.03 * len(out)


def test_doctests() -> None:
    assert doctest.testmod(reorder_module).failed == 0


class _Stamp(msgspec.Struct):
    pitr: int
    clock: int | None = None
