"""The embedded broker: librdkafka's mock cluster, a real Kafka-protocol broker in memory.

It ships inside the confluent-kafka wheel (``test.mock.num.brokers``) and lives as long as
the client object that hosts it. Its limits (README): 5 MB per partition, topics
auto-created with 4 partitions, no CreateTopics, ``offsets_for_times`` answers -1,
``read_committed`` ignored and no producer fencing. Good for tests, demos and a laptop;
not for production.

Three ways to run one:

* `EmbeddedBroker` - in this process, as a context manager;
* `run_broker_foreground` - ``unifeed broker``: prints the address, runs until a signal
  (``unifeed broker --kafka`` runs Apache Kafka instead: `unifeed.kafka.apache`);
* `spawn_broker_process` - ``unifeed broker`` as a child process (a test can kill it).
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Final

from confluent_kafka import KafkaException, Producer

from unifeed.core.closing import Closing
from unifeed.core.errors import KafkaRuntimeError
from unifeed.kafka.clients import RdkafkaLog
from unifeed.kafka.foreground import run_until_signal

__all__ = ["EmbeddedBroker", "run_broker_foreground", "spawn_broker_process"]

log = logging.getLogger("unifeed.broker")

#: The broker's own log lines (connections coming and going, the "mock cluster enabled"
#: notice) go here instead of stderr; WARNING and worse still reach a default handler.
_MOCK_LOG: Final = RdkafkaLog(logging.getLogger("unifeed.broker.mock"))


class EmbeddedBroker(Closing):
    """An in-process Kafka-protocol broker on 127.0.0.1 (an ephemeral port).

    >>> with EmbeddedBroker() as broker:
    ...     broker.bootstrap_servers.startswith("127.0.0.1:")
    True

    It runs in this process (librdkafka's mock cluster: no JVM, no child process), so a
    test can start one of its own. A small daemon thread serves the broker's log lines to
    Python logging; `close` stops it and the broker (clients still connected see their
    connections drop). Not picklable; one object owns one broker.
    """

    def __init__(self, *, num_brokers: int = 1, start_timeout_s: float = 10.0) -> None:
        if num_brokers < 1:
            raise ValueError("num_brokers must be >= 1")
        self._host: Producer | None = Producer(
            {
                "test.mock.num.brokers": num_brokers,
                "logger": _MOCK_LOG,
                "log.connection.close": False,
            }
        )
        try:
            metadata = self._host.list_topics(timeout=start_timeout_s)
        except KafkaException as exc:
            self._host = None
            raise KafkaRuntimeError(f"the embedded broker did not start: {exc}") from None
        addresses = sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values())
        if not addresses:
            self._host = None
            raise KafkaRuntimeError("the embedded broker started without a listener")
        self.bootstrap_servers: str = ",".join(addresses)
        self._stop = threading.Event()
        self._logs = threading.Thread(
            target=self._serve_logs, name="unifeed-broker-log", daemon=True
        )
        self._logs.start()

    def _serve_logs(self) -> None:
        host = self._host
        while host is not None and not self._stop.wait(0.25):
            host.poll(0)

    @property
    def running(self) -> bool:
        """Whether the broker is still up (`close` not called yet)."""
        return self._host is not None

    def poll_logs(self) -> None:
        """Hand queued log lines to Python logging now (the thread does it every 0.25 s)."""
        if self._host is not None:
            self._host.poll(0)

    def close(self) -> None:
        """Stop the broker. Idempotent."""
        host, self._host = self._host, None
        if host is None:
            return
        self._stop.set()
        self._logs.join(timeout=5)
        host.poll(0)
        host.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed"
        return f"EmbeddedBroker({self.bootstrap_servers!r}, {state})"


def run_broker_foreground(out: IO[str] | None = None) -> int:
    """``unifeed broker``: start a broker, print its address, run until SIGINT or SIGTERM.

    The first line of ``out`` (stdout) is the address alone, flushed, so a script can read
    it; notes for people go to stderr. Returns the exit code (0).
    """

    def describe(broker: EmbeddedBroker) -> tuple[str, str]:
        address = broker.bootstrap_servers
        return address, (
            f"unifeed broker: embedded Kafka-protocol broker listening on {address} "
            "(in memory, at most 5 MB per partition).\n"
            f"  export UNIFEED_BOOTSTRAP_SERVERS={address}\n"
            "  Stop it with Ctrl-C or SIGTERM."
        )

    def check(broker: EmbeddedBroker) -> None:
        broker.poll_logs()

    return run_until_signal(EmbeddedBroker, describe, check, out)


def spawn_broker_process(
    timeout_s: float = 30.0,
    *,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    kafka: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``unifeed broker`` as a child process; return it and the address it prints.

    The child runs ``python -m unifeed broker`` (with ``--kafka`` when ``kafka``:
    Apache Kafka, `unifeed.kafka.apache`) with this interpreter and this copy of unifeed
    on its path. Stop it with ``terminate()`` (clean exit 0) or ``kill()``
    (a broker dying under its clients). Raises `KafkaRuntimeError` if it has not printed
    its address within ``timeout_s`` (the child is killed then).
    """
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "unifeed", "broker", *(["--kafka"] if kafka else [])],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )
    try:
        line = _read_first_line(process, timeout_s)
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return process, line


def _read_first_line(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    stdout = process.stdout
    if stdout is None:
        raise KafkaRuntimeError("unifeed broker: no stdout pipe")
    fd = stdout.fileno()
    deadline = time.monotonic() + timeout_s
    buffer = b""
    for _attempt in range(10_000):
        if b"\n" in buffer:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaRuntimeError(
                f"unifeed broker did not print its address within {timeout_s:g} s"
            )
        ready, _w, _x = select.select([fd], [], [], min(remaining, 0.5))
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            code = process.wait(timeout=10)
            raise KafkaRuntimeError(
                f"unifeed broker exited with code {code} before printing its address"
            )
        buffer += chunk
    address = buffer.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    if not address:
        raise KafkaRuntimeError("unifeed broker printed an empty address")
    return address
