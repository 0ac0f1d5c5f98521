"""The process under measurement in the Kafka benchmarks (one run, then exit).

    python -m benchmarks._kafka_driver unifeed     --bootstrap B --control T --surface T \\
        --output T --stop-at PITR --instance I --checkpoint-topic C
    python -m benchmarks._kafka_driver passthrough --bootstrap B --control T --surface T \\
        --output T --expect-control N --expect-surface N

``unifeed`` runs `CombineRun` (exactly-once, the defaults of ``unifeed combine``) until its
readers pass ``--stop-at``; ``passthrough`` is the peer: one thread, one consumer per input,
``consume(num_messages=...)`` and one ``produce`` per record, no decoding.

Stdout carries, for the loader in the parent: ``H <pid>`` first, then ``P <control next
offset> <surface next offset> <output count>`` every few milliseconds, then one ``R <json>``
line with the result: timings, counters, CPU per thread, peak RSS. A small reporter thread
writes the ``P`` lines and samples each thread's scheduler statistics
(``/proc/self/task/*/schedstat``: time on a CPU, and time runnable but waiting for one); it
wakes every 5 ms and holds the GIL for a few microseconds each time (about 1% of one core).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from benchmarks._kafka_harness import BROKER_PID_ENV, _cpu_jiffies, _process_cpu_s
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM
from unifeed.kafka.clients import Target, consumer_config, producer_config
from unifeed.runtime import CombineRun, RuntimeOptions
from unifeed.runtime.runloop import RunLoop

_REPORT_S = 0.005  # as REPORT_S in benchmarks._kafka_harness
_CPU_SAMPLE_S = 0.25
_READ_BATCH = 5000  # as unifeed's readers
_DEADLINE_S = 1800.0


class Reporter(threading.Thread):
    """Writes progress lines and keeps the CPU seconds of every thread seen."""

    def __init__(
        self,
        progress: Callable[[], tuple[int, int, int]],
        done: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(name="bench-reporter", daemon=True)
        self.progress = progress
        self.done = done
        self.done_at: float | None = None  # perf_counter when `done` was first seen true
        self.stop = threading.Event()
        self.cpu: dict[int, tuple[str, float, float]] = {}
        #: Seconds between two reports in which no input advanced before the work was done
        #: (reading stood still: starved by the broker, or held back by the stages after it).
        self.stalled_s = 0.0
        # The run's window, from this thread's start to `done`: each thread's CPU and the
        # machine's busy jiffies at both ends (setup before it is not counted).
        self.cpu_at_start: dict[int, tuple[str, float, float]] = {}
        self.jiffies: list[tuple[int, int]] = []
        # The broker's CPU over the same window, when the parent names its process.
        pid = os.environ.get(BROKER_PID_ENV)
        self.broker_pid = int(pid) if pid else None
        self.broker_cpu: list[float | None] = []

    def run(self) -> None:
        next_cpu = 0.0
        last: tuple[int, int] | None = None
        self.sample_cpu()
        self.cpu_at_start = dict(self.cpu)
        self.jiffies = [_cpu_jiffies()]
        self.broker_cpu = [_process_cpu_s(self.broker_pid)]
        last_at = time.perf_counter()
        while not self.stop.wait(_REPORT_S):
            c, s, out = self.progress()
            os.write(1, b"P %d %d %d\n" % (c, s, out))
            now_pc = time.perf_counter()
            if self.done_at is None and self.done():
                self.done_at = now_pc
                self.jiffies.append(_cpu_jiffies())
                self.broker_cpu.append(_process_cpu_s(self.broker_pid))
                self.sample_cpu()
            if self.done_at is None and last == (c, s):
                self.stalled_s += now_pc - last_at
            last, last_at = (c, s), now_pc
            now = time.monotonic()
            if now >= next_cpu:
                self.sample_cpu()
                next_cpu = now + _CPU_SAMPLE_S

    def sample_cpu(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        for tid_text in os.listdir("/proc/self/task"):
            tid = int(tid_text)
            try:
                with open(f"/proc/self/task/{tid}/comm", "rb") as f:
                    comm = f.read().strip().decode(errors="replace")
                with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                    on_cpu_ns, runqueue_ns, _slices = (int(x) for x in f.read().split())
            except OSError:
                continue  # the thread ended
            name = names.get(tid) or self.cpu.get(tid, (comm, 0.0, 0.0))[0]
            self.cpu[tid] = (name, on_cpu_ns / 1e9, runqueue_ns / 1e9)

    def machine_busy(self) -> float | None:
        """The share of all CPUs busy (every process) from this thread's start to the
        moment the work was seen done; None when it was not seen done."""
        if len(self.jiffies) < 2:
            return None
        (busy0, total0), (busy1, total1) = self.jiffies[0], self.jiffies[1]
        return (busy1 - busy0) / max(1, total1 - total0)

    def broker_cpu_s(self) -> float | None:
        """The broker's CPU seconds over the run's window (None: not known)."""
        if len(self.broker_cpu) < 2 or None in self.broker_cpu:
            return None
        start, end = self.broker_cpu
        assert start is not None and end is not None
        return end - start

    def cpu_by_thread(self) -> dict[str, list[float]]:
        """``[CPU seconds, seconds runnable but waiting for a CPU]`` by thread name over
        the run's window (from this thread's start to the work's end, as last sampled);
        librdkafka's threads (``rdk:*``) are summed by name."""
        if self.done_at is None:
            self.sample_cpu()
        out: dict[str, list[float]] = {}
        for tid, (name, on_cpu, waiting) in self.cpu.items():
            _, on_cpu0, waiting0 = self.cpu_at_start.get(tid, (name, 0.0, 0.0))
            on_cpu, waiting = on_cpu - on_cpu0, waiting - waiting0
            cpu, runqueue = out.get(name, [0.0, 0.0])
            out[name] = [round(cpu + on_cpu, 2), round(runqueue + waiting, 2)]
        return dict(sorted(out.items(), key=lambda kv: -kv[1][0]))


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def run_unifeed(args: argparse.Namespace) -> dict[str, Any]:
    options = RuntimeOptions(
        bootstrap=args.bootstrap,
        instance=args.instance,
        checkpoint_topic=args.checkpoint_topic,
        stop_at=args.stop_at,
        status_interval_s=0.0,
    )
    run = CombineRun(
        options,
        control=Target(args.control),
        surface=Target(args.surface),
        output=Target(args.output),
    )
    started = time.perf_counter()
    run.setup()
    loop = run.main
    assert isinstance(loop, RunLoop)
    readers = {r.feed: r for r in loop.reading.parts.values()}
    control, surface = readers[CONTROLSTREAM], readers[SURFACESTREAM]
    counters = run.state.counters

    def progress() -> tuple[int, int, int]:
        return control.next_offset, surface.next_offset, counters.get("out", 0)

    writer = loop
    # The run's work ends when the writer has made its last commit and returned; stopping
    # the other threads and closing their clients afterwards is not part of it.
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
        "setup_s": running - started,
        "run_s": done - running,
        "shutdown_s": finished - done,
        "consumed": {CONTROLSTREAM: control.next_offset, SURFACESTREAM: surface.next_offset},
        "out": counters.get("out", 0),
        "counters": dict(counters),
        "cpu_by_thread": reporter.cpu_by_thread(),
        "run_busy": reporter.machine_busy(),
        "run_broker_cpu_s": reporter.broker_cpu_s(),
        "stalled_s": reporter.stalled_s,
        "starved_s": None,
    }


