"""Start-up checks of the Kafka runs: what a start refuses before it claims its instance
(missing inputs, a checkpoint that does not fit the output, the inputs or the present, a
non-empty output without a checkpoint), and `unifeed checkpoint show|reset` on any record
and against a running instance. Each test drives the real CLI against the broker fixture."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import msgspec
import pytest
from confluent_kafka import Producer

from tests.support.kafkatools import (
    high_watermark,
    load,
    read_all,
    reap,
    run_cli,
    start_cli,
    wait_for,
)
from tests.support.scenarios import combine_args, loaded_long_scenario, long_scenario
from unifeed.checkpoint.store import Checkpoint, CheckpointStore

pytestmark = pytest.mark.kafka

YEAR_2100_MS = 4_102_444_800_000


def _stderr(proc: object) -> str:
    stream = getattr(proc, "stderr", None)
    return stream.read().decode() if stream is not None else ""


def _checkpoint_of(bootstrap: str, cp_topic: str, name: str) -> tuple[Checkpoint | None, int]:
    with CheckpointStore(bootstrap, cp_topic) as store:
        return store.load(name)


def _rewrite_checkpoint(
    bootstrap: str, cp_topic: str, name: str, change: Callable[[Checkpoint], Checkpoint]
) -> None:
    with CheckpointStore(bootstrap, cp_topic) as store:
        cp, _ = store.load(name)
        assert cp is not None and cp.feeds
        store.write(name, change(cp))


def _checkpoint_cli(bootstrap: str, action: str, name: str, cp_topic: str) -> tuple[int, str, str]:
    done = run_cli(["checkpoint", action, "--instance", name, "--checkpoint-topic", cp_topic,
                    "--bootstrap-servers", bootstrap])
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _finished_run(bootstrap: str, unique_topic: Callable[..., str],
                  minutes: int = 2) -> tuple[str, str, str, str, list[bytes]]:
    """A scenario combined to its end: topics, instance name, the output written."""
    ctl, srf, out, expected = loaded_long_scenario(bootstrap, unique_topic, minutes)
    name = f"st-{out}"
    done = run_cli(combine_args(bootstrap, ctl, srf, out, name, "--exit-at-end"))
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(bootstrap, out) == expected
    return ctl, srf, out, name, expected


# --- 3: a missing input topic ----------------------------------------------------------


def test_a_missing_input_topic_is_refused_before_anything_is_written(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """A misspelt --control is exit 2 naming the topic and --wait-for-topics; nothing is
    written to the output or the checkpoint topic (no claim either). The same for
    `unifeed mappings`."""
    ctl, srf, out, _ = loaded_long_scenario(kafka_bootstrap, unique_topic, 2)
    typo = f"{ctl}_TYPO"
    name = f"typo-{out}"
    done = run_cli(combine_args(kafka_bootstrap, typo, srf, out, name, "--exit-at-end"))
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert f"{typo}:0 (controlstream) does not exist" in err and "--wait-for-topics" in err, err
    assert "Traceback" not in err, err
    assert high_watermark(kafka_bootstrap, out) == 0
    assert _checkpoint_of(kafka_bootstrap, f"{out}.checkpoints", name) == (None, -1)
    mp = unique_topic("map")
    done = run_cli(["mappings", "--control", f"kafka:{typo}", "--output", f"kafka:{mp}",
                    "--bootstrap-servers", kafka_bootstrap, "--instance", f"m-{mp}",
                    "--checkpoint-topic", f"{mp}.checkpoints", "--exit-at-end", "-q"])
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "does not exist" in err and "--wait-for-topics" in err, err
    assert high_watermark(kafka_bootstrap, mp) == 0


def test_a_feed_whose_topic_does_not_exist_yet_is_never_passed(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """With --wait-for-topics, surfacestream is at its end but controlstream's topic does
    not exist: the run writes nothing, long after the end-of-log grace (2 s) has passed;
    once controlstream is loaded it writes exactly the expected output and stops at
    --stop-at. (--stop-at, not --exit-at-end: a topic the loader has just created is empty
    for a moment, and --exit-at-end ends a feed at the first end of its partition.)"""
    from tests.support.kafkatools import keepalive, pitr_of
    from unifeed import unify_lines

    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = long_scenario(2)
    last = max(pitr_of(control[-1]), pitr_of(surface[-1]))
    control, surface = [*control, keepalive(last + 1000)], [*surface, keepalive(last + 1000)]
    load(kafka_bootstrap, srf, surface)
    expected, _ = unify_lines(control, surface)
    # Partition 0 named: the topic is created after the start (a topic read whole that is
    # created with several partitions, as the embedded broker does, stops the run).
    proc = start_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, f"wait-{out}",
                                  "--stop-at", str(last), "--wait-for-topics",
                                  "--end-of-log-grace", "2s"))
    try:
        # Well past the grace: the surface reader has reported its end long ago.
        time.sleep(6.0)
        assert proc.poll() is None, _stderr(proc)
        assert high_watermark(kafka_bootstrap, out) == 0
        load(kafka_bootstrap, ctl, control)
        rc = proc.wait(timeout=90)
    finally:
        reap(proc)
    assert rc == 0, _stderr(proc)
    assert read_all(kafka_bootstrap, out) == expected


# --- 5: the checkpoint's output offset is past the output's end --------------------------


def test_a_checkpoint_past_the_end_of_its_output_is_refused(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """The output was recreated (here: the checkpoint says the output reaches further than
    it does): a restart could not tell what it already wrote, so it refuses, exit 2, and
    says how to start over; the output is untouched."""
    ctl, srf, out, name, expected = _finished_run(kafka_bootstrap, unique_topic)
    cp_topic = f"{out}.checkpoints"
    end = high_watermark(kafka_bootstrap, out)

    def past_the_end(cp: Checkpoint) -> Checkpoint:
        assert cp.output is not None
        return msgspec.structs.replace(
            cp, output=msgspec.structs.replace(cp.output, next_offset=end + 500)
        )

    _rewrite_checkpoint(kafka_bootstrap, cp_topic, name, past_the_end)
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"))
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert f"up to offset {end + 500}" in err and f"ends at offset {end}" in err, err
    assert f"unifeed checkpoint reset --instance {name} --checkpoint-topic {cp_topic}" in err
    assert read_all(kafka_bootstrap, out) == expected


# --- 6: no checkpoint but a non-empty output ----------------------------------------------


def test_no_checkpoint_and_a_nonempty_output_is_refused_unless_allowed(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """The same instance and output with another checkpoint topic (a lost checkpoint):
    refused, exit 2, nothing written; --allow-nonempty-output appends after what is
    there. `unifeed mappings` the same."""
    ctl, srf, out, name, expected = _finished_run(kafka_bootstrap, unique_topic)
    other = [*combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"),
             "--checkpoint-topic", f"{out}.other-checkpoints"]
    done = run_cli(other)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "already holds records" in err and "--allow-nonempty-output" in err, err
    assert read_all(kafka_bootstrap, out) == expected
    done = run_cli([*other, "--allow-nonempty-output"])
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected + expected

    mp = unique_topic("map")
    args = ["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{mp}",
            "--bootstrap-servers", kafka_bootstrap, "--instance", f"m-{mp}",
            "--checkpoint-topic", f"{mp}.checkpoints", "--exit-at-end", "-q"]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr.decode()
    mappings = read_all(kafka_bootstrap, mp)
    assert mappings
    done = run_cli([*args, "--checkpoint-topic", f"{mp}.other-checkpoints"])
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "already holds records" in err, err
    assert read_all(kafka_bootstrap, mp) == mappings


# --- 7: a checkpoint from the future, a junk checkpoint -----------------------------------


def test_a_checkpoint_from_the_future_is_refused_with_the_reset_command(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """Positions in 2100, which no input record reaches: exit 2 naming the pitr and the
    reset command, instead of resuming "after 2100" and writing nothing."""
    ctl, srf, out, name, expected = _finished_run(kafka_bootstrap, unique_topic)
    cp_topic = f"{out}.checkpoints"

    def in_2100(cp: Checkpoint) -> Checkpoint:
        feeds = {f: msgspec.structs.replace(p, pitr=YEAR_2100_MS) for f, p in cp.feeds.items()}
        return msgspec.structs.replace(cp, feeds=feeds)

    _rewrite_checkpoint(kafka_bootstrap, cp_topic, name, in_2100)
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"))
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert f"pitr {YEAR_2100_MS} (2100-01-01T00:00:00Z)" in err and "stale" in err, err
    assert f"unifeed checkpoint reset --instance {name}" in err, err
    assert read_all(kafka_bootstrap, out) == expected


def test_checkpoint_show_and_reset_work_on_a_junk_record(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """A junk checkpoint record stops a start with a clear error that suggests `checkpoint
    show`; show prints the record escaped (text as `raw`, other bytes as `raw_b64`) and
    exits 0; reset replaces it."""
    import json

    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 2)
    name = f"junk-{out}"
    cp_topic = f"{out}.checkpoints"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for junk, field, shown in ((b'{"version":1,"instance":\x1b[2J', "raw", '{"version":1,"instance":\x1b[2J'),
                               (b"\xff\xfe\x00junk", "raw_b64", "//4AanVuaw==")):
        producer.produce(cp_topic, junk, key=name.encode(), partition=0)
        assert producer.flush(10) == 0
        done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"))
        err = done.stderr.decode()
        assert done.returncode == 1 and "checkpoint show" in err, err
        rc, stdout, err = _checkpoint_cli(kafka_bootstrap, "show", name, cp_topic)
        assert rc == 0, err
        assert "\x1b" not in stdout, stdout
        assert json.loads(stdout) == {field: shown}, stdout
        assert "is not a checkpoint" in err, err
    rc, _, err = _checkpoint_cli(kafka_bootstrap, "reset", name, cp_topic)
    assert rc == 0, err
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"))
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected


# --- 9: a refused start leaves the running instance alone ---------------------------------


def test_a_refused_start_does_not_stop_the_running_instance(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """With the instance running, a second start with a wrong --output, and one whose
    --metrics-port is taken (by the running one), are refused (exit 2) before they claim
    the name: the running one carries on and finishes cleanly."""
    import socket

    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 20)
    name = f"s7-{out}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    same = [*combine_args(kafka_bootstrap, ctl, srf, out, name), "--metrics-port", port]
    running = start_cli(same)  # stays live
    try:
        wait_for(lambda: high_watermark(kafka_bootstrap, out) > 0 or running.poll() is not None,
                 60, "the running instance to write")
        assert running.poll() is None, _stderr(running)
        done = run_cli([*same, "--exit-at-end"])
        time.sleep(2.0)  # several polls of the running instance's claim watcher
        assert running.poll() is None, _stderr(running)
        assert done.returncode == 2, done.stderr.decode()
        assert port in done.stderr.decode(), done.stderr.decode()
        wrong = [*combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"),
                 "--output", f"kafka:{out}-wrong"]
        done = run_cli(wrong)
        time.sleep(2.0)  # several polls of the running instance's claim watcher
        assert running.poll() is None, _stderr(running)
        err = done.stderr.decode()
        assert done.returncode == 2, err
        assert f"wrote to kafka:{out}:0, not kafka:{out}-wrong:0" in err, err
        wait_for(lambda: high_watermark(kafka_bootstrap, out) >= len(expected), 120,
                 "the running instance to write everything")
        running.send_signal(signal.SIGTERM)
        assert running.wait(timeout=30) == 0, _stderr(running)
    finally:
        reap(running)
    assert read_all(kafka_bootstrap, out) == expected


# --- 13: reset while the instance runs ----------------------------------------------------


def test_reset_while_the_instance_runs_stops_it_and_stays_reset(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """`checkpoint reset` of a running instance: the running incarnation sees the
    tombstone and stops (exit 1, saying so) without committing again, so the checkpoint
    stays reset."""
    ctl, srf, out, _ = loaded_long_scenario(kafka_bootstrap, unique_topic, 20)
    name = f"rs-{out}"
    cp_topic = f"{out}.checkpoints"
    running = start_cli(combine_args(kafka_bootstrap, ctl, srf, out, name))  # stays live
    try:
        wait_for(lambda: high_watermark(kafka_bootstrap, out) > 0 or running.poll() is not None,
                 60, "the running instance to write")
        assert running.poll() is None, _stderr(running)
        rc, _, reset_err = _checkpoint_cli(kafka_bootstrap, "reset", name, cp_topic)
        rc_running = running.wait(timeout=30)
    finally:
        reap(running)
    err = _stderr(running)
    assert rc_running == 1, err
    assert f"the checkpoint of instance {name!r} was reset" in err, err
    assert rc == 0, reset_err
    assert "stops without committing again" in reset_err, reset_err
    time.sleep(1.0)
    assert _checkpoint_of(kafka_bootstrap, cp_topic, name)[0] is None
    rc, stdout, err = _checkpoint_cli(kafka_bootstrap, "show", name, cp_topic)
    assert rc == 0 and stdout == "" and "it was reset" in err, (stdout, err)


# --- 14: other inputs under the same instance -------------------------------------------


def test_restart_with_another_control_topic_is_refused_and_old_checkpoints_resume(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """The checkpoint names its inputs: a restart reading controlstream from another topic
    is refused (exit 2, both names given). A checkpoint written before inputs were named
    (no `source`) still resumes to the exact output. (Partition 0 named: the embedded
    broker's topics have 4 partitions, and checkpoints of those keep one entry each.)"""
    from tests.support.kafkatools import pitr_of

    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 4)
    control, _ = long_scenario(4)
    other = unique_topic("ctl2")
    load(kafka_bootstrap, other, control)
    name = f"in-{out}"
    cp_topic = f"{out}.checkpoints"
    half = pitr_of(control[len(control) // 2])
    first = run_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, name,
                                 "--stop-at", str(half)))
    assert first.returncode == 0, first.stderr.decode()
    written = read_all(kafka_bootstrap, out)
    assert 0 < len(written) < len(expected)
    done = run_cli(combine_args(kafka_bootstrap, f"{other}:0", f"{srf}:0", out, name,
                                "--exit-at-end"))
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert f"controlstream was read from kafka:{ctl}:0, now from kafka:{other}:0" in err, err
    assert read_all(kafka_bootstrap, out) == written
    cp, _ = _checkpoint_of(kafka_bootstrap, cp_topic, name)
    assert cp is not None and cp.feeds["controlstream"].source == f"{ctl}:0", cp

    def unnamed(cp: Checkpoint) -> Checkpoint:
        feeds = {f: msgspec.structs.replace(p, source=None) for f, p in cp.feeds.items()}
        return msgspec.structs.replace(cp, feeds=feeds)

    _rewrite_checkpoint(kafka_bootstrap, cp_topic, name, unnamed)
    done = run_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, name,
                                "--exit-at-end"))
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected
