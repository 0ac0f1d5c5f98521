"""The parts of the output side, alone: the start checks (unifeed.runtime.startcheck),
the output tail (.tail), dead letters and oversized records (.deadletters), the
checkpoint's feed positions (.positions)."""

from __future__ import annotations

import base64
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unifeed.checkpoint.store import Checkpoint, FeedCheckpoint, OutputCheckpoint
from unifeed.core.combine import Emitted
from unifeed.core.errors import CheckpointError, DeadLetterLimitError, StartRefusedError
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM, SURFACESTREAM
from unifeed.core.stages import DeadLetter
from unifeed.kafka.clients import Target
from unifeed.runtime.deadletters import DeadLetters, oversized_letter
from unifeed.runtime.marks import RestartMarks
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.output import Committer
from unifeed.runtime.positions import Positions
from unifeed.runtime.startcheck import StartCheck, run_kind, sources
from unifeed.runtime.state import RunState
from unifeed.runtime.tail import OutputTail

NOW_MS = 1_700_000_000_000
OUT = Target("out")
INPUTS = {CONTROLSTREAM: Target("c"), SURFACESTREAM: Target("s")}
FEEDS = (CONTROLSTREAM, SURFACESTREAM)


def _options(**kw: Any) -> RuntimeOptions:
    return RuntimeOptions(bootstrap="127.0.0.1:1", instance="uf", clock=lambda: NOW_MS, **kw)


def _cp(feeds: dict[str, FeedCheckpoint], next_offset: int = 5, topic: str = "out") -> Checkpoint:
    return Checkpoint(
        instance="uf",
        feeds=feeds,
        output=OutputCheckpoint(topic=topic, partition=0, next_offset=next_offset),
        generation=1,
    )


def _pos(pitr: int, source: str | None = None, **kw: Any) -> FeedCheckpoint:
    return FeedCheckpoint(pitr=pitr, skip=0, source=source, **kw)


def _never(target: Target, pitr: int) -> bool:
    raise AssertionError(f"no input search expected ({target} {pitr})")


# --- start checks --------------------------------------------------------------


def test_a_new_instance_is_refused_a_nonempty_output_unless_allowed() -> None:
    check = StartCheck(_options(), OUT, FEEDS, INPUTS)
    with pytest.raises(StartRefusedError, match=r"already holds records \(offsets 2 to 6\)"):
        check.check(None, 0, (2, 7), _never, output_before=(2, 7))
    check.check(None, 0, (2, 7), _never, output_before=(7, 7))  # empty: fine
    check.check(None, 0, (2, 7), _never)  # the check after the claim: no such rule
    allowed = StartCheck(_options(allow_nonempty_output=True), OUT, FEEDS, INPUTS)
    allowed.check(None, 0, (2, 7), _never, output_before=(2, 7))


def test_a_checkpoint_of_this_run_passes() -> None:
    check = StartCheck(_options(), OUT, FEEDS, INPUTS)
    cp = _cp({CONTROLSTREAM: _pos(10, "c:0"), SURFACESTREAM: _pos(12, "s:0")})
    check.check(cp, 3, (0, 5), _never)


@pytest.mark.parametrize(
    ("cp", "watermarks", "message"),
    [
        (_cp({CONTROLSTREAM: _pos(1)}), (0, 5), r"held by a `unifeed mappings` run writing kafka:out:0"),
        (_cp({CONTROLSTREAM: _pos(1), SURFACESTREAM: _pos(1)}, topic="other"), (0, 5),
         r"wrote to kafka:other:0, not kafka:out:0"),
        (_cp({CONTROLSTREAM: _pos(1, "c:0"), SURFACESTREAM: _pos(1, "t:0")}), (0, 5),
         r"surfacestream was read from kafka:t:0, now from kafka:s:0"),
        (_cp({CONTROLSTREAM: _pos(1), SURFACESTREAM: _pos(1)}, next_offset=9), (0, 5),
         r"up to offset 9, but the output ends at offset 5"),
        (_cp({CONTROLSTREAM: _pos(1), SURFACESTREAM: _pos(1)}, next_offset=2), (4, 9),
         r"points at output offset 2, below the first stored offset 4"),
    ],
)
def test_a_checkpoint_of_something_else_is_refused(
    cp: Checkpoint, watermarks: tuple[int, int], message: str
) -> None:
    check = StartCheck(_options(), OUT, FEEDS, INPUTS)
    with pytest.raises(StartRefusedError, match=message):
        check.check(cp, 3, watermarks, _never)


