"""Runs one measured process against a broker, its inputs pre-filled or fed as it goes.

Two ways to provide the inputs:

* **pre-filled** (``prefill=True``; the local Apache Kafka, which keeps everything): the
  loader produces the whole input before the measured process starts, and nothing runs
  beside it but the broker. Both contenders read a full backlog, so neither is bounded
  by the loader.
* **fed** (the embedded broker, which keeps only 5 MB per partition, so a backlog of a
  million records cannot be loaded up front): the `Loader` runs in the test process and
  produces each input a bounded distance ahead of the measured process's readers: it
  reads their positions (next offset per input) from the ``P`` lines the driver writes
  every 5 ms, and tops each input up while less than ``budget_bytes`` of record values
  (counted uncompressed; lz4 makes them smaller on the broker) are waiting there.

The loader produces with ``produce_batch`` (no per-record timestamps, so CreateTime is the
load time; nothing in a run that starts from the earliest offset reads it), which keeps
its own CPU use low on a 2-core machine where it competes with the process under
measurement. Given the broker's process id (the Apache Kafka JVM), its CPU time and RSS
during the run are recorded apart from the measured process's.

Profiling: given a `Profiler` (pytest ``--pyspy PATH``), each measured process runs under
``py-spy record`` (raw collapsed stacks, one file per run, in ``--profile-dir`` or the
temporary directory); ``--pyspy-args`` adds options (e.g. ``--gil`` to sample only the
thread holding the GIL, or ``--idle``). Numbers measured that way are slowed by the
sampling and are not results.
"""

from __future__ import annotations

import os
import resource
import select
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Producer

from benchmarks._data import FEEDS, REPO, Chunk, FeedSource
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM
from unifeed.kafka.clients import producer_config

#: Record values waiting in an input ahead of its reader, at most, in a fed run (the
#: embedded broker keeps 5 MB a partition).
BUDGET_BYTES = 3 * 1024 * 1024
_POLL_S = 0.002
_RSS_SAMPLE_S = 0.1
#: The measured process reports its progress this often (`benchmarks._kafka_driver`).
REPORT_S = 0.005


@dataclass
class FeedState:
    topic: str
    source: FeedSource
    produced: int = 0  # records produced (= next offset the loader writes)
    produced_bytes: int = 0
    keepalives: int = 0  # of the records produced: a unifeed run writes all the others
    consumed: int = 0  # the reader's next offset, as last reported
    consumed_bytes: int = 0  # bytes of the chunks the reader has finished (a lower bound)
    marks: deque[tuple[int, int]] = field(default_factory=deque)  # (chunk end, bytes to it)
    pending: Chunk | None = None
    exhausted: bool = False
    starved_reports: int = 0  # progress reports that found the reader at the loader's end
    max_ahead_bytes: int = 0

    @property
    def ahead_bytes(self) -> int:
        return self.produced_bytes - self.consumed_bytes


