"""The ``unifeed`` commands the demo runs as subprocesses, and what it reads from them.

`Command` starts one (this interpreter's unifeed, without the user's ``UNIFEED_*``
settings) and reads its stderr in a thread: ``combine``'s status lines become
`CombineStatus` (`parse_status`), the rest is kept as a tail for errors. `run_cli` runs
a short command to its end; `high_watermark` tells whether a topic has records yet.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from confluent_kafka import Consumer, KafkaException

from unifeed.core.errors import KafkaRuntimeError
from unifeed.kafka.clients import Target, consumer_config, watermarks

__all__ = [
    "STOP_S",
    "CombineStatus",
    "Command",
    "high_watermark",
    "parse_status",
    "run_cli",
    "serve_url",
]

#: How long a stopping subprocess (or thread) is given, each step.
STOP_S: Final = 10.0

_STATUS_LINE: Final = re.compile(r"^unifeed combine \[[^\]]*\] (?P<mode>[\w-]+): (?P<rest>.*)$")
_PAIR: Final = re.compile(r"([\w.-]+)=(\S+)")
_LAG_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class CombineStatus:
    """One parsed status line of ``unifeed combine``."""

    mode: str
    at: float
    out: int = 0
    rate: float = 0.0
    lag_s: dict[str, float] = field(default_factory=dict)
    queues: dict[str, str] = field(default_factory=dict)
    late: int = 0
    dead: int = 0
    commits: int = 0


def parse_status(line: str, at: float = 0.0) -> CombineStatus | None:
    """A combine status line as a `CombineStatus`, or None for any other line.

    >>> s = parse_status("unifeed combine [a] catchup: out=1200 rate=3,400/s "
    ...                  "controlstream-lag=7.5s surfacestream-lag=0.1m queues writer=1/2 "
    ...                  "annotator=0/3 late=0 dead=1 commits=9")
    >>> s.mode, s.out, s.rate, s.lag_s, s.queues["writer"], s.dead, s.commits
    ('catchup', 1200, 3400.0, {'controlstream': 7.5, 'surfacestream': 6.0}, '1/2', 1, 9)
    """
    match = _STATUS_LINE.match(line.strip())
    if match is None:
        return None
    status = CombineStatus(mode=match.group("mode"), at=at)
    for key, value in _PAIR.findall(match.group("rest")):
        with contextlib.suppress(ValueError):
            if key.endswith("-lag") and value[-1:] in _LAG_UNITS:
                status.lag_s[key[:-4]] = float(value[:-1]) * _LAG_UNITS[value[-1]]
            elif key == "rate":
                status.rate = float(value.removesuffix("/s").replace(",", ""))
            elif key in ("out", "late", "dead", "commits"):
                setattr(status, key, int(value))
            elif "/" in value:
                status.queues[key] = value
    return status


def _cli_environment() -> dict[str, str]:
    """This interpreter's unifeed, and none of the user's UNIFEED_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


class Command:
    """One ``unifeed`` subprocess whose stderr is read (and parsed) by a thread."""

    def __init__(self, name: str, arguments: Sequence[str]) -> None:
        self.name = name
        self.arguments = list(arguments)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "unifeed", *arguments],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_cli_environment(),
        )
        self.started = time.monotonic()
        self.status: CombineStatus | None = None
        self.statuses: list[CombineStatus] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.warnings: collections.deque[str] = collections.deque()
        self._reader = threading.Thread(target=self._read, name=f"demo-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stderr
        if stream is None:
            return
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            status = parse_status(line, time.monotonic())
            if status is not None:
                self.status = status
                self.statuses.append(status)
                continue
            self.tail.append(line)
            if " WARNING " in line or " ERROR " in line:
                self.warnings.append(line)

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no last commit."""
        if self.running():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_S)
        self._reader.join(timeout=STOP_S)

    def stop(self) -> int | None:
        """SIGTERM (commit and exit), SIGKILL after a while; the exit code."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_S)
        self._reader.join(timeout=STOP_S)
        return self.process.returncode

    def wait(self, timeout_s: float) -> int | None:
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=STOP_S)
        return code

    def explain(self) -> str:
        tail = "\n".join(f"    {line}" for line in list(self.tail)[-15:])
        return f"unifeed {self.name} exited with {self.process.returncode}:\n{tail}"


_SERVE_URL: Final = re.compile(r"unifeed serve: (http://\S+)")


def serve_url(command: Command) -> str | None:
    """The URL serve printed on its first line, once it has."""
    for line in list(command.tail):
        found = _SERVE_URL.search(line)
        if found:
            return found.group(1)
    return None


def run_cli(
    arguments: Sequence[str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess[bytes]:
    """A short ``unifeed`` command (``dump``), bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "unifeed", *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_cli_environment(),
        timeout=timeout_s,
        check=False,
    )


def high_watermark(bootstrap: str, topic: str) -> int:
    """The end offset of ``topic`` partition 0; 0 while it does not exist."""
    consumer = Consumer(consumer_config(bootstrap, fetch_wait_ms=10))
    try:
        return watermarks(consumer, Target(topic, 0))[1]
    except (KafkaRuntimeError, KafkaException):
        return 0
    finally:
        consumer.close()
