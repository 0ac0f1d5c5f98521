"""``unifeed demo``: the whole pipeline on the embedded broker, with an outage, verified.

What it does, in well under a minute with the defaults:

1. starts the embedded broker in a child process (``unifeed broker``), so that the
   real commands can connect to it like to any Kafka cluster;
2. simulates traffic (`unifeed.sim.traffic`) and plays it into ``controlstream`` and
   ``surfacestream`` **as real time, time-compressed**: simulated time is squeezed by
   ``--speed`` into wall time starting now (``pitr' = t0 + (pitr - t0) / speed``, and
   ``clock`` likewise), and each message is produced when the wall clock reaches its
   new ``pitr``. So ``pitr`` stays at the wall clock, and ``combine`` sees a live feed
   (real-time mode), while eight simulated minutes pass in thirty seconds;
3. runs ``unifeed mappings`` and ``unifeed combine --strict-order`` as subprocesses,
   exactly as a user would (``python -m unifeed ...``);
4. kills ``combine`` with SIGKILL part way through (an outage) while the traffic keeps
   coming, restarts it, and lets it catch up from its checkpoint: the backlog is older
   than the real-time threshold (5 s here), so it is processed in catch-up mode;
5. with ``--serve``, starts ``unifeed serve`` on the unified topic as soon as it has
   records and prints the live map's URL: the map shows the traffic live, through the
   outage and the catch-up, and stays up after the verdict until Ctrl-C;
6. ends the traffic with keepalives past ``--stop-at``, so ``combine`` finishes by
   itself, then checks the output: ``unifeed dump`` of the output topic must equal,
   byte for byte, what the file pipeline (`unify_lines`) makes of exactly the messages
   that were loaded - ordered, complete, nothing twice; every annotated ground position
   carries at least its flight's access; ``dump --audience public`` shows nothing
   restricted or blocked (the checks: `unifeed.demo.verify`).

Why the live output can be compared byte for byte: with ``--strict-order``, every feed
is required in real time as well as in catch-up, so ``combine`` waits for
surfacestream's next message or keepalive before emitting anything after it. The
output is then always the stable merge by ``(pitr, feed)``, the file pipeline's order,
whatever the timing of threads, the outage, or the mode. Without it, a surface message
that arrives after a later control message is emitted late (and counted) instead.

The progress display on stderr (one line redrawn in place on a terminal, plain lines
otherwise) shows the traffic rates and ``combine``'s own status lines: mode, output
rate, lag per feed, queue depths. The summary goes to stdout; the exit code is 0 only if
every check passes. All sizes stay within the embedded broker's 5 MB per partition.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Final

from unifeed.core.errors import ConfigError, KafkaRuntimeError, UnifeedError
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM
from unifeed.core.unify import unify_lines
from unifeed.demo.commands import (
    STOP_S,
    CombineStatus,
    Command,
    high_watermark,
    run_cli,
    serve_url,
)
from unifeed.demo.traffic import (
    TOPICS,
    TRAILING_KEEPALIVES,
    Traffic,
    TrafficPlayer,
    check_size,
    compress_traffic,
    now_ms,
    simulate_traffic,
)
from unifeed.demo.verify import AccessReport, Verdict, verify_access, verify_audience, verify_output
from unifeed.kafka.embedded import spawn_broker_process
from unifeed.kafka.foreground import stop_signals

__all__ = ["DemoOptions", "run_and_report", "run_demo"]

MAPPING_TOPIC: Final = "mappingstream"
OUTPUT_TOPIC: Final = "unified"
COMBINE_INSTANCE: Final = "demo-combine"
MAPPINGS_INSTANCE: Final = "demo-mappings"

_TICK_S: Final = 0.25
_STATUS_INTERVAL_S: Final = 0.2
_SUBPROCESS_START_S: Final = 30.0


# --- options ---------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    """What `run_demo` plays. ``outage_s`` None picks one that shows a catch-up."""

    seed: int = 1
    minutes: float = 8.0
    speed: float = 16.0
    airports: int = 3
    rate: float = 10.0
    outage_s: float | None = None
    realtime_threshold_ms: int = 5_000
    keep_broker: bool = False
    #: Port for ``unifeed serve`` (the live map) on the output; None: no serve.
    serve_port: int | None = None

    @property
    def playback_s(self) -> float:
        """Wall-clock seconds the traffic takes to play."""
        return self.minutes * 60 / self.speed

    def check(self) -> None:
        if not self.minutes > 0:
            raise ConfigError(f"--minutes must be > 0, got {self.minutes:g}")
        if not self.speed > 0:
            raise ConfigError(f"--speed must be > 0, got {self.speed:g}")
        if self.playback_s > 600:
            raise ConfigError(
                f"--minutes {self.minutes:g} at --speed {self.speed:g} plays for "
                f"{self.playback_s:.0f} s; the demo plays at most 600 s (raise --speed)"
            )
        if self.outage_s is not None and not 0 <= self.outage_s < self.playback_s:
            raise ConfigError(
                f"--outage must be between 0 and the playback time "
                f"({self.playback_s:.1f} s), got {self.outage_s:g}"
            )
        if self.realtime_threshold_ms < 1000:
            raise ConfigError("--realtime-threshold must be at least 1s")
        if self.serve_port is not None:
            check_serve(self.serve_port)

    def serve_stale(self) -> str:
        """serve's --stale: four simulated minutes, as wall (= feed) time."""
        return f"{max(5000, round(240_000 / self.speed))}ms"

    def outage(self) -> float:
        """The outage length: long enough that the backlog is older than the threshold."""
        if self.outage_s is not None:
            return self.outage_s
        wanted = max(self.realtime_threshold_ms / 1000 + 3.0, 0.25 * self.playback_s)
        return min(wanted, 0.5 * self.playback_s)