@dataclass
class RunResult:
    """One measured run: the driver's own report plus what the loader saw."""

    kind: str
    messages: int  # input records read (both feeds, keepalives included)
    out: int
    loaded: int  # records the loader produced (both feeds)
    loaded_keepalives: int
    setup_s: float
    run_s: float
    shutdown_s: float  # after the work: stopping threads, closing clients (not in run_s)
    peak_rss_mb: float
    cpu_user_s: float
    cpu_sys_s: float
    cpu_by_thread: dict[str, list[float]]  # name: [CPU s, runnable-waiting-for-a-CPU s]
    counters: dict[str, int]
    rss_samples: list[tuple[float, int, float]]  # (s since start, records read, RSS MB)
    starved_reports: dict[str, int]
    #: Seconds between two progress reports in which the process read nothing
    #: (`benchmarks._kafka_driver.Reporter`), and for the passthrough the seconds it found
    #: every input empty (None for unifeed, whose readers do not count it).
    stalled_s: float
    starved_s: float | None
    first_record_s: float | None  # the passthrough's wait for its first record
    max_ahead_mb: dict[str, float]
    wall_s: float
    loader_cpu_s: float  # the loader's own thread (Python: produce_batch, bookkeeping)
    test_process_cpu_s: float  # the whole test process: the loader, librdkafka, the broker
    machine_busy: float  # share of all CPUs busy during the run's window (every process)
    prefill_s: float = 0.0  # loading the whole input before the run (pre-filled runs)
    broker_cpu_s: float | None = None  # the broker JVM's CPU during the run
    broker_peak_rss_mb: float | None = None  # the broker JVM's largest RSS sample

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.run_s

    @property
    def starved_share(self) -> float:
        """Share of the run the process waited for input: its own count of empty passes
        (the passthrough) or, when the loader feeds it, the reports that found it at the
        loader's end (5 ms each), whichever is larger."""
        loader_bound = max(self.starved_reports.values(), default=0) * REPORT_S
        return max(self.starved_s or 0.0, loader_bound) / self.run_s

    def summary(self) -> dict[str, Any]:
        """What goes into pytest-benchmark's ``extra_info`` (small, JSON)."""
        return {
            "kind": self.kind,
            "messages": self.messages,
            "out": self.out,
            "loaded": self.loaded,
            "loaded_keepalives": self.loaded_keepalives,
            "late": self.counters.get("late", 0),
            "dead_letters": self.counters.get("dead_letters", 0),
            "commits": self.counters.get("commits", 0),
            "msgs_per_s": round(self.msgs_per_s),
            "run_s": round(self.run_s, 3),
            "setup_s": round(self.setup_s, 3),
            "shutdown_s": round(self.shutdown_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "cpu_s": round(self.cpu_user_s + self.cpu_sys_s, 2),
            "cpu_per_msg_us": round((self.cpu_user_s + self.cpu_sys_s) / self.messages * 1e6, 2),
            "threads_cpu_and_runqueue_s": self.cpu_by_thread,
            "starved_reports": self.starved_reports,
            "stalled_s": round(self.stalled_s, 3),
            "starved_s": None if self.starved_s is None else round(self.starved_s, 3),
            "first_record_s": (
                None if self.first_record_s is None else round(self.first_record_s, 3)
            ),
            "max_ahead_mb": self.max_ahead_mb,
            "loader_cpu_s": round(self.loader_cpu_s, 2),
            "loader_and_broker_cpu_s": round(self.test_process_cpu_s, 2),
            "machine_busy": round(self.machine_busy, 3),
            "prefill_s": round(self.prefill_s, 2),
            "broker_cpu_s": None if self.broker_cpu_s is None else round(self.broker_cpu_s, 2),
            "broker_peak_rss_mb": self.broker_peak_rss_mb,
        }


class Loader:
    """Produces the inputs of one run, keeping each at most ``budget_bytes`` ahead."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, str],
        sources: dict[str, FeedSource],
        budget_bytes: int = BUDGET_BYTES,
    ) -> None:
        config = producer_config(bootstrap)
        config.setdefault("queue.buffering.max.kbytes", 65_536)
        self.producer = Producer(config)
        self.budget = budget_bytes
        self.feeds = {feed: FeedState(topics[feed], sources[feed]) for feed in FEEDS}

    def top_up(self) -> None:
        for st in self.feeds.values():
            while not st.exhausted:
                chunk = st.pending if st.pending is not None else st.source.next_chunk()
                if chunk is None:
                    st.exhausted = True
                    break
                if st.ahead_bytes + chunk.size > self.budget and st.produced > st.consumed:
                    st.pending = chunk
                    break
                st.pending = None
                self._produce(st.topic, chunk.records)
                st.produced += len(chunk.records)
                st.produced_bytes += chunk.size
                st.keepalives += chunk.keepalives
                st.marks.append((st.produced, st.produced_bytes))
                st.max_ahead_bytes = max(st.max_ahead_bytes, st.ahead_bytes)
        self.producer.poll(0)

    def _produce(self, topic: str, records: list[dict[str, bytes]]) -> None:
        for _attempt in range(1000):
            queued = self.producer.produce_batch(topic, records, partition=0)
            if queued == len(records):
                return
            failed = [r for r in records if "_error" in r]
            if not failed:
                return
            records = [{"value": r["value"]} for r in failed]
            self.producer.poll(0.01)
        raise RuntimeError(f"loader: cannot queue records for {topic}")

    def reader_at(self, feed: str, offset: int) -> None:
        st = self.feeds[feed]
        st.consumed = offset
        while st.marks and st.marks[0][0] <= offset:
            st.consumed_bytes = st.marks.popleft()[1]
        if offset >= st.produced and not st.exhausted:
            st.starved_reports += 1

    def total(self) -> int:
        return sum(st.source.total for st in self.feeds.values())

    def close(self) -> None:
        self.producer.flush(30)


def _cpu_jiffies() -> tuple[int, int]:
    """``(busy, total)`` jiffies of all CPUs since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: The broker's process id, for the measured process to sample its CPU over the run's
#: window (`benchmarks._kafka_driver.Reporter`).
BROKER_PID_ENV = "UNIFEED_BENCH_BROKER_PID"


def _process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of another process so far (``/proc/PID/stat``)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_measured(
    kind: str,
    bootstrap: str,
    sources: dict[str, FeedSource],
    *,
    timeout_s: float,
    budget_bytes: int = BUDGET_BYTES,
    profiler: Profiler | None = None,
    prefill: bool = False,
    broker_pid: int | None = None,
) -> RunResult:
    """Load fresh topics and run ``kind`` (``unifeed`` or ``passthrough``) over them:
    the whole input first (``prefill``), or a first budget and the rest as the run goes."""
    run_id = uuid.uuid4().hex[:10]
    topics = {feed: f"bench-{run_id}-{feed}" for feed in FEEDS}
    loader = Loader(bootstrap, topics, sources, 1 << 62 if prefill else budget_bytes)
    prefill_started = time.monotonic()
    loader.top_up()  # the topics exist, and hold a first budget, before the process starts
    remaining = loader.producer.flush(timeout_s)
    if remaining:
        raise RuntimeError(f"loader: {remaining} records not delivered in {timeout_s:g} s")
    prefill_s = time.monotonic() - prefill_started if prefill else 0.0
    cmd = [
        sys.executable,
        "-m",
        "benchmarks._kafka_driver",
        kind,
        "--bootstrap",
        bootstrap,
        "--control",
        topics[CONTROLSTREAM],
        "--surface",
        topics[SURFACESTREAM],
        "--output",
        f"bench-{run_id}-out",
    ]
    if kind == "unifeed":
        cmd += [
            "--stop-at",
            str(sources[CONTROLSTREAM].stop_at),
            "--instance",
            f"bench-{run_id}",
            "--checkpoint-topic",
            f"bench-{run_id}-checkpoints",
        ]
    else:
        cmd += [
            "--expect-control",
            str(sources[CONTROLSTREAM].total),
            "--expect-surface",
            str(sources[SURFACESTREAM].total),
        ]
    if profiler is not None:
        cmd = [*profiler.command(kind, run_id), *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if broker_pid is not None:
        env[BROKER_PID_ENV] = str(broker_pid)
    with tempfile.TemporaryFile() as stderr:
        busy0, total0 = _cpu_jiffies()
        cpu0 = _self_cpu_s()
        broker_cpu0 = _process_cpu_s(broker_pid)
        loader0 = time.thread_time()
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            result, samples, broker_rss = serve_run(proc, loader, started, timeout_s, broker_pid)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            loader.close()
        wall = time.monotonic() - started
        loader_cpu = time.thread_time() - loader0
        process_cpu = _self_cpu_s() - cpu0
        busy1, total1 = _cpu_jiffies()
        broker_cpu1 = _process_cpu_s(broker_pid)
        if proc.returncode != 0 or result is None:
            stderr.seek(0)
            tail = stderr.read()[-4000:].decode(errors="replace")
            raise RuntimeError(f"{kind} run failed (exit code {proc.returncode}):\n{tail}")
    consumed = result["consumed"]
    return RunResult(
        kind=kind,
        messages=consumed[CONTROLSTREAM] + consumed[SURFACESTREAM],
        out=result["out"],
        loaded=sum(st.produced for st in loader.feeds.values()),
        loaded_keepalives=sum(st.keepalives for st in loader.feeds.values()),
        setup_s=result["setup_s"],
        run_s=result["run_s"],
        shutdown_s=result["shutdown_s"],
        peak_rss_mb=result["peak_rss_kb"] / 1024,
        cpu_user_s=result["cpu_user_s"],
        cpu_sys_s=result["cpu_sys_s"],
        cpu_by_thread=result["cpu_by_thread"],
        counters=result["counters"],
        rss_samples=samples,
        starved_reports={f: st.starved_reports for f, st in loader.feeds.items()},
        stalled_s=result["stalled_s"],
        starved_s=result["starved_s"],
        first_record_s=result.get("first_record_s"),
        max_ahead_mb={f: round(st.max_ahead_bytes / 2**20, 2) for f, st in loader.feeds.items()},
        wall_s=wall,
        loader_cpu_s=loader_cpu,
        test_process_cpu_s=process_cpu,
        # The run's window when the process saw it end (its setup not counted), else the
        # process's whole life.
        machine_busy=result.get("run_busy") or (busy1 - busy0) / max(1, total1 - total0),
        prefill_s=prefill_s,
        # Over the run's window as the process measured it, else its whole life.
        broker_cpu_s=(
            result["run_broker_cpu_s"]
            if result.get("run_broker_cpu_s") is not None
            else None
            if broker_cpu0 is None or broker_cpu1 is None
            else broker_cpu1 - broker_cpu0
        ),
        broker_peak_rss_mb=max(broker_rss) if broker_rss else None,
    )


@dataclass(frozen=True)
class Profiler:
    """py-spy: its binary, extra ``record`` options, where the profiles go."""

    binary: str
    options: tuple[str, ...]
    directory: Path

    def command(self, kind: str, run_id: str) -> list[str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / f"pyspy-{kind}-{run_id}.txt"
        base = ["--threads", "--nonblocking", "--rate", "200", "--format", "raw"]
        return [self.binary, "record", *base, "--output", str(out), *self.options, "--"]


def serve_run(
    proc: subprocess.Popen[bytes],
    loader: Loader | None,
    started: float,
    timeout_s: float,
    broker_pid: int | None = None,
) -> tuple[dict[str, Any] | None, list[tuple[float, int, float]], list[float]]:
    """Feed the process until it closes its stdout (``loader`` None: its inputs are all
    there already); its result, its RSS samples and the broker's (when its process id is
    given)."""
    broker_rss: list[float] = []
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = started + timeout_s
    buffer = b""
    result: dict[str, Any] | None = None
    samples: list[tuple[float, int, float]] = []
    read_so_far = 0
    pid = proc.pid
    next_sample = started
    while True:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"the measured run is not finished after {timeout_s:g} s")
        ready, _, _ = select.select([fd], [], [], _POLL_S)
        if ready:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"H "):
                    pid = int(line[2:])
                elif line.startswith(b"P "):
                    control, surface, _out = (int(x) for x in line.split()[1:4])
                    if loader is not None:
                        loader.reader_at(CONTROLSTREAM, control)
                        loader.reader_at(SURFACESTREAM, surface)
                    read_so_far = control + surface
                elif line.startswith(b"R "):
                    result = msgspec.json.decode(line[2:])
        if loader is not None:
            loader.top_up()
        if now >= next_sample:
            rss = _rss_mb(pid)
            if rss is not None:
                samples.append((round(now - started, 3), read_so_far, round(rss, 1)))
            jvm = None if broker_pid is None else _rss_mb(broker_pid)
            if jvm is not None:
                broker_rss.append(round(jvm, 1))
            next_sample = now + _RSS_SAMPLE_S
    return result, samples, broker_rss
