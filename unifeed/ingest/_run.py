"""The ingest loop: sources in, `Tracker` in the middle, files or Kafka topics out.

One thread (the caller's) owns the tracker and the outputs; each source is its own
thread (``_sources``). Per poll, in this order: its dead letters, then the tracker's
controlstream and surfacestream records, all stamped with the poll's ``pitr`` (never
below the previous poll's). Kafka records get the record timestamp ``pitr``; one
idempotent, lz4-compressed producer serves every Kafka output and is flushed at the
end (and at SIGTERM), so a clean stop loses nothing.

The run ends when every replay has ended, after ``stop_after`` polls, or when ``stop``
is set (SIGTERM / Ctrl-C in the command). A source thread that fails with an error
ends the run with that error.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final, Protocol

import msgspec

from unifeed.core.errors import KafkaRuntimeError, UnifeedError
from unifeed.core.records import dead_letter_raw

from ._sources import Counters, DeadInput, Poll, Source
from ._tracker import SKIP_REASONS, Tracker

__all__ = ["IngestReport", "IngestRun", "LineSink", "Outputs", "dead_letter_line", "open_outputs"]

log = logging.getLogger("unifeed.ingest")

_GET_WAIT_S: Final = 0.2
_JOIN_S: Final = 5.0
_FLUSH_S: Final = 30.0
_encode: Final = msgspec.json.Encoder().encode


class LineSink(Protocol):
    """Somewhere lines go: a JSON-lines file or a Kafka topic partition."""

    def write(self, lines: list[bytes], pitr: int) -> None: ...


class FileSink:
    """Lines into a binary stream, one per line, flushed per poll."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def write(self, lines: list[bytes], pitr: int) -> None:
        if lines:
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()


class KafkaSink:
    """Lines into one partition, record timestamp = ``pitr``, through a shared producer."""

    def __init__(self, producer: Any, topic: str, partition: int, failures: list[Any]) -> None:
        self._producer = producer
        self._topic = topic
        self._partition = partition
        self._failures = failures

    def write(self, lines: list[bytes], pitr: int) -> None:
        produce = self._producer.produce
        topic, partition = self._topic, self._partition
        for line in lines:
            for _attempt in range(10_000):
                try:
                    produce(topic, line, None, partition, timestamp=pitr)
                    break
                except BufferError:
                    self._producer.poll(0.05)
            else:
                raise KafkaRuntimeError(f"kafka:{topic}: the producer queue stayed full", "_QUEUE_FULL")
        self._producer.poll(0)
        if self._failures:
            from unifeed.kafka.clients import kafka_error

            raise kafka_error(f"writing to kafka:{topic} failed", self._failures[0])


@dataclass
class Outputs:
    """The three outputs of a run, and what closes them."""

    control: LineSink
    surface: LineSink
    dead_letters: LineSink
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    producer: Any = None
    failures: list[Any] = field(default_factory=list)

    def flush(self) -> None:
        if self.producer is None:
            return
        left = self.producer.flush(_FLUSH_S)
        if self.failures:
            from unifeed.kafka.clients import kafka_error

            raise kafka_error("writing to Kafka failed", self.failures[0])
        if left:
            raise KafkaRuntimeError(
                f"{left} records not acknowledged by the broker within {_FLUSH_S:g} s",
                "_MSG_TIMED_OUT",
            )


@contextlib.contextmanager
def open_outputs(
    control: str,
    surface: str,
    dead_letter: str | None,
    *,
    kafka: Callable[[], tuple[str, dict[str, str]]] | None = None,
) -> Iterator[Outputs]:
    """Open the outputs named like elsewhere: a path (``-`` stdout) or ``kafka:TOPIC[:N]``.

    ``kafka()`` gives the bootstrap servers and extra settings, asked only when a Kafka
    output is named. Without ``dead_letter``: stderr, or ``<control topic>.dead-letter``
    when controlstream goes to Kafka.
    """
    if dead_letter is None and control.startswith("kafka:"):
        from unifeed.kafka.clients import parse_target

        dead_letter = f"kafka:{parse_target(control).topic}.dead-letter"
    names = {"control": control, "surface": surface, "dead_letters": dead_letter}
    with contextlib.ExitStack() as stack:
        producer: Any = None
        failures: list[Any] = []
        sinks: dict[str, LineSink] = {}
        for role, name in names.items():
            if name is None:
                sinks[role] = FileSink(sys.stderr.buffer)
            elif name.startswith("kafka:"):
                from unifeed.kafka.clients import parse_target

                target = parse_target(name)
                if producer is None:
                    producer = _producer(kafka, failures)
                    stack.callback(producer.flush, _FLUSH_S)
                sinks[role] = KafkaSink(producer, target.topic, target.partition, failures)
            else:
                from unifeed.core.unify import open_output

                sinks[role] = FileSink(stack.enter_context(open_output(name)))
        yield Outputs(sinks["control"], sinks["surface"], sinks["dead_letters"], stack,
                      producer, failures)  # fmt: skip