def check_serve(port: int) -> None:
    """Before anything starts: serve's packages are installed and the port is free (it
    can still be taken in between; serve then says so and the demo fails)."""
    import importlib.util
    import socket

    if not 0 <= port <= 65535:
        raise ConfigError(f"--serve-port must be within 0..65535, got {port}")
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"--serve needs {', '.join(missing)}: pip install 'unifeed[serve]'"
        )
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise ConfigError(
                    f"--serve-port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
                    "give another port, or 0 for a free one"
                ) from None


# --- display ---------------------------------------------------------------


class Display:
    """Progress on stderr: one line redrawn in place on a terminal, else a line every 2 s
    and one whenever the state (``key``) changes, so that no phase goes unseen."""

    def __init__(self, stream: IO[str], started: float) -> None:
        self.stream = stream
        self.started = started
        self.tty = stream.isatty() and os.environ.get("TERM") != "dumb"
        self.last_plain = 0.0
        self.last_key = ""
        self.current = ""

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.started:5.1f}s]"

    def progress(self, text: str, key: str = "") -> None:
        line = f"demo {self._stamp()} {text}"
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns
            self.current = line[: max(width - 1, 20)]
            self.stream.write("\r\x1b[2K" + self.current)
            self.stream.flush()
        elif key != self.last_key or time.monotonic() - self.last_plain >= 2.0:
            self.last_key = key
            self.last_plain = time.monotonic()
            self.stream.write(line + "\n")
            self.stream.flush()

    def event(self, text: str) -> None:
        line = f"demo {self._stamp()} {text}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + "\n" + self.current)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.current:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self.current = ""


_SHORT: Final = {CONTROLSTREAM: "ctl", SURFACESTREAM: "srf", "mappingstream": "map"}


def _fmt_lag(seconds: float) -> str:
    return f"{seconds:.1f}s" if abs(seconds) < 120 else f"{seconds / 60:.1f}m"


# --- the run ---------------------------------------------------------------


@dataclass
class DemoReport:
    """What happened, for the summary."""

    loaded: dict[str, int] = field(default_factory=dict)
    mappingstream: int = 0
    output: int = 0
    expected: int = 0
    late: int = 0
    dead_letters: int = 0
    outage_s: float = 0.0
    backlog: int = 0
    catchup_s: float | None = None
    catchup_until_end: bool = False
    catchup_mode_seen: bool = False
    access: AccessReport = field(default_factory=AccessReport)
    verdicts: list[Verdict] = field(default_factory=list)
    duration_s: float = 0.0
    bootstrap: str = ""
    broker_pid: int | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.verdicts) and all(v.ok for v in self.verdicts)


