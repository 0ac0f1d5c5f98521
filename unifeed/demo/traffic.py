"""The demo's traffic: simulated, moved to the wall clock and played into the broker.

`simulate_traffic` runs the simulator; `compress_traffic` squeezes simulated time by
``speed`` into wall time from ``t0`` (``pitr' = t0 + (pitr - base) / speed``, and
``clock`` likewise: `compress_time`) and adds the keepalives that close ``combine``'s
inputs; `TrafficPlayer` produces each message when the wall clock reaches its ``pitr``.
`check_size` refuses traffic that would not fit one partition of the embedded broker.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Unpack

from confluent_kafka import KafkaError, Message, Producer

from unifeed.core.errors import ConfigError, KafkaRuntimeError
from unifeed.core.records import CONTROLSTREAM, SURFACESTREAM
from unifeed.kafka.clients import producer_config
from unifeed.sim.traffic import TrafficArgs, iter_traffic

__all__ = [
    "TOPICS",
    "TRAILING_KEEPALIVES",
    "Traffic",
    "TrafficPlayer",
    "check_size",
    "compress_time",
    "compress_traffic",
    "now_ms",
    "simulate_traffic",
]

#: The topic each input feed is played into (partition 0).
TOPICS: Final[dict[str, str]] = {
    CONTROLSTREAM: "controlstream",
    SURFACESTREAM: "surfacestream",
}
#: Keepalives per feed after the last message, one a second past it.
TRAILING_KEEPALIVES: Final = 3
#: The lz4 ratio the size check assumes for simulated JSON lines on the broker: below
#: what lz4 achieves on them, so the estimate of the stored size errs on the large side.
_LZ4_RATIO: Final = 2.5
#: What one partition of the embedded broker keeps before dropping the oldest.
_RETENTION_BYTES: Final = 5_000_000

_TIME_FIELD: Final = re.compile(rb'"(pitr|clock)":(-?\d+)')


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def compress_time(line: bytes, base: int, t0: int, speed: float) -> bytes:
    """``pitr`` and ``clock`` of one simulated line moved to ``t0``, ``speed`` times faster.

    >>> compress_time(b'{"type":"position","pitr":1016,"clock":996}', 1000, 50, 8)
    b'{"type":"position","pitr":52,"clock":49}'
    """

    def move(match: re.Match[bytes]) -> bytes:
        value = int(match.group(2))
        return b'"%s":%d' % (match.group(1), t0 + int((value - base) // speed))

    return _TIME_FIELD.sub(move, line)


def _keepalive(pitr: int) -> bytes:
    return b'{"type":"keepalive","pitr":%d}' % pitr


@dataclass
class Traffic:
    """The messages to play, in play order, with their (compressed) pitr."""

    events: list[tuple[str, int, bytes]]
    end_pitr: int

    def lines(self, feed: str) -> list[bytes]:
        return [line for f, _, line in self.events if f == feed]

    def size(self, feed: str) -> int:
        return sum(len(line) for f, _, line in self.events if f == feed)


def simulate_traffic(**traffic: Unpack[TrafficArgs]) -> list[tuple[str, int, bytes]]:
    """The simulated messages, ``(feed, pitr, line)`` in play order."""
    try:
        return list(iter_traffic(**traffic))
    except ValueError as exc:  # the simulator's own argument checks
        raise ConfigError(str(exc)) from None


def check_size(simulated: Iterable[tuple[str, int, bytes]]) -> None:
    """`ConfigError` unless the output (both feeds) fits one partition of the broker."""
    total = sum(len(line) for _, _, line in simulated)
    if total / _LZ4_RATIO > 0.8 * _RETENTION_BYTES:
        raise ConfigError(
            f"{total / 1e6:.1f} MB of output (about {total / _LZ4_RATIO / 1e6:.1f} MB "
            "compressed) would not fit the embedded broker, which keeps 5 MB per partition; "
            "lower --minutes, --rate or --airports"
        )


def compress_traffic(
    simulated: Iterable[tuple[str, int, bytes]], base: int, t0: int, speed: float
) -> Traffic:
    """Simulated traffic moved to start at ``t0``, ``speed`` times faster, with the
    trailing keepalives that close ``combine``'s inputs (past ``--stop-at``)."""
    events = [
        (feed, t0 + int((pitr - base) // speed), compress_time(line, base, t0, speed))
        for feed, pitr, line in simulated
    ]
    end = max(pitr for _, pitr, _ in events)
    # `unifeed mappings` forwards every control keepalive, so these close all three inputs.
    for k in range(1, TRAILING_KEEPALIVES + 1):
        for feed in (CONTROLSTREAM, SURFACESTREAM):
            events.append((feed, end + 1000 * k, _keepalive(end + 1000 * k)))
    return Traffic(events=events, end_pitr=end)


class TrafficPlayer(threading.Thread):
    """Produces each message when the wall clock reaches its pitr (record timestamp = pitr)."""

    def __init__(self, bootstrap: str, traffic: Traffic, stop: threading.Event) -> None:
        super().__init__(name="demo-traffic", daemon=True)
        self.bootstrap = bootstrap
        self.traffic = traffic
        self.stop = stop
        self.produced: dict[str, int] = {CONTROLSTREAM: 0, SURFACESTREAM: 0}
        self.behind_ms = 0
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._failures: list[KafkaError] = []

    def _on_failure(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(error)

    def run(self) -> None:
        try:
            self._play()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    def _play(self) -> None:
        config = producer_config(self.bootstrap, compression="lz4", linger_ms=5)
        config.update({"delivery.report.only.error": True, "on_delivery": self._on_failure})
        producer = Producer(config)
        trailing_from = len(self.traffic.events) - 2 * TRAILING_KEEPALIVES
        for index, (feed, pitr, line) in enumerate(self.traffic.events):
            if index >= trailing_from:
                # The closing keepalives need not wait for their pitr.
                if self.stop.wait(0.1):
                    return
            else:
                ahead = pitr - now_ms()
                if ahead > 2:
                    self.behind_ms = 0
                    producer.poll(0)
                    if self.stop.wait(ahead / 1000):
                        return
                else:
                    self.behind_ms = max(-ahead, 0)
            for _attempt in range(1000):
                try:
                    producer.produce(TOPICS[feed], line, partition=0, timestamp=pitr)
                    break
                except BufferError:
                    producer.poll(0.01)
            else:
                raise KafkaRuntimeError(f"the producer queue for {TOPICS[feed]} stayed full")
            self.produced[feed] += 1
            if self._failures:
                raise KafkaRuntimeError(f"producing traffic failed: {self._failures[0].str()}")
        if producer.flush(30):
            raise KafkaRuntimeError("traffic not acknowledged by the broker within 30 s")
        if self._failures:
            raise KafkaRuntimeError(f"producing traffic failed: {self._failures[0].str()}")
