"""Pre-filled Kafka runs over partitioned topics: `unifeed combine` over feeds spread on
several partitions, `unifeed merge` of many feeds, and the passthrough over the same
partitions.

The parent (`run_prefilled`) creates fresh topics with the partitions asked for, produces
every record before the measured process starts (so no loader bounds either side), then
runs this module as that process:

    python -m benchmarks._kafka_prefilled combine     --bootstrap B --input NAME=TOPIC:N ...
        --output T --stop-at PITR
    python -m benchmarks._kafka_prefilled merge       (same)
    python -m benchmarks._kafka_prefilled passthrough --bootstrap B --input NAME=TOPIC:N ...
        --output T

``N`` is the number of records in the topic (all partitions). The process writes ``H
<pid>``, progress lines (``P <records read> 0 <records written>``) and one ``R <json>``
line with its result, as `benchmarks._kafka_driver` does; the passthrough counts the time
it found every input empty (``starved_s``), both sides the time their reading stood still
(``stalled_s``).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks._kafka_driver import Reporter, _peak_rss_kb, passthrough
from benchmarks._kafka_harness import (
    BROKER_PID_ENV,
    Profiler,
    _cpu_jiffies,
    _process_cpu_s,
    serve_run,
)
from unifeed.kafka.clients import Target, TopicSelection, producer_config

REPO = Path(__file__).resolve().parents[1]
_READ_BATCH = 5000
_DEADLINE_S = 1800.0
_RSS_SAMPLE_S = 0.1


# --- the measured process ------------------------------------------------------------


def _inputs(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    out = []
    for item in args.input:
        name, _, rest = item.partition("=")
        topic, _, count = rest.rpartition(":")
        out.append((name, topic, int(count)))
    return out


def run_unifeed(args: argparse.Namespace) -> dict[str, Any]:
    from unifeed.runtime import CombineRun, RuntimeOptions
    from unifeed.runtime.merge import MergeRun
    from unifeed.runtime.reader import FeedReader, PartitionsReader
    from unifeed.runtime.runloop import RunLoop

    options = RuntimeOptions(
        bootstrap=args.bootstrap,
        instance=args.instance,
        checkpoint_topic=args.checkpoint_topic,
        stop_at=args.stop_at,
        status_interval_s=0.0,
    )
    inputs = _inputs(args)
    output = Target(args.output)
    run: Any
    if args.kind == "combine":
        (_, control, _), (_, surface, _) = inputs
        run = CombineRun(
            options,
            control=TopicSelection(control),
            surface=TopicSelection(surface),
            output=output,
        )
    else:
        run = MergeRun(options, {name: TopicSelection(topic) for name, topic, _ in inputs}, output)
    started = time.perf_counter()
    run.setup()
    readers = [t for t in run.threads if isinstance(t, (FeedReader, PartitionsReader, RunLoop))]
    counters = run.state.counters

    def progress() -> tuple[int, int, int]:
        return sum(r.next_offset for r in readers), 0, counters.get("out", 0)

    writer = run.main
    assert writer is not None
    reporter = Reporter(progress, done=lambda: writer.ident is not None and not writer.is_alive())
    reporter.start()
    running = time.perf_counter()
    code = run.run()
    finished = time.perf_counter()
    reporter.stop.set()
    reporter.join(5)
    done = reporter.done_at if reporter.done_at is not None else finished
    return {
        "exit_code": code,
        "readers": len(readers),
        "setup_s": running - started,
        "run_s": done - running,
        "shutdown_s": finished - done,
        "consumed": sum(r.next_offset for r in readers),
        "out": counters.get("out", 0),
        "counters": dict(counters),
        "cpu_by_thread": reporter.cpu_by_thread(),
        "run_busy": reporter.machine_busy(),
        "run_broker_cpu_s": reporter.broker_cpu_s(),
        "stalled_s": reporter.stalled_s,
        "starved_s": None,
        "first_record_s": None,
    }


def run_passthrough(args: argparse.Namespace) -> dict[str, Any]:
    """`benchmarks._kafka_driver.passthrough` over every input topic."""
    inputs = _inputs(args)
    result = passthrough(args.bootstrap, [(t, n) for _, t, n in inputs], args.output)
    result["readers"] = len(inputs)
    result["consumed"] = sum(result["consumed"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._kafka_prefilled")
    parser.add_argument("kind", choices=("combine", "merge", "passthrough"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", action="append", required=True, help="NAME=TOPIC:RECORDS")
    parser.add_argument("--output", required=True)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--instance", default="bench")
    parser.add_argument("--checkpoint-topic", default="bench.checkpoints")
    args = parser.parse_args(argv)
    os.write(1, b"H %d\n" % os.getpid())
    if args.kind == "passthrough":
        result = run_passthrough(args)
    else:
        if args.stop_at is None:
            parser.error(f"{args.kind} needs --stop-at")
        result = run_unifeed(args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        kind=args.kind,
        cpu_user_s=usage.ru_utime,
        cpu_sys_s=usage.ru_stime,
        peak_rss_kb=_peak_rss_kb(),
    )
    sys.stdout.flush()
    os.write(1, b"R " + msgspec.json.encode(result) + b"\n")
    return int(result["exit_code"])


# --- the parent: topics, pre-filling, the measured process ----------------------------


@dataclass
class PrefilledResult:
    kind: str
    messages: int  # records read, all inputs, keepalives included
    out: int
    readers: int
    run_s: float
    setup_s: float
    peak_rss_mb: float
    cpu_s: float
    machine_busy: float
    stalled_s: float
    starved_s: float | None
    first_record_s: float | None
    prefill_s: float
    broker_cpu_s: float | None
    broker_peak_rss_mb: float | None
    counters: dict[str, int]
    cpu_by_thread: dict[str, list[float]]

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.run_s

    @property
    def run_cpu_s(self) -> float:
        return sum(cpu for cpu, _runqueue in self.cpu_by_thread.values())

    @property
    def starved_share(self) -> float:
        return (self.starved_s or 0.0) / self.run_s

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "messages": self.messages,
            "out": self.out,
            "readers": self.readers,
            "msgs_per_s": round(self.msgs_per_s),
            "run_s": round(self.run_s, 3),
            "setup_s": round(self.setup_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "cpu_s": round(self.cpu_s, 2),
            # The run's window: every thread's CPU from the run's start to its end (the
            # process's setup and shutdown not counted).
            "run_cpu_per_msg_us": round(self.run_cpu_s / self.messages * 1e6, 2),
            "machine_busy": round(self.machine_busy, 3),
            "stalled_s": round(self.stalled_s, 3),
            "starved_s": None if self.starved_s is None else round(self.starved_s, 3),
            "first_record_s": self.first_record_s,
            "prefill_s": round(self.prefill_s, 2),
            "broker_cpu_s": self.broker_cpu_s,
            "broker_peak_rss_mb": self.broker_peak_rss_mb,
            "late": self.counters.get("late", 0),
            "dead_letters": self.counters.get("dead_letters", 0),
            "counters": self.counters,
            "threads_cpu_and_runqueue_s": self.cpu_by_thread,
        }


def _run_broker_cpu(result: dict[str, Any], start: float | None, end: float | None) -> float | None:
    """The broker's CPU seconds over the run's window as the process measured it, else
    over the process's whole life (its setup included)."""
    if result.get("run_broker_cpu_s") is not None:
        return round(float(result["run_broker_cpu_s"]), 2)
    return None if start is None or end is None else round(end - start, 2)