class _Run:
    def __init__(self, options: DemoOptions, out: IO[str], err: IO[str]) -> None:
        self.options = options
        self.out = out
        self.started = time.monotonic()
        self.display = Display(err, self.started)
        self.report = DemoReport()
        self.stop = threading.Event()
        self.broker: subprocess.Popen[bytes] | None = None
        self.player: TrafficPlayer | None = None
        self.mappings: Command | None = None
        self.combines: list[Command] = []
        self.serve: Command | None = None
        self.serve_url: str | None = None
        self.serve_dir: str | None = None
        self.phase = "starting"
        self.bootstrap = ""

    # orchestration ---------------------------------------------------------

    def execute(self) -> DemoReport:
        o = self.options
        budget = o.playback_s + 90.0
        deadline = self.started + budget
        base = now_ms()
        simulated = simulate_traffic(
            seed=o.seed, minutes=o.minutes, airports=o.airports, rate=o.rate, start_ms=base
        )
        check_size(simulated)  # before anything starts: a usage error, exit code 2
        try:
            self.display.event("starting the embedded broker (unifeed broker)")
            self.broker, self.bootstrap = spawn_broker_process(timeout_s=_SUBPROCESS_START_S)
            self.report.broker_pid = self.broker.pid
            self.report.bootstrap = self.bootstrap
            t0 = now_ms() + 300
            traffic = compress_traffic(simulated, base, t0, o.speed)
            del simulated
            self.display.event(
                f"broker at {self.bootstrap}; playing {o.minutes:g} simulated minutes at "
                f"{o.speed:g}x ({o.playback_s:.1f} s): "
                f"{len(traffic.events) - 2 * TRAILING_KEEPALIVES:,} messages, pitr = wall clock"
            )
            self.player = TrafficPlayer(self.bootstrap, traffic, self.stop)
            self.player.start()
            self._wait_for(
                lambda: all(high_watermark(self.bootstrap, t) > 0 for t in TOPICS.values()),
                "traffic in both input topics",
                15.0,
            )
            self.mappings = Command(
                "mappings",
                [
                    "mappings",
                    # Partition 0: the demo writes every feed there (the embedded broker
                    # gives each topic 4; empty ones would hold the live run back for the
                    # end-of-log grace at each start).
                    "--control", f"kafka:{TOPICS[CONTROLSTREAM]}:0",
                    "--output", f"kafka:{MAPPING_TOPIC}",
                    "--bootstrap-servers", self.bootstrap,
                    "--instance", MAPPINGS_INSTANCE,
                ],
            )  # fmt: skip
            self.display.event("started unifeed mappings (controlstream -> mappingstream)")
            self._wait_for(
                lambda: high_watermark(self.bootstrap, MAPPING_TOPIC) > 0,
                "the first mappingstream records",
                _SUBPROCESS_START_S,
                self.mappings,
            )
            combine_args = self._combine_args(traffic.end_pitr)
            self.combines.append(Command("combine", combine_args))
            self.display.event("started unifeed combine --strict-order (output: kafka:unified)")
            if o.serve_port is not None:
                self._start_serve()
            playback_start = time.monotonic() - (now_ms() - t0) / 1000
            outage = o.outage()
            if outage > 0:
                # The outage starts once combine has shown itself at work (its first
                # progress line), so the display always has a live phase before it.
                running = self.combines[-1]
                self._wait_for(
                    lambda: running.status is not None,
                    "progress line from combine",
                    _SUBPROCESS_START_S,
                    running,
                )
                kill_at = max(playback_start + 0.4 * o.playback_s, time.monotonic() + 1.0)
                self._watch_until(kill_at, deadline)
                backlog_from = dict(self.player.produced)
                self.combines[-1].kill()
                killed = time.monotonic()
                self.phase = "OUTAGE"
                self.display.event(
                    f"SIGKILL combine: outage of {outage:.1f} s while traffic keeps coming"
                )
                self._watch_until(killed + outage, deadline)
                self.report.outage_s = time.monotonic() - killed
                self.report.backlog = sum(self.player.produced.values()) - sum(
                    backlog_from.values()
                )
                self.combines.append(Command("combine", combine_args))
                self.phase = "catch-up"
                self.display.event(
                    f"restarted combine after {self.report.outage_s:.1f} s: "
                    f"{self.report.backlog:,} messages to catch up from its checkpoint"
                )
            self._watch_until_traffic_ends(deadline)
            self.phase = "draining"
            self.display.event("traffic over (keepalives past --stop-at sent); waiting for combine")
            self._wait_for_combine(deadline)
            self.phase = "verifying"
            if self.mappings is not None:
                self.mappings.stop()
            self.display.event("combine finished; verifying the output")
            self._verify(traffic)
        except UnifeedError as exc:
            self.report.failure = str(exc)
        finally:
            self.display.close()
            self._shut_down()
        self.report.duration_s = time.monotonic() - self.started
        return self.report

    def _combine_args(self, end_pitr: int) -> list[str]:
        return [
            "combine",
            # Partition 0, where the demo writes (see the mappings command).
            "--control", f"kafka:{TOPICS[CONTROLSTREAM]}:0",
            "--surface", f"kafka:{TOPICS[SURFACESTREAM]}:0",
            "--mapping", f"kafka:{MAPPING_TOPIC}",
            "--output", f"kafka:{OUTPUT_TOPIC}",
            "--bootstrap-servers", self.bootstrap,
            "--instance", COMBINE_INSTANCE,
            "--strict-order",
            "--realtime-threshold", f"{self.options.realtime_threshold_ms}ms",
            "--stop-at", str(end_pitr),
            "--status-interval", f"{_STATUS_INTERVAL_S}s",
        ]  # fmt: skip

    def _start_serve(self) -> None:
        """``unifeed serve`` on the output topic once it has records (serve starts by
        rebuilding state from the end of the topic), then its URL."""
        o = self.options
        assert o.serve_port is not None
        self._wait_for(
            lambda: high_watermark(self.bootstrap, OUTPUT_TOPIC) > 0,
            f"records in {OUTPUT_TOPIC}",
            _SUBPROCESS_START_S,
            self.combines[-1],
        )
        self.serve_dir = tempfile.mkdtemp(prefix="unifeed-demo-serve-")
        self.serve = Command(
            "serve",
            [
                "serve",
                "--input", f"kafka:{OUTPUT_TOPIC}",
                "--bootstrap-servers", self.bootstrap,
                "--port", str(o.serve_port),
                "--state-dir", self.serve_dir,
                "--stale", o.serve_stale(),
                "--push-interval", "500ms",
            ],
        )  # fmt: skip
        serve = self.serve
        self._wait_for(lambda: serve_url(serve) is not None, "URL from serve", _SUBPROCESS_START_S, serve)
        self.serve_url = serve_url(serve)
        self.display.event(f"live map: {self.serve_url} (unifeed serve on kafka:{OUTPUT_TOPIC})")

    def _alive_or_fail(self) -> None:
        if self.serve is not None and not self.serve.running():
            raise KafkaRuntimeError(self.serve.explain())
        if self.player is not None and self.player.error is not None:
            raise KafkaRuntimeError(f"playing the traffic failed: {self.player.error}")
        if self.mappings is not None and not self.mappings.running():
            raise KafkaRuntimeError(self.mappings.explain())
        if self.combines and not self.combines[-1].running() and self.phase != "OUTAGE":
            code = self.combines[-1].process.returncode
            if code != 0:
                raise KafkaRuntimeError(self.combines[-1].explain())

    def _wait_for(
        self, ready: Callable[[], bool], what: str, timeout_s: float, command: Command | None = None
    ) -> None:
        limit = time.monotonic() + timeout_s
        while time.monotonic() < limit:
            self._alive_or_fail()
            if ready():
                return
            if command is not None and not command.running():
                raise KafkaRuntimeError(command.explain())
            self._tick()
        raise KafkaRuntimeError(f"no {what} within {timeout_s:g} s")

    def _watch_until(self, until: float, deadline: float) -> None:
        for _ in range(int((until - time.monotonic()) / _TICK_S) + 2):
            if time.monotonic() >= until:
                return
            if time.monotonic() > deadline:
                raise KafkaRuntimeError("the demo ran out of time")
            self._alive_or_fail()
            self._tick(min(_TICK_S, max(until - time.monotonic(), 0)))

    def _watch_until_traffic_ends(self, deadline: float) -> None:
        player = self.player
        assert player is not None
        while not player.finished.is_set():
            if time.monotonic() > deadline:
                raise KafkaRuntimeError("the traffic did not finish playing in time")
            self._alive_or_fail()
            self._tick()
        if player.error is not None:
            raise KafkaRuntimeError(f"playing the traffic failed: {player.error}")

    def _wait_for_combine(self, deadline: float) -> None:
        combine = self.combines[-1]
        limit = min(deadline, time.monotonic() + 60.0)
        while time.monotonic() < limit:
            if self.mappings is not None and not self.mappings.running():
                raise KafkaRuntimeError(self.mappings.explain())
            code = combine.wait(_TICK_S)
            if code is not None:
                if code != 0:
                    raise KafkaRuntimeError(combine.explain())
                self._note_catchup(final=True)
                return
            self._tick(0)
        raise KafkaRuntimeError(
            "combine did not finish within 60 s of the end of the traffic "
            "(it should stop at --stop-at)"
        )

    def _tick(self, sleep_s: float = _TICK_S) -> None:
        if sleep_s > 0:
            self.stop.wait(sleep_s)
        self._note_catchup()
        text = self._progress_text()
        self.display.progress(text, f"{self.phase} {self._combine_status() is not None}")
        for command in [*self.combines, *([self.mappings] if self.mappings else [])]:
            while command.warnings:
                self.display.event(f"{command.name}: {command.warnings.popleft()}")

    def _note_catchup(self, final: bool = False) -> None:
        """Time from the restart until combine is back in real time with a small lag."""
        if len(self.combines) < 2 or self.report.catchup_s is not None:
            return
        restarted = self.combines[-1]
        threshold = self.options.realtime_threshold_ms / 1000
        for status in restarted.statuses:
            if status.mode == "catchup":
                self.report.catchup_mode_seen = True
            if (
                status.mode == "realtime"
                and status.lag_s
                and max(status.lag_s.values()) <= threshold
            ):
                self.report.catchup_s = status.at - restarted.started
                self.phase = "live"
                self.display.event(
                    f"combine caught up {self.report.catchup_s:.1f} s after its restart"
                )
                return
        if final:
            self.report.catchup_s = time.monotonic() - restarted.started
            self.report.catchup_until_end = True

    def _combine_status(self) -> CombineStatus | None:
        """The latest combine's last progress report, None before its first."""
        return self.combines[-1].status if self.combines else None

    def _progress_text(self) -> str:
        status = self._combine_status()
        if self.phase == "starting" and status is not None:
            self.phase = "live"
        parts = [f"{self.phase:<8}"]
        if self.player is not None:
            p = self.player.produced
            parts.append(f"in ctl {p[CONTROLSTREAM]:,} srf {p[SURFACESTREAM]:,}")
            if self.player.behind_ms > 500:
                parts.append(f"(player {self.player.behind_ms / 1000:.1f}s behind)")
        if not self.combines or self.phase == "OUTAGE":
            parts.append("| combine down" if self.phase == "OUTAGE" else "| combine not started")
        elif status is None:
            parts.append("| combine starting")
        else:
            lags = " ".join(
                f"{_SHORT.get(feed, feed)} {_fmt_lag(lag)}"
                for feed, lag in sorted(status.lag_s.items())
            )
            queues = " ".join(f"{k} {v}" for k, v in sorted(status.queues.items()))
            parts.append(
                f"| combine {status.mode} out {status.out:,} ({status.rate:,.0f}/s) "
                f"lag {lags or '-'} | queues {queues or '-'} | late {status.late} "
                f"dead {status.dead}"
            )
        return " ".join(parts)

    # verification ----------------------------------------------------------

    def _verify(self, traffic: Traffic) -> None:
        control = traffic.lines(CONTROLSTREAM)
        surface = traffic.lines(SURFACESTREAM)
        self.report.loaded = {
            CONTROLSTREAM: len(control),
            SURFACESTREAM: len(surface),
        }
        expected, _unifier = unify_lines(control, surface)
        self.report.expected = len(expected)
        dumped = run_cli(["dump", f"kafka:{OUTPUT_TOPIC}", "--bootstrap-servers", self.bootstrap])
        if dumped.returncode != 0:
            raise KafkaRuntimeError(f"unifeed dump failed: {dumped.stderr.decode().strip()}")
        got = dumped.stdout.splitlines()
        self.report.output = len(got)
        shown = run_cli(
            [
                "dump", f"kafka:{OUTPUT_TOPIC}", "--audience", "public",
                "--bootstrap-servers", self.bootstrap,
            ]
        )  # fmt: skip
        if shown.returncode != 0:
            raise KafkaRuntimeError(f"unifeed dump failed: {shown.stderr.decode().strip()}")
        self.report.mappingstream = high_watermark(self.bootstrap, MAPPING_TOPIC)
        self.report.dead_letters = high_watermark(self.bootstrap, f"{OUTPUT_TOPIC}.dead-letter")
        self.report.late = sum(c.statuses[-1].late for c in self.combines if c.statuses)
        access = verify_access(got)
        self.report.access = access
        verdicts = verify_output(got, expected)
        assert access.verdict is not None
        verdicts.append(access.verdict)
        verdicts.append(verify_audience(got, shown.stdout.splitlines()))
        self.report.verdicts = verdicts

    # shutting down ---------------------------------------------------------

    def _shut_down(self) -> None:
        self.stop.set()
        if self.player is not None:
            self.player.join(timeout=STOP_S)
        for command in self.combines:
            if command.running():
                command.kill()
        if self.mappings is not None and self.mappings.running():
            self.mappings.stop()
        if self.serving():
            return  # serve and the broker stay up until `close`
        self.close()

    def serving(self) -> bool:
        """Whether the live map is up (it stays up after the verdict, until `close`)."""
        return self.serve is not None and self.serve.running()

    def close(self) -> None:
        """Stop serve, and the broker unless it is to be kept."""
        if self.serve is not None:
            self.serve.stop()
        if self.serve_dir is not None:
            shutil.rmtree(self.serve_dir, ignore_errors=True)
        broker = self.broker
        if broker is None or broker.poll() is not None:
            return
        if self.options.keep_broker and self.report.bootstrap:
            return
        broker.terminate()
        try:
            broker.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(timeout=STOP_S)


