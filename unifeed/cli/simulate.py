"""``unifeed simulate``: the command line of the traffic simulator (`unifeed.sim.traffic`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unifeed.cli.pipeline import add_simulated_duration, duration_arg, simulated_minutes
from unifeed.core.errors import ConfigError
from unifeed.core.units import parse_time_ms
from unifeed.sim.adsb import write_adsb
from unifeed.sim.traffic import Scenario, TrafficArgs, write_streaming
from unifeed.sim.world import MAX_AIRPORTS


def _simulate(args: argparse.Namespace) -> int:
    start_ms = parse_time_ms(args.start, "--start")
    try:
        Scenario(**_traffic(args, start_ms))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out-dir {out_dir} exists and is not a directory")
    if args.format == "adsb":
        return _run_adsb(args, out_dir, start_ms)
    with _writing(out_dir):
        stats = write_streaming(out_dir, **_traffic(args, start_ms))
    seconds = simulated_minutes(args) * 60
    for feed, (lines, size) in stats.items():
        print(
            f"{out_dir / f'{feed}.jsonl'}: {lines:,} messages over {seconds:g} s "
            f"({lines / seconds:,.0f}/s), {size / 1e6:.1f} MB",
            file=sys.stderr,
        )
    return 0


def _traffic(args: argparse.Namespace, start_ms: int) -> TrafficArgs:
    """The simulation's arguments, the same for every output format."""
    return {
        "seed": args.seed,
        "minutes": simulated_minutes(args),
        "airports": args.airports,
        "rate": args.rate,
        "start_ms": start_ms,
    }


@contextlib.contextmanager
def _writing(out_dir: Path) -> Iterator[None]:
    """An OSError while writing into ``out_dir`` is a configuration error (exit 2)."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write to --out-dir {out_dir}: {exc.strerror or exc}") from None


def _run_adsb(args: argparse.Namespace, out_dir: Path, start_ms: int) -> int:
    if args.interval <= 0:
        raise ConfigError("--interval must be > 0")
    with _writing(out_dir):
        count = write_adsb(out_dir, interval_ms=args.interval, **_traffic(args, start_ms))
    print(f"{out_dir / 'adsb.jsonl'}: {count:,} responses; {out_dir / 'access.txt'}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``unifeed simulate`` to the command line."""
    p = subparsers.add_parser(
        "simulate",
        help="write deterministic synthetic controlstream and surfacestream files",
        description=(
            "Write controlstream.jsonl and surfacestream.jsonl: flights filing, taxiing, "
            "departing and arriving between airports, ground vehicles, de-icing and cargo "
            "areas, access levels. The same arguments always give the same bytes."
        ),
    )
    p.add_argument("--out-dir", required=True, help="directory to write the two files into")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    add_simulated_duration(p, 10 * 60_000, "simulated time of pitr (default 10m)")
    p.add_argument(
        "--airports",
        type=int,
        default=3,
        help=f"number of airports, 2 to {MAX_AIRPORTS} (default 3)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="controlstream messages per second per airport (default 200)",
    )
    p.add_argument(
        "--start",
        default="1700000000000",
        metavar="TIME",
        help="pitr of the first message: epoch ms or ISO-8601 (default 1700000000000)",
    )
    p.add_argument(
        "--format",
        choices=("jsonl", "adsb"),
        default="jsonl",
        help="jsonl: controlstream.jsonl and surfacestream.jsonl (default); adsb: the same "
        "traffic as readsb aggregator responses, adsb.jsonl (one per line, for `unifeed "
        "ingest --replay`), and access.txt (its non-public addresses, for --access-file)",
    )
    p.add_argument(
        "--interval",
        type=duration_arg,
        default=10_000,
        metavar="DURATION",
        help="with --format adsb: one response every DURATION of pitr (default 10s)",
    )
    p.set_defaults(handler=_simulate)


