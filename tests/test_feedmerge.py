"""`FeedMerge` alone (no broker): a feed's partitions, fed as their readers would feed
them, come out merged by (pitr, partition); an idle partition is passed once at the end
of its log; a record a passed partition delivers below the feed's position is a dead
letter naming its partition; replay stays replay; the snapshot hook sees where each
partition stands."""

from __future__ import annotations

import threading
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unifeed.checkpoint.store import PartitionStart
from unifeed.core.records import Keepalive, StampedDecoder
from unifeed.core.stages import Accepted, FeedIntake, Intake
from unifeed.runtime.feedmerge import FeedMerge
from unifeed.runtime.limits import FEED_MERGE_BUDGET, MIN_PARTITION_SHARE, partition_share
from unifeed.runtime.reader import ReadBatch
from unifeed.runtime.state import RunState

KEYS = ("f[0]", "f[1]", "f[2]")


def _accepted(key: str, partition: int, pitrs: list[int]) -> list[Accepted]:
    intake = FeedIntake("f", where="offset", decoder=StampedDecoder("f"), partition=partition,
                        queue=key)
    good, dead = intake.process([(i, b'{"pitr":%d,"p":%d}' % (p, partition))
                                 for i, p in enumerate(pitrs)])
    assert not dead
    return list(good)


class Collector:
    def __init__(self) -> None:
        self.reads: list[ReadBatch] = []
        self.lock = threading.Lock()

    def __call__(self, read: ReadBatch) -> bool:
        with self.lock:
            self.reads.append(read)
        return True

    def items(self) -> list[tuple[str, int]]:
        with self.lock:
            return [(a.feed, a.pitr) for r in self.reads for a in r.good]

    def wait(self, predicate: Any, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.01)
        raise TimeoutError(f"feed merge: {self.reads}")


def _run(merge: FeedMerge) -> None:
    merge.start()


def _feed(merge: FeedMerge, key: str, read: ReadBatch) -> None:
    assert merge.reader_delivery(key)(read)


def test_partitions_merge_by_pitr_then_partition_and_an_idle_one_is_passed_at_its_end() -> None:
    state = RunState()
    out = Collector()
    merge = FeedMerge(state, "f", KEYS, {k: i for i, k in enumerate(KEYS)}, out)
    _run(merge)
    try:
        _feed(merge, "f[1]", ReadBatch([], _accepted("f[1]", 1, [5, 7, 9]), [], False, False,
                                       [0, 1, 2]))
        _feed(merge, "f[0]", ReadBatch([], _accepted("f[0]", 0, [5, 6, 9]), [], False, False,
                                       [0, 1, 2]))
        time.sleep(0.3)
        assert out.items() == [], "partition 2 has said nothing: nothing can pass it"
        _feed(merge, "f[2]", ReadBatch([], [], [], True, False, []))  # at the end of its log
        out.wait(lambda: len(out.items()) == 5)
        # Partition 1's 9 waits: partition 0 (ranked first) may still send another 9.
        assert out.items() == [("f[0]", 5), ("f[1]", 5), ("f[0]", 6), ("f[1]", 7),
                               ("f[0]", 9)]
        # Partition 2 wakes up below where the feed is: a dead letter naming it.
        _feed(merge, "f[2]", ReadBatch([], _accepted("f[2]", 2, [3, 11]), [], False, False,
                                       [0, 1]))
        _feed(merge, "f[0]", ReadBatch([], [], [], False, True, []))
        _feed(merge, "f[1]", ReadBatch([], [], [], False, True, []))
        _feed(merge, "f[2]", ReadBatch([], [], [], False, True, []))
        out.wait(lambda: bool(out.reads) and out.reads[-1].closed)
        assert out.items()[5:] == [("f[1]", 9), ("f[2]", 11)]
        dead = [d for r in out.reads for d in r.dead]
        assert [(d.feed, d.partition, d.pitr, d.kind.value) for d in dead] == [
            ("f", 2, 3, "pitr_backwards")]
    finally:
        state.stop.set()
        merge.join(5)
    assert state.failure is None


