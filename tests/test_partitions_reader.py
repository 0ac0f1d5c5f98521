"""`PartitionsReader` alone, over a scripted consumer (no broker): one thread and one
client read every partition of a feed, each partition's messages go on in offset order
through that partition's own reader, a partition whose hand-over is full is held (and
paused past a batch) while the others go on, and nothing is lost or doubled; and
`split_errors`, the error split every reader uses."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from unifeed.core.errors import KafkaRuntimeError
from unifeed.core.records import StampedDecoder
from unifeed.kafka.clients import Target
from unifeed.runtime.feedmerge import FeedMerge
from unifeed.runtime.inbox import Batch, Inbox
from unifeed.runtime.limits import FETCH_BUDGET_KB, READ_BATCH, partition_fetch_kb
from unifeed.runtime.reader import (
    Delivery,
    FeedReader,
    PartitionsReader,
    ReadBatch,
    ReadPlan,
    run_reader_config,
    shared_reader_config,
    split_errors,
)
from unifeed.runtime.state import RunState

TOPIC = "t"


def _msg(partition: int, offset: int) -> Message:
    return Message(topic=TOPIC, partition=partition, offset=offset, value=b'{"pitr":%d}' % offset)


def _eof(partition: int, offset: int) -> Message:
    return Message(
        topic=TOPIC, partition=partition, offset=offset, error=KafkaError(KafkaError._PARTITION_EOF)
    )


class ScriptedConsumer:
    """Hands out the scripted reads in turn, skipping the messages of paused partitions
    (as a client does: it fetches nothing for them), and records pauses and resumes."""

    def __init__(self, reads: list[list[Message]]) -> None:
        self.reads = reads
        self.paused: set[int] = set()
        self.pauses: list[int] = []
        self.resumes: list[int] = []
        self.assigned: list[Any] = []
        self.lock = threading.Lock()

    def assign(self, tps: list[Any]) -> None:
        self.assigned = tps

    def pause(self, tps: list[Any]) -> None:
        with self.lock:
            for tp in tps:
                self.paused.add(tp.partition)
                self.pauses.append(tp.partition)

    def resume(self, tps: list[Any]) -> None:
        with self.lock:
            for tp in tps:
                self.paused.discard(tp.partition)
                self.resumes.append(tp.partition)

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        with self.lock:
            for i, read in enumerate(self.reads):
                if read and read[0].partition() not in self.paused:
                    return self.reads.pop(i)
        return []

    def poll(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    def get_watermark_offsets(
        self, tp: Any, timeout: float, cached: bool = False
    ) -> tuple[int, int]:
        return 0, 10**9  # never at the end by the watermarks: only the scripted ends count

    def close(self) -> None:
        pass


def _reader(state: RunState, inbox: Inbox[ReadBatch], partition: int) -> FeedReader:
    key = f"f[{partition}]"

    def whole(read: ReadBatch) -> Batch[Any]:
        return Batch([read])

    return FeedReader(
        state=state,
        feed="f",
        target=Target(TOPIC, partition),
        config={},
        plan=ReadPlan(0),
        deliver=Delivery([(inbox, key, whole)], wait_s=0.0),
        stop_at=None,
        exit_at_end=True,
        end_of_log_grace_s=0.0,
        key=key,
        partition=partition,
        decoder=StampedDecoder("f"),
    )


def _take_all(inbox: Inbox[ReadBatch], lane: str) -> list[ReadBatch]:
    return [b.records[0] for _, b in inbox.take([lane], 0)]


def test_a_full_partition_is_held_and_paused_while_the_others_go_on() -> None:
    state = RunState()
    inbox: Inbox[ReadBatch] = Inbox(["f[0]", "f[1]"], 1, state.stop)
    size = READ_BATCH // 2
    # Partition 0: four reads of half a batch each; partition 1: three small reads.
    p0 = [[_msg(0, o) for o in range(k * size, (k + 1) * size)] for k in range(4)]
    p1 = [[_msg(1, o) for o in range(k * 10, (k + 1) * 10)] for k in range(3)]
    script = [p0[0], p1[0], p0[1], p1[1], p0[2], p0[3], p1[2], [_eof(1, 30)]]
    consumer = ScriptedConsumer(script)
    readers = [_reader(state, inbox, 0), _reader(state, inbox, 1)]
    group = PartitionsReader(state, "f", {}, readers)
    got: dict[str, list[ReadBatch]] = {"f[0]": [], "f[1]": []}
    runner = threading.Thread(target=group._loop, args=(consumer,), daemon=True)
    runner.start()
    try:
        # Take only partition 1's batches: partition 0's lane stays full, so its later
        # reads are held, and it is paused once a batch's worth is held.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r.closed for r in got["f[1]"]):
            got["f[1]"] += _take_all(inbox, "f[1]")
            time.sleep(0.01)
        assert [a.pitr for r in got["f[1]"] for a in r.good] == list(range(30))
        assert any(r.closed for r in got["f[1]"])
        assert 0 in consumer.pauses and 0 not in consumer.resumes
        assert sum(len(r.good) for r in _take_all(inbox, "f[0]")) == size  # only the first
        got["f[0]"] = []
        # Room again: what was held goes on, in order, and partition 0 is resumed.
        consumer.reads.append([_eof(0, 4 * size)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r.closed for r in got["f[0]"]):
            got["f[0]"] += _take_all(inbox, "f[0]")
            time.sleep(0.01)
        runner.join(10)
        assert not runner.is_alive()
    finally:
        state.stop.set()
        runner.join(10)
    assert state.failure is None
    assert 0 in consumer.resumes
    assert [a.pitr for r in got["f[0]"] for a in r.good] == list(range(size, 4 * size))
    assert [r.next_offset for r in readers] == [4 * size, 30]
    assert group.next_offset == 4 * size + 30


def test_a_message_read_again_is_not_handed_on_twice() -> None:
    state = RunState()
    inbox: Inbox[ReadBatch] = Inbox(["f[0]"], 8, state.stop)
    reader = _reader(state, inbox, 0)
    consumer = ScriptedConsumer([])
    first = reader.step(consumer, [_msg(0, o) for o in range(5)], False)  # type: ignore[arg-type]
    again = reader.step(consumer, [_msg(0, o) for o in range(3, 8)], False)  # type: ignore[arg-type]
    assert first is not None and again is not None
    assert [a.pitr for a in first.good] == [0, 1, 2, 3, 4]
    assert [a.pitr for a in again.good] == [5, 6, 7]
    assert again.offsets == [5, 6, 7]


def test_split_errors_keeps_records_and_names_the_ended_partitions() -> None:
    messages = [_msg(0, 1), _eof(2, 7), _msg(1, 4), _eof(0, 2)]
    records, ended = split_errors(messages, "f", "kafka:t")
    assert [(m.partition(), m.offset()) for m in records] == [(0, 1), (1, 4)]
    assert ended == {(TOPIC, 0), (TOPIC, 2)}
    plain = [_msg(0, 1), _msg(0, 2)]
    assert split_errors(plain, "f", "kafka:t") == (plain, set())
    transient = Message(topic=TOPIC, partition=0, offset=3, error=KafkaError(KafkaError._TRANSPORT))
    assert split_errors([transient, _msg(0, 3)], "f", "kafka:t")[1] == set()
    fatal = Message(
        topic=TOPIC, partition=0, offset=3, error=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    )
    with pytest.raises(KafkaRuntimeError, match="reading f from kafka:t"):
        split_errors([fatal], "f", "kafka:t")


def test_a_shared_consumer_fetches_each_partition_its_share() -> None:
    """One consumer for several partitions may fetch each its share at once (unless the
    run's Kafka settings fix the fetch size); settings without a fetch size are kept."""

    class Options:
        kafka_extra: dict[str, object] | None = None

    config = {"fetch.max.bytes": 4096 * 1024, "queued.max.messages.kbytes": 4096}
    shared = shared_reader_config(config, Options(), 4)
    assert shared == {"fetch.max.bytes": 4 * 4096 * 1024, "queued.max.messages.kbytes": 4096}
    assert config["fetch.max.bytes"] == 4096 * 1024  # not changed in place
    fixed = Options()
    fixed.kafka_extra = {"fetch.max.bytes": 1000}
    assert shared_reader_config({"fetch.max.bytes": 1000}, fixed, 4) == {"fetch.max.bytes": 1000}
    assert shared_reader_config({"group.id": "g"}, Options(), 4) == {"group.id": "g"}


def test_the_run_consumer_fetches_each_partition_its_share_of_one_budget() -> None:
    """One fetch brings each partition at most its share of `FETCH_BUDGET_KB` (1 MiB,
    librdkafka's default, up to 8 partitions; less beyond; never below 64 KiB), unless the
    run's Kafka settings name the bound under either of its names."""

    class Options:
        bootstrap = "127.0.0.1:9"
        kafka_extra: dict[str, object] | None = None

    def fetch(partitions: int, extra: dict[str, object] | None = None) -> object:
        o = Options()
        o.kafka_extra = extra
        return run_reader_config(o, partitions).get("max.partition.fetch.bytes")

    assert fetch(3) == fetch(8) == 1024 * 1024
    assert fetch(32) == FETCH_BUDGET_KB * 1024 // 32 == 256 * 1024
    assert fetch(10_000) == 64 * 1024
    assert fetch(32, {"max.partition.fetch.bytes": 5000}) == 5000
    assert fetch(32, {"fetch.message.max.bytes": 5000}) is None  # the alias decides
    assert partition_fetch_kb(0) == 1024


def _merged(
    state: RunState, merge: FeedMerge, partitions: int, consumer: ScriptedConsumer
) -> tuple[list[FeedReader], PartitionsReader, threading.Thread]:
    """The readers of ``partitions`` partitions of feed ``f`` handing to ``merge`` (hold
    limit: the partition's share, as `read_feed` sets it), their `PartitionsReader` over
    ``consumer`` and its thread; the merge and the thread are started."""
    readers = []
    for p in range(partitions):
        r = _reader(state, merge.inbox, p)
        r.deliver = merge.reader_delivery(f"f[{p}]")
        r.hold_limit = merge.share
        readers.append(r)
    group = PartitionsReader(state, "f", {}, readers)
    runner = threading.Thread(target=group._loop, args=(consumer,), daemon=True)
    merge.start()
    runner.start()
    return readers, group, runner


def test_a_partition_its_merge_waits_on_holds_no_more_than_its_share() -> None:
    """Partition 1 says nothing (not at its end): its feed's merge can emit nothing, so
    partition 0 fills its share in the merge, then its reader holds up to the same share
    and pauses it; nothing read is lost once partition 1 ends."""
    state = RunState()
    out: list[ReadBatch] = []
    keys = ("f[0]", "f[1]")
    merge = FeedMerge(state, "f", keys, {"f[0]": 0, "f[1]": 1}, lambda r: out.append(r) or True)
    merge.share = 2000
    size = 700
    reads = [[_msg(0, o) for o in range(k * size, (k + 1) * size)] for k in range(20)]
    consumer = ScriptedConsumer(list(reads))
    readers, _group, runner = _merged(state, merge, 2, consumer)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 0 not in consumer.pauses:
            time.sleep(0.01)
        time.sleep(0.3)
        assert 0 in consumer.pauses and not out
        in_merge = merge.holds("f[0]")
        read = 20 * size - sum(len(r) for r in consumer.reads)
        # In the merge: its share (a read is cut to what is left of it); held by the
        # reader: below the hold limit before the read that paused it.
        assert in_merge == merge.share  # filled to its share, not past it
        assert read - in_merge < readers[0].hold_limit + size
        assert read < 20 * size
        # Partition 1 ends; partition 0's reads go on (resumed) until it ends too.
        consumer.reads += [[_eof(1, 0)], [_eof(0, 20 * size)]]
        merge.join(10)
        runner.join(10)
    finally:
        state.stop.set()
        merge.join(5)
        runner.join(5)
    assert state.failure is None
    assert [a.pitr for r in out for a in r.good] == list(range(20 * size))


def test_what_a_feed_of_many_partitions_holds_is_bounded_by_its_shares() -> None:
    """Six partitions read in chunks larger than their share of the merge, one more that
    says nothing yet (the merge can emit nothing): each partition has at most its share
    in the merge (a chunk is cut to what is left of it, not taken past it), its reader
    holds at most its hold limit and one read (undecoded, nothing waits decoded in a
    hand-over), and it is paused; once the silent partition ends, every message comes
    out in (pitr, partition) order."""
    state = RunState()
    out: list[ReadBatch] = []
    n, chunk, chunks = 6, 700, 12
    keys = tuple(f"f[{p}]" for p in range(n + 1))
    merge = FeedMerge(
        state, "f", keys, {k: p for p, k in enumerate(keys)}, lambda r: out.append(r) or True
    )
    merge.share = 2000

    def msg(p: int, o: int) -> Message:
        return Message(topic=TOPIC, partition=p, offset=o, value=b'{"pitr":%d}' % (o * 10 + p))

    reads = [
        [msg(p, o) for o in range(k * chunk, (k + 1) * chunk)]
        for k in range(chunks)
        for p in range(n)
    ]
    consumer = ScriptedConsumer(list(reads))
    readers, group, runner = _merged(state, merge, n + 1, consumer)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(set(consumer.pauses)) < n:
            time.sleep(0.01)
        time.sleep(0.3)
        assert set(consumer.pauses) == set(range(n)) and not out
        for p in range(n):
            key = (TOPIC, p)
            assert merge.holds(f"f[{p}]") <= merge.share
            assert len(group._held[key]) < readers[p].hold_limit + chunk
            assert not group._pending
        consumer.reads += [[_eof(n, 0)]] + [[_eof(p, chunks * chunk)] for p in range(n)]
        merge.join(10)
        runner.join(10)
    finally:
        state.stop.set()
        merge.join(5)
        runner.join(5)
    assert state.failure is None
    got = [a.pitr for r in out for a in r.good]
    assert got == sorted(o * 10 + p for p in range(n) for o in range(chunks * chunk))


def test_an_idle_partition_whose_watermarks_get_no_answer_keeps_waiting() -> None:
    """The broker gone: the watermarks of an idle partition get a transport error; the
    reader keeps waiting (not at its end, no failure of its own), so that the run's
    broker watch ends the run as a lost broker (exit 3), not this read (exit 1)."""

    class Silent(ScriptedConsumer):
        asked = 0

        def get_watermark_offsets(
            self, tp: Any, timeout: float, cached: bool = False
        ) -> tuple[int, int]:
            Silent.asked += 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    state = RunState()
    inbox: Inbox[ReadBatch] = Inbox(["f[0]"], 8, state.stop)
    reader = _reader(state, inbox, 0)
    reader._idle_since = time.monotonic() - 2.0
    assert reader.step(Silent([]), [], False) is None  # type: ignore[arg-type]
    assert Silent.asked == 1 and not reader.closed


def test_an_idle_partition_s_end_is_asked_beside_the_loop_and_stale_answers_are_ignored() -> None:
    """With an `EndProbe`, a reader never waits for the broker's answer about its idle
    partition's end (1 s a question here, 5 s allowed): its steps return at once, the
    answer comes on a later step and makes it caught up; an answer asked for before the
    reader's last read does not count."""
    from unifeed.runtime.endprobe import EndProbe

    class SlowEnds(ScriptedConsumer):
        asked = 0

        def get_watermark_offsets(
            self, tp: Any, timeout: float, cached: bool = False
        ) -> tuple[int, int]:
            SlowEnds.asked += 1
            time.sleep(1.0)
            return 0, 3  # the partition holds offsets 0..2

    state = RunState()
    inbox: Inbox[ReadBatch] = Inbox(["f[0]"], 8, state.stop)
    reader = _reader(state, inbox, 0)
    reader.exit_at_end = False
    probe = EndProbe({}, client=lambda: SlowEnds([]))
    reader.probe = probe
    loop = ScriptedConsumer([])
    try:
        # Two records, then idle for a second: the question goes out, the step returns.
        assert reader.step(loop, [_msg(0, 0), _msg(0, 1)], False) is not None  # type: ignore[arg-type]
        reader._idle_since = time.monotonic() - 2.0
        started = time.monotonic()
        assert reader.step(loop, [], False) is None  # type: ignore[arg-type]
        # The third record comes while the question is under way: its answer (end 3,
        # the reader at 3) is stale, since it was asked before that read.
        assert reader.step(loop, [_msg(0, 2)], False) is not None  # type: ignore[arg-type]
        assert time.monotonic() - started < 0.5, "the loop waited for the answer"
        deadline = time.monotonic() + 10
        while SlowEnds.asked < 1 or probe._asked:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert reader.step(loop, [], False) is None  # type: ignore[arg-type]
        assert not reader._end.at_end, "a stale answer counted"
        # A fresh question, answered a second later: at the end, caught up.
        reader._idle_since = time.monotonic() - 2.0
        caught: ReadBatch | None = None
        while caught is None:
            assert time.monotonic() < deadline, "never caught up"
            step_at = time.monotonic()
            caught = reader.step(loop, [], False)  # type: ignore[arg-type]
            assert time.monotonic() - step_at < 0.2
            time.sleep(0.05)
        assert caught.caught_up and SlowEnds.asked >= 2
    finally:
        probe.close()


def test_a_probe_that_cannot_make_its_client_fails_the_read_instead_of_waiting_for_ever() -> None:
    """The probe's client cannot be made: every question is answered with that error,
    and the reader raises it (the run ends with it) instead of waiting for an answer."""
    from unifeed.core.errors import ConfigError
    from unifeed.runtime.endprobe import EndProbe

    def broken() -> Any:
        raise ConfigError("no client for you")

    state = RunState()
    inbox: Inbox[ReadBatch] = Inbox(["f[0]"], 8, state.stop)
    reader = _reader(state, inbox, 0)
    probe = EndProbe({}, client=broken)
    reader.probe = probe
    reader._idle_since = time.monotonic() - 2.0
    try:
        assert reader.step(ScriptedConsumer([]), [], False) is None  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        with pytest.raises(ConfigError, match="no client for you"):
            while time.monotonic() < deadline:
                reader.step(ScriptedConsumer([]), [], False)  # type: ignore[arg-type]
                time.sleep(0.02)
    finally:
        probe.close()
