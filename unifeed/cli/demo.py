"""``unifeed demo``: the command line of the demo (`unifeed.demo.run`)."""

from __future__ import annotations

import argparse
from typing import Any

from unifeed.cli.pipeline import (
    add_simulated_duration,
    duration_arg,
    interval_arg,
    simulated_minutes,
)
from unifeed.demo.run import DemoOptions, run_and_report


def register(subparsers: Any) -> None:
    """Add ``unifeed demo``."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the embedded broker, with an outage, and verify it",
        description=(
            "Start the embedded broker, play simulated traffic into it as real time "
            "(time-compressed), run `unifeed mappings` and `unifeed combine --strict-order`, "
            "kill combine for a while and restart it, then check that the output equals "
            "the file pipeline's exactly and that no access level leaks. Exits 1 if a "
            "check fails."
        ),
    )
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    add_simulated_duration(p, 8 * 60_000, "simulated time of traffic (default 8m)")
    p.add_argument(
        "--speed",
        type=float,
        default=16.0,
        help="time compression: simulated seconds per wall-clock second (default 16)",
    )
    p.add_argument("--airports", type=int, default=3, help="simulated airports (default 3)")
    p.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="controlstream messages per simulated second per airport (default 10)",
    )
    p.add_argument(
        "--outage",
        type=interval_arg,
        metavar="DURATION",
        help="how long combine stays killed (default: enough to need a catch-up; 0: none)",
    )
    p.add_argument(
        "--realtime-threshold",
        type=duration_arg,
        default=5_000,
        metavar="DURATION",
        help="combine's real-time threshold (default 5s, so a short outage means catch-up)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="also run `unifeed serve` on the unified feed and print the live map's URL; "
        "it stays up after the verdict until Ctrl-C",
    )
    p.add_argument(
        "--serve-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="port of the live map with --serve (default 8080; 0 picks a free one)",
    )
    p.add_argument(
        "--keep-broker",
        action="store_true",
        help="leave the broker running afterwards and print how to look at the output",
    )
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    options = DemoOptions(
        seed=args.seed,
        minutes=simulated_minutes(args),
        speed=args.speed,
        airports=args.airports,
        rate=args.rate,
        outage_s=None if args.outage is None else args.outage / 1000,
        realtime_threshold_ms=args.realtime_threshold,
        keep_broker=args.keep_broker,
        serve_port=args.serve_port if args.serve else None,
    )
    return run_and_report(options)