def test_the_reset_command_names_a_checkpoint_topic_other_than_the_default() -> None:
    cp = _cp({CONTROLSTREAM: _pos(1), SURFACESTREAM: _pos(1)}, next_offset=9)
    with pytest.raises(StartRefusedError) as default:
        StartCheck(_options(), OUT, FEEDS, INPUTS).check(cp, 0, (0, 5), _never)
    assert "`unifeed checkpoint reset --instance uf`" in str(default.value)
    with pytest.raises(StartRefusedError) as other:
        StartCheck(_options(checkpoint_topic="cps"), OUT, FEEDS, INPUTS).check(
            cp, 0, (0, 5), _never
        )
    assert "`unifeed checkpoint reset --instance uf --checkpoint-topic cps`" in str(other.value)


def test_partitions_changed_since_the_checkpoint_are_refused_unless_accepted() -> None:
    now = {f"{CONTROLSTREAM}[0]": Target("c", 0), f"{CONTROLSTREAM}[1]": Target("c", 1),
           SURFACESTREAM: Target("s")}
    keys = tuple(now)
    cp = _cp({CONTROLSTREAM: _pos(1, "c:0"), SURFACESTREAM: _pos(1, "s:0")})
    check = StartCheck(_options(), OUT, keys, now)
    rekeyed = check.rekeyed(cp)
    assert rekeyed is not None and set(rekeyed.feeds) == {f"{CONTROLSTREAM}[0]", SURFACESTREAM}
    with pytest.raises(StartRefusedError, match=r"now also 1.*--accept-partition-change"):
        check.check(rekeyed, 0, (0, 5), _never)
    accepting = StartCheck(_options(accept_partition_change=True), OUT, keys, now)
    accepting.check(accepting.rekeyed(cp), 0, (0, 5), _never)


def test_a_position_past_the_clock_must_be_reached_by_its_input() -> None:
    future = NOW_MS + 3_600_000
    cp = _cp({CONTROLSTREAM: _pos(future), SURFACESTREAM: _pos(10)})
    searched: list[tuple[Target, int]] = []

    def reaches(answer: bool) -> Any:
        def search(target: Target, pitr: int) -> bool:
            searched.append((target, pitr))
            return answer

        return search

    check = StartCheck(_options(), OUT, FEEDS, INPUTS)
    check.check(cp, 0, (0, 5), reaches(True))
    # (pitr, 0) says everything before pitr is done: the search asks for pitr - 1.
    assert searched == [(INPUTS[CONTROLSTREAM], future - 1)]
    with pytest.raises(StartRefusedError, match="later than now and than every record of kafka:c:0"):
        check.check(cp, 0, (0, 5), reaches(False))
    # The first checkpoint of a --start in the future is not stale.
    StartCheck(_options(start=future), OUT, FEEDS, INPUTS).check(cp, 0, (0, 5), _never)


def test_run_kind_and_sources() -> None:
    assert run_kind([f"{SURFACESTREAM}[1]", MAPPINGSTREAM]) == "combine"
    assert run_kind([f"{CONTROLSTREAM}[0]", f"{CONTROLSTREAM}[1]"]) == "mappings"
    assert run_kind([CONTROLSTREAM, "radar"]) == "merge"
    assert sources({"c[1]": "t:10", "c[0]": "t:2", "c[2]": "u:0"}, "c") == "kafka:t:2,10 and kafka:u:0"


# --- the output tail -------------------------------------------------------------


def _emitted(*values: bytes) -> list[Emitted]:
    return [Emitted(SURFACESTREAM, i, v) for i, v in enumerate(values)]


def test_the_tail_is_compared_across_batches_and_then_done() -> None:
    tail = OutputTail([(10, b"a"), (11, b"b"), (12, b"c")], OUT, "uf", max_record_bytes=3)
    assert tail.reconcile(_emitted(b"a", b"b")) == (2, 12)
    assert tail.pending
    # An oversized record was never written: it is passed over, not compared.
    assert tail.reconcile(_emitted(b"toolong", b"c", b"d")) == (2, 13)
    assert not tail.pending
    assert tail.reconcile(_emitted(b"e")) == (0, -1)


