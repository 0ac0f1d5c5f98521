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

from tests.support.golden import golden_path, read_lines
from tests.support.kafkatools import (
    keepalive,
    load,
    log_end_offset,
    read_all,
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
                       "--commit-interval", "20ms")
    kills = _kill_while_writing(kafka_bootstrap, out, args, random.Random(7), 8)
    assert kills >= 5, "merge finished before it could be killed: make the feeds longer"
    done = run_cli(args, timeout_s=300)
    assert done.returncode == 0, done.stderr.decode()
    got = read_all(kafka_bootstrap, out)
    assert len(got) == len(expected), "lost or duplicated records"
    assert got == expected
