"""Where readsb responses come from: HTTP polling, a file re-read, a replay, an SBS socket.

Each live source is a thread that owns its connection and hands `Poll` values to the run
loop through one bounded queue (a full queue makes the source wait: back-pressure). A
source that fails keeps trying on its own schedule and never stops the others:

* HTTP (``http://``, ``https://``): a GET every ``interval`` (fixed rate), ``gzip``
  accepted, ``timeout`` per request; 429 waits for ``Retry-After`` (seconds or a date;
  without it, the backoff); 5xx, timeouts and refused connections back off exponentially
  from 1 s up to max(interval, 60 s), with jitter (each wait is 50-100% of the step);
  bodies over 256 MB are refused. Every attempt that fails is logged and counted;
* a file path (a receiver's ``aircraft.json``): read every ``interval``; a missing or
  unreadable file is logged and counted, and read again next time;
* ``sbs://HOST:PORT``: BaseStation lines, aggregated by `SbsDecoder`, a snapshot every
  ``interval``; a lost or refused connection is retried with the same backoff;
* a replay file: one recorded response per line, paced by their ``now`` at ``speed``
  times real time (0: as fast as they can be processed), received at their own ``now``
  so that a replay is deterministic. The end of the file ends the run.

A body that is not a readsb response (`BadResponse`), or an SBS line that is not a
valid message, travels as a `DeadInput` for the dead-letter output.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import logging
import queue
import random
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from ._readsb import BadResponse, Snapshot, decode_response
from ._sbs import SbsDecoder

__all__ = [
    "Backoff",
    "Counters",
    "DeadInput",
    "FileSource",
    "HttpSource",
    "Poll",
    "ReplaySource",
    "SbsSource",
    "Source",
    "parse_retry_after",
]

log = logging.getLogger("unifeed.ingest")

_MAX_BODY: Final = 256 << 20
_RAW_BYTES: Final = 256
_PUT_WAIT_S: Final = 0.2
_USER_AGENT: Final = "unifeed-ingest"


class DeadInput(msgspec.Struct, frozen=True, gc=False):
    """Input that could not be used: where from, why, and its first bytes."""

    source: str
    reason: str
    raw: bytes
    line: int | None = None


class Poll(msgspec.Struct, frozen=True, gc=False):
    """What a source hands on: a decoded response or bad input, or the end of a replay."""

    source: str
    received_ms: int
    snapshot: Snapshot | None = None
    dead: list[DeadInput] = msgspec.field(default_factory=list)
    end: bool = False


class Counters:
    """Counters shared by the sources and the run loop (under a lock: several writers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Backoff:
    """Exponential backoff with jitter: 1 s, 2 s, 4 s ... up to ``cap_s``, each 50-100%.

    >>> b = Backoff(cap_s=4, rng=random.Random(1))
    >>> [round(b.next_delay(), 2) for _ in range(5)]
    [0.57, 1.85, 3.53, 2.51, 2.99]
    """

    def __init__(self, cap_s: float, rng: random.Random | None = None) -> None:
        self._cap = max(cap_s, 1.0)
        self._step = 1.0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = self._step * self._rng.uniform(0.5, 1.0)
        self._step = min(self._step * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._step = 1.0


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date).

    >>> parse_retry_after("7", 0.0), parse_retry_after("soon", 0.0)
    (7.0, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0)
    10.0
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now_s, 0.0)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _decode(source: str, body: bytes, line: int | None = None) -> tuple[Snapshot | None, list[DeadInput]]:
    try:
        return decode_response(body), []
    except BadResponse as exc:
        return None, [DeadInput(source, exc.reason, body[:_RAW_BYTES], line)]


class Source(threading.Thread):
    """A thread that hands `Poll` values to ``out`` until ``stop`` is set."""

    def __init__(
        self,
        name: str,
        out: queue.Queue[Poll],
        stop: threading.Event,
        counters: Counters,
        *,
        interval_s: float,
        clock: Callable[[], int] = _wall_ms,
    ) -> None:
        super().__init__(name=f"ingest {name}", daemon=True)
        self.source = name
        self.out = out
        self.stop = stop
        self.counters = counters
        self.interval_s = interval_s
        self.clock = clock
        self.backoff = Backoff(max(interval_s, 60.0))
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # handed to the run loop, which reports it
            self.failure = exc
            log.error("%s: stopped: %s", self.source, exc)

    def work(self) -> None:
        raise NotImplementedError

    def put(self, poll: Poll) -> bool:
        """Hand on a poll, waiting while the queue is full; False once stopped."""
        while not self.stop.is_set():
            try:
                self.out.put(poll, timeout=_PUT_WAIT_S)
                return True
            except queue.Full:
                continue
        return False

    def failed(self, what: str, counter: str, delay_s: float) -> None:
        self.counters.add(counter)
        log.warning("%s: %s; next try in %.1f s", self.source, what, delay_s)


