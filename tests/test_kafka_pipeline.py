"""`unifeed combine` against the fixture broker, driven as a user would: real subprocesses.

Every test compares Kafka output with the file pipeline's (the golden files), record for
record: catch-up, paced real time, SIGKILL and restart, two instances, a silent feed.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.golden import golden_path, read_lines
from tests.support.kafkatools import (
    Follower,
    PacedLoader,
    high_watermark,
    keepalive,
    load,
    log_end_offset,
    pitr_of,
    read_all,
    run_cli,
    start_cli,
    wait_for,
)
from tests.support.scenarios import combine_args, loaded_long_scenario, long_scenario
from unifeed import unify_lines

pytestmark = pytest.mark.kafka

SMALL = ["basic", "catchup-desync", "access-change", "bad-input"]


def golden_inputs(name: str) -> tuple[list[bytes], list[bytes]]:
    return (read_lines(golden_path(name, "controlstream")),
            read_lines(golden_path(name, "surfacestream")))


@pytest.mark.parametrize("name", SMALL)
def test_golden_scenario_in_catchup(name: str, kafka_bootstrap: str,
                                    unique_topic: Callable[..., str]) -> None:
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = golden_inputs(name)
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, f"golden-{out}", "--exit-at-end"))
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == read_lines(golden_path(name, "expected.unified"))
    # Dead letters go to <output>.dead-letter with the Kafka offset instead of the line.
    expected_dead = [json.loads(x) for x in read_lines(golden_path(name, "expected.dead-letters"))]
    got_dead = [json.loads(x) for x in read_all(kafka_bootstrap, f"{out}.dead-letter")]
    # Each feed's dead letters come in that feed's input order; how two feeds' dead letters
    # interleave follows when each reader got to them (docs/guarantees.md), so compare by feed.
    def by_feed(letters: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for d in letters:
            out.setdefault(d["feed"], []).append({k: v for k, v in d.items() if k not in ("line", "offset", "partition")})
        return out
    assert by_feed(got_dead) == by_feed(expected_dead)
    assert all("offset" in d and "line" not in d for d in got_dead)


def test_busy_airport_larger_than_retention_loaded_while_combining(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """The loader stays a bounded distance ahead of combine, so the broker's retention
    (5 MB a partition on the embedded broker) never drops an unread record."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = golden_inputs("busy-airport")
    expected = read_lines(golden_path("busy-airport", "expected.unified"))
    last = max(pitr_of(control[-1]), pitr_of(surface[-1]))
    control = [*control, keepalive(last + 1000)]
    surface = [*surface, keepalive(last + 1000)]
    follower = Follower(kafka_bootstrap, out)
    follower.start()
    # The loader tops up an old backlog: a reader waiting at the end of its partition for
    # it must not be taken for a live, silent feed, however slow a loaded machine is.
    # Partition 0 named: with the embedded broker's 4 partitions a topic, the 3 empty ones
    # would hold the output for the 60 s grace, the loader (which waits for output) with
    # it, and the busy partitions would then be passed too (docs/guarantees.md,
    # "Partitioned inputs").
    proc = start_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, f"busy-{out}",
                                  "--stop-at", str(last), "--end-of-log-grace", "60s",
                                  "--wait-for-topics"))
    ahead = 8000  # messages a feed may be ahead of the output: ~2 MB, well under retention
    try:
        cursors = {ctl: 0, srf: 0}
        lines = {ctl: control, srf: surface}
        deadline = time.monotonic() + 240
        while any(cursors[t] < len(lines[t]) for t in lines):
            assert time.monotonic() < deadline, "loading took too long"
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert follower.error is None, follower.error
            done_out = len(follower.values)
            progressed = False
            for t in lines:
                # Input consumed ~ output written: stay at most `ahead` past it.
                limit = min(len(lines[t]), done_out // 2 + ahead)
                if cursors[t] < limit:
                    load(kafka_bootstrap, t, lines[t][cursors[t]:limit])
                    cursors[t] = limit
                    progressed = True
            if not progressed:
                time.sleep(0.05)
        rc = proc.wait(timeout=180)
        assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    got = follower.finish(len(expected))
    assert len(got) == len(expected)
    assert got == expected


def test_busy_airport_backlog_beyond_5_mb_a_partition_loaded_before_combine(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str]
) -> None:
    """The whole busy-airport backlog (11.8 MB of controlstream, 9.4 MB of surfacestream,
    stored uncompressed) is in the broker before combine starts, as after an outage on a
    real cluster: catch-up reads it all and writes exactly the golden output (23 MB in one
    partition). The embedded broker keeps 5 MB a partition, so there the loader has to
    race combine instead (the test above)."""
    if kafka_broker_kind == "embedded":
        pytest.skip("the embedded broker keeps 5 MB a partition (README, its limits); "
                    "test_busy_airport_larger_than_retention_loaded_while_combining runs there")
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = golden_inputs("busy-airport")
    expected = read_lines(golden_path("busy-airport", "expected.unified"))
    assert min(sum(map(len, control)), sum(map(len, surface))) > 5_000_000
    load(kafka_bootstrap, ctl, control, compression="none")
    load(kafka_bootstrap, srf, surface, compression="none")
    assert read_all(kafka_bootstrap, ctl)[:1] == control[:1]  # the oldest record is kept
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, f"backlog-{out}",
                                "--exit-at-end"), timeout_s=300)
    assert done.returncode == 0, done.stderr.decode()
    got = read_all(kafka_bootstrap, out, timeout_s=120)
    assert len(got) == len(expected)
    assert got == expected