def test_replay_stays_replay_and_snapshots_see_each_partitions_start() -> None:
    state = RunState()
    out = Collector()
    starts: list[tuple[int, int, dict[str, PartitionStart]]] = []
    keys = ("f[0]", "f[1]")
    merge = FeedMerge(state, "f", keys, {"f[0]": 0, "f[1]": 1}, out,
                      starts={"f[0]": PartitionStart(100, -1), "f[1]": PartitionStart(200, -1)})
    merge.before_batch = lambda handed, floor, at: starts.append((handed, floor, dict(at)))
    _run(merge)
    try:
        a = _accepted("f[0]", 0, [1, 2, 8])
        b = _accepted("f[1]", 1, [3, 4, 9])
        _feed(merge, "f[0]", ReadBatch(a[:2], [], [], False, False, [100, 101]))
        _feed(merge, "f[1]", ReadBatch(b[:2], [], [], False, False, [200, 201]))
        out.wait(lambda: len(starts) == 1 and len(out.reads) == 1)  # replay 1, 2
        _feed(merge, "f[0]", ReadBatch([], a[2:], [], False, True, [105]))
        out.wait(lambda: len(starts) == 2 and len(out.reads) == 2)  # replay 3, 4
        _feed(merge, "f[1]", ReadBatch([], b[2:], [], False, True, [207]))
        out.wait(lambda: bool(out.reads) and out.reads[-1].closed)
    finally:
        state.stop.set()
        merge.join(5)
    replay = [(x.feed, x.pitr) for r in out.reads for x in r.replay]
    assert replay == [("f[0]", 1), ("f[0]", 2), ("f[1]", 3), ("f[1]", 4)]
    assert out.items() == [("f[0]", 8), ("f[1]", 9)]
    # Before the first batch: each partition from where its reader began.
    assert starts[0] == (0, -1, {"f[0]": PartitionStart(100, -1), "f[1]": PartitionStart(200, -1)})
    # Before a later batch: each partition from its first message not handed on yet.
    assert starts[1] == (2, 2, {"f[0]": PartitionStart(105, 2), "f[1]": PartitionStart(200, -1)})
    assert starts[2] == (4, 4, {"f[0]": PartitionStart(105, 2), "f[1]": PartitionStart(207, 4)})


def test_the_feed_budget_is_divided_among_its_partitions() -> None:
    for partitions in (1, 2, 4, 8, 16, 40, 100):
        share = partition_share(partitions)
        assert share >= MIN_PARTITION_SHARE
        if share > MIN_PARTITION_SHARE:
            assert partitions * share <= FEED_MERGE_BUDGET
    state = RunState()
    keys = tuple(f"f[{i}]" for i in range(4))
    merge = FeedMerge(state, "f", keys, {k: i for i, k in enumerate(keys)}, Collector())
    assert merge.share == FEED_MERGE_BUDGET // 4
    assert [merge.combiner.room(k) for k in keys] == [merge.share] * 4


def test_a_partition_cannot_hand_its_merge_more_than_its_share() -> None:
    state = RunState()
    out = Collector()
    keys = ("f[0]", "f[1]")
    merge = FeedMerge(state, "f", keys, {"f[0]": 0, "f[1]": 1}, out)
    merge.share = 100
    full = merge.reader_delivery("f[0]")
    a = _accepted("f[0]", 0, list(range(150)))
    assert full(ReadBatch([], a[:90], [], False, False, list(range(90))))
    # Below its share: one more batch goes, even past it.
    assert full(ReadBatch([], a[90:120], [], False, False, list(range(90, 120))))
    assert merge.holds("f[0]") == 120
    # At its share: refused (kept, not lost) while the merge holds that many.
    assert not full(ReadBatch([], a[120:], [], False, False, list(range(120, 150))))
    assert not full(ReadBatch([], [], [], False, False))
    assert merge.holds("f[0]") == 120
    # The other partition's hand-over is its own; a batch without messages always goes.
    other = merge.reader_delivery("f[1]")
    assert other(ReadBatch([], _accepted("f[1]", 1, [200]), [], False, False, [0]))
    _run(merge)
    try:
        # The merge hands on what partition 1 settles (below 200): room again.
        full.wait_s = 10.0
        assert full(ReadBatch([], [], [], False, False))
        assert merge.holds("f[0]") < merge.share
        assert other(ReadBatch([], [], [], False, True, []))
        assert full(ReadBatch([], [], [], False, True, []))
        out.wait(lambda: bool(out.reads) and out.reads[-1].closed)
    finally:
        state.stop.set()
        merge.join(5)
    assert state.failure is None
    assert [p for k, p in out.items() if k == "f[0]"] == list(range(150))
    assert merge.holds("f[0]") == merge.holds("f[1]") == 0


def _lines(partition: int, history: list[tuple[int, bool]]) -> list[bytes]:
    return [
        b'{"type":"keepalive","pitr":%d}' % p if ka else b'{"pitr":%d,"p":%d,"i":%d}' % (p, partition, i)
        for i, (p, ka) in enumerate(history)
    ]


