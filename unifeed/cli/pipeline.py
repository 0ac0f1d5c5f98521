"""``unifeed combine`` and ``unifeed mappings``: files here, Kafka via the runtime."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from unifeed.checkpoint import CHECKPOINT_TOPIC
from unifeed.cli.checkpoint import add_bootstrap_option, add_broker_timeout, add_client_options
from unifeed.core.combine import DEFAULT_REALTIME_THRESHOLD_MS
from unifeed.core.errors import ConfigError, DeadLetterLimitError
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM, SURFACESTREAM
from unifeed.core.stages import DeadLetter
from unifeed.core.unify import (
    CATCHUP_CLOCK,
    FilePipeline,
    Unifier,
    iter_mapping_lines,
    open_input,
    open_output,
    run_files,
)
from unifeed.core.units import parse_duration_ms
from unifeed.kafka import DEFAULT_BROKER_TIMEOUT_S

#: The closing summary of a file run: a line of text, or a JSON record (unifeed.cli.logs).
_summary = logging.getLogger("unifeed.summary")


def is_kafka(target: str | None) -> bool:
    return target is not None and target.startswith("kafka:")


def duration_arg(text: str) -> int:
    """argparse ``type=`` for durations (`unifeed.core.units.parse_duration_ms`)."""
    try:
        return parse_duration_ms(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def interval_arg(text: str) -> int:
    """argparse ``type=`` for a DURATION whose bare number meant seconds in earlier
    releases (``--status-interval``, ``demo --outage``): a bare number other than 0 is
    refused and asks for a unit, so that ``5`` is never read silently as 5 ms."""
    stripped = text.strip()
    try:
        number = float(stripped)
    except ValueError:
        return duration_arg(text)
    if number == 0:
        return 0
    raise argparse.ArgumentTypeError(
        f"give a unit, e.g. {stripped}s or {stripped}ms (a bare number meant seconds before), "
        f"got {text!r}"
    )


duration_arg.is_duration = True  # type: ignore[attr-defined]
interval_arg.is_duration = True  # type: ignore[attr-defined]


def add_simulated_duration(p: Any, default_ms: int, help_text: str) -> None:
    """``--duration DURATION`` of simulated time, and ``--minutes N`` as its deprecated
    spelling (read both with `simulated_minutes`)."""
    p.add_argument(
        "--duration", type=duration_arg, default=default_ms, metavar="DURATION", help=help_text
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=argparse.SUPPRESS,
        metavar="N",
        help="deprecated spelling of --duration Nm",
    )


def simulated_minutes(args: argparse.Namespace) -> float:
    """--duration in minutes; the deprecated --minutes wins when given."""
    minutes = getattr(args, "minutes", None)
    return float(minutes) if minutes is not None else args.duration / 60_000


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for counts: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def port_arg(text: str) -> int:
    """argparse ``type=`` for a TCP port: 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free port), got {value}")
    return value


def add_status_interval(p: Any, help_text: str = "progress line interval on stderr") -> None:
    p.add_argument(
        "--status-interval",
        type=interval_arg,
        default=2000,
        metavar="DURATION",
        help=f"{help_text} (default 2s; 0: none); one JSON record each with --log-format json",
    )


def add_metrics_options(p: Any, host_help: str) -> None:
    p.add_argument(
        "--metrics-port",
        type=port_arg,
        metavar="PORT",
        help="serve Prometheus metrics on HOST:PORT, /metrics (0 picks a free port)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST", help=host_help)


