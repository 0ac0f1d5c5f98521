"""The pure parts of a Kafka reader, alone: the resume skip, the end-of-log watch and the
restart marks (unifeed.runtime.resume, .endwatch, .marks)."""

from __future__ import annotations

from unifeed.checkpoint.store import FeedCheckpoint
from unifeed.core.records import CONTROLSTREAM, Departure, Keepalive
from unifeed.core.stages import Accepted
from unifeed.runtime.endwatch import EndOfLogWatch
from unifeed.runtime.marks import RestartMarks
from unifeed.runtime.resume import ResumeSkip


def _msg(pitr: int) -> Accepted:
    return Accepted(CONTROLSTREAM, pitr, b"m%d" % pitr, Departure(pitr=pitr, id="A"))


def _keepalive(pitr: int) -> Accepted:
    return Accepted(CONTROLSTREAM, pitr, b"k%d" % pitr, Keepalive(pitr=pitr))


def _pitrs(batch: list[Accepted]) -> list[tuple[int, bytes]]:
    return [(a.pitr, a.item) for a in batch]


def test_resume_skip_counts_across_batches_and_stops_at_the_first_new_message() -> None:
    skip = ResumeSkip(FeedCheckpoint(pitr=10, skip=2), count_keepalives=False)
    replay, good = skip.split([_msg(8), _msg(10)])
    assert (_pitrs(replay), good) == ([(8, b"m8"), (10, b"m10")], [])
    assert skip.replaying
    # The second done message at pitr 10 comes in the next batch; a keepalive at 10 is
    # replay without counting; the third message at 10 is new, and so is all after it.
    replay, good = skip.split([_keepalive(10), _msg(10), _msg(10), _msg(9)])
    assert _pitrs(replay) == [(10, b"k10"), (10, b"m10")]
    assert _pitrs(good) == [(10, b"m10"), (9, b"m9")]
    assert not skip.replaying
    assert skip.split([_msg(1)]) == ([], [_msg(1)])  # done replaying: nothing is skipped


def test_resume_skip_counts_keepalives_where_the_output_counts_them() -> None:
    skip = ResumeSkip(FeedCheckpoint(pitr=10, skip=1), count_keepalives=True)
    replay, good = skip.split([_keepalive(10), _keepalive(10), _msg(11)])
    assert _pitrs(replay) == [(10, b"k10")]
    assert _pitrs(good) == [(10, b"k10"), (11, b"m11")]


def test_without_a_checkpoint_nothing_is_replay() -> None:
    skip = ResumeSkip(None, count_keepalives=False)
    assert not skip.replaying
    assert skip.split([_msg(1), _msg(2)]) == ([], [_msg(1), _msg(2)])


def test_end_of_log_is_reported_once_a_stay_after_the_grace() -> None:
    now = [100.0]
    watch = EndOfLogWatch(2.0, clock=lambda: now[0])
    assert not watch.at_end
    assert watch.update(read=True, eof=False) is False
    assert watch.update(read=False, eof=True) is False  # the stay begins
    assert watch.at_end
    now[0] = 101.9
    assert watch.update(read=False, eof=False) is False  # not yet the grace
    now[0] = 102.0
    assert watch.update(read=False, eof=False) is True
    now[0] = 110.0
    assert watch.update(read=False, eof=True) is False  # once a stay
    assert watch.update(read=True, eof=False) is False  # a record ends the stay
    assert not watch.at_end
    assert watch.update(read=False, eof=True) is False
    now[0] = 112.0
    assert watch.update(read=False, eof=False) is True  # the next stay is reported


def test_zero_grace_reports_at_the_first_end() -> None:
    watch = EndOfLogWatch(0.0, clock=lambda: 5.0)
    assert watch.update(read=True, eof=True) is True


def test_restart_marks_answer_the_first_mark_that_reaches_a_pitr() -> None:
    marks = RestartMarks(start=40)
    assert marks.offset_for(1) == 40
    marks.add(40, 100)
    marks.add(50_000, 200)
    marks.add(52_000, 250)  # within the span of the previous mark: merged into it
    assert [marks.offset_for(p) for p in (100, 150, 250)] == [40, 50_000, 50_000]
    assert marks.offset_for(251) == 40  # past every mark: where the run began