def _shift_to_now(lines: list[bytes], t0: int, now: int, speed: float) -> list[bytes]:
    """Rewrite pitr so that the feed plays from ``now``, ``speed`` times faster."""
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if isinstance(obj, dict) and type(obj.get("pitr")) is int:
            obj["pitr"] = now + int((obj["pitr"] - t0) / speed)
            out.append(json.dumps(obj, separators=(",", ":")).encode())
        else:
            out.append(line)
    return out


@pytest.mark.parametrize("name", ["basic", "access-change", "catchup-desync"])
def test_paced_realtime_gives_the_same_output(name: str, kafka_bootstrap: str,
                                              unique_topic: Callable[..., str]) -> None:
    """Inputs produced live (pitr near now, time-compressed) give the file pipeline's output.
    ``--strict-order`` makes that exact whatever the threads' timing; the default rule
    may differ only by messages it counts as late."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = golden_inputs(name)
    t0 = min(pitr_of(control[0]), pitr_of(surface[0]))
    span = max(pitr_of(control[-1]), pitr_of(surface[-1])) - t0
    speed = max(1.0, span / 4000)  # play the scenario in about four seconds
    now = int(time.time() * 1000) + 1500
    control = _shift_to_now(control, t0, now, speed)
    surface = _shift_to_now(surface, t0, now, speed)
    end = now + int(span / speed) + 1
    control.append(keepalive(end + 1))
    surface.append(keepalive(end + 1))
    expected, _ = unify_lines(control, surface)
    # Partition 0 named: the topic is created after the start (a topic read whole that is
    # created with several partitions, as the embedded broker does, stops the run).
    proc = start_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, f"live-{out}",
                                  "--strict-order",
                                  "--stop-at", str(end), "--wait-for-topics"))
    loader = PacedLoader(kafka_bootstrap, [(ctl, pitr_of(x), x) for x in control if pitr_of(x)]
                         + [(srf, pitr_of(x), x) for x in surface if pitr_of(x)])
    loader.start()
    try:
        loader.join(60)
        assert loader.error is None
        rc = proc.wait(timeout=60)
        assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert read_all(kafka_bootstrap, out) == expected


def _kill_while_writing(bootstrap: str, out: str, args: list[str], rng: random.Random,
                        rounds: int) -> int:
    """Start `unifeed combine` `rounds` times and SIGKILL each incarnation a seeded moment
    (0-30 ms) after it starts writing to `out` (its records reach the log, committed or
    not). Returns how many were killed (one that finished first is not)."""
    kills = 0
    for _ in range(rounds):
        delay = rng.uniform(0.0, 0.03)
        before = log_end_offset(bootstrap, out)
        proc = start_cli(args)
        try:
            def writing(b: int = before, running: subprocess.Popen[bytes] = proc) -> bool:
                return log_end_offset(bootstrap, out) > b or running.poll() is not None

            try:
                wait_for(writing, 60, "the incarnation to start writing", 0.002)
            except TimeoutError:
                proc.kill()
                proc.wait(10)
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "") from None
            time.sleep(delay)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(10)
    return kills


def test_sigkill_at_seeded_moments_then_restart_gives_exact_output(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """Each incarnation is killed a seeded moment after it starts writing (in the middle
    of its work: transactions open, output produced but not committed, or a commit under
    way); the last one runs to the end. The committed output is exactly the reference."""
    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 120)
    args = combine_args(kafka_bootstrap, ctl, srf, out, f"kill-{out}", "--exit-at-end",
                        "--commit-interval", "20ms", "--catchup-commit-interval", "20ms")
    kills = _kill_while_writing(kafka_bootstrap, out, args, random.Random(20261122), 6)
    assert kills >= 5, "combine finished before it could be killed: make the scenario longer"
    done = run_cli(args)
    assert done.returncode == 0, done.stderr.decode()
    got = read_all(kafka_bootstrap, out)
    assert len(got) == len(expected), "lost or duplicated records"
    assert got == expected
    # Running a finished job again writes nothing and ends.
    again = run_cli(args, timeout_s=60)
    assert again.returncode == 0, again.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected


def test_two_instances_write_identical_outputs(kafka_bootstrap: str,
                                               unique_topic: Callable[..., str]) -> None:
    ctl, srf = unique_topic("ctl"), unique_topic("srf")
    out_a, out_b = unique_topic("out-a"), unique_topic("out-b")
    control, surface = golden_inputs("access-change")
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    results = {}

    def run(out: str, name: str) -> None:
        results[name] = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, name, "--exit-at-end"))

    threads = [threading.Thread(target=run, args=(o, n)) for o, n in ((out_a, "uf-a"), (out_b, "uf-b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r.returncode == 0 for r in results.values()), {
        n: r.stderr.decode() for n, r in results.items()
    }
    a, b = read_all(kafka_bootstrap, out_a), read_all(kafka_bootstrap, out_b)
    assert a == b == read_lines(golden_path("access-change", "expected.unified"))


def test_silent_surfacestream_does_not_stall_catchup(kafka_bootstrap: str,
                                                     unique_topic: Callable[..., str]) -> None:
    """surfacestream goes silent for three hours inside the backlog and has nothing at
    its end: catch-up goes on (the reader reports end of log), with no --exit-at-end."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    t0 = int(time.time() * 1000) - 8 * 3_600_000  # eight hours ago: all of it is catch-up
    hour = 3_600_000
    control = [b'{"type":"position","pitr":%d,"id":"F1","clock":%d,"lat":1,"lon":2}' % (t, t)
               for t in range(t0, t0 + 5 * hour, 60_000)]
    surface = [b'{"type":"vehicle_position","pitr":%d,"surface_id":"V","facility":"K",'
               b'"clock":%d,"lat":1,"lon":2}' % (t, t)
               for t in [*range(t0, t0 + hour, 300_000), *range(t0 + 4 * hour, t0 + int(4.5 * hour), 300_000)]]
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    expected, _ = unify_lines(control, surface)
    proc = start_cli(combine_args(kafka_bootstrap, ctl, srf, out, f"silent-{out}"))
    try:
        wait_for(lambda: len(read_all(kafka_bootstrap, out)) >= len(expected)
                 or proc.poll() is not None, 60, "catch-up to pass the silent stretch", 0.5)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert read_all(kafka_bootstrap, out) == expected