class _CommandLineWins(argparse.Action):
    """A repeatable option whose default (from ``--config`` or the environment) is
    replaced, not extended, by the values given on the command line."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is self.default:
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


class RepeatedOption(_CommandLineWins, argparse._AppendAction):
    """``action="append"``, the command line winning over the default."""


class ExtendedOption(_CommandLineWins, argparse._ExtendAction):
    """``action="extend"``, the command line winning over the default."""


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


def run_to_output(
    stack: contextlib.ExitStack,
    pipeline: FilePipeline,
    inputs: dict[str, Iterable[bytes]],
    args: argparse.Namespace,
) -> DeadLetterSink:
    """Drive ``pipeline`` over complete ``inputs`` (`run_files`) into ``--output``, its dead
    letters into ``--dead-letter`` (``--max-dead-letters`` enforced), each batch's dead
    letters written before its output lines; both outputs are closed with ``stack``."""
    out = stack.enter_context(open_output(args.output))
    sink = stack.enter_context(dead_letter_sink(args.dead_letter, args.max_dead_letters))
    write = out.write
    dead_letters = pipeline.dead_letters

    def emit(lines: list[bytes]) -> None:
        sink.write(dead_letters)
        dead_letters.clear()
        write(b"\n".join(lines) + b"\n")

    run_files(pipeline, inputs, emit)
    sink.write(dead_letters)
    dead_letters.clear()
    return sink


def add_output_options(p: Any, counted: str = "messages") -> None:
    """``--dead-letter``, ``--max-dead-letters`` (its help counts ``counted``) and
    ``--quiet``: what every command that writes a feed offers about its dead letters and
    its summary."""
    p.add_argument(
        "--dead-letter",
        metavar="X",
        help="where invalid input goes: a JSON-lines path or kafka:TOPIC "
        "(default: stderr for files, <output topic>.dead-letter for Kafka)",
    )
    p.add_argument(
        "--max-dead-letters",
        type=non_negative_int,
        metavar="N",
        help=f"exit with code 4 once more than N {counted} were dead-lettered (default: no limit)",
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
        default=DEFAULT_REALTIME_THRESHOLD_MS,
        metavar="DURATION",
        help="messages younger than this are real time "
        f"(default {DEFAULT_REALTIME_THRESHOLD_MS // 1000}s)",
    )
    combine.add_argument(
        "--reorder",
        metavar="FEED:FIELD:WINDOW",
        help="hold FEED (control or surface) for WINDOW and release it sorted by FIELD, "
        "e.g. surface:clock:2s (applied before combining)",
    )
    add_output_options(combine)
    _add_kafka_options(combine, default_instance="combine")
    combine.set_defaults(handler=_combine)

    mappings = sub.add_parser(
        "mappings",
        help="derive mappingstream from controlstream",
        description="Derive mappingstream (which surface track belongs to which flight, "
        "with its access level) from controlstream.",
    )
    mappings.add_argument("--control", required=True, metavar="X", help="controlstream input")
    mappings.add_argument("--output", required=True, metavar="X", help="mappingstream output")
    add_output_options(mappings)
    _add_kafka_options(mappings, default_instance="mappings")
    mappings.set_defaults(handler=_mappings)


def _add_kafka_options(p: argparse.ArgumentParser, *, default_instance: str) -> None:
    g = p.add_argument_group("Kafka options (for kafka:TOPIC inputs and outputs)")
    add_bootstrap_option(g)
    g.add_argument(
        "--instance",
        default=default_instance,
        help="instance name: checkpoint key and transactional.id (Kafka Streams' "
        f"application.id); one name per run (default: {default_instance}); a name a run of "
        "another command holds is refused (exit 2)",
    )
    g.add_argument(
        "--checkpoint-topic",
        default=CHECKPOINT_TOPIC,
        metavar="TOPIC",
        help=f"compacted topic of the checkpoints, partition 0 (default {CHECKPOINT_TOPIC})",
    )
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
    g.add_argument(
        "--delivery",
        choices=("exactly-once", "at-least-once"),
        default="exactly-once",
        help="exactly-once: output and checkpoint in one transaction (Kafka Streams' "
        "processing.guarantee=exactly_once_v2); at-least-once: for brokers without "
        "transactions, a crash may repeat output (default exactly-once)",
    )
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
        "--catchup-commit-interval",
        type=duration_arg,
        default=1000,
        metavar="DURATION",
        help="how often output and checkpoint are committed while catching up on a "
        "backlog, if longer than --commit-interval (default 1s; each commit waits for "
        "the broker)",
    )
    g.add_argument(
        "--end-of-log-grace",
        type=duration_arg,
        default=2000,
        metavar="DURATION",
        help="a reader that has stayed at the end of its partition this long lets catch-up "
        "pass its feed (default 2s; like Kafka Streams' max.task.idle.ms); raise it when "
        "an old backlog is loaded slowly",
    )
    add_broker_timeout(g, round(DEFAULT_BROKER_TIMEOUT_S * 1000))
    add_client_options(g)
    add_metrics_options(
        g,
        "address the metrics server binds, IPv4 or IPv6 (default 127.0.0.1; 0.0.0.0 or :: "
        "in a container that Prometheus scrapes from outside)",
    )
    add_status_interval(g)


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


def _refuse_kafka_only_options(args: argparse.Namespace) -> None:
    """A file run has no metrics server: a --metrics-port there would be silently unused."""
    if args.metrics_port is not None:
        raise ConfigError(
            "--metrics-port serves a Kafka run's metrics; with files there is none "
            "(the summary on stderr has the counts)"
        )


def _combine(args: argparse.Namespace) -> int:
    targets = [args.control, args.surface, args.mapping, args.output]
    if any(is_kafka(t) for t in targets):
        if not all(is_kafka(t) for t in targets if t is not None):
            raise ConfigError(
                "mix of kafka: and file arguments: give all feeds as kafka:TOPIC "
                "or all as files (use `unifeed load` / `unifeed dump` to move data)"
            )
        return int(_kafka_handler("combine_command")(args))
    _refuse_kafka_only_options(args)
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
        run_to_output(stack, unifier, inputs, args)
    if not args.quiet:
        s = unifier.stats()
        took = time.monotonic() - started
        dead = sum(s.dead_letters.values())
        _summary.info(
            "%s",
            f"unifeed combine: {s.output} messages out in {took:.2f}s "
            f"({s.output / max(took, 1e-9):,.0f}/s); accepted control {s.accepted[CONTROLSTREAM]}, "
            f"surface {s.accepted[SURFACESTREAM]}; annotated {s.annotated}, unmapped {s.unmapped}; "
            f"dead letters {dead}",
            extra={"fields": {
                "command": "combine", "out": s.output, "seconds": round(took, 3),
                "accepted": {"controlstream": s.accepted[CONTROLSTREAM],
                             "surfacestream": s.accepted[SURFACESTREAM]},
                "annotated": s.annotated, "unmapped": s.unmapped, "dead": dead,
            }},
        )  # fmt: skip
    return 0


def _mappings(args: argparse.Namespace) -> int:
    if is_kafka(args.control) or is_kafka(args.output):
        if not (is_kafka(args.control) and is_kafka(args.output)):
            raise ConfigError("give both --control and --output as kafka:TOPIC, or both as files")
        return int(_kafka_handler("mappings_command")(args))
    _refuse_kafka_only_options(args)
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
        _summary.info(
            "unifeed mappings: %d mappingstream messages, %d dead letters", written, sink.count,
            extra={"fields": {"command": "mappings", "out": written, "dead": sink.count}},
        )  # fmt: skip
    return 0
