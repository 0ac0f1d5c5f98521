"""Where serve reads the unified feed: a file, stdin, or a Kafka partition.

A source runs in its own thread and hands over batches of ``(position, line)`` through
a bounded queue; positions are line numbers (files) or offsets (Kafka), increasing, and
are what history stores as its position in the feed.

Kafka: the reader finds the last record's ``pitr``, seeks by pitr (as ``combine`` does,
`unifeed._kafkautil.seek_offset_for_pitr`) to ``last - window - lookback`` and reads to
the end of the partition as it was at the start; then state is *rebuilt* and the reader
follows live. The lookback (default 6 h) exists for flight data only: a flightplan, and
with it a flight's access level, is filed long before its positions, and without it a
restricted flight would be judged public after a restart. History may ask to start
earlier (its own position, when the database missed records before the restart): the
reader then starts there.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Final

import msgspec

from .._errors import ConfigError, KafkaRuntimeError

log = logging.getLogger("unifeed.serve.source")

#: Lines per batch handed to the state.
BATCH: Final = 2_000


class Batch(msgspec.Struct, gc=False):
    positions: list[int]
    lines: list[bytes]
    #: True on the batch that completes the rebuild (the end of a file, the partition's
    #: end as of the start); every later batch is live.
    rebuilt: bool = False


class Source:
    """A reader thread feeding a bounded queue; `stop` ends it."""

    def __init__(self, describe: str) -> None:
        self.describe = describe
        self.batches: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=32)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._guarded, name="unifeed-serve-source", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout_s)

    def _put(self, item: Batch | BaseException) -> bool:
        """Hand over, waiting while the queue is full; False once stopped."""
        while not self.stop_event.is_set():
            try:
                self.batches.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self._put(exc)

    def run(self) -> None:
        raise NotImplementedError


class LineSource(Source):
    """A JSON-lines file, stdin or a pipe.

    A regular file is the whole feed: the rebuild is complete at its end. Stdin and pipes
    are read as a live stream: each read hands on the complete lines it got at once, and
    the rebuild is complete the first time nothing more is waiting (or at the end).
    """

    def __init__(self, path: str) -> None:
        super().__init__("stdin" if path == "-" else str(Path(path).resolve()))
        self.path = path
        if path != "-" and not Path(path).exists():
            raise ConfigError(f"--input {path!r}: no such file")
        if path != "-" and Path(path).is_dir():
            raise ConfigError(f"--input {path!r} is a directory, not a file")

    def run(self) -> None:
        if self.path == "-":
            self._stream(sys.stdin.buffer.fileno())
            return
        if not Path(self.path).is_file():
            fd = os.open(self.path, os.O_RDONLY)
            try:
                self._stream(fd)
            finally:
                os.close(fd)
            return
        with open(self.path, "rb") as raw_stream:
            stream: IO[bytes] = raw_stream
            if self.path.endswith(".gz"):
                import gzip

                stream = gzip.open(raw_stream)  # type: ignore[assignment]  # noqa: SIM115
            positions: list[int] = []
            lines: list[bytes] = []
            for number, raw in enumerate(stream, start=1):
                line = raw.strip()
                if not line:
                    continue
                positions.append(number)
                lines.append(line)
                if len(lines) >= BATCH:
                    if not self._put(Batch(positions, lines)):
                        return
                    positions, lines = [], []
            self._put(Batch(positions, lines, rebuilt=True))

    def _stream(self, fd: int) -> None:
        import select

        number = 0
        pending = b""
        rebuilt = False
        while not self.stop_event.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                if not rebuilt:
                    rebuilt = True
                    if not self._put(Batch([], [], rebuilt=True)):
                        return
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            positions: list[int] = []
            lines: list[bytes] = []
            for raw in complete:
                number += 1
                line = raw.strip()
                if line:
                    positions.append(number)
                    lines.append(line)
            # Caught up the first time the pipe holds nothing more right now.
            caught_up = not rebuilt and not select.select([fd], [], [], 0)[0]
            if (lines or caught_up) and not self._put(Batch(positions, lines, rebuilt=caught_up)):
                return
            rebuilt = rebuilt or caught_up
        tail = pending.strip()
        last = Batch([number + 1], [tail]) if tail else Batch([], [])
        last.rebuilt = True
        self._put(last)


class KafkaSource(Source):
    """One partition of the unified-feed topic: rebuild from the window, then follow."""

    def __init__(
        self,
        text: str,
        bootstrap: str,
        extra: Mapping[str, object],
        *,
        window_ms: int,
        lookback_ms: int,
        history_position: Callable[[], int | None],
    ) -> None:
        from .._kafkautil import parse_target

        self.target = parse_target(text)
        super().__init__(str(self.target))
        self.bootstrap = bootstrap
        self.extra = dict(extra)
        self.window_ms = window_ms
        self.lookback_ms = lookback_ms
        self.history_position = history_position
        self.start_offset: int | None = None

    def run(self) -> None:
        from confluent_kafka import Consumer, KafkaError

        from .._kafkautil import (
            consume_batch,
            consumer_config,
            kafka_error,
            last_record_before,
            record_pitr,
            seek_offset_for_pitr,
            watermarks,
        )

        consumer = Consumer(consumer_config(self.bootstrap, self.extra))
        try:
            low, high = watermarks(consumer, self.target)
            start = low
            if high > low:
                last = last_record_before(
                    consumer, self.target, high, lambda m: record_pitr(m) is not None, low=low
                )
                last_pitr = record_pitr(last) if last is not None else None
                if last_pitr is not None:
                    target_pitr = max(0, last_pitr - self.window_ms - self.lookback_ms)
                    start = seek_offset_for_pitr(consumer, self.target, target_pitr)
            stored = self.history_position()
            if stored is not None and low <= stored + 1 < start:
                start = stored + 1  # history missed records before the restart
            self.start_offset = start
            log.info("%s: rebuilding from offset %d to %d", self.target, start, high)
            rebuilt = start >= high
            if rebuilt:
                self._put(Batch([], [], rebuilt=True))
            consumer.assign([self.target.topic_partition(start)])
            while not self.stop_event.is_set():
                messages = consume_batch(consumer, BATCH, 0.2)
                positions: list[int] = []
                lines: list[bytes] = []
                at_end = False
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            at_end = True
                            continue
                        raise kafka_error(f"serve reading {self.target}", error)
                    value = message.value()
                    offset = message.offset()
                    if value is None or offset is None:
                        continue
                    positions.append(offset)
                    lines.append(value)
                    if offset >= high - 1:
                        at_end = True
                finish = at_end and not rebuilt
                if lines or finish:
                    if not self._put(Batch(positions, lines, rebuilt=finish)):
                        return
                    rebuilt = rebuilt or finish
        except KafkaRuntimeError:
            raise
        finally:
            consumer.close()
