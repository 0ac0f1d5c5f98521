"""Faults: the broker dies, a second instance takes the same name, a checkpoint is corrupt,
a transaction is aborted. Each test drives the real CLI in subprocesses."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from tests.support.kafkatools import (
    forget_broker,
    high_watermark,
    load,
    log_end_offset,
    read_all,
    reap,
    run_cli,
    start_cli,
    wait_for,
)
from tests.support.scenarios import combine_args, loaded_long_scenario, long_scenario
from unifeed import unify_lines
from unifeed.kafka.embedded import spawn_broker_process

pytestmark = pytest.mark.kafka


def _stderr(proc: object) -> str:
    stream = getattr(proc, "stderr", None)
    return stream.read().decode() if stream is not None else ""


def test_broker_death_mid_run_exits_nonzero_then_a_rerun_completes() -> None:
    """The broker (a separate process) is killed while combine is working: combine exits
    with code 3 and a clear reason within a bounded time; on a new broker loaded again, a
    rerun completes with exactly the expected output."""
    control, surface = long_scenario(30)
    expected, _ = unify_lines(control, surface)
    broker, bootstrap = spawn_broker_process()
    try:
        load(bootstrap, "ctl", control)
        load(bootstrap, "srf", surface)
        args = combine_args(bootstrap, "ctl", "srf", "out", "dies", "--broker-timeout", "4s")
        proc = start_cli(args)
        try:
            wait_for(lambda: high_watermark(bootstrap, "out") > 2000 or proc.poll() is not None,
                     60, "combine to be under way")
            assert proc.poll() is None, _stderr(proc)
            forget_broker(bootstrap)
            broker.kill()
            broker.wait(10)
            killed_at = time.monotonic()
            rc = proc.wait(timeout=60)
            took = time.monotonic() - killed_at
        finally:
            reap(proc)
        err = _stderr(proc)
        assert rc == 3, err
        assert "lost the broker" in err and "run again when the broker is back" in err, err
        # --broker-timeout 4s: the health check's questions (2 s each) and the wind-down
        # on top. Before, a commit's flush (30 s) and each idle partition's end query
        # (5 s, in the run's loop) were waited for first: 37 s.
        assert took < 15, f"combine took {took:.0f}s to give up with --broker-timeout 4s"
    finally:
        reap(broker)
    # A new broker: everything was in memory, so the inputs are loaded again.
    broker, bootstrap = spawn_broker_process()
    try:
        load(bootstrap, "ctl", control)
        load(bootstrap, "srf", surface)
        done = run_cli(combine_args(bootstrap, "ctl", "srf", "out", "dies", "--exit-at-end"))
        assert done.returncode == 0, done.stderr.decode()
        assert read_all(bootstrap, "out") == expected
    finally:
        forget_broker(bootstrap)
        broker.kill()
        broker.wait(10)


def test_second_instance_with_the_same_name_stops_the_older_one(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """unifeed's own claim: the newer incarnation writes a checkpoint with a higher
    generation; the older one sees it and stops before its next commit. This works on
    every broker, including the embedded one, which does not fence transactional
    producers. The committed output has no duplicate."""
    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 20)
    name = f"same-{out}"
    older = start_cli(combine_args(kafka_bootstrap, ctl, srf, out, name))  # stays live
    try:
        wait_for(lambda: high_watermark(kafka_bootstrap, out) >= len(expected) // 3
                 or older.poll() is not None, 60, "the older incarnation to be under way")
        assert older.poll() is None, _stderr(older)
        newer = start_cli(combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"))
        started = time.monotonic()
        rc_older = older.wait(timeout=30)
        stopped_after = time.monotonic() - started
        rc_newer = newer.wait(timeout=120)
    finally:
        reap(older)
    err = _stderr(older)
    assert rc_older == 1, err
    assert "another incarnation of instance" in err and "stops" in err, err
    assert stopped_after < 15
    assert rc_newer == 0, _stderr(newer)
    got = read_all(kafka_bootstrap, out)
    assert len(got) == len(expected), "duplicated or lost records"
    assert got == expected


def test_two_same_name_instances_started_at_once_leave_one_writer(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """Two processes of a new instance name start at the same moment: both claim
    generation 1, and their incarnation tokens decide. Exactly one runs to the end, the
    other stops with the takeover message, and the committed output has no duplicate.
    (The scenario is long enough that neither can finish before a slow machine has
    started the other.)"""
    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 60)
    args = combine_args(kafka_bootstrap, ctl, srf, out, f"twin-{out}", "--exit-at-end")
    procs = [start_cli(args), start_cli(args)]
    try:
        codes = sorted(p.wait(timeout=120) for p in procs)
    finally:
        reap(*procs)
    errs = [_stderr(p) for p in procs]
    assert codes == [0, 1], errs
    loser = errs[[p.returncode for p in procs].index(1)]
    assert "another incarnation of instance" in loser and "stops" in loser, loser
    got = read_all(kafka_bootstrap, out)
    assert len(got) == len(expected), "duplicated or lost records"
    assert got == expected


def test_an_equal_generation_with_a_greater_incarnation_stops_the_run(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """The tie-break of two claims of one generation, made deterministic: while a run of
    generation 1 works, a record of generation 1 with a greater incarnation token (what
    a process that claimed at the same moment writes) appears; the run stops."""
    import msgspec

    from unifeed.checkpoint.store import CheckpointStore

    ctl, srf, out, _ = loaded_long_scenario(kafka_bootstrap, unique_topic, 20)
    name = f"tie-{out}"
    proc = start_cli(combine_args(kafka_bootstrap, ctl, srf, out, name))  # stays live
    try:
        wait_for(lambda: high_watermark(kafka_bootstrap, out) > 0 or proc.poll() is not None,
                 60, "the run to write")
        assert proc.poll() is None, _stderr(proc)
        with CheckpointStore(kafka_bootstrap, f"{out}.checkpoints") as store:
            ours, _ = store.load(name)
            assert ours is not None and ours.generation == 1 and len(ours.incarnation) == 16
            store.write(name, msgspec.structs.replace(ours, incarnation="z" * 16))
        rc = proc.wait(timeout=30)
    finally:
        reap(proc)
    err = _stderr(proc)
    assert rc == 1, err
    assert f"(generation 1, {'z' * 16}) took over" in err, err


def test_second_mappings_instance_with_the_same_name_stops_the_older_one(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """`unifeed mappings` claims its name like combine: the older process stops."""
    from unifeed.core.unify import derive_mapping_lines

    ctl, mp = unique_topic("ctl"), unique_topic("map")
    control, _ = long_scenario(20)
    expected, _ = derive_mapping_lines(control)
    load(kafka_bootstrap, ctl, control)
    args = ["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{mp}",
            "--bootstrap-servers", kafka_bootstrap, "--instance", f"m-{mp}",
            "--checkpoint-topic", f"{mp}.checkpoints", "-q"]
    older = start_cli(args)  # stays live: no --exit-at-end
    try:
        wait_for(lambda: high_watermark(kafka_bootstrap, mp) >= len(expected)
                 or older.poll() is not None, 60, "the older mappings to catch up")
        assert older.poll() is None, _stderr(older)
        newer = start_cli([*args, "--exit-at-end"])
        rc_older = older.wait(timeout=30)
        rc_newer = newer.wait(timeout=60)
    finally:
        reap(older)
    err = _stderr(older)
    assert rc_older == 1, err
    assert "another incarnation of instance" in err, err
    assert rc_newer == 0, _stderr(newer)
    assert read_all(kafka_bootstrap, mp) == expected


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str]
) -> None:
    """A second producer with the same transactional.id makes the first one's commit fail
    (fenced by epoch), and the first one's record never becomes visible to read_committed
    readers: unifeed relies on that on every real broker. The embedded broker does not
    fence (README, its limits): there the first commit goes through, which this test
    checks too, so that the README's claim fails here the day it stops being true."""
    topic = unique_topic("fence")
    tid = f"fence-{uuid.uuid4().hex}"
    first = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": tid})
    first.init_transactions(30)
    first.begin_transaction()
    first.produce(topic, b"first", partition=0)
    assert first.flush(10) == 0
    second = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": tid})
    second.init_transactions(30)
    second.begin_transaction()
    second.produce(topic, b"second", partition=0)
    if kafka_broker_kind == "embedded":
        first.commit_transaction(10)
        second.commit_transaction(10)
        assert read_all(kafka_bootstrap, topic) == [b"first", b"second"]
        return
    with pytest.raises(KafkaException) as info:
        first.commit_transaction(10)
    error = info.value.args[0]
    assert error.fatal() or error.code() in {KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                             KafkaError.INVALID_PRODUCER_EPOCH}, error
    second.commit_transaction(10)
    assert read_all(kafka_bootstrap, topic) == [b"second"]


