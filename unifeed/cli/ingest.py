"""``unifeed ingest``: ADS-B sources in, controlstream and surfacestream out (``unifeed.ingest``)."""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from unifeed.cli.pipeline import (
    ExtendedOption,
    add_metrics_options,
    add_status_interval,
    duration_arg,
)
from unifeed.core.errors import ConfigError
from unifeed.kafka.foreground import stop_signals

log = logging.getLogger("unifeed.ingest")


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``W,S,E,N`` in degrees.

    >>> parse_bbox("-123,37,-121.5,38.5")
    (-123.0, 37.0, -121.5, 38.5)
    """
    parts = text.split(",")
    try:
        if len(parts) != 4:
            raise ValueError
        west, south, east, north = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected W,S,E,N in degrees (e.g. -123,37,-121.5,38.5), got {text!r}"
        ) from None
    if not (-90 <= south < north <= 90 and -180 <= west <= 180 and -180 <= east <= 180):
        raise argparse.ArgumentTypeError(
            f"--bbox needs -90 <= S < N <= 90 and W, E within ±180, got {text!r}"
        )
    return west, south, east, north


def register(subparsers: Any) -> None:
    """Add ``unifeed ingest`` to the command line."""
    p = subparsers.add_parser(
        "ingest",
        help="turn ADS-B data (readsb JSON, airplanes.live, SBS) into controlstream and surfacestream",
        description=(
            "Read aircraft states from ADS-B sources and write them as controlstream "
            "(flightplan, position, departure, arrival, power_on, power_off, keepalive) and "
            "surfacestream (ground_position, vehicle_position, keepalive). Flights are made "
            "from tracks: one address with one callsign; a new one after a callsign change, "
            "after --flight-gap on the ground after a landing, or after --flight-gap of "
            "silence. pitr is when a state was received (in a replay: the response's `now`); "
            "clock is the position's own time. Each X is a JSON-lines path (- for stdout) or "
            "kafka:TOPIC[:PARTITION]. Runs until SIGTERM or Ctrl-C (which flush and exit 0), "
            "the end of a replay, or --stop-after polls."
        ),
    )
    sources = p.add_argument_group("sources (at least one --source, or --replay)")
    sources.add_argument(
        "--source",
        action=ExtendedOption,
        nargs=1,
        metavar="SRC",
        help="http(s)://URL of a readsb-format JSON document (aggregator form {ac, now ms} or "
        "receiver form {now s, aircraft}), polled every --interval; a path to an "
        "aircraft.json, re-read every --interval; or sbs://HOST:PORT, BaseStation CSV "
        "(MSG 1-8), reconnecting with backoff. Repeat for several sources (in a configuration "
        "file: a list; in UNIFEED_SOURCE: separated by spaces)",
    )
    sources.add_argument(
        "--replay",
        metavar="FILE",
        help="recorded responses, one JSON document per line, replayed at --speed; the run "
        "ends at the end of the file (not with --source)",
    )
    sources.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="N",
        help="replay at N times the recorded pace (default 1; 0: as fast as possible)",
    )
    sources.add_argument(
        "--interval",
        type=duration_arg,
        default=10_000,
        metavar="DURATION",
        help="how often each source is polled or snapshotted (default 10s)",
    )
    sources.add_argument(
        "--http-timeout",
        type=duration_arg,
        default=10_000,
        metavar="DURATION",
        help="timeout of one HTTP request (default 10s); 429 waits for Retry-After, "
        "5xx and timeouts back off with jitter",
    )
    p.add_argument("--control", required=True, metavar="X", help="controlstream output")
    p.add_argument("--surface", required=True, metavar="X", help="surfacestream output")
    p.add_argument(
        "--dead-letter",
        metavar="X",
        help="where bodies that are not readsb responses (and bad SBS lines) go: "
        "{source, line?, pitr, reason, raw}; default stderr, or <control topic>.dead-letter "
        "when --control is Kafka",
    )
    flights = p.add_argument_group("flights and filters")
    flights.add_argument(
        "--access-file",
        metavar="FILE",
        help="privacy list (LADD, PIA): lines 'KEY [restricted|blocked]', KEY an address, "
        "callsign or registration; unlisted aircraft are public",
    )
    flights.add_argument(
        "--flight-gap",
        type=duration_arg,
        default=30 * 60_000,
        metavar="DURATION",
        help="ground time after a landing, or silence, that starts a new flight (default 30m)",
    )
    flights.add_argument(
        "--max-age",
        type=duration_arg,
        default=60_000,
        metavar="DURATION",
        help="skip positions older than this when received (default 60s)",
    )
    flights.add_argument(
        "--surface-timeout",
        type=duration_arg,
        default=60_000,
        metavar="DURATION",
        help="a ground track with no position for this long (also after take-off) ends with "
        "power_off (default 60s)",
    )
    flights.add_argument(
        "--bbox",
        type=parse_bbox,
        metavar="W,S,E,N",
        help="keep only positions inside this box (degrees; W > E crosses the antimeridian)",
    )
    run = p.add_argument_group("running")
    run.add_argument(
        "--stop-after", type=int, metavar="N", help="stop after N polls (all sources together)"
    )
    add_status_interval(run)
    add_metrics_options(run, "address the metrics server binds, IPv4 or IPv6 (default 127.0.0.1)")
    run.add_argument("--quiet", "-q", action="store_true", help="no status line or summary")
    from unifeed.cli.checkpoint import add_kafka_options

    add_kafka_options(p)
    p.set_defaults(handler=_ingest)


def _sources(args: argparse.Namespace, out: queue.Queue[Any], stop: threading.Event,
             counters: Any) -> list[Any]:  # fmt: skip
    from urllib.parse import urlsplit

    from unifeed.ingest._sources import FileSource, HttpSource, ReplaySource, SbsSource

    interval_s = args.interval / 1000
    common = {"interval_s": interval_s}
    made: list[Any] = []
    if args.replay is not None:
        if not Path(args.replay).is_file():
            raise ConfigError(f"--replay {args.replay}: no such file")
        made.append(ReplaySource(args.replay, out, stop, counters, speed=args.speed, **common))
    for src in args.source or ():
        lower = src.lower()
        if lower.startswith(("http://", "https://")):
            made.append(HttpSource(src, out, stop, counters, timeout_s=args.http_timeout / 1000,
                                   **common))  # fmt: skip
        elif lower.startswith("sbs://"):
            parts = urlsplit(src)
            try:
                port = parts.port
            except ValueError:
                port = None
            if not parts.hostname or port is None:
                raise ConfigError(f"--source {src}: expected sbs://HOST:PORT")
            made.append(SbsSource(parts.hostname, port, out, stop, counters, **common))
        elif "://" in src:
            raise ConfigError(
                f"--source {src}: expected an http(s):// URL, sbs://HOST:PORT or a file path"
            )
        else:
            made.append(FileSource(src, out, stop, counters, **common))
    return made


def _ingest(args: argparse.Namespace) -> int:
    from unifeed.ingest import AccessList, BadAccessLine, Tracker, TrackerConfig, load_airports
    from unifeed.ingest._run import IngestRun, open_outputs
    from unifeed.ingest._sources import Counters

    if args.replay is None and not args.source:
        raise ConfigError("give at least one --source, or --replay FILE")
    if args.replay is not None and args.source:
        raise ConfigError("--replay runs alone: give either --replay or --source")
    if args.speed < 0:
        raise ConfigError("--speed must be >= 0")
    if args.interval <= 0:
        raise ConfigError("--interval must be > 0")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError("--stop-after must be >= 1")
    try:
        config = TrackerConfig(
            flight_gap_ms=args.flight_gap,
            max_age_ms=args.max_age,
            surface_timeout_ms=args.surface_timeout,
            bbox=args.bbox,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    access = AccessList()
    if args.access_file is not None:
        try:
            with open(args.access_file, encoding="utf-8") as f:
                access = AccessList.parse(f, source=args.access_file)
        except OSError as exc:
            raise ConfigError(f"cannot read --access-file {args.access_file}: {exc.strerror}") from None
        except (BadAccessLine, UnicodeDecodeError) as exc:
            raise ConfigError(f"--access-file: {exc}") from None
    tracker = Tracker(config, nearest_airport=load_airports().nearest, access=access)
    stop = threading.Event()
    counters = Counters()
    polls: queue.Queue[Any] = queue.Queue(maxsize=16)
    sources = _sources(args, polls, stop, counters)

    def kafka() -> tuple[str, dict[str, str]]:
        from unifeed.cli.checkpoint import kafka_settings

        return kafka_settings(args)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # SIGTERM and SIGINT end the run; the handlers from before come back after.
    with (
        stop_signals(on_signal),
        open_outputs(args.control, args.surface, args.dead_letter, kafka=kafka) as outputs,
    ):
        run = IngestRun(
            tracker=tracker,
            outputs=outputs,
            sources=sources,
            polls=polls,
            stop=stop,
            counters=counters,
            stop_after=args.stop_after,
            status_interval_s=0.0 if args.quiet else args.status_interval / 1000,
        )
        metrics = _metrics(args, run, replay=args.replay is not None)
        try:
            run.run()
        finally:
            if metrics is not None:
                metrics.close()
    return 0


def _metrics(args: argparse.Namespace, run: Any, *, replay: bool) -> Any:
    if args.metrics_port is None:
        return None
    import time

    from unifeed.runtime.metrics import MetricsServer, MetricsSnapshot

    def collect() -> MetricsSnapshot:
        report = run.report()
        last = run.tracker.last_pitr
        return MetricsSnapshot(
            messages_in={"adsb": report.states},
            messages_out=report.control + report.surface,
            dead_letters={"bad_response": report.dead_letters} if report.dead_letters else {},
            mode="catchup" if replay else "realtime",
            lag_ms={"adsb": max(time.time_ns() // 1_000_000 - last, 0)} if last else {},
        )

    server = MetricsServer(args.metrics_port, collect, command="ingest", instance="ingest",
                           host=args.metrics_host)  # fmt: skip
    server.start()
    print(f"unifeed ingest: metrics on {server.url}", file=sys.stderr)
    return server