def test_unreachable_broker_exits_3_with_one_line_reason(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    done = run_cli(["combine", "--control", "kafka:a", "--surface", "kafka:b", "--output",
                    "kafka:c", "--bootstrap-servers", f"127.0.0.1:{port}", "--broker-timeout", "3s"],
                   timeout_s=60)  # the start-up wait is --broker-timeout (default 30s)
    took = time.monotonic() - started
    assert done.returncode == 3, done.stderr.decode()
    lines = [x for x in done.stderr.decode().splitlines() if x.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], lines
    assert took < 20, f"took {took:.0f}s with --broker-timeout 3s"


@pytest.mark.parametrize("name", ["basic", "access-change", "bad-input"])
def test_mappings_then_combine_with_a_mapping_topic(name: str, kafka_bootstrap: str,
                                                    unique_topic: Callable[..., str]) -> None:
    """`unifeed mappings` writes the golden mappingstream; `combine --mapping kafka:…`
    reading it gives the golden unified feed."""
    ctl, srf, mp, out = (unique_topic(x) for x in ("ctl", "srf", "map", "out"))
    control, surface = golden_inputs(name)
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    done = run_cli(["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{mp}",
                    "--bootstrap-servers", kafka_bootstrap, "--instance", f"m-{mp}",
                    "--checkpoint-topic", f"{mp}.checkpoints", "--exit-at-end", "-q"])
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, mp) == read_lines(golden_path(name, "expected.mappingstream"))
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, f"c-{out}", "--exit-at-end",
                                "--mapping", f"kafka:{mp}"))
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == read_lines(golden_path(name, "expected.unified"))


