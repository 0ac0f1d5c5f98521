"""Where serve reads the unified feed: a file, stdin, or a Kafka partition.

A source runs in its own thread and hands over batches of ``(position, line)`` through
a bounded queue; positions are line numbers (files) or offsets (Kafka, per partition),
increasing, and are what history stores as its position in the feed.

Kafka (one partition or several): the reader finds the last record's ``pitr``, seeks by pitr (as ``combine`` does,
`unifeed.kafka.seek.find_offset_for_pitr`) to ``last - window - lookback`` and reads to
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
from typing import IO, TYPE_CHECKING, Final

import msgspec

from unifeed.core.errors import ConfigError
from unifeed.core.unify import decompressed

if TYPE_CHECKING:
    from unifeed.kafka.clients import Target

log = logging.getLogger("unifeed.serve.source")

#: Lines per batch handed to the state.
BATCH: Final = 2_000


class Batch(msgspec.Struct, gc=False):
    positions: list[int]
    lines: list[bytes]
    #: Where each line came from (one Kafka partition each), when the source has several;
    #: None: every line is from `Source.describe`.
    sources: list[str] | None = None
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
            # gzip by its magic bytes, whatever the name (a corrupt archive: ConfigError)
            stream: IO[bytes] = decompressed(raw_stream, self.path)
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


def parse_partitions(text: str) -> list[Target]:
    """``kafka:TOPIC`` (partition 0), ``kafka:TOPIC:N`` or ``kafka:TOPIC:N,M,...``.

    >>> [str(t) for t in parse_partitions("kafka:uf:0,2")]
    ['kafka:uf:0', 'kafka:uf:2']
    """
    from unifeed.kafka.clients import parse_target

    head, sep, tail = text.rpartition(":")
    if sep and "," in tail and head.startswith("kafka:") and head.count(":") == 1:
        parts = [p.strip() for p in tail.split(",")]
        targets = [parse_target(f"{head}:{p}") for p in parts]
        if len({t.partition for t in targets}) != len(targets):
            raise ConfigError(f"{text!r} names a partition twice")
        return targets
    return [parse_target(text)]


class KafkaSource(Source):
    """Partitions of the unified-feed topic: rebuild from the window, then follow.

    With several partitions, each is sought and read from its own start; their records
    interleave (the fold keeps the newest state by ``pitr``), and every line carries its
    partition (``kafka:TOPIC:N``, also when there is one) so that history keeps a
    position per partition.
    """

    def __init__(
        self,
        text: str,
        bootstrap: str,
        extra: Mapping[str, object],
        *,
        window_ms: int,
        lookback_ms: int,
        history_positions: Callable[[], Mapping[str, int]],
    ) -> None:
        self.targets = parse_partitions(text)
        super().__init__(text)
        self.bootstrap = bootstrap
        self.extra = dict(extra)
        self.window_ms = window_ms
        self.lookback_ms = lookback_ms
        self.history_positions = history_positions
        self.start_offsets: dict[int, int] = {}

    def run(self) -> None:
        from confluent_kafka import Consumer, KafkaError

        from unifeed.kafka.clients import (
            consume_batch,
            consumer_config,
            kafka_error,
            last_record_before,
            watermarks,
        )
        from unifeed.kafka.seek import find_offset_for_pitr, record_pitr

        consumer = Consumer(consumer_config(self.bootstrap, self.extra))
        try:
            bounds = {t.partition: watermarks(consumer, t) for t in self.targets}
            # The rebuild starts at the same feed time in every partition: the window and
            # the lookback before the newest pitr of any of them.
            newest: int | None = None
            for target in self.targets:
                low, high = bounds[target.partition]
                if high > low:
                    last = last_record_before(
                        consumer, target, high, lambda m: record_pitr(m) is not None, low=low
                    )
                    pitr = record_pitr(last) if last is not None else None
                    if pitr is not None and (newest is None or pitr > newest):
                        newest = pitr
            stored = self.history_positions()
            names = {t.partition: str(t) for t in self.targets}
            pending: set[int] = set()
            for target in self.targets:
                low, high = bounds[target.partition]
                start = low
                if newest is not None and high > low:
                    wanted = max(0, newest - self.window_ms - self.lookback_ms)
                    start = find_offset_for_pitr(consumer, target, wanted).offset
                position = stored.get(names[target.partition])
                if position is not None and low <= position + 1 < start:
                    start = position + 1  # history missed records before the restart
                self.start_offsets[target.partition] = start
                if start < high:
                    pending.add(target.partition)
                log.info("%s: rebuilding from offset %d to %d", target, start, high)
            rebuilt = not pending
            if rebuilt:
                self._put(Batch([], [], rebuilt=True))
            consumer.assign([t.topic_partition(self.start_offsets[t.partition]) for t in self.targets])
            while not self.stop_event.is_set():
                messages = consume_batch(consumer, BATCH, 0.2)
                positions: list[int] = []
                lines: list[bytes] = []
                sources: list[str] = []
                for message in messages:
                    partition = message.partition()
                    if partition is None:
                        partition = -1
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(partition)
                            continue
                        raise kafka_error(f"serve reading {names.get(partition, self.describe)}", error)
                    value = message.value()
                    offset = message.offset()
                    if value is None or offset is None:
                        continue
                    positions.append(offset)
                    lines.append(value)
                    sources.append(names[partition])
                    if offset >= bounds[partition][1] - 1:
                        pending.discard(partition)
                finish = not pending and not rebuilt
                if lines or finish:
                    batch = Batch(positions, lines, sources, rebuilt=finish)
                    if not self._put(batch):
                        return
                    rebuilt = rebuilt or finish
        finally:
            consumer.close()