def test_a_tail_record_that_differs_stops_the_run() -> None:
    tail = OutputTail([(10, b"a"), (11, b"b")], OUT, "uf", max_record_bytes=100)
    with pytest.raises(CheckpointError, match=r"kafka:out:0 offset 11 .*its 2th message after "
                       r"the checkpoint's next_offset 10.*--instance uf"):
        tail.reconcile(_emitted(b"a", b"x"))


# --- dead letters ----------------------------------------------------------------


class _Producer:
    """Records what is produced; the first ``full`` calls find the queue full."""

    def __init__(self, full: int = 0) -> None:
        self.full = full
        self.produced: list[tuple[str, bytes, int]] = []
        self.polls = 0

    def produce(self, topic: str, value: bytes, partition: int) -> None:
        if self.full:
            self.full -= 1
            raise BufferError
        self.produced.append((topic, value, partition))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def _letter(feed: str, offset: int | None, partition: int | None = None) -> DeadLetter:
    return DeadLetter(feed=feed, reason="bad", offset=offset, partition=partition, raw="x")


def test_dead_letters_are_written_counted_and_marked_per_partition_key() -> None:
    producer, state = _Producer(full=2), RunState()
    dead = DeadLetters(producer, Target("dl", 3), state, limit=2, instance="uf")  # type: ignore[arg-type]
    letters = [_letter(CONTROLSTREAM, 7, 1), _letter(CONTROLSTREAM, 5, 1), _letter(SURFACESTREAM, 9)]
    assert dead.write(letters)
    assert [(t, p) for t, _, p in producer.produced] == [("dl", 3)] * 3
    assert [v for _, v, _ in producer.produced] == [d.encode() for d in letters]
    assert producer.polls == 2  # waited for room twice
    assert dead.offsets == {f"{CONTROLSTREAM}[1]": 7, SURFACESTREAM: 9}
    assert state.counters["dead_letters"] == 3
    assert state.counters["dead_letters.invalid_field"] == 3
    error = dead.over_limit()
    assert isinstance(error, DeadLetterLimitError)
    assert str(error).startswith("3 dead letters exceed --max-dead-letters 2; the last: surfacestream 9: bad")
    assert not dead.write([])


def test_without_a_sink_dead_letters_are_not_written() -> None:
    producer = _Producer()
    dead = DeadLetters(producer, None, RunState(), limit=None, instance="uf")  # type: ignore[arg-type]
    assert not dead.write([_letter(CONTROLSTREAM, 1)])
    assert producer.produced == [] and dead.offsets == {} and dead.over_limit() is None


def test_an_oversized_record_becomes_a_too_large_dead_letter() -> None:
    letter = oversized_letter(SURFACESTREAM, 42, b"\xff\x00")
    assert letter.kind.value == "too_large"
    assert letter.raw is None and letter.raw_b64 == base64.b64encode(b"\xff\x00").decode()
    assert "(2 bytes) is larger than the producer's message.max.bytes" in letter.reason
    producer, state = _Producer(), RunState()
    dead = DeadLetters(producer, Target("dl"), state, limit=None, instance="uf")  # type: ignore[arg-type]
    assert dead.oversized(SURFACESTREAM, 42, b"\xff\x00")
    assert producer.produced == [("dl", letter.encode(), 0)]
    assert state.counters["dead_letters.too_large"] == 1


# --- checkpoint positions ------------------------------------------------------


def test_positions_count_the_messages_at_the_last_pitr_of_each_feed() -> None:
    book = Positions(FEEDS, {}, {}, {CONTROLSTREAM: FeedCheckpoint(pitr=4, skip=2, dead_offset=3)})
    book.advance([Emitted(CONTROLSTREAM, 4, b""), Emitted(SURFACESTREAM, 5, b""),
                  Emitted(CONTROLSTREAM, 4, b"")])
    # Still at pitr 4: the two new ones add to the two done before; the dead mark stays.
    assert book.current[CONTROLSTREAM] == FeedCheckpoint(pitr=4, skip=4, dead_offset=3)
    assert book.current[SURFACESTREAM] == FeedCheckpoint(pitr=5, skip=1)
    book.advance([Emitted(CONTROLSTREAM, 6, b""), Emitted(CONTROLSTREAM, 7, b"")])
    assert book.current[CONTROLSTREAM] == FeedCheckpoint(pitr=7, skip=1, dead_offset=3)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 3)),
                                 max_size=30), max_size=4))