def test_mapping_topic_dead_letters_are_written_once_across_reruns(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """Bad records in an external mappingstream become dead letters once: a rerun that
    reads them again (the mapping replay from the checkpoint) does not write them twice."""
    ctl, srf, mp, out = (unique_topic(x) for x in ("ctl", "srf", "map", "out"))
    control, surface = golden_inputs("basic")
    mapping = read_lines(golden_path("basic", "expected.mappingstream"))
    bad = [b"not json", b'{"type":"link","pitr":"soon"}', b"\xff\xfe"]
    step = max(1, len(mapping) // (len(bad) + 1))
    with_bad = list(mapping)
    for k, junk in enumerate(bad):
        with_bad.insert((k + 1) * step + k, junk)
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    load(kafka_bootstrap, mp, with_bad)
    args = combine_args(kafka_bootstrap, ctl, srf, out, f"mdl-{out}", "--exit-at-end",
                        "--mapping", f"kafka:{mp}")
    for _ in range(2):
        done = run_cli(args)
        assert done.returncode == 0, done.stderr.decode()
        dead = [json.loads(x) for x in read_all(kafka_bootstrap, f"{out}.dead-letter")]
        assert sorted(d["offset"] for d in dead) == sorted(with_bad.index(j) for j in bad)
        assert {d["feed"] for d in dead} == {"mappingstream"}
        assert read_all(kafka_bootstrap, out) == read_lines(golden_path("basic",
                                                                        "expected.unified"))


def test_a_record_without_a_value_is_a_dead_letter_and_the_rest_is_exact(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """A null value (a tombstone, or a producer's mistake) in an input is a dead letter
    with its offset and a reason; everything else comes out as the golden output."""
    from confluent_kafka import Producer

    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = golden_inputs("basic")
    control = [x for x in control if x.strip()]
    load(kafka_bootstrap, ctl, control[:3])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(ctl, None, partition=0, timestamp=pitr_of(control[2]))
    assert producer.flush(30) == 0
    load(kafka_bootstrap, ctl, control[3:])
    load(kafka_bootstrap, srf, surface)
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, f"null-{out}", "--exit-at-end"))
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == read_lines(golden_path("basic", "expected.unified"))
    dead = [json.loads(x) for x in read_all(kafka_bootstrap, f"{out}.dead-letter")]
    golden_dead = read_lines(golden_path("basic", "expected.dead-letters"))
    null = [d for d in dead if "null" in d["reason"]]
    assert len(dead) == len(golden_dead) + 1
    assert len(null) == 1 and null[0]["offset"] == 3 and null[0]["feed"] == "controlstream"
    assert null[0]["raw"] == ""


def test_sigkill_of_mappings_then_restart_gives_exact_mappingstream(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    ctl, mp = unique_topic("ctl"), unique_topic("map")
    control, _ = long_scenario()
    from unifeed.core.unify import derive_mapping_lines

    expected, _ = derive_mapping_lines(control)
    load(kafka_bootstrap, ctl, control)
    args = ["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{mp}",
            "--bootstrap-servers", kafka_bootstrap, "--instance", f"m-{mp}",
            "--checkpoint-topic", f"{mp}.checkpoints", "--exit-at-end", "-q",
            "--commit-interval", "10ms",
            "--catchup-commit-interval", "10ms"]
    rng = random.Random(7)
    kills = 0
    for point in sorted(rng.sample(range(200, len(expected) - 200), 4)):
        proc = start_cli(args)
        try:
            def reached(p: int = point, running: subprocess.Popen[bytes] = proc) -> bool:
                return high_watermark(kafka_bootstrap, mp) >= p or running.poll() is not None

            wait_for(reached, 60, f"mappingstream to reach {point}", 0.002)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(10)
    assert kills >= 1, "mappings finished before it could be killed: make the scenario longer"
    done = run_cli(args)
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, mp) == expected


def test_combine_serves_prometheus_metrics(kafka_bootstrap: str,
                                           unique_topic: Callable[..., str]) -> None:
    """--metrics-port on a running combine, scraped over HTTP on 127.0.0.1."""
    import socket
    import urllib.request

    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    control, surface = golden_inputs("bad-input")
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    expected = read_lines(golden_path("bad-input", "expected.unified"))
    proc = start_cli(combine_args(kafka_bootstrap, ctl, srf, out, f"m-{out}",
                                  "--metrics-port", str(port)))
    try:
        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        wait_for(lambda: f"unifeed_messages_out_total {float(len(expected))}" in scrape()
                 or proc.poll() is not None, 60, "metrics to show the whole output", 0.2)
        text = scrape()
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert 'unifeed_messages_in_total{feed="controlstream"}' in text
    assert 'unifeed_dead_letters_total{reason="not_json"}' in text
    assert 'unifeed_lag_seconds{feed="controlstream"}' in text
    assert 'unifeed_mode{mode="catchup"} 1.0' in text
    assert "unifeed_checkpoint_commits_total" in text


def test_at_least_once_delivery_sigkill_and_restart_gives_exact_output(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """Without transactions, the output-tail reconciliation still makes a restart exact:
    what a killed run wrote after its checkpoint is found and not written again."""
    ctl, srf, out, expected = loaded_long_scenario(kafka_bootstrap, unique_topic, 120)
    args = combine_args(kafka_bootstrap, ctl, srf, out, f"alo-{out}", "--exit-at-end",
                        "--delivery", "at-least-once", "--commit-interval", "20ms", "--catchup-commit-interval", "20ms")
    kills = _kill_while_writing(kafka_bootstrap, out, args, random.Random(20261129), 4)
    assert kills >= 2, "combine finished before it could be killed: make the scenario longer"
    done = run_cli(args)
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, out) == expected


def _stop_then_finish(bootstrap: str, unique_topic: Callable[..., str], control: list[bytes],
                      surface: list[bytes], expected: list[bytes], stops: list[int]) -> str:
    """Load both feeds, run `unifeed combine --stop-at` at each of `stops` in turn, then to
    the end; the output must be `expected`. Returns the output topic."""
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    load(bootstrap, ctl, control)
    load(bootstrap, srf, surface)
    for stop_at in stops:
        first = run_cli(combine_args(bootstrap, ctl, srf, out, f"st-{out}", "--stop-at",
                                     str(stop_at)))
        assert first.returncode == 0, first.stderr.decode()
    done = run_cli(combine_args(bootstrap, ctl, srf, out, f"st-{out}", "--exit-at-end"))
    assert done.returncode == 0, done.stderr.decode()
    got = read_all(bootstrap, out)
    assert len(got) == len(expected), "lost or duplicated records"
    assert got == expected
    return out


def test_resume_is_exact_when_backwards_records_sit_near_the_checkpoint(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """Records with a backwards ``pitr`` (dead letters) between the valid ones make the
    inputs' ``pitr`` unordered, so a search by ``pitr`` cannot be trusted near them. A run
    stopped at a checkpoint in the middle of such a stretch, then run again to the end,
    still writes exactly the file pipeline's output: nothing skipped, nothing twice."""
    control, surface = long_scenario(10)
    bogus_surface = (b'{"type":"ground_position","pitr":1,"surface_id":"S9","facility":"KSFO",'
                     b'"clock":1,"lat":1,"lon":2}')
    bogus_control = b'{"type":"position","pitr":2,"id":"F9","clock":1,"lat":1,"lon":2}'
    # Every other record of the second half of each feed is a backwards one.
    surface = surface[: len(surface) // 2] + [
        x for line in surface[len(surface) // 2 :] for x in (line, bogus_surface)]
    control = control[: len(control) // 2] + [
        x for line in control[len(control) // 2 :] for x in (line, bogus_control)]
    expected, run = unify_lines(control, surface)
    n_dead = sum(run.stats().dead_letters.values())
    assert n_dead > 3000
    valid = sorted(pitr_of(x) for x in surface if pitr_of(x) > 2)
    out = _stop_then_finish(kafka_bootstrap, unique_topic, control, surface, expected,
                            [valid[len(valid) * 3 // 5], valid[len(valid) * 4 // 5]])
    dead = [json.loads(x) for x in read_all(kafka_bootstrap, f"{out}.dead-letter")]
    assert len({(d["feed"], d["offset"]) for d in dead}) == len(dead) == n_dead


def test_resume_is_exact_before_a_burst_of_backwards_records(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """An upstream that re-sends old messages leaves hundreds of backwards records in a
    row, too many for any search by pitr to see past. A run stopped just before such a
    burst restarts from the offset its checkpoint keeps and writes exactly the file
    pipeline's output."""
    control, surface = long_scenario(10)
    valid = [pitr_of(x) for x in surface]
    stop_at = valid[len(valid) * 3 // 5]
    burst = 300
    surface_at = next(i for i, p in enumerate(valid) if p > stop_at) + 5
    surface = surface[:surface_at] + [
        b'{"type":"ground_position","pitr":%d,"surface_id":"S9","facility":"KSFO",'
        b'"clock":1,"lat":1,"lon":2}' % (stop_at - 10_000_000 + i) for i in range(burst)
    ] + surface[surface_at:]
    control_at = next(i for i, x in enumerate(control) if pitr_of(x) > stop_at) + 5
    control = control[:control_at] + [
        b'{"type":"position","pitr":%d,"id":"F9","clock":1,"lat":1,"lon":2}'
        % (stop_at - 10_000_000 + i) for i in range(burst)
    ] + control[control_at:]
    expected, run = unify_lines(control, surface)
    assert sum(run.stats().dead_letters.values()) == 2 * burst
    _stop_then_finish(kafka_bootstrap, unique_topic, control, surface, expected, [stop_at])


def test_mappings_resume_is_exact_before_a_burst_of_backwards_records(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    """`unifeed mappings` restarts a lookback before its checkpoint to rebuild its links.
    A burst of very old records in the middle of controlstream, where a search by pitr
    first looks, must not make it start after the burst (losing links and the records
    between the checkpoint and the burst): it restarts from its checkpoint's offset."""
    from unifeed.core.unify import derive_mapping_lines

    control, _ = long_scenario(20)
    burst = 300
    at = len(control) // 2  # the burst then covers the middle of the partition
    stop_at = pitr_of(control[at - 15])  # 1.5 s before it: a keepalive is due in between
    control = control[:at] + [
        b'{"type":"position","pitr":%d,"id":"F9","clock":1,"lat":1,"lon":2}' % (1000 + i)
        for i in range(burst)
    ] + control[at:]
    expected, _ = derive_mapping_lines(control)
    ctl, mp = unique_topic("ctl"), unique_topic("map")
    load(kafka_bootstrap, ctl, control)
    args = ["mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{mp}",
            "--bootstrap-servers", kafka_bootstrap, "--instance", f"mb-{mp}",
            "--checkpoint-topic", f"{mp}.checkpoints", "-q"]
    first = run_cli([*args, "--stop-at", str(stop_at)])
    assert first.returncode == 0, first.stderr.decode()
    done = run_cli([*args, "--exit-at-end"])
    assert done.returncode == 0, done.stderr.decode()
    assert read_all(kafka_bootstrap, mp) == expected


def test_far_future_pitr_is_loaded_combined_and_dumped(kafka_bootstrap: str, tmp_path: Path,
                                                       unique_topic: Callable[..., str]) -> None:
    """A pitr in 2100 is valid input and is written (docs/guarantees.md). Kafka 4 brokers
    refuse a record stamped more than an hour ahead of their clock (and the whole batch
    with it), so unifeed stamps records with their pitr but never more than 50 minutes
    ahead: `unifeed load`, `combine` and `dump` carry such a record through a real broker,
    and every other record keeps timestamp = pitr."""
    t0, year_2100 = 1_700_000_000_000, 4_102_444_800_000
    control = [
        b'{"type":"flightplan","pitr":%d,"id":"F1","ident":"UAL1","access":"public"}' % t0,
        b'{"type":"power_on","pitr":%d,"id":"F1","surface_id":"S1","facility":"KSFO"}' % (t0 + 1),
        b'{"type":"departure","pitr":%d,"id":"F1"}' % year_2100,
    ]
    surface = [
        b'{"type":"ground_position","pitr":%d,"surface_id":"S1","facility":"KSFO",'
        b'"clock":%d,"lat":1,"lon":2}' % (t0 + 2, t0),
        b'{"type":"vehicle_position","pitr":%d,"surface_id":"V1","facility":"KSFO",'
        b'"clock":%d,"lat":1,"lon":2}' % (year_2100 + 5, t0),
    ]
    expected, _run = unify_lines(control, surface)
    assert pitr_of(expected[-1]) == year_2100 + 5
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    for topic, lines in ((ctl, control), (srf, surface)):
        path = tmp_path / f"{topic}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        loaded = run_cli(["load", str(path), "--topic", f"kafka:{topic}",
                          "--bootstrap-servers", kafka_bootstrap])
        assert loaded.returncode == 0, loaded.stderr.decode()
    # A pitr in 2100 is "real time" to the combining rule, where surfacestream is not
    # required: --strict-order requires it, so the output does not depend on which
    # reader delivers first (the subject here is the stamping, not the live rule).
    done = run_cli(combine_args(kafka_bootstrap, ctl, srf, out, f"future-{out}", "--exit-at-end",
                                "--strict-order"))
    assert done.returncode == 0, done.stderr.decode()
    dumped = run_cli(["dump", f"kafka:{out}", "--bootstrap-servers", kafka_bootstrap])
    assert dumped.returncode == 0, dumped.stderr.decode()
    assert dumped.stdout.splitlines() == expected
    stamps = _timestamps(kafka_bootstrap, out)
    assert len(stamps) == len(expected)
    now_ms = int(time.time() * 1000)
    for line, stamp in zip(expected, stamps, strict=True):
        if pitr_of(line) < now_ms:
            assert stamp == pitr_of(line)
        else:
            assert now_ms - 600_000 < stamp <= now_ms + 3_600_000, (line, stamp)


def _timestamps(bootstrap: str, topic: str) -> list[int]:
    """The record timestamps of partition 0 (read_committed), in offset order."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unifeed-tests",
                         "isolation.level": "read_committed", "enable.partition.eof": True})
    stamps: list[int] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        for _ in range(500):
            for m in consumer.consume(1000, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return stamps
                    raise RuntimeError(err.str())
                stamps.append(m.timestamp()[1])
        raise TimeoutError(f"reading {topic} did not reach its end")
    finally:
        consumer.close()


def test_restart_finds_its_inputs_by_the_brokers_offsets_for_times(
    kafka_bootstrap: str, kafka_broker_kind: str, unique_topic: Callable[..., str]
) -> None:
    """A run stopped at a checkpoint, then run to the end: the restart looks surfacestream
    up by pitr (controlstream is read from its saved state's offset). On a real broker offsets_for_times answers (inputs loaded without
    transactions, timestamp = pitr) and the answer is taken; the embedded broker answers
    "unknown" and the search bisects. Either way the output is exact."""
    control, surface = long_scenario(10)
    expected, _run = unify_lines(control, surface)
    ctl, srf, out = unique_topic("ctl"), unique_topic("srf"), unique_topic("out")
    load(kafka_bootstrap, ctl, control)
    load(kafka_bootstrap, srf, surface)
    stop_at = pitr_of(surface[len(surface) // 2])
    # Partition 0 named: saved state is kept for a controlstream of one partition (the
    # embedded broker's topics have 4).
    first = run_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, f"oft-{out}",
                                 "--stop-at", str(stop_at)))
    assert first.returncode == 0, first.stderr.decode()
    done = run_cli(combine_args(kafka_bootstrap, f"{ctl}:0", f"{srf}:0", out, f"oft-{out}",
                                "--exit-at-end", "--log-level", "debug"))
    err = done.stderr.decode()
    assert done.returncode == 0, err
    # controlstream resumes from the state saved with the checkpoint (no search);
    # surfacestream is looked up by pitr.
    assert f"saved at kafka:{ctl}:0 offset" in err, err
    searches = {topic: [line for line in err.splitlines()
                        if f"kafka:{topic}:0: pitr " in line and " found at offset " in line]
                for topic in (srf,)}
    assert all(searches.values()), err
    method = "bisection" if kafka_broker_kind == "embedded" else "offsets_for_times"
    for topic, lines in searches.items():
        assert all(f" by {method} " in line for line in lines), (topic, lines)
    assert read_all(kafka_bootstrap, out) == expected