def run_demo(
    options: DemoOptions, out: IO[str] | None = None, err: IO[str] | None = None
) -> DemoReport:
    """Run the demo; the report (see the module docstring). Bounded in time."""
    options.check()
    return _Run(
        options, sys.stdout if out is None else out, sys.stderr if err is None else err
    ).execute()


# --- summary ---------------------------------------------------------------


def format_summary(options: DemoOptions, report: DemoReport, broker_pid: int | None = None) -> str:
    """The summary table and the verification verdicts."""
    ctl = report.loaded.get(CONTROLSTREAM, 0)
    srf = report.loaded.get(SURFACESTREAM, 0)
    a = report.access
    share = f"{100 * a.annotated / a.ground_positions:.1f}%" if a.ground_positions else "n/a"
    threshold = options.realtime_threshold_ms / 1000
    if report.catchup_s is None:
        catchup = "n/a"
    elif report.catchup_until_end:
        catchup = f"{report.catchup_s:.1f} s from the restart to the end (traffic ended first)"
    else:
        catchup = (
            f"{report.catchup_s:.1f} s from the restart (process start included) to real "
            f"time with every lag under {threshold:g} s"
        )
    if report.catchup_mode_seen:
        catchup += "; catch-up mode seen"
    rows = [
        ("traffic", f"{options.minutes:g} simulated minutes at {options.speed:g}x, "
                    f"{options.airports} airports, seed {options.seed}"),
        ("messages in", f"controlstream {ctl:,}, surfacestream {srf:,} "
                        f"(mappingstream {report.mappingstream:,})"),
        ("messages out", f"{report.output:,} (file pipeline: {report.expected:,})"),
        ("annotated", f"{a.annotated:,} of {a.ground_positions:,} ground positions ({share})"),
        ("late", f"{report.late} (--strict-order)"),
        ("dead letters", f"{report.dead_letters}"),
        ("outage", f"{report.outage_s:.1f} s (combine SIGKILLed), {report.backlog:,} messages "
                   "arrived meanwhile" if report.outage_s else "none"),
        ("catch-up", catchup),
        ("duration", f"{report.duration_s:.1f} s"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = ["", "unifeed demo summary"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines += ["", "verification"]
    for v in report.verdicts:
        lines.append(f"  {'PASS' if v.ok else 'FAIL'}  {v.name}: {v.detail}")
    if report.failure is not None:
        lines.append(f"  FAIL  the demo did not complete: {report.failure}")
    lines.append("")
    lines.append(
        "verdict: " + ("PASS - live output equals the file pipeline's" if report.ok else "FAIL")
    )
    if options.keep_broker and report.bootstrap:
        pid = "" if broker_pid is None else f" (pid {broker_pid})"
        lines += [
            "",
            f"The broker is still running at {report.bootstrap}{pid}. Look at the output:",
            f"  unifeed dump kafka:{OUTPUT_TOPIC} --bootstrap-servers {report.bootstrap}",
            f"  unifeed dump kafka:{OUTPUT_TOPIC} --audience public "
            f"--bootstrap-servers {report.bootstrap}",
            f"  unifeed checkpoint show --instance {COMBINE_INSTANCE} "
            f"--bootstrap-servers {report.bootstrap}",
            f"  unifeed serve --input kafka:{OUTPUT_TOPIC} --bootstrap-servers {report.bootstrap}",
            "Stop it with " + (f"kill {broker_pid}" if broker_pid else "kill") + ".",
        ]
    return "\n".join(lines) + "\n"


class _Interrupt:
    """The demo's handler of Ctrl-C and SIGTERM (`stop_signals`): the first raises
    KeyboardInterrupt, so that everything the demo started (broker, commands, serve) is
    stopped on the way out (`_Run.execute`'s and `_run_and_report`'s ``finally``);
    without it SIGTERM would end the demo alone and leave its children running. Later
    signals are ignored while that cleanup runs (it is bounded: `commands.STOP_S` a
    step). Ctrl-C works even when the demo started with SIGINT ignored: the demo
    promises that Ctrl-C stops it, as `unifeed serve` and `unifeed broker` do."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.seen += 1
        if self.seen == 1:
            raise KeyboardInterrupt


def run_and_report(options: DemoOptions) -> int:
    """Run the demo, print its summary on stdout, keep the live map up (``serve_port``)
    until Ctrl-C or SIGTERM; the exit code (0: every check passed). Stopped by either
    before the verdict, it stops what it started and is interrupted (exit code 130)."""
    options.check()
    if threading.current_thread() is not threading.main_thread():
        return _run_and_report(options)
    with stop_signals(_Interrupt()):
        return _run_and_report(options)


def _run_and_report(options: DemoOptions) -> int:
    run = _Run(options, sys.stdout, sys.stderr)
    try:
        report = run.execute()
        pid = run.broker.pid if run.broker is not None else None
        sys.stdout.write(format_summary(options, report, pid))
        if run.serving():
            sys.stdout.write(
                f"\nThe live map stays up at {run.serve_url} (unifeed serve on "
                f"kafka:{OUTPUT_TOPIC}); Ctrl-C (or SIGTERM) stops it and the broker.\n"
            )
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            # Waits for Ctrl-C or SIGTERM (`_Interrupt`), or for serve to end by itself.
            while run.serving():
                time.sleep(0.5)
    finally:
        run.close()
    return 0 if report.ok else 1