def test_positions_equal_a_count_over_every_message_whatever_feeds_a_batch_lacks(
    batches: list[list[tuple[str, int]]]
) -> None:
    # Five feeds, one of them never written (an idle partition): the scan that stops
    # early must give what a count over every message gives.
    book = Positions(("a", "b", "c", "d", "idle"), {}, {})
    expected: dict[str, FeedCheckpoint] = {}
    last: dict[str, int] = {}
    for batch in batches:
        items = []
        for feed, step in batch:
            last[feed] = last.get(feed, 0) + step
            items.append(Emitted(feed, last[feed], b""))
        book.advance(items)
        for e in items:
            prev = expected.get(e.feed)
            same = prev is not None and prev.pitr == e.pitr
            expected[e.feed] = FeedCheckpoint(pitr=e.pitr, skip=prev.skip + 1 if same else 1)
        assert book.current == expected


def test_checkpoint_positions_carry_dead_marks_restart_offsets_and_sources() -> None:
    control_marks, surface_marks = RestartMarks(start=100), RestartMarks(start=200)
    control_marks.add(100, 50)
    control_marks.add(6000, 90)
    surface_marks.add(200, 70)
    surface_marks.add(9000, 95)
    inputs = {**INPUTS, MAPPINGSTREAM: Target("m", 2)}
    book = Positions(
        FEEDS,
        inputs,
        {CONTROLSTREAM: (control_marks, 30), SURFACESTREAM: (surface_marks, None)},
        {CONTROLSTREAM: _pos(90), SURFACESTREAM: _pos(80)},
    )
    out = book.checkpoints({CONTROLSTREAM: 12, MAPPINGSTREAM: 4}, restart_offsets=False)
    assert out == {
        CONTROLSTREAM: FeedCheckpoint(pitr=90, skip=0, dead_offset=12, source="c:0"),
        SURFACESTREAM: FeedCheckpoint(pitr=80, skip=0, source="s:0"),
        # An external mappingstream keeps only its dead-letter mark.
        MAPPINGSTREAM: FeedCheckpoint(pitr=0, skip=0, dead_offset=4, source="m:2"),
    }
    out = book.checkpoints({})
    # controlstream restarts a lookback (30) before the lowest position (80): pitr 50 is
    # in the first mark; surfacestream from its own position (80): the second mark.
    assert out[CONTROLSTREAM] == FeedCheckpoint(
        pitr=90, skip=0, dead_offset=12, offset=100, source="c:0"
    )
    assert out[SURFACESTREAM] == FeedCheckpoint(pitr=80, skip=0, offset=9000, source="s:0")


def test_restart_offsets_wait_until_every_feed_with_marks_has_a_position() -> None:
    book = Positions(FEEDS, INPUTS, {CONTROLSTREAM: (RestartMarks(1), None),
                                     SURFACESTREAM: (RestartMarks(2), None)},
                     {CONTROLSTREAM: _pos(5)})
    assert book.checkpoints({}) == {
        CONTROLSTREAM: FeedCheckpoint(pitr=5, skip=0, source="c:0"),
        SURFACESTREAM: FeedCheckpoint(pitr=0, skip=0, source="s:0"),
    }


# --- closing the producer ------------------------------------------------------------


class _FencedProducer:
    """A producer whose fatal error comes back at the last flush, as a fenced one's does."""

    def flush(self, timeout: float) -> int:
        from confluent_kafka import KafkaError, KafkaException

        raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))


def test_closing_after_a_fatal_error_keeps_the_error_that_ended_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The writer closes its producer in a ``finally``: a fenced producer's last flush
    raising there would replace the run's own error (the fenced line) with a traceback."""
    from unifeed.runtime.transactions import Transactions

    txn = Transactions(_options(), OUT, RunState())
    real, txn.producer = txn.producer, _FencedProducer()  # type: ignore[assignment]
    try:
        with pytest.raises(StartRefusedError, match="the run's own error"):
            try:
                raise StartRefusedError("the run's own error")
            finally:
                txn.close()
    finally:
        real.flush(0)
    assert "flushing the output while closing failed" in caplog.text


