"""Partitioned inputs and `unifeed merge` against the fixture broker, through the CLI.

Topics are spread over partitions by `unifeed load --key` (murmur2, as Kafka's Java
clients) or pinned with `--partition`; the expected output is always computed from the
records read back from each partition, merged by (pitr, partition) with a plain sort,
then given to the file pipeline (`unify_lines`) or the file merge (`merge_lines`).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewPartitions

from tests.support.golden import golden_path, read_lines
from tests.support.kafkatools import (
    create_topic,
    keepalive,
    load,
    log_end_offset,
    partitioned_topic,
    pitr_of,
    read_all,
    reap,
    run_cli,
    start_cli,
    wait_for,
)
from tests.support.partitioned import (
    keyed_topic,
    merged_by_partition,
    partitions_of,
    pinned_topic,
    without_keepalives,
)
from tests.support.scenarios import long_scenario
from unifeed import merge_lines, unify_lines

pytestmark = pytest.mark.kafka


def _busy_airport(count: int = 10_000) -> tuple[list[bytes], list[bytes]]:
    """The first ``count`` records of each feed of busy-airport (the output stays within
    the embedded broker's 5 MB retention a partition). Keepalives carry no id to key them
    by: this scenario's progress is its records."""
    return (
        without_keepalives(read_lines(golden_path("busy-airport", "controlstream")))[:count],
        without_keepalives(read_lines(golden_path("busy-airport", "surfacestream")))[:count],
    )


def _combine(bootstrap: str, ctl: str, srf: str, out: str, instance: str, *extra: str) -> list[str]:
    return ["combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
            "--output", f"kafka:{out}", "--bootstrap-servers", bootstrap,
            "--instance", instance, "--status-interval", "0", *extra]


def test_combine_of_feeds_keyed_over_4_partitions_equals_the_file_pipeline(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    """controlstream keyed by id, surfacestream by surface_id, each over 4 partitions:
    the output is the file pipeline's over the same records merged by (pitr, partition)."""
    control, surface = _busy_airport()
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    keyed_topic(kafka_bootstrap, kafka_broker_kind, ctl, 4, control, "id", tmp_path / "c.jsonl")
    keyed_topic(kafka_bootstrap, kafka_broker_kind, srf, 4, surface, "surface_id",
                tmp_path / "s.jsonl")
    ctl_parts = partitions_of(kafka_bootstrap, ctl, 4)
    srf_parts = partitions_of(kafka_bootstrap, srf, 4)
    assert all(ctl_parts) and all(srf_parts), "every partition holds records"
    expected, _ = unify_lines(merged_by_partition(ctl_parts), merged_by_partition(srf_parts))
    done = run_cli(_combine(kafka_bootstrap, ctl, srf, out, f"parts-{out}", "--exit-at-end"),
                   timeout_s=300)
    assert done.returncode == 0, done.stderr.decode()
    got = read_all(kafka_bootstrap, out)
    assert len(got) == len(expected)
    assert got == expected


def test_combine_passes_a_partition_that_never_gets_a_record(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    """Records pinned to partitions 0-2 of 4-partition topics: partition 3 stays empty
    and is passed by the end-of-log rule (no --exit-at-end: the run stops at --stop-at)."""
    control, surface = _busy_airport(8000)
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")

    def groups(lines: list[bytes], field: str) -> list[list[bytes]]:
        out: list[list[bytes]] = [[], [], []]
        for line in lines:
            out[zlib.crc32(str(json.loads(line).get(field)).encode()) % 3].append(line)
        return out

    last = max(json.loads(x)["pitr"] for x in control + surface)

    def closed(parts: list[list[bytes]]) -> list[list[bytes]]:
        # A keepalive past --stop-at ends each partition that has records; partition 3
        # never gets one, so only the end-of-log rule can pass it.
        return [[*part, keepalive(last + 1000)] for part in parts]

    pinned_topic(kafka_bootstrap, kafka_broker_kind, ctl, 4, closed(groups(control, "id")),
                 tmp_path / "c.jsonl")
    pinned_topic(kafka_bootstrap, kafka_broker_kind, srf, 4,
                 closed(groups(surface, "surface_id")), tmp_path / "s.jsonl")
    ctl_parts = partitions_of(kafka_bootstrap, ctl, 4)
    srf_parts = partitions_of(kafka_bootstrap, srf, 4)
    assert not ctl_parts[3] and not srf_parts[3] and all(ctl_parts[:3]) and all(srf_parts[:3])
    expected, _ = unify_lines(merged_by_partition(ctl_parts), merged_by_partition(srf_parts))
    done = run_cli(_combine(kafka_bootstrap, ctl, srf, out, f"idle-{out}", "--stop-at",
                            str(last), "--end-of-log-grace", "500ms"), timeout_s=180)
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected


def _merge_feeds(seed: int, n: int) -> dict[str, list[bytes]]:
    """Three feeds: "radar" (keyed by track over partitions), "adsb" and "mlat" (one
    partition each, with keepalives); ties across feeds and inside each."""
    rng = random.Random(seed)
    t0 = 1_700_000_000_000
    feeds: dict[str, list[bytes]] = {"radar": [], "adsb": [], "mlat": []}
    clock = {name: t0 for name in feeds}
    for i in range(n):
        name = rng.choice(["radar", "radar", "adsb", "mlat"])
        clock[name] += rng.choice([0, 0, 5, 10, 40])
        if name != "radar" and rng.random() < 0.02:
            feeds[name].append(keepalive(clock[name]))
            continue
        track = f"T{rng.randrange(40)}"
        feeds[name].append(json.dumps({"pitr": clock[name], "src": name, "track": track,
                                       "n": i}, separators=(",", ":")).encode())
    return feeds


def _merge_args(bootstrap: str, topics: dict[str, str], out: str, instance: str,
                *extra: str) -> list[str]:
    args = ["merge"]
    for name, topic in topics.items():
        args += ["--input", f"{name}=kafka:{topic}"]
    return [*args, "--output", f"kafka:{out}", "--bootstrap-servers", bootstrap,
            "--instance", instance, "--status-interval", "0", *extra]


def _kill_while_writing(bootstrap: str, out: str, args: list[str], rng: random.Random,
                        rounds: int) -> int:
    """Start the command `rounds` times and SIGKILL each incarnation a seeded moment
    (0-20 ms) after it starts writing to `out`. Returns how many were killed (one that
    ended first must have ended well)."""
    kills = 0
    for _ in range(rounds):
        delay = rng.uniform(0.0, 0.02)
        before = log_end_offset(bootstrap, out)
        proc = start_cli(args)
        try:
            def writing(b: int = before, running: subprocess.Popen[bytes] = proc) -> bool:
                return log_end_offset(bootstrap, out) > b or running.poll() is not None

            wait_for(writing, 120, "the incarnation to start writing", 0.002)
            time.sleep(delay)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            elif proc.returncode != 0:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "")
            proc.wait(10)
    return kills


def test_merge_killed_at_seeded_moments_resumes_to_exactly_the_file_merge(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    """`unifeed merge` of 3 inputs (one keyed over 4 partitions), SIGKILLed at 5+ seeded
    moments and restarted: the committed output is exactly `merge_lines` over the files
    (the partitioned one merged by (pitr, partition))."""
    feeds = _merge_feeds(20261203, 60_000)
    topics = {name: unique_topic(name) for name in feeds}
    out = unique_topic("out")
    keyed_topic(kafka_bootstrap, kafka_broker_kind, topics["radar"], 4, feeds["radar"],
                "track", tmp_path / "radar.jsonl")
    load(kafka_bootstrap, topics["adsb"], feeds["adsb"])
    load(kafka_bootstrap, topics["mlat"], feeds["mlat"])
    radar = merged_by_partition(partitions_of(kafka_bootstrap, topics["radar"], 4))
    expected, _ = merge_lines({"radar": radar, "adsb": feeds["adsb"], "mlat": feeds["mlat"]})
    args = _merge_args(kafka_bootstrap, topics, out, f"kill-{out}", "--exit-at-end",
                       "--commit-interval", "20ms", "--catchup-commit-interval", "20ms")
    kills = _kill_while_writing(kafka_bootstrap, out, args, random.Random(7), 8)
    assert kills >= 5, "merge finished before it could be killed: make the feeds longer"
    done = run_cli(args, timeout_s=300)
    assert done.returncode == 0, done.stderr.decode()
    got = read_all(kafka_bootstrap, out)
    assert len(got) == len(expected), "lost or duplicated records"
    assert got == expected


def test_a_checkpoint_of_one_partition_resumes_once_new_partitions_are_accepted(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str],
) -> None:
    """Run 1 reads partition 0 of each feed (`kafka:T:0`: the checkpoint keys its feeds
    by name and records `T:0`, as every checkpoint before partitioned inputs). Then the
    feeds continue over partitions 0-3 and the command names the whole topics: the start
    is refused (exit 2, naming the new partitions and the option), and with
    --accept-partition-change it resumes partition 0 from its checkpoint and reads 1-3
    from their start: the output of both runs is the file pipeline's over everything."""
    control, surface = long_scenario(10)
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    partitioned_topic(kafka_bootstrap, kafka_broker_kind, ctl, 4)
    partitioned_topic(kafka_bootstrap, kafka_broker_kind, srf, 4)
    split = pitr_of(control[len(control) // 2])

    def halves(lines: list[bytes]) -> tuple[list[bytes], list[list[bytes]]]:
        first = [x for x in lines if pitr_of(x) <= split]
        rest = [x for x in lines if pitr_of(x) > split]
        return first, [rest[p::4] for p in range(4)]

    ctl_first, ctl_rest = halves(control)
    srf_first, srf_rest = halves(surface)
    load(kafka_bootstrap, ctl, ctl_first, partition=0)
    load(kafka_bootstrap, srf, srf_first, partition=0)
    instance = f"grow-{out}"
    one = _combine(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, instance, "--exit-at-end")
    done = run_cli(one)
    assert done.returncode == 0, done.stderr.decode()
    first_out = read_all(kafka_bootstrap, out)
    assert first_out == unify_lines(ctl_first, srf_first)[0]
    shown = run_cli(["checkpoint", "show", "--instance", instance, "--bootstrap-servers",
                     kafka_bootstrap])
    assert shown.returncode == 0, shown.stderr.decode()
    feeds = json.loads(shown.stdout)["feeds"]
    assert set(feeds) == {"controlstream", "surfacestream"}
    assert feeds["controlstream"]["source"] == f"{ctl}:0"

    for p in range(4):
        load(kafka_bootstrap, ctl, ctl_rest[p], partition=p)
        load(kafka_bootstrap, srf, srf_rest[p], partition=p)
    whole = _combine(kafka_bootstrap, ctl, srf, out, instance, "--exit-at-end")
    refused = run_cli(whole)
    assert refused.returncode == 2, refused.stderr.decode()
    err = refused.stderr.decode()
    assert f"controlstream read kafka:{ctl} partitions 0, now also 1, 2, 3" in err, err
    assert "--accept-partition-change" in err and "Traceback" not in err, err
    assert read_all(kafka_bootstrap, out) == first_out

    done = run_cli([*whole, "--accept-partition-change"], timeout_s=180)
    assert done.returncode == 0, done.stderr.decode()
    expected, _ = unify_lines(
        merged_by_partition(partitions_of(kafka_bootstrap, ctl, 4)),
        merged_by_partition(partitions_of(kafka_bootstrap, srf, 4)),
    )
    assert read_all(kafka_bootstrap, out) == expected
    # The checkpoint now keys each partition.
    shown = run_cli(["checkpoint", "show", "--instance", instance, "--bootstrap-servers",
                     kafka_bootstrap])
    feeds = json.loads(shown.stdout)["feeds"]
    assert {k for k in feeds if k.startswith("controlstream")} == {
        f"controlstream[{p}]" for p in range(4)
    }


def test_partitions_added_while_merging_stop_the_run_with_exit_2(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str],
) -> None:
    """A topic read whole that gains a partition while `unifeed merge` reads it: the run
    stops (exit 2) naming the new partition and the option that reads it."""
    if kafka_broker_kind == "embedded":
        pytest.skip("the embedded broker answers no CreatePartitions (run on Apache Kafka)")
    feed, out = unique_topic("feed"), unique_topic("out")
    create_topic(kafka_bootstrap, feed, 2)
    load(kafka_bootstrap, feed, [b'{"pitr":%d}' % (1_700_000_000_000 + i) for i in range(50)])
    proc = start_cli(_merge_args(kafka_bootstrap, {"a": feed}, out, f"watch-{out}"))
    try:
        wait_for(lambda: log_end_offset(kafka_bootstrap, out) > 0 or proc.poll() is not None,
                 60, "the merge to write")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_partitions([NewPartitions(feed, 3)])[feed].result(30)
        rc = proc.wait(60)
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        reap(proc)
    assert rc == 2, err
    assert f"kafka:{feed} (a) now has 3 partitions" in err and "partition(s) 2" in err, err
    assert "--accept-partition-change" in err and "Traceback" not in err, err


def test_merge_on_kafka_dead_letters_name_input_and_partition_and_metrics_serve(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str],
) -> None:
    """A bad record and a step back in partition 1 of a partitioned input: dead letters on
    <output>.dead-letter name the input and the partition; the output is `merge_lines`'
    over the partitions merged by (pitr, partition); the run serves its metrics."""
    t0 = 1_700_000_000_000
    part0 = [b'{"pitr":%d,"p":0,"i":%d}' % (t0 + 10 * i, i) for i in range(200)]
    part1 = [b'{"pitr":%d,"p":1,"i":%d}' % (t0 + 10 * i + 5, i) for i in range(200)]
    part1[50] = b'{"pitr":"late"}'
    part1[120] = b'{"pitr":%d,"p":1,"back":true}' % t0
    other = [b'{"pitr":%d,"o":%d}' % (t0 + 7 * i, i) for i in range(300)]
    radar, adsb, out = unique_topic("radar"), unique_topic("adsb"), unique_topic("out")
    partitioned_topic(kafka_bootstrap, kafka_broker_kind, radar, 2)
    load(kafka_bootstrap, radar, part0, partition=0)
    load(kafka_bootstrap, radar, part1, partition=1)
    load(kafka_bootstrap, adsb, other)
    # The step back is a step back in its partition only: the file of the partitions
    # merged by (pitr, partition) would place it; the expected output is without it.
    in_order = [x for i, x in enumerate(part1) if i != 120]
    expected, stats = merge_lines({"radar": merged_by_partition([part0, in_order]),
                                   "adsb": other})
    assert stats.feed("radar").dead_letters == 1
    proc = start_cli(_merge_args(kafka_bootstrap, {"radar": f"{radar}:0,1", "adsb": adsb}, out,
                                 f"dead-{out}", "--metrics-port", "0", "--log-level", "info"))
    try:
        wait_for(lambda: len(read_all(kafka_bootstrap, out)) >= len(expected)
                 or proc.poll() is not None, 120, "the merged output")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert read_all(kafka_bootstrap, out) == expected
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        reap(proc)
    assert rc == 0, err
    assert "metrics on http://127.0.0.1:" in err, err
    dead = [json.loads(x) for x in read_all(kafka_bootstrap, f"{out}.dead-letter")]
    assert [(d["feed"], d["partition"], d["offset"]) for d in dead] == [
        ("radar", 1, 50), ("radar", 1, 120)
    ]
    assert "pitr" in dead[0]["reason"] and "lower than" in dead[1]["reason"]


def test_a_topic_created_with_several_partitions_after_the_start_stops_the_run(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str],
) -> None:
    """`kafka:TOPIC` of a topic that does not exist yet (--wait-for-topics) is read as
    partition 0; once it is created with several partitions the run stops with exit 2
    saying so, instead of never reading the others."""
    feed, other, out = unique_topic("feed"), unique_topic("other"), unique_topic("out")
    load(kafka_bootstrap, other, [b'{"pitr":%d}' % (1_700_000_000_000 + i) for i in range(10)])
    proc = start_cli(_merge_args(kafka_bootstrap, {"a": feed, "b": other}, out, f"late-{out}",
                                 "--wait-for-topics"))
    try:
        time.sleep(2.0)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        if kafka_broker_kind == "embedded":
            load(kafka_bootstrap, feed, [b'{"pitr":1700000000005}'])  # auto-created: 4
            count = 4
        else:
            create_topic(kafka_bootstrap, feed, 3)
            count = 3
        rc = proc.wait(60)
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        reap(proc)
    assert rc == 2, err
    assert f"kafka:{feed} (a) did not exist when this run started" in err, err
    assert f"created with {count} partitions" in err and "Traceback" not in err, err
