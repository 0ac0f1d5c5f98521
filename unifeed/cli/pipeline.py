"""``unifeed combine`` and ``unifeed mappings``: files here, Kafka via the runtime."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from unifeed.core.errors import ConfigError, DeadLetterLimitError
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM, SURFACESTREAM
from unifeed.core.stages import DeadLetter
from unifeed.core.unify import (
    CATCHUP_CLOCK,
    Unifier,
    iter_mapping_lines,
    open_input,
    open_output,
    run_unifier,
)
from unifeed.core.units import parse_duration_ms


def is_kafka(target: str | None) -> bool:
    return target is not None and target.startswith("kafka:")


def duration_arg(text: str) -> int:
    """argparse ``type=`` for durations (`unifeed.core.units.parse_duration_ms`)."""
    try:
        return parse_duration_ms(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class DeadLetterSink:
    """Writes dead letters as JSON lines (a file or stderr) and enforces the limit."""

    def __init__(self, stream: IO[bytes], limit: int | None) -> None:
        self._stream = stream
        self._limit = limit
        self.count = 0

    def write(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        self._stream.write(b"".join(d.encode() + b"\n" for d in letters))
        self._stream.flush()
        self.count += len(letters)
        if self._limit is not None and self.count > self._limit:
            raise DeadLetterLimitError(
                f"{self.count} dead letters exceed --max-dead-letters {self._limit}; "
                f"the last: {letters[-1].feed} {letters[-1].reason}"
            )


@contextlib.contextmanager
def dead_letter_sink(path: str | None, limit: int | None) -> Iterator[DeadLetterSink]:
    if path is None or path == "-":
        yield DeadLetterSink(sys.stderr.buffer, limit)
        return
    if is_kafka(path):
        raise ConfigError("a kafka: dead-letter sink needs Kafka inputs; give a file path")
    with open_output(path) as f:
        yield DeadLetterSink(f, limit)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dead-letter",
        metavar="X",
        help="where invalid input goes: a JSON-lines path or kafka:TOPIC "
        "(default: stderr for files, <output topic>.dead-letter for Kafka)",
    )
    p.add_argument(
        "--max-dead-letters",
        type=int,
        metavar="N",
        help="exit with code 4 once more than N messages were dead-lettered (default: no limit)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")


def register(sub: Any) -> None:
    combine = sub.add_parser(
        "combine",
        help="produce the unified feed",
        description="Merge controlstream and surfacestream into the unified feed, ordered by "
        "pitr, annotating aircraft surface positions with their flight ID. Each of X is a "
        "JSON-lines path (- for stdin/stdout) or kafka:TOPIC[:PARTITION].",
    )
    combine.add_argument("--control", required=True, metavar="X", help="controlstream input")
    combine.add_argument("--surface", required=True, metavar="X", help="surfacestream input")
    combine.add_argument(
        "--mapping", metavar="X", help="mappingstream input (default: derived from --control)"
    )
    combine.add_argument("--output", required=True, metavar="X", help="unified feed output")
    combine.add_argument(
        "--strict-order",
        action="store_true",
        help="wait live for surfacestream too, so that live output always equals catch-up output",
    )
    combine.add_argument(
        "--realtime-threshold",
        type=duration_arg,
        default=30_000,
        metavar="DURATION",
        help="messages younger than this are real time (default 30s)",
    )
    combine.add_argument(
        "--reorder",
        metavar="FEED:FIELD:WINDOW",
        help="hold FEED (control or surface) for WINDOW and release it sorted by FIELD, "
        "e.g. surface:clock:2s (applied before combining)",
    )
    _add_common(combine)
    _add_kafka_options(combine)
    combine.set_defaults(handler=_combine)

    mappings = sub.add_parser(
        "mappings",
        help="derive mappingstream from controlstream",
        description="Derive mappingstream (which surface track belongs to which flight, "
        "with its access level) from controlstream.",
    )
    mappings.add_argument("--control", required=True, metavar="X", help="controlstream input")
    mappings.add_argument("--output", required=True, metavar="X", help="mappingstream output")
    _add_common(mappings)
    _add_kafka_options(mappings)
    mappings.set_defaults(handler=_mappings)


def _add_kafka_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Kafka options (for kafka:TOPIC inputs and outputs)")
    g.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="or UNIFEED_BOOTSTRAP_SERVERS")
    g.add_argument(
        "--instance",
        default="unifeed",
        help="instance name: checkpoint key and transactional.id (default: unifeed)",
    )
    g.add_argument("--checkpoint-topic", default="unifeed.checkpoints", metavar="TOPIC")
    g.add_argument(
        "--start",
        default="earliest",
        metavar="WHEN",
        help="where to start without a checkpoint: earliest, latest or a time",
    )
    g.add_argument("--stop-at", metavar="TIME", help="stop once every input has passed this pitr")
    g.add_argument(
        "--exit-at-end",
        action="store_true",
        help="stop when every input has reached the end of its partition",
    )
    g.add_argument(
        "--wait-for-topics",
        action="store_true",
        help="wait for input topics that do not exist yet (default: a missing input is an "
        "error, exit 2); a feed is never passed before its topic exists",
    )
    g.add_argument(
        "--allow-nonempty-output",
        action="store_true",
        help="let an instance without a checkpoint append to an output that already holds "
        "records (default: refused, exit 2, since it would write them again)",
    )
    g.add_argument(
        "--accept-partition-change",
        action="store_true",
        help="resume although an input's partitions changed since the checkpoint (new "
        "partitions are read from their first offset); default: refused, exit 2",
    )
    g.add_argument("--delivery", choices=("exactly-once", "at-least-once"), default="exactly-once")
    g.add_argument(
        "--lookback",
        type=duration_arg,
        default=6 * 3_600_000,
        metavar="DURATION",
        help="replay this much input before --start TIME (or a checkpoint that names no "
        "saved state) to rebuild links and access levels (default 6h)",
    )
    g.add_argument(
        "--commit-interval",
        type=duration_arg,
        default=100,
        metavar="DURATION",
        help="how often output and checkpoint are committed (default 100ms)",
    )
    g.add_argument(
        "--end-of-log-grace",
        type=duration_arg,
        default=2000,
        metavar="DURATION",
        help="a reader that has stayed at the end of its partition this long lets catch-up "
        "pass its feed (default 2s); raise it when an old backlog is loaded slowly",
    )
    g.add_argument(
        "--broker-timeout",
        type=duration_arg,
        default=30_000,
        metavar="DURATION",
        help="give up (exit 3) when the broker has not answered for this long (default 30s)",
    )
    g.add_argument(
        "--kafka-config", metavar="FILE", help="extra librdkafka properties, one key=value per line"
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on HOST:PORT (0 picks a free port)",
    )
    g.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 in a container "
        "that Prometheus scrapes from outside)",
    )
    g.add_argument(
        "--status-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="progress line interval on stderr (0: none)",
    )


def _kafka_handler(name: str) -> Any:
    try:
        module = importlib.import_module("unifeed.cli.kafka_run")
    except ModuleNotFoundError as exc:  # pragma: no cover - only in a partial install
        raise ConfigError("Kafka inputs need unifeed's Kafka runtime, which is missing") from exc
    return getattr(module, name)


def _parse_reorder(spec: str | None) -> tuple[str, str, int] | None:
    if spec is None:
        return None
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in ("control", "surface"):
        raise ConfigError(
            f"--reorder expects FEED:FIELD:WINDOW with FEED control or surface, got {spec!r}"
        )
    try:
        window = parse_duration_ms(parts[2])
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--reorder: {exc}") from None
    feed = CONTROLSTREAM if parts[0] == "control" else SURFACESTREAM
    return feed, parts[1], window


def _combine(args: argparse.Namespace) -> int:
    targets = [args.control, args.surface, args.mapping, args.output]
    if any(is_kafka(t) for t in targets):
        if not all(is_kafka(t) for t in targets if t is not None):
            raise ConfigError(
                "mix of kafka: and file arguments: give all feeds as kafka:TOPIC "
                "or all as files (use `unifeed load` / `unifeed dump` to move data)"
            )
        return int(_kafka_handler("combine_command")(args))
    reorder = _parse_reorder(args.reorder)
    started = time.monotonic()
    unifier = Unifier(
        derive_mappings=args.mapping is None,
        clock=CATCHUP_CLOCK,
        strict_order=args.strict_order,
        realtime_threshold_ms=args.realtime_threshold,
    )
    with contextlib.ExitStack() as stack:
        inputs = {
            CONTROLSTREAM: stack.enter_context(open_input(args.control)),
            SURFACESTREAM: stack.enter_context(open_input(args.surface)),
        }
        if args.mapping is not None:
            inputs[MAPPINGSTREAM] = stack.enter_context(open_input(args.mapping))
        if reorder is not None:
            from unifeed.core.reorder import reorder_lines

            feed, field, window = reorder
            inputs[feed] = reorder_lines(inputs[feed], window, field)
        out = stack.enter_context(open_output(args.output))
        sink = stack.enter_context(dead_letter_sink(args.dead_letter, args.max_dead_letters))
        write = out.write

        def emit(lines: list[bytes]) -> None:
            sink.write(unifier.dead_letters)
            unifier.dead_letters.clear()
            write(b"\n".join(lines) + b"\n")

        run_unifier(unifier, inputs, emit)
        sink.write(unifier.dead_letters)
        unifier.dead_letters.clear()
    if not args.quiet:
        s = unifier.stats()
        took = time.monotonic() - started
        print(
            f"unifeed combine: {s.output} messages out in {took:.2f}s "
            f"({s.output / max(took, 1e-9):,.0f}/s); accepted control {s.accepted[CONTROLSTREAM]}, "
            f"surface {s.accepted[SURFACESTREAM]}; annotated {s.annotated}, unmapped {s.unmapped}; "
            f"dead letters {sum(s.dead_letters.values())}",
            file=sys.stderr,
        )
    return 0


def _mappings(args: argparse.Namespace) -> int:
    if is_kafka(args.control) or is_kafka(args.output):
        if not (is_kafka(args.control) and is_kafka(args.output)):
            raise ConfigError("give both --control and --output as kafka:TOPIC, or both as files")
        return int(_kafka_handler("mappings_command")(args))
    with (
        open_input(args.control) as control,
        open_output(args.output) as out,
        dead_letter_sink(args.dead_letter, args.max_dead_letters) as sink,
    ):
        written = 0
        for lines, dead in iter_mapping_lines(control):  # streamed: memory stays flat
            sink.write(dead)
            if lines:
                out.write(b"\n".join(lines) + b"\n")
                written += len(lines)
    if not args.quiet:
        print(
            f"unifeed mappings: {written} mappingstream messages, {sink.count} dead letters",
            file=sys.stderr,
        )
    return 0