class _RefusingProducer:
    """A producer that went fatal: it refuses records with ``_FATAL``; its error callback
    (the reason) is served by the next poll."""

    def __init__(self, on_error: Any) -> None:
        self.on_error = on_error

    def poll(self, timeout: float) -> int:
        from confluent_kafka import KafkaError

        self.on_error(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
        return 0


def test_a_refused_record_ends_the_run_with_the_fatal_error_behind_it() -> None:
    """The client refuses records with ``_FATAL`` before it has served the error callback
    that says why: the run's error is that reason (the fenced line), not the refusal."""
    from confluent_kafka import KafkaError, KafkaException

    from unifeed.core.errors import InstanceFencedError
    from unifeed.runtime.transactions import Transactions

    state = RunState()
    txn = Transactions(_options(), OUT, state)
    real, txn.producer = txn.producer, _RefusingProducer(txn._on_error)  # type: ignore[assignment]
    try:
        refused = KafkaException(KafkaError(KafkaError._FATAL, "Unable to produce message"))
        error = txn.produce_refused(refused)
    finally:
        real.flush(0)
    assert isinstance(error, InstanceFencedError), error
    assert "took over" in str(error)


def test_a_backlog_is_committed_less_often_than_live_output() -> None:
    """`Committer.due`: live, the --commit-interval (100 ms) or 10,000 records; catching
    up, the longer catch-up bounds (1 s, 100,000 records), unless the live ones are
    longer."""
    options = RuntimeOptions(bootstrap="127.0.0.1:9")
    now = time.monotonic()

    def due(uncommitted: int, since_s: float, catching_up: bool, o: RuntimeOptions = options) -> bool:
        state = SimpleNamespace(_dirty=True, uncommitted=uncommitted, last_commit=now - since_s, options=o)
        return Committer.due(cast(Committer, state), catching_up)

    assert due(20_000, 0.0, catching_up=False) and not due(20_000, 0.0, catching_up=True)
    assert due(10, 0.5, catching_up=False) and not due(10, 0.5, catching_up=True)
    assert due(100_000, 0.0, catching_up=True) and due(10, 1.5, catching_up=True)
    slow = RuntimeOptions(bootstrap="127.0.0.1:9", commit_interval_ms=3_600_000)
    assert not due(10, 1.5, catching_up=True, o=slow), "a longer --commit-interval wins"


def test_the_exactly_once_producer_lingers_up_to_the_commit_interval() -> None:
    """Exactly-once: nothing is visible before the commit, which sends every waiting
    record, so the producer lingers up to the commit interval (at most 100 ms);
    at-least-once keeps producer_config's 5 ms; the run's Kafka settings win."""
    from unifeed.runtime.transactions import OUTPUT_LINGER_MAX_MS, output_producer_config

    def linger(txn_id: str | None = "t", **kw: Any) -> object:
        return output_producer_config(RuntimeOptions(bootstrap="127.0.0.1:9", **kw), txn_id)["linger.ms"]

    assert linger() == OUTPUT_LINGER_MAX_MS == 100
    assert linger(commit_interval_ms=20) == 20
    assert linger(commit_interval_ms=60_000) == OUTPUT_LINGER_MAX_MS
    assert linger(None) == 5
    assert linger(kafka_extra={"linger.ms": 7}) == 7
    assert linger(None, kafka_extra={"linger.ms": 7}) == 7
    config = output_producer_config(RuntimeOptions(bootstrap="127.0.0.1:9"), "unifeed-x")
    assert config["transactional.id"] == "unifeed-x" and config["enable.idempotence"] is True


def test_a_failed_call_after_a_fatal_report_ends_the_run_with_that_report() -> None:
    """A report served in another call (a saved-state part's, in the commit's flush) may
    leave confluent-kafka's call failing with a bare SystemError: the run's error is
    the report's (a fenced producer: the fenced line), not the SystemError."""
    from confluent_kafka import KafkaError

    from unifeed.core.errors import InstanceFencedError
    from unifeed.runtime.transactions import Transactions

    state = RunState()
    txn = Transactions(_options(), OUT, state)
    try:
        txn.error = KafkaError(KafkaError._FENCED, "fenced", fatal=True)

        def flush() -> int:
            raise SystemError("<method 'flush'> returned NULL without setting an exception")

        with pytest.raises(InstanceFencedError, match="took over"):
            txn.served(flush)
    finally:
        txn.producer.flush(0)


# --- producing a batch ------------------------------------------------------------


class _BatchProducer:
    """Records each produced record; the calls numbered in ``full`` (0-based, counting
    refused ones) find the queue full."""

    def __init__(self, full: set[int]) -> None:
        self.full = full
        self.calls = 0
        self.produced: list[tuple[bytes, int, bool]] = []  # value, timestamp, has callback

    def produce(
        self, topic: str, value: bytes, key: None, partition: int, callback: Any, on_delivery: None,
        timestamp: int,
    ) -> None:
        assert (topic, key, partition, on_delivery) == ("out", None, 0, None)
        call = self.calls
        self.calls += 1
        if call in self.full:
            raise BufferError
        self.produced.append((value, timestamp, callback is not None))

    def poll(self, timeout: float) -> int:
        return 0


def _committer(producer: _BatchProducer, max_record_bytes: int = 100) -> tuple[Committer, list[Any]]:
    """A `Committer` with only what producing uses; the oversized records it passes to
    its dead letters are listed."""
    oversized: list[Any] = []
    c = object.__new__(Committer)
    c.producer = producer  # type: ignore[assignment]
    c.max_record_bytes = max_record_bytes
    c.txn = SimpleNamespace(served=lambda call: call())  # type: ignore[assignment]
    c.dead = SimpleNamespace(oversized=lambda *a: oversized.append(a) or True)  # type: ignore[assignment]
    c._dirty = False
    return c, oversized


@pytest.mark.parametrize(
    "full",
    [set(), {0}, {3}, {3, 4, 5}, {8}, {9}, {2, 9, 10}],
    ids=["room", "first", "middle", "three-in-a-row", "before-last", "last", "spread"],
)
def test_a_batch_is_produced_once_in_order_whichever_records_find_the_queue_full(
    full: set[int],
) -> None:
    items = _emitted(*(b"r%d" % i for i in range(10)))
    producer = _BatchProducer(full)
    c, oversized = _committer(producer)
    c._produce(items, 0, "out", 0)
    assert [v for v, _, _ in producer.produced] == [e.item for e in items]
    assert [t for _, t, _ in producer.produced] == [e.pitr for e in items]
    # Only the last record asks for its delivery report.
    assert [cb for _, _, cb in producer.produced] == [False] * 9 + [True]
    assert producer.calls == 10 + len(full) and oversized == []


def test_a_batch_with_an_oversized_record_or_a_future_pitr_is_produced_record_by_record() -> None:
    items = _emitted(b"a", b"x" * 101, b"c", b"d")
    producer = _BatchProducer({2})
    c, oversized = _committer(producer)
    c._produce(items, 1, "out", 0)  # the first one was already in the output (tail)
    assert [v for v, _, _ in producer.produced] == [b"c", b"d"]
    assert [(feed, pitr) for feed, pitr, _ in oversized] == [(items[1].feed, items[1].pitr)]
    future = int(time.time() * 1000) + 10 * 86_400_000
    producer = _BatchProducer(set())
    c, _ = _committer(producer)
    c._produce([Emitted(SURFACESTREAM, future, b"f"), Emitted(SURFACESTREAM, future, b"g")], 0, "out", 0)
    stamps = [t for _, t, _ in producer.produced]
    assert stamps[0] == stamps[1] < future  # capped at the broker's limit ahead of the clock


# --- a run that failed while its commit waits for the broker ----------------------


class _SilentBroker:
    """A producer whose broker never answers: every record stays undelivered, a commit
    times out (retriable, as librdkafka's does), an abort too; ``calls`` records them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def flush(self, timeout: float = -1) -> int:
        self.calls.append(("flush", timeout))
        time.sleep(timeout)
        return 7

    def commit_transaction(self, timeout: float = -1) -> None:
        from confluent_kafka import KafkaError, KafkaException

        self.calls.append(("commit", timeout))
        time.sleep(timeout)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))

    def abort_transaction(self, timeout: float = -1) -> None:
        self.calls.append(("abort", timeout))
        time.sleep(timeout)

    def purge(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("purge", 0.0))


def _fail_later(state: RunState, error: BaseException, after_s: float) -> threading.Timer:
    timer = threading.Timer(after_s, state.fail, (error,))
    timer.start()
    return timer


@pytest.mark.parametrize("waiting_in", ["flush", "commit"])
def test_a_commit_waiting_for_a_silent_broker_ends_once_the_run_has_failed(
    waiting_in: str,
) -> None:
    """The run's broker watch declares the broker lost while a commit waits for it (its
    flush, or the transaction's commit): the commit ends with that failure within a wait
    slice, not after its own 30 s; the records it waited for are never committed."""
    from unifeed.core.errors import BrokerUnreachableError
    from unifeed.runtime.transactions import FLUSH_TIMEOUT_S, WAIT_SLICE_S, Transactions

    state = RunState()
    txn = Transactions(_options(), OUT, state)
    real, silent = txn.producer, _SilentBroker()
    txn.producer = silent  # type: ignore[assignment]
    lost = BrokerUnreachableError("lost the broker")
    timer = _fail_later(state, lost, 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(BrokerUnreachableError, match="lost the broker"):
            if waiting_in == "flush":
                txn.flush()
            else:
                txn.transactional = True
                txn.commit()
        took = time.monotonic() - started
    finally:
        timer.cancel()
        real.flush(0)
    assert 0.5 <= took < 0.5 + 10 * WAIT_SLICE_S < FLUSH_TIMEOUT_S, took
    assert {name for name, _ in silent.calls} == {waiting_in}
    assert all(0 < t <= WAIT_SLICE_S for _, t in silent.calls), silent.calls


def test_without_a_failure_a_commit_waits_its_whole_timeout_in_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No failure meanwhile: the flush waits until its timeout (shortened here), slice
    by slice, and says how many records are still undelivered."""
    from unifeed.runtime import transactions

    monkeypatch.setattr(transactions, "FLUSH_TIMEOUT_S", 1.0)
    txn = transactions.Transactions(_options(), OUT, RunState())
    real, silent = txn.producer, _SilentBroker()
    txn.producer = silent  # type: ignore[assignment]
    started = time.monotonic()
    try:
        assert txn.flush() == 7
    finally:
        real.flush(0)
    assert 1.0 <= time.monotonic() - started < 2.0
    assert len(silent.calls) >= 1.0 / transactions.WAIT_SLICE_S


def test_closing_a_run_that_lost_its_broker_does_not_wait_for_it() -> None:
    """After a lost broker, closing drops the open transaction and the queued records at
    once (the broker, or the restart's init, aborts the transaction); any other failure
    still aborts it and flushes, waiting up to `CLOSE_TIMEOUT_S`."""
    from unifeed.core.errors import BrokerUnreachableError
    from unifeed.runtime.transactions import CLOSE_TIMEOUT_S, Transactions

    def close_after(failure: BaseException, producer: _SilentBroker) -> tuple[RunState, float]:
        state = RunState()
        state.fail(failure)
        txn = Transactions(_options(), OUT, state)
        real, txn.producer = txn.producer, producer  # type: ignore[assignment]
        txn._in_txn = True
        started = time.monotonic()
        try:
            txn.close()
        finally:
            real.flush(0)
        assert not txn._in_txn
        return state, time.monotonic() - started

    silent = _SilentBroker()
    state, took = close_after(BrokerUnreachableError("lost the broker"), silent)
    assert took < 0.5
    assert silent.calls == [("purge", 0.0), ("flush", 0)]
    assert state.counters["aborts"] == 1

    answering = _AnsweringBroker()
    close_after(StartRefusedError("refused"), answering)
    assert answering.calls == [("abort", CLOSE_TIMEOUT_S), ("flush", CLOSE_TIMEOUT_S)]


class _AnsweringBroker(_SilentBroker):
    """A producer whose broker answers at once."""

    def flush(self, timeout: float = -1) -> int:
        self.calls.append(("flush", timeout))
        return 0

    def abort_transaction(self, timeout: float = -1) -> None:
        self.calls.append(("abort", timeout))