def _merge_in_turn(
    histories: list[list[tuple[int, bool]]], chunk: int, order: list[int], hook: bool = True
) -> tuple[list[ReadBatch], list[tuple[int, int, dict[str, PartitionStart]]]]:
    """Feed each partition's history to a `FeedMerge` as its reader would (``chunk``
    records a read, partitions in the turns of ``order``), stepped as a run's loop steps
    it (no thread of its own); every batch it hands on and every snapshot it offers (with
    ``hook``; without, it keeps no partition's position)."""
    keys = tuple(f"f[{i}]" for i in range(len(histories)))
    out = Collector()
    snapshots: list[tuple[int, int, dict[str, PartitionStart]]] = []
    merge = FeedMerge(RunState(), "f", keys, {k: i for i, k in enumerate(keys)}, out,
                      starts={k: PartitionStart(0, -1) for k in keys})
    if hook:
        merge.before_batch = lambda handed, floor, at: snapshots.append((handed, floor, dict(at)))
    intakes = [FeedIntake("f", where="offset", decoder=StampedDecoder("f"), partition=i, queue=k)
               for i, k in enumerate(keys)]
    lines = [_lines(i, h) for i, h in enumerate(histories)]
    at = [0] * len(keys)
    turns = iter(order)
    for _ in range(10 * sum(map(len, lines)) + 100):
        if all(at[i] > len(lines[i]) for i in range(len(keys))):
            break
        i = next(turns, None)
        if i is None or at[i] > len(lines[i]):
            i = next(j for j in range(len(keys)) if at[j] <= len(lines[j]))
        values = lines[i][at[i] : at[i] + chunk]
        ended = at[i] + chunk >= len(lines[i])
        good, dead = intakes[i].process_values(values, int)
        assert not dead
        read = ReadBatch([], good, [], ended, ended, list(range(at[i], at[i] + len(values))))
        deliver = merge.reader_delivery(keys[i])
        for _ in range(100):
            if deliver(read):
                break
            merge.step()
        else:
            raise AssertionError("the merge never took a batch")
        at[i] += chunk if values else 1
        merge.step()
    for _ in range(100):
        if merge.finished:
            break
        merge.step()
    assert merge.finished
    assert [merge.holds(k) for k in keys] == [0] * len(keys)
    return out.reads, snapshots


def _reference(histories: list[list[tuple[int, bool]]]) -> list[tuple[int, int, int]]:
    """(pitr, partition, index) of every record, keepalives too, merged by (pitr, partition)."""
    return sorted((p, part, i) for part, h in enumerate(histories) for i, (p, _) in enumerate(h))


@st.composite
def _histories(draw: st.DrawFn) -> list[list[tuple[int, bool]]]:
    partitions = draw(st.integers(1, 5))
    out = []
    for _ in range(partitions):
        steps = draw(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=40))
        pitr = draw(st.integers(0, 5))
        history = []
        for step, keepalive in steps:
            pitr += step
            history.append((pitr, keepalive and step % 2 == 1))
        out.append(history)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories=_histories(), chunk=st.integers(1, 12), order=st.lists(st.integers(0, 4)),
       hook=st.booleans())
def test_merged_batches_say_where_their_keepalives_are(
    histories: list[list[tuple[int, bool]]], chunk: int, order: list[int], hook: bool
) -> None:
    order = [i % len(histories) for i in order]
    # What each partition has in the merge is back to none at the end (asserted there).
    reads, _ = _merge_in_turn(histories, chunk, order, hook)
    merged = []
    for read in reads:
        assert not read.replay
        if read.good:
            # The next stage trusts these indexes: a wrong one would forward a keepalive
            # or drop a message.
            assert type(read.good) is Intake
            assert read.good.keepalive_at == [
                i for i, a in enumerate(read.good) if type(a.rec) is Keepalive
            ]
        merged.extend((a.pitr, int(a.feed[2:-1])) for a in read.good)
    assert merged == [(p, part) for p, part, _ in _reference(histories)]


def test_each_snapshot_starts_every_partition_at_its_first_record_not_handed_on() -> None:
    # Large enough that the merge's offset lists are cut many times over.
    histories = [[(3 * i + part, i % 97 == 5) for i in range(9000 + 1000 * part)]
                 for part in range(3)]
    reads, snapshots = _merge_in_turn(histories, 700, [0, 1, 2, 2, 0, 1, 1])
    reference = _reference(histories)
    assert [(a.pitr, int(a.feed[2:-1])) for r in reads for a in r.good] == [
        (p, part) for p, part, _ in reference]
    assert len(snapshots) > 10
    for handed, floor, starts in snapshots:
        for part in range(3):
            # Offsets are the records' indexes: the start is how many were handed on.
            expected = sum(1 for _, q, _ in reference[:handed] if q == part)
            assert starts[f"f[{part}]"].offset == expected, (handed, part)
        assert floor == (reference[handed - 1][0] if handed else -1)