def run_passthrough(args: argparse.Namespace) -> dict[str, Any]:
    result = passthrough(
        args.bootstrap,
        [(args.control, args.expect_control), (args.surface, args.expect_surface)],
        args.output,
    )
    control, surface = result["consumed"]
    result["consumed"] = {CONTROLSTREAM: control, SURFACESTREAM: surface}
    return result


def passthrough(bootstrap: str, topics: list[tuple[str, int]], output: str) -> dict[str, Any]:
    """The peer: one consumer a topic (every partition assigned), one ``produce`` a
    record to ``output``, no decoding, until each topic gave its expected count.
    ``consumed`` in the result lists the records read from each topic, in order."""
    config = consumer_config(bootstrap)
    # The same fetch settings as unifeed's readers.
    config.setdefault("queued.max.messages.kbytes", 16_384)
    config.setdefault("fetch.max.bytes", 16 * 1024 * 1024)
    producer_settings = producer_config(bootstrap)
    producer_settings.setdefault("queue.buffering.max.messages", 500_000)
    producer_settings.setdefault("queue.buffering.max.kbytes", 262_144)
    started = time.perf_counter()
    inputs = []
    for topic, expect in topics:
        consumer = Consumer(config)
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(partitions)])
        inputs.append([consumer, expect, 0])  # consumer, records expected, records read
    producer = Producer(producer_settings)
    produce = producer.produce
    out = 0
    # Progress as the two-feed loader reads it: the first topic, then all the others.
    reporter = Reporter(
        lambda: (inputs[0][2], sum(state[2] for state in inputs[1:]), out),
        done=lambda: all(state[2] >= state[1] for state in inputs),
    )
    reporter.start()
    running = time.perf_counter()
    deadline = running + _DEADLINE_S
    # Starved: after the first record, time from a pass that found every unfinished input
    # empty to the next pass that got a record. A CPU-bound peer has next to none; a ratio
    # against a starved peer measures whatever fed it, so the benchmark refuses to report
    # one. The wait for the first fetch is reported apart (`first_record_s`).
    starved_s = 0.0
    empty_since: float | None = None
    first_record_s: float | None = None
    try:
        while any(state[2] < state[1] for state in inputs):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"passthrough: not done after {_DEADLINE_S:g} s")
            idle = True
            for state in inputs:
                if state[2] >= state[1]:
                    continue
                messages = state[0].consume(num_messages=_READ_BATCH, timeout=0)
                records = 0
                for m in messages:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise RuntimeError(f"passthrough: {err.str()}")
                    for _attempt in range(600):  # the producer's queue full: 30 s at most
                        try:
                            produce(output, m.value(), partition=0)
                            break
                        except BufferError:
                            producer.poll(0.05)
                    else:
                        raise RuntimeError("passthrough: the producer's queue stayed full 30 s")
                    records += 1
                # The inputs are fresh topics without transactions: offsets are contiguous.
                state[2] += records
                out += records
                if records:
                    idle = False
            producer.poll(0)
            if idle:
                if empty_since is None and out:
                    empty_since = time.perf_counter()
                time.sleep(0.0005)
            else:
                if first_record_s is None:
                    first_record_s = time.perf_counter() - running
                if empty_since is not None:
                    starved_s += time.perf_counter() - empty_since
                    empty_since = None
        left = producer.flush(60)
        if left:
            raise RuntimeError(f"passthrough: {left} records not delivered after 60 s")
    finally:
        for state in inputs:
            state[0].close()
    finished = time.perf_counter()
    reporter.stop.set()
    reporter.join(5)
    return {
        "exit_code": 0,
        "setup_s": running - started,
        "run_s": finished - running,
        "shutdown_s": 0.0,
        "consumed": [state[2] for state in inputs],
        "out": out,
        "counters": {},
        "cpu_by_thread": reporter.cpu_by_thread(),
        "run_busy": reporter.machine_busy(),
        "run_broker_cpu_s": reporter.broker_cpu_s(),
        "stalled_s": reporter.stalled_s,
        "starved_s": starved_s,
        "first_record_s": first_record_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._kafka_driver")
    parser.add_argument("kind", choices=("unifeed", "passthrough"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--surface", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--instance", default="bench")
    parser.add_argument("--checkpoint-topic", default="bench.checkpoints")
    parser.add_argument("--expect-control", type=int, default=0)
    parser.add_argument("--expect-surface", type=int, default=0)
    args = parser.parse_args(argv)
    os.write(1, b"H %d\n" % os.getpid())  # the pid to watch (a profiler may sit between)
    if args.kind == "unifeed":
        if args.stop_at is None:
            parser.error("unifeed needs --stop-at")
        result = run_unifeed(args)
    else:
        result = run_passthrough(args)
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


if __name__ == "__main__":
    sys.exit(main())