#: One input: its name and its records, a list per partition (in each, pitr order).
Inputs = dict[str, list[list[bytes]]]


def _create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in partitions.items()],
        operation_timeout=30,
    )
    for topic, future in futures.items():
        future.result(timeout=60)  # raises if the topic could not be created
        del topic


def run_prefilled(
    kind: str,
    bootstrap: str,
    inputs: Inputs,
    *,
    stop_at: int,
    timeout_s: float,
    broker_pid: int | None = None,
    profiler: Profiler | None = None,
) -> PrefilledResult:
    """Fresh topics holding ``inputs`` (every record produced before the process starts),
    then one run of ``kind`` (``combine``, ``merge`` or ``passthrough``) over them."""
    run_id = uuid.uuid4().hex[:10]
    topics = {name: f"bench-{run_id}-{name}" for name in inputs}
    output = f"bench-{run_id}-out"
    _create_topics(
        bootstrap,
        {**{topics[n]: len(parts) for n, parts in inputs.items()}, output: 1},
    )
    prefill_started = time.monotonic()
    producer = Producer(
        {**producer_config(bootstrap), "queue.buffering.max.kbytes": 262_144, "linger.ms": 20}
    )
    for name, parts in inputs.items():
        for partition, lines in enumerate(parts):
            for start in range(0, len(lines), 10_000):
                batch = [{"value": v} for v in lines[start : start + 10_000]]
                for _attempt in range(1000):
                    producer.produce_batch(topics[name], batch, partition=partition)
                    failed = [r for r in batch if "_error" in r]
                    if not failed:
                        break
                    batch = [{"value": r["value"]} for r in failed]
                    producer.poll(0.05)
                else:
                    raise RuntimeError(f"cannot queue records for {topics[name]}")
                producer.poll(0)
    left = producer.flush(timeout_s)
    if left:
        raise RuntimeError(f"{left} records not delivered in {timeout_s:g} s")
    prefill_s = time.monotonic() - prefill_started
    counts = {name: sum(len(p) for p in parts) for name, parts in inputs.items()}
    cmd = [sys.executable, "-m", "benchmarks._kafka_prefilled", kind, "--bootstrap", bootstrap]
    for name in inputs:
        cmd += ["--input", f"{name}={topics[name]}:{counts[name]}"]
    cmd += ["--output", output]
    if kind != "passthrough":
        cmd += [
            "--stop-at",
            str(stop_at),
            "--instance",
            f"bench-{run_id}",
            "--checkpoint-topic",
            f"bench-{run_id}-checkpoints",
        ]
    if profiler is not None:
        cmd = [*profiler.command(kind, run_id), *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if broker_pid is not None:
        env[BROKER_PID_ENV] = str(broker_pid)
    with tempfile.TemporaryFile() as stderr:
        busy0, total0 = _cpu_jiffies()
        broker0 = _process_cpu_s(broker_pid)
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            result, _samples, rss = serve_run(proc, None, time.monotonic(), timeout_s, broker_pid)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        busy1, total1 = _cpu_jiffies()
        broker1 = _process_cpu_s(broker_pid)
        if proc.returncode != 0 or result is None:
            stderr.seek(0)
            tail = stderr.read()[-4000:].decode(errors="replace")
            raise RuntimeError(f"{kind} run failed (exit code {proc.returncode}):\n{tail}")
    return PrefilledResult(
        kind=kind,
        messages=result["consumed"],
        out=result["out"],
        readers=result["readers"],
        run_s=result["run_s"],
        setup_s=result["setup_s"],
        peak_rss_mb=result["peak_rss_kb"] / 1024,
        cpu_s=result["cpu_user_s"] + result["cpu_sys_s"],
        # The run's window when the process saw it end (its setup not counted), else the
        # process's whole life.
        machine_busy=result.get("run_busy") or (busy1 - busy0) / max(1, total1 - total0),
        stalled_s=result["stalled_s"],
        starved_s=result["starved_s"],
        first_record_s=result["first_record_s"],
        prefill_s=prefill_s,
        broker_cpu_s=_run_broker_cpu(result, broker0, broker1),
        broker_peak_rss_mb=round(max(rss), 1) if rss else None,
        counters=result["counters"],
        cpu_by_thread=result["cpu_by_thread"],
    )


if __name__ == "__main__":
    sys.exit(main())