def _all_records(bootstrap: str, topic: str) -> list[bytes]:
    """Every record of partition 0, aborted ones included (read_uncommitted)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unifeed-tests",
                         "isolation.level": "read_uncommitted", "enable.partition.eof": True,
                         "auto.offset.reset": "error"})
    out: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        for _ in range(2000):
            for m in consumer.consume(5000, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return out
                    raise RuntimeError(err.str())
                out.append(m.value() or b"")
        raise TimeoutError(f"reading {topic} did not reach its end")
    finally:
        consumer.close()


def _dump(bootstrap: str, topic: str) -> list[bytes]:
    done = run_cli(["dump", f"kafka:{topic}", "--bootstrap-servers", bootstrap], timeout_s=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.splitlines()


def test_a_crash_mid_transaction_leaves_aborted_records_that_dump_never_shows(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str]
) -> None:
    """combine is SIGKILLed with a transaction open (a long commit interval: output
    written, not committed). `unifeed dump`, which reads committed records only, shows a
    prefix of the reference while the transaction hangs open (the partition's last stable
    offset stops there) and exactly the reference after a rerun, whose start aborts the
    dead transaction. On a broker that honours read_committed, the aborted records are
    still in the log, visible to a read_uncommitted reader only."""
    # ~8,400 output records: fewer than one transaction holds (10,000), so with a
    # one-hour commit interval and no end (no --exit-at-end, a long grace) every one of
    # them stays in the open transaction until the kill.
    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 10)
    assert len(expected) < 10_000
    # Partition 0 named: with a long grace, the embedded broker's 3 empty partitions a
    # topic would hold the output back for that grace.
    args = combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, f"crash-{out}",
                        "--commit-interval", "1h", "--end-of-log-grace", "1h")
    proc = start_cli(args)
    try:
        wait_for(lambda: log_end_offset(kafka_bootstrap, out) > len(expected) // 2
                 or proc.poll() is not None, 60, "output written")
        assert proc.poll() is None, _stderr(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    written = log_end_offset(kafka_bootstrap, out)
    before = _dump(kafka_bootstrap, out)
    assert before == expected[: len(before)]
    if kafka_broker_kind != "embedded":
        assert len(before) < written // 2, (len(before), written)
    done = run_cli([*args, "--exit-at-end"])
    assert done.returncode == 0, done.stderr.decode()
    assert _dump(kafka_bootstrap, out) == expected
    if kafka_broker_kind != "embedded":
        in_log = _all_records(kafka_bootstrap, out)
        aborted = len(in_log) - len(expected)
        assert aborted >= written - len(before) - 2, (aborted, written, len(before))
        assert in_log[: len(before)] == before


def test_a_run_fenced_by_the_broker_stops_with_one_line_and_a_rerun_is_exact(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str]
) -> None:
    """A producer with the run's transactional.id initialises while the run writes (as a
    newer incarnation's does, before its claim is visible): a broker that fences makes
    the run's next transaction fail. The run stops with exit code 1 and one line that
    says another incarnation took over, not a client error; a rerun writes the exact
    output (the fenced transaction was aborted)."""
    if kafka_broker_kind == "embedded":
        pytest.skip("the embedded broker does not fence transactional producers (README, "
                    "its limits); the claim protocol covers it there (tests above)")
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = long_scenario(4)
    expected, _ = unify_lines(control, surface)
    half = len(control) // 2
    load(kafka_bootstrap, ctl, control[:half])
    load(kafka_bootstrap, srf, surface[: len(surface) // 2])
    name = f"fenced-{out}"
    args = combine_args(kafka_bootstrap, ctl, srf, out, name, "--end-of-log-grace", "1h")
    run = start_cli(args)
    try:
        wait_for(lambda: log_end_offset(kafka_bootstrap, out) > 1000 or run.poll() is not None,
                 60, "the run to write")
        assert run.poll() is None, _stderr(run)
        intruder = Producer({"bootstrap.servers": kafka_bootstrap,
                             "transactional.id": f"unifeed-{name}"})
        intruder.init_transactions(30)
        del intruder
        # More input: the run writes again, and its next transaction meets the fence.
        load(kafka_bootstrap, ctl, control[half:])
        load(kafka_bootstrap, srf, surface[len(surface) // 2 :])
        code = run.wait(timeout=60)
    finally:
        reap(run)
    err = _stderr(run)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"unifeed combine: another incarnation of instance '{name}' took "
                           "over: the broker fenced"), err
    assert "stops without committing again" in last
    done = run_cli([*args, "--exit-at-end"])
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected


def test_corrupt_checkpoint_gives_a_clear_error_and_a_way_out(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 2)
    name = f"corrupt-{out}"
    cp_topic = f"{out}.checkpoints"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(cp_topic, b'{"version":1,"instance":', key=name.encode(), partition=0)
    assert producer.flush(10) == 0
    bad_offset = high_watermark(kafka_bootstrap, cp_topic) - 1
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"))
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert cp_topic in err and f"offset {bad_offset}" in err and name in err, err
    assert "checkpoint reset" in err, err
    # The documented way out.
    reset = run_cli(["checkpoint", "reset", "--instance", name, "--checkpoint-topic", cp_topic,
                     "--bootstrap-servers", kafka_bootstrap])
    assert reset.returncode == 0, reset.stderr.decode()
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"))
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected


def test_aborted_transaction_leaves_no_trace_or_is_refused(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str]
) -> None:
    """Records of an aborted transaction after the checkpoint: a broker that honours
    read_committed hides them and the run carries on to the exact output; the embedded
    broker shows them to every reader, and the output-tail reconciliation refuses to
    carry on past records that differ from what it would write, naming both offsets."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = long_scenario(4)
    expected, _ = unify_lines(control, surface)
    half = len(control) // 2
    load(kafka_bootstrap, ctl, control[:half])
    load(kafka_bootstrap, srf, surface[: len(surface) // 2])
    name = f"abort-{out}"
    # A long grace: the first half must not be taken for a live feed that went silent.
    # Partition 0 named: with a long grace, the embedded broker's 3 empty partitions a
    # topic would hold the output back for that grace.
    first = start_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, name,
                                   "--end-of-log-grace", "1h"))
    try:
        wait_for(lambda: high_watermark(kafka_bootstrap, out) > 1000 or first.poll() is not None,
                 60, "output")
        time.sleep(1.0)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, _stderr(first)
    finally:
        reap(first)
    # A transaction with foreign records, aborted.
    tid = f"abort-{uuid.uuid4().hex}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": tid})
    producer.init_transactions(30)
    producer.begin_transaction()
    for k in range(3):
        producer.produce(out, b'{"type":"aborted","pitr":%d}' % k, partition=0)
    producer.flush(10)
    producer.abort_transaction(10)
    hides_aborted = all(b'"aborted"' not in v for v in read_all(kafka_bootstrap, out))
    assert hides_aborted or kafka_broker_kind == "embedded", "read_committed showed aborted records"
    load(kafka_bootstrap, ctl, control[half:])
    load(kafka_bootstrap, srf, surface[len(surface) // 2:])
    done = run_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, name,
                                "--exit-at-end"))
    if hides_aborted:
        assert done.returncode == 0, done.stderr.decode()
        assert read_all(kafka_bootstrap, out) == expected
    else:
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert "holds a record that differs" in err and "offset" in err, err
        assert "next_offset" in err, err
