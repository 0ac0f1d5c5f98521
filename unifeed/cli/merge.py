"""``unifeed merge``: the general, content-agnostic merge of F feeds, ordered by ``pitr``.

``unifeed merge --input NAME=SOURCE [--input NAME=SOURCE ...] --output X``

SOURCE is a JSON-lines path (``-`` for stdin, ``.gz`` read transparently), or
``kafka:TOPIC[:PARTITIONS]`` (every input and the output then Kafka: the run is
`unifeed.runtime.merge.MergeRun`, with combine's checkpoints, exact resume, transactions
and claims); the order of ``--input`` is the tie-break rank. The rules are
`unifeed.core.merge`'s. File inputs are complete, so they are merged by the catch-up
rule, where every input is required; ``--live-required`` (which inputs real time waits
for) is checked against the names and matters for unbounded inputs only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from unifeed.cli.pipeline import (
    RepeatedOption,
    _add_kafka_options,
    add_output_options,
    duration_arg,
    is_kafka,
    run_to_output,
)
from unifeed.core.combine import DEFAULT_REALTIME_THRESHOLD_MS
from unifeed.core.errors import ConfigError
from unifeed.core.merge import Merger
from unifeed.core.unify import CATCHUP_CLOCK, open_input
from unifeed.core.units import parse_duration_ms, parse_time_ms

#: The closing summary: a line of text, or a JSON record (unifeed.cli.logs).
_summary = logging.getLogger("unifeed.summary")
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
_MIXED: Final = (
    "mix of kafka: and file arguments: give every --input and --output as kafka:TOPIC, or "
    "all as files (`unifeed dump` and `unifeed load` move data between them)"
)


@dataclass(frozen=True)
class MergeInput:
    """One ``--input NAME=SOURCE``."""

    name: str
    source: str


def parse_input(text: str) -> MergeInput:
    """``NAME=SOURCE``, NAME made of letters, digits, ``_``, ``.``, ``-``.

    >>> parse_input("radar=feeds/radar.jsonl.gz")
    MergeInput(name='radar', source='feeds/radar.jsonl.gz')
    """
    name, sep, source = text.partition("=")
    if not sep or not source:
        raise ConfigError(f"--input expects NAME=SOURCE (e.g. radar=radar.jsonl), got {text!r}")
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"--input {text!r}: NAME must be letters, digits, '_', '.' or '-', got {name!r}"
        )
    return MergeInput(name, source)


def parse_inputs(texts: Sequence[str] | None) -> list[MergeInput]:
    if not texts:
        raise ConfigError("give at least one --input NAME=SOURCE")
    inputs = [parse_input(t) for t in texts]
    seen: set[str] = set()
    for i in inputs:
        if i.name in seen:
            raise ConfigError(f"--input name {i.name!r} is given twice; each input needs its own")
        seen.add(i.name)
    stdin = [i.name for i in inputs if i.source == "-"]
    if len(stdin) > 1:
        raise ConfigError(f"inputs {', '.join(stdin)} all read stdin (-); only one can")
    return inputs


def parse_live_required(texts: Sequence[str] | None, names: Sequence[str]) -> list[str] | None:
    """The names of ``--live-required NAME[,NAME...]`` (repeatable), checked; None: all."""
    if not texts:
        return None
    chosen: list[str] = []
    for text in texts:
        for name in text.split(","):
            name = name.strip()
            if not name:
                raise ConfigError(f"--live-required expects NAME[,NAME...], got {text!r}")
            if name not in names:
                raise ConfigError(
                    f"--live-required names {name!r}, which is no --input (inputs: "
                    f"{', '.join(names)})"
                )
            if name not in chosen:
                chosen.append(name)
    return chosen


def parse_reorders(texts: Sequence[str] | None, names: Sequence[str]) -> dict[str, tuple[str, int]]:
    """``--reorder NAME:FIELD:WINDOW`` (repeatable, one per input) as ``{name: (field, ms)}``."""
    found: dict[str, tuple[str, int]] = {}
    for text in texts or ():
        parts = text.split(":")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ConfigError(f"--reorder expects NAME:FIELD:WINDOW (e.g. adsb:clock:2s), got {text!r}")
        name, field, window_text = parts
        if name not in names:
            raise ConfigError(
                f"--reorder names {name!r}, which is no --input (inputs: {', '.join(names)})"
            )
        if name in found:
            raise ConfigError(f"--reorder is given twice for {name!r}")
        try:
            window = parse_duration_ms(window_text)
        except ConfigError as exc:
            raise ConfigError(f"--reorder {text!r}: {exc}") from None
        found[name] = (field, window)
    return found


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def register(sub: Any) -> None:
    p = sub.add_parser(
        "merge",
        help="merge any feeds by pitr (content-agnostic)",
        description="Merge F feeds into one, ordered by pitr. A record needs only an integer "
        "pitr (a JSON object); keepalives ({\"type\":\"keepalive\",\"pitr\":N}) are progress "
        "and are not written; every other record is written byte for byte. Ties go to the "
        "input given first. A record without a usable pitr, or with a pitr below its "
        "input's previous one, is a dead letter.",
    )
    p.add_argument(
        "--input",
        action=RepeatedOption,
        metavar="NAME=SOURCE",
        help="an input: SOURCE is a JSON-lines path (- for stdin, .gz read transparently) "
        "or kafka:TOPIC (every partition), kafka:TOPIC:N, kafka:TOPIC:N,M,...; repeat for "
        "each feed, in tie-break order",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="X",
        help="merged output: a path (- for stdout), or kafka:TOPIC[:N] for Kafka inputs",
    )
    p.add_argument(
        "--live-required",
        action=RepeatedOption,
        metavar="NAME[,NAME...]",
        help="inputs real time waits for (default: all; complete files are always merged "
        "by the catch-up rule, which waits for every input)",
    )
    p.add_argument(
        "--reorder",
        action=RepeatedOption,
        metavar="NAME:FIELD:WINDOW",
        help="hold input NAME for WINDOW and release it sorted by FIELD, e.g. adsb:clock:2s "
        "(applied before merging; repeatable, once per input)",
    )
    p.add_argument(
        "--realtime-threshold",
        type=duration_arg,
        default=DEFAULT_REALTIME_THRESHOLD_MS,
        metavar="DURATION",
        help="Kafka inputs: records younger than this are real time (default 30s)",
    )
    add_output_options(p, counted="records")
    # --start, --stop-at and the rest of a Kafka run's options (files: --start and
    # --stop-at bound what is written; records outside are read, not written).
    _add_kafka_options(p, default_instance="merge")
    p.set_defaults(handler=_merge, lookback=0)


def _window(args: argparse.Namespace) -> tuple[int | None, int | None]:
    start: int | None = None
    if args.start == "latest":
        raise ConfigError("--start latest needs Kafka inputs; a file is read from its start")
    if args.start != "earliest":
        start = parse_time_ms(args.start, "--start")
    stop_at = None if args.stop_at is None else parse_time_ms(args.stop_at, "--stop-at")
    if start is not None and stop_at is not None and stop_at < start:
        raise ConfigError(f"--stop-at {args.stop_at} is before --start {args.start}")
    return start, stop_at


def _merge(args: argparse.Namespace) -> int:
    inputs = parse_inputs(args.input)
    names = [i.name for i in inputs]
    live_required = parse_live_required(args.live_required, names)
    reorders = parse_reorders(args.reorder, names)
    if any(is_kafka(i.source) for i in inputs) or is_kafka(args.output):
        if not all(is_kafka(i.source) for i in inputs) or not is_kafka(args.output):
            raise ConfigError(_MIXED)
        if reorders:
            raise ConfigError("--reorder is available for file inputs only")
        from unifeed.cli.kafka_run import merge_command

        return merge_command(args, [(i.name, i.source) for i in inputs], live_required)
    start, stop_at = _window(args)
    for i in inputs:
        if args.output != "-" and i.source != "-" and _same_file(i.source, args.output):
            raise ConfigError(f"--output {args.output} is input {i.name!r}; writing would destroy it")
    started = time.monotonic()
    merger = Merger(
        names, live_required=live_required, clock=CATCHUP_CLOCK, start=start, stop_at=stop_at
    )
    with contextlib.ExitStack() as stack:
        feeds: dict[str, Iterable[bytes]] = {}
        for i in inputs:
            lines: Iterable[bytes] = stack.enter_context(open_input(i.source))
            if i.name in reorders:
                from unifeed.core.reorder import reorder_lines

                field, window = reorders[i.name]
                lines = reorder_lines(lines, window, field)
            feeds[i.name] = lines
        sink = run_to_output(stack, merger, feeds, args)
    if not args.quiet:
        s = merger.stats()
        took = time.monotonic() - started
        per_feed = ", ".join(f"{f.name} {f.accepted}" for f in s.feeds)
        skipped = sum(f.skipped for f in s.feeds)
        keepalives = sum(f.keepalives for f in s.feeds)
        _summary.info(
            "%s",
            f"unifeed merge: {s.output} records out in {took:.2f}s "
            f"({s.output / max(took, 1e-9):,.0f}/s); accepted {per_feed}; keepalives "
            f"{keepalives}; "
            + (f"outside --start/--stop-at {skipped}; " if skipped else "")
            + f"dead letters {sink.count}",
            extra={"fields": {
                "command": "merge", "out": s.output, "seconds": round(took, 3),
                "accepted": {f.name: f.accepted for f in s.feeds}, "keepalives": keepalives,
                "skipped": skipped, "dead": sink.count,
            }},
        )  # fmt: skip
    return 0