def _producer(kafka: Callable[[], tuple[str, dict[str, str]]] | None, failures: list[Any]) -> Any:
    from confluent_kafka import Producer

    from unifeed.core.errors import ConfigError
    from unifeed.kafka.clients import producer_config

    if kafka is None:
        raise ConfigError("a kafka: output needs Kafka settings")
    bootstrap, extra = kafka()

    def on_delivery(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(error)

    config = producer_config(bootstrap, extra, linger_ms=20)
    config.update({"delivery.report.only.error": True, "on_delivery": on_delivery})
    return Producer(config)


class IngestReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a run did."""

    polls: int
    states: int
    flights: int
    control: int
    surface: int
    dead_letters: int
    skipped: dict[str, int]
    counters: dict[str, int]


def dead_letter_line(dead: DeadInput, pitr: int) -> bytes:
    """``{"source", "line"?, "pitr", "reason", "raw" | "raw_b64"}`` (raw: the first bytes)."""
    record: dict[str, object] = {"source": dead.source}
    if dead.line is not None:
        record["line"] = dead.line
    record["pitr"] = pitr
    record["reason"] = dead.reason
    record.update(dead_letter_raw(dead.raw))
    return _encode(record)


class StatusLine:
    """``unifeed ingest`` progress on stderr every ``interval_s`` (0: never)."""

    def __init__(self, interval_s: float) -> None:
        self.interval = interval_s
        self.started = self.last = time.monotonic()
        self.last_out = 0

    def maybe_print(self, report: IngestReport, *, final: bool = False) -> None:
        if self.interval <= 0:
            return
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        out = report.control + report.surface
        span = now - (self.started if final else self.last)
        rate = (out - (0 if final else self.last_out)) / max(span, 1e-9)
        skipped = " ".join(f"{k}={v}" for k, v in report.skipped.items() if v)
        errors = " ".join(f"{k}={v}" for k, v in sorted(report.counters.items()))
        mode = "done" if final else "running"
        fields = {
            "command": "ingest", "mode": mode, "polls": report.polls, "states": report.states,
            "flights": report.flights, "control": report.control, "surface": report.surface,
            "rate": round(rate, 1), "dead": report.dead_letters,
            "skipped": {k: v for k, v in report.skipped.items() if v},
            "errors": dict(sorted(report.counters.items())),
        }  # fmt: skip
        # One record on "unifeed.status": a line of text, or JSON with these fields.
        logging.getLogger("unifeed.status").info(
            "%s",
            f"unifeed ingest {mode}: polls={report.polls} "
            f"states={report.states} flights={report.flights} control={report.control} "
            f"surface={report.surface} rate={rate:,.0f}/s dead={report.dead_letters}"
            + (f" skipped: {skipped}" if skipped else "")
            + (f" {errors}" if errors else ""),
            extra={"fields": fields, "final": final},
        )
        self.last = now
        self.last_out = out


@dataclass
class IngestRun:
    """The loop of one run; `report` may be read from another thread (metrics)."""

    tracker: Tracker
    outputs: Outputs
    sources: list[Source]
    polls: queue.Queue[Poll]
    stop: threading.Event
    counters: Counters
    stop_after: int | None = None
    status_interval_s: float = 2.0
    n_polls: int = 0
    n_control: int = 0
    n_surface: int = 0
    n_dead: int = 0

    def report(self) -> IngestReport:
        t = self.tracker
        return IngestReport(
            polls=self.n_polls,
            states=t.states,
            flights=t.flights,
            control=self.n_control,
            surface=self.n_surface,
            dead_letters=self.n_dead,
            skipped={k: t.skipped[k] for k in SKIP_REASONS},
            counters=self.counters.snapshot(),
        )

    def run(self) -> IngestReport:
        status = StatusLine(self.status_interval_s)
        for source in self.sources:
            source.start()
        ended = 0
        try:
            while not self.stop.is_set():
                try:
                    poll = self.polls.get(timeout=_GET_WAIT_S)
                except queue.Empty:
                    self._check_sources()
                    status.maybe_print(self.report())
                    continue
                if poll.end:
                    ended += 1
                    if ended >= len(self.sources):
                        break
                    continue
                self._handle(poll)
                status.maybe_print(self.report())
                if self.stop_after is not None and self.n_polls >= self.stop_after:
                    break
        finally:
            self.stop.set()
            for source in self.sources:
                source.join(_JOIN_S)
        self.outputs.flush()
        self._check_sources()
        report = self.report()
        status.maybe_print(report, final=True)
        return report

    def _check_sources(self) -> None:
        for source in self.sources:
            failure = source.failure
            if isinstance(failure, UnifeedError):
                raise failure
            if failure is not None:
                # One line, not a traceback: say which source and what happened.
                raise UnifeedError(f"{source.source}: {type(failure).__name__}: {failure}")

    def _handle(self, poll: Poll) -> None:
        tracker = self.tracker
        pitr = max(poll.received_ms, tracker.last_pitr)
        if poll.dead:
            self.outputs.dead_letters.write([dead_letter_line(d, pitr) for d in poll.dead], pitr)
            self.n_dead += len(poll.dead)
        if poll.snapshot is not None:
            batch = tracker.process(poll.snapshot, pitr)
        else:
            batch = tracker.keepalive(pitr)
        self.outputs.control.write(batch.control, batch.pitr)
        self.outputs.surface.write(batch.surface, batch.pitr)
        self.n_control += len(batch.control)
        self.n_surface += len(batch.surface)
        self.n_polls += 1