class _Schedule:
    """Fixed-rate ticks: the next one ``interval`` after the last, never in the past."""

    def __init__(self, interval_s: float) -> None:
        self.interval = interval_s
        self.next_at = time.monotonic()

    def wait(self, stop: threading.Event) -> bool:
        """Sleep until the tick (False when stopped meanwhile)."""
        return not stop.wait(max(self.next_at - time.monotonic(), 0.0))

    def advance(self) -> None:
        self.next_at = max(self.next_at + self.interval, time.monotonic())

    def delay(self, seconds: float) -> None:
        self.next_at = time.monotonic() + seconds


class _BadBody(Exception):
    def __init__(self, reason: str, raw: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class HttpSource(Source):
    """Polls a readsb-format URL (see the module doc for the error handling)."""

    def __init__(self, url: str, *args: object, timeout_s: float = 10.0, **kwargs: object) -> None:
        super().__init__(url, *args, **kwargs)  # type: ignore[arg-type]
        self.url = url
        self.timeout_s = timeout_s

    def work(self) -> None:
        schedule = _Schedule(self.interval_s)
        while schedule.wait(self.stop):
            try:
                body = self._fetch()
            except urllib.error.HTTPError as exc:
                if exc.code == 429:
                    wait = parse_retry_after(exc.headers.get("Retry-After"), time.time())
                    delay = wait if wait is not None else self.backoff.next_delay()
                    delay = min(max(delay, 0.0), 3600.0)
                    self.failed("429 Too Many Requests", "http_429", delay)
                else:
                    delay = self.backoff.next_delay()
                    self.failed(f"HTTP {exc.code} {exc.reason}", f"http_{exc.code // 100}xx", delay)
                schedule.delay(delay)
                continue
            except (http.client.IncompleteRead, _BadBody) as exc:
                # The body came, but not whole: a dead letter, and the next poll goes on.
                if isinstance(exc, http.client.IncompleteRead):
                    missing = f"truncated transfer: {len(exc.partial)} bytes, {exc.expected} missing"
                    exc = _BadBody(missing, exc.partial)
                letter = DeadInput(self.url, exc.reason, exc.raw[:_RAW_BYTES])
                if not self.put(Poll(self.url, self.clock(), None, [letter])):
                    return
                schedule.advance()
                continue
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                delay = self.backoff.next_delay()
                self.failed(f"request failed ({reason})", "http_unreachable", delay)
                schedule.delay(delay)
                continue
            received = self.clock()
            self.backoff.reset()
            snapshot, dead = _decode(self.url, body)
            if not self.put(Poll(self.url, received, snapshot, dead)):
                return
            schedule.advance()

    def _fetch(self) -> bytes:
        request = urllib.request.Request(
            self.url, headers={"Accept-Encoding": "gzip", "User-Agent": _USER_AGENT}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
            encoding = (reply.headers.get("Content-Encoding") or "").lower()
            if reply.length is not None:
                if reply.length > _MAX_BODY:
                    raise _BadBody(f"body of {reply.length} bytes, over 256 MB: not read", b"")
                # All of it: a connection that ends early raises IncompleteRead.
                body: bytes = reply.read()
            else:
                parts: list[bytes] = []
                size = 0
                while chunk := reply.read(1 << 20):
                    size += len(chunk)
                    if size > _MAX_BODY:
                        raise _BadBody("body over 256 MB: not read further", (parts[0] if parts else chunk)[:_RAW_BYTES])
                    parts.append(chunk)
                body = b"".join(parts)
        if encoding == "gzip":
            try:
                return gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                raise _BadBody(f"truncated or invalid gzip body ({exc})", body) from None
        return body


class FileSource(Source):
    """Reads a file (a receiver's ``aircraft.json``) every interval."""

    def __init__(self, path: str, *args: object, **kwargs: object) -> None:
        super().__init__(path, *args, **kwargs)  # type: ignore[arg-type]
        self.path = Path(path)

    def work(self) -> None:
        schedule = _Schedule(self.interval_s)
        missing = False
        while schedule.wait(self.stop):
            schedule.advance()
            try:
                body = self.path.read_bytes()
            except OSError as exc:
                self.counters.add("file_unreadable")
                if not missing:
                    log.warning("%s: cannot read (%s); reading again every interval",
                                self.source, exc.strerror or exc)  # fmt: skip
                missing = True
                continue
            missing = False
            snapshot, dead = _decode(self.source, body)
            if not self.put(Poll(self.source, self.clock(), snapshot, dead)):
                return


class ReplaySource(Source):
    """Recorded responses, one per line, paced by their ``now`` at ``speed``."""

    def __init__(self, path: str, *args: object, speed: float = 1.0, **kwargs: object) -> None:
        super().__init__(path, *args, **kwargs)  # type: ignore[arg-type]
        self.path = Path(path)
        self.speed = speed

    def work(self) -> None:
        started = time.monotonic()
        first_ms: int | None = None
        last_ms = 0
        with self.path.open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                if self.stop.is_set():
                    return
                if not line.strip():
                    continue
                snapshot, dead = _decode(self.source, line.rstrip(b"\r\n"), number)
                if snapshot is not None:
                    last_ms = max(last_ms, snapshot.now_ms)
                    if first_ms is None:
                        first_ms = snapshot.now_ms
                    if self.speed > 0:
                        due = started + (snapshot.now_ms - first_ms) / 1000 / self.speed
                        if self.stop.wait(max(due - time.monotonic(), 0.0)):
                            return
                if not self.put(Poll(self.source, last_ms, snapshot, dead)):
                    return
        self.put(Poll(self.source, last_ms, end=True))


class SbsSource(Source):
    """BaseStation lines from ``host:port``, a snapshot every interval; reconnects with backoff."""

    def __init__(self, host: str, port: int, *args: object, **kwargs: object) -> None:
        super().__init__(f"sbs://{host}:{port}", *args, **kwargs)  # type: ignore[arg-type]
        self.host = host
        self.port = port
        self.decoder = SbsDecoder()
        self._dead: list[DeadInput] = []

    def _hand_on(self) -> bool:
        now = self.clock()
        dead, self._dead = self._dead, []
        return self.put(Poll(self.source, now, self.decoder.snapshot(now), dead))

    def work(self) -> None:
        schedule = _Schedule(self.interval_s)
        schedule.advance()
        while not self.stop.is_set():
            try:
                conn = socket.create_connection((self.host, self.port), timeout=5.0)
            except OSError as exc:
                delay = self.backoff.next_delay()
                self.failed(f"cannot connect ({exc.strerror or exc})", "sbs_unreachable", delay)
                if not self._idle(delay, schedule):
                    return
                continue
            log.info("%s: connected", self.source)
            try:
                if not self._read(conn, schedule):
                    return
            finally:
                conn.close()
            delay = self.backoff.next_delay()
            self.failed("connection closed", "sbs_disconnects", delay)
            if not self._idle(delay, schedule):
                return

    def _idle(self, delay_s: float, schedule: _Schedule) -> bool:
        """Wait ``delay_s`` while still handing on snapshots on schedule; False when stopped."""
        until = time.monotonic() + delay_s
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= until:
                return True
            if now >= schedule.next_at:
                schedule.advance()
                if not self._hand_on():
                    return False
                continue
            self.stop.wait(min(until, schedule.next_at) - now)
        return False

    def _read(self, conn: socket.socket, schedule: _Schedule) -> bool:
        """Read until the connection ends (True) or the run stops (False)."""
        conn.settimeout(0.2)
        pending = b""
        dead = self._dead
        while not self.stop.is_set():
            try:
                chunk = conn.recv(1 << 16)
            except TimeoutError:
                chunk = None
            except OSError as exc:
                log.warning("%s: read failed (%s)", self.source, exc.strerror or exc)
                return True
            if chunk == b"":
                return True
            if chunk:
                self.backoff.reset()
                received = self.clock()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > 4096:
                    dead.append(DeadInput(self.source, "SBS line longer than 4096 bytes",
                                          pending[:_RAW_BYTES]))  # fmt: skip
                    pending = b""
                for line in lines:
                    reason = self.decoder.feed(line, received)
                    if reason is not None:
                        dead.append(DeadInput(self.source, reason, line[:_RAW_BYTES].rstrip(b"\r")))
            if time.monotonic() >= schedule.next_at:
                schedule.advance()
                if not self._hand_on():
                    return False
                dead = self._dead
        return False
