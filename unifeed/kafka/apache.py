"""A local Apache Kafka broker: the real one, from Maven Central, run by a JVM on this host.

``unifeed broker --kafka`` and the test suite's fixture both use it. It is one combined
broker+controller in KRaft mode (Kafka 4 has no ZooKeeper) on 127.0.0.1, with single-node
settings (replication factors and minimum in-sync replicas 1, the transaction-state log
included), storage in a fresh temporary directory that is deleted when it stops.

The jars (``org.apache.kafka:kafka_2.13`` |version| and its runtime dependencies) come
from a cache directory, ``~/.cache/unifeed/kafka-4.4.0/libs`` (``$XDG_CACHE_HOME`` is
honoured; ``UNIFEED_KAFKA_CACHE`` names another directory). `fill_cache` fills it once
with Maven (``kafka-local.pom.xml``, shipped in this package); afterwards only ``java`` is
needed.

Settings chosen for a broker that lives as long as a test run or a demo:

* ``log.retention.ms=-1``: nothing is deleted by age. Record timestamps are pitrs, which
  may be years old in a replay; Kafka's default (7 days, by record timestamp) would
  delete such a backlog minutes after it was loaded.
* ``auto.create.topics.enable=true`` with ``num.partitions=1``: a topic written before
  it was created gets one partition, as on most clusters; topics with more partitions
  are created explicitly (CreateTopics, which this broker answers).
* ``group.initial.rebalance.delay.ms=0`` and one partition for the offsets and
  transaction-state topics: groups and transactions are ready in about a second.
* 1 MiB log segments (the smallest Kafka accepts): offsets_for_times and retention work
  on many segments, as they do on a long-lived cluster, in a test-sized log.
* Kafka's own default ``log.message.timestamp.after.max.ms`` (one hour) is kept: a
  production broker rejects records stamped more than an hour ahead, and so does this one.

The JVM gets a modest heap (512 MiB) and is tied to its parent: on Linux it is killed
when the process that started it dies (``PR_SET_PDEATHSIG``), so that no broker outlives
a test run or a ``unifeed broker`` killed with SIGKILL; it runs in its own session, so a
Ctrl-C reaches the parent, which then stops it in order. (The kernel sends that signal
when the *thread* that started the JVM ends: start it from a thread that lives as long as
the broker should, such as the main thread.)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from unifeed.core.closing import Closing
from unifeed.core.errors import ConfigError, KafkaRuntimeError
from unifeed.kafka.foreground import run_until_signal

__all__ = [
    "KAFKA_VERSION",
    "LocalKafka",
    "cache_dir",
    "cache_filled",
    "fill_cache",
    "fill_command",
    "local_kafka_available",
    "run_local_kafka_foreground",
]

log = logging.getLogger("unifeed.broker.kafka")

KAFKA_VERSION: Final = "4.4.0"
POM: Final = Path(__file__).resolve().with_name("kafka-local.pom.xml")
#: Written last into the cache, after every jar: a cache without it is incomplete.
_COMPLETE: Final = ".complete"
_HEAP: Final = "512m"
_FILL_TIMEOUT_S: Final = 1800.0

#: The broker's log: warnings and worse, plus the line that says it has started.
_LOG4J2: Final = """\
Configuration:
  Appenders:
    File:
      name: FILE
      fileName: "{path}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: FILE
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
"""


def cache_dir() -> Path:
    """Where the jars are kept: ``UNIFEED_KAFKA_CACHE``, else the user cache directory."""
    explicit = os.environ.get("UNIFEED_KAFKA_CACHE", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "unifeed" / f"kafka-{KAFKA_VERSION}"


def _libs() -> Path:
    return cache_dir() / "libs"


def cache_filled() -> bool:
    """Whether the cache holds a complete set of jars."""
    return (_libs() / _COMPLETE).is_file()


def fill_command(output: Path | None = None) -> list[str]:
    """The Maven command that copies the jars into ``output`` (default: the cache)."""
    target = _libs() if output is None else output
    return [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={target}",
    ]


def _fill_hint() -> str:
    return " ".join(fill_command())


def local_kafka_available() -> tuple[bool, str]:
    """Whether `LocalKafka` can run here (``java``, and the cache or ``mvn``), and why not."""
    if shutil.which("java") is None:
        return False, "no java on PATH"
    if not cache_filled() and shutil.which("mvn") is None:
        return False, f"no mvn on PATH and no Apache Kafka {KAFKA_VERSION} in {cache_dir()}"
    return True, ""


def fill_cache(*, quiet: bool = False, timeout_s: float = _FILL_TIMEOUT_S) -> Path:
    """Fill the cache with Maven unless it is complete already; return the jar directory.

    Maven writes into a directory of its own next to the cache, which becomes the cache
    only once every jar is there, so an interrupted download is never taken for a
    complete one. Raises `ConfigError` (one line, with the command) when Maven is missing
    or fails.
    """
    libs = _libs()
    if cache_filled():
        return libs
    if shutil.which("mvn") is None:
        raise ConfigError(
            f"Apache Kafka {KAFKA_VERSION} is not in {libs} and there is no mvn on PATH "
            f"to fetch it; run: {_fill_hint()}"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=libs.parent))
    if not quiet:
        print(
            f"unifeed: fetching Apache Kafka {KAFKA_VERSION} with Maven into {libs} "
            "(once; later starts reuse it)",
            file=sys.stderr,
            flush=True,
        )
    try:
        try:
            done = subprocess.run(
                fill_command(partial),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"Maven did not fetch Apache Kafka {KAFKA_VERSION} within {timeout_s:g} s; "
                f"run: {_fill_hint()}"
            ) from None
        jars = list(partial.glob("kafka_2.13-*.jar"))
        if done.returncode != 0 or not jars:
            lines = (done.stdout + done.stderr).decode("utf-8", "replace").splitlines()
            errors = [line for line in lines if "ERROR" in line] or lines or ["no output"]
            raise ConfigError(
                f"Maven could not fetch Apache Kafka {KAFKA_VERSION} "
                f"(exit {done.returncode}: {errors[0].strip()[:200]}); run: {_fill_hint()}"
            )
        (partial / _COMPLETE).write_text(f"kafka_2.13 {KAFKA_VERSION}\n")
        if libs.exists():  # an incomplete cache from an older, interrupted layout
            shutil.rmtree(libs, ignore_errors=True)
        try:
            partial.rename(libs)
        except OSError:
            if not cache_filled():  # not a concurrent fill that won the race
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return libs


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux).

    libc is looked up here, in the parent: the child, between fork and exec, only calls
    the function (no import, no allocation that could wait on a lock another thread held
    at the fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    kill = int(signal.SIGKILL)

    def set_pdeathsig() -> None:
        prctl(1, kill, 0, 0, 0)  # PR_SET_PDEATHSIG

    return set_pdeathsig


_DIR_PREFIX: Final = "unifeed-kafka-"


def _sweep_orphans() -> None:
    """Delete the storage of brokers whose owner died without cleaning up (SIGKILL: the
    JVM died with it, its directory stayed)."""
    for path in Path(tempfile.gettempdir()).glob(_DIR_PREFIX + "*"):
        try:
            owner = int((path / "owner").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _quiet_log() -> Any:
    """librdkafka's log lines of the start-up probes, to a logger of their own (a broker
    still starting refuses connections; that is expected, not worth a warning on stderr)."""
    from unifeed.kafka.clients import RdkafkaLog

    probe = logging.getLogger("unifeed.broker.kafka.probe")
    probe.setLevel(logging.ERROR)  # "coordinator load in progress" while it starts
    return RdkafkaLog(probe)


def cluster_id(draw: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A KRaft cluster ID: a random UUID in URL-safe base64, never starting with ``-``.

    Like Kafka's own ``Uuid.randomUuid``, an ID with a leading ``-`` is drawn again:
    ``kafka-storage format -t -abc`` would read it as an option (one draw in 64).
    """
    while True:
        text = base64.urlsafe_b64encode(draw().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


class LocalKafka(Closing):
    """One Apache Kafka broker+controller on 127.0.0.1, in a JVM this object owns.

    >>> with LocalKafka() as kafka:  # doctest: +SKIP
    ...     kafka.bootstrap_servers
    '127.0.0.1:40123'

    `start` formats a fresh storage directory, starts the JVM on two free ports (the
    client listener and the controller's), and returns once the broker answers a
    metadata request (bounded by ``start_timeout_s``). `close` stops it (SIGTERM, then
    SIGKILL after ``stop_timeout_s``) and deletes the storage. Both are idempotent.
    ``settings`` override or add broker properties.
    """

    def __init__(
        self,
        *,
        settings: dict[str, str] | None = None,
        heap: str = _HEAP,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 20.0,
    ) -> None:
        self.settings = dict(settings or {})
        self.heap = heap
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.bootstrap_servers = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._lock = threading.Lock()

    # --- life cycle ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def log_path(self) -> Path | None:
        """The broker's log file (warnings and worse), while the broker exists."""
        return None if self._dir is None else self._dir / "broker.log"

    def start(self) -> LocalKafka:
        with self._lock:
            if self.process is not None:
                return self
            libs = fill_cache(quiet=False)
            if shutil.which("java") is None:
                raise ConfigError(
                    "the local Apache Kafka broker needs Java 17 or later (java on PATH)"
                )
            deadline = time.monotonic() + self.start_timeout_s
            last: KafkaRuntimeError | None = None
            for _attempt in range(3):  # a free port can be taken before the JVM binds it
                try:
                    self._start_once(libs, deadline)
                    return self
                except KafkaRuntimeError as exc:
                    last = exc
                    self._stop_locked()
                    if "Address already in use" not in str(exc):
                        break
            assert last is not None
            raise last

    def _start_once(self, libs: Path, deadline: float) -> None:
        _sweep_orphans()
        self._dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        (self._dir / "owner").write_text(f"{os.getpid()}\n")
        port, controller = _free_port(), _free_port()
        while controller == port:
            controller = _free_port()
        properties = self._properties(self._dir / "data", port, controller)
        config = self._dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        log4j = self._dir / "log4j2.yaml"
        log4j.write_text(_LOG4J2.format(path=self._dir / "broker.log"))
        java = [
            "java",
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            str(libs / "*"),
        ]
        formatted = subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(5.0, deadline - time.monotonic()),
            check=False,
            preexec_fn=_parent_death_signal(),
        )
        if formatted.returncode != 0:
            text = (formatted.stdout + formatted.stderr).decode("utf-8", "replace").strip()
            raise KafkaRuntimeError(
                f"formatting the Kafka storage failed (exit {formatted.returncode}): "
                f"{text.splitlines()[-1] if text else 'no output'}"
            )
        out = (self._dir / "stdout.log").open("wb")
        try:
            self.process = subprocess.Popen(
                [*java, "kafka.Kafka", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        finally:
            out.close()
        self.bootstrap_servers = f"127.0.0.1:{port}"
        self._wait_until_ready(deadline)

    def _properties(self, data: Path, port: int, controller: int) -> dict[str, str]:
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.segment.bytes": str(1 << 20),
            "log.retention.ms": "-1",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        properties.update(self.settings)
        return properties

    def _wait_until_ready(self, deadline: float) -> None:
        """Until the broker answers a metadata request naming itself, or it died, or time."""
        from confluent_kafka.admin import AdminClient

        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "logger": _quiet_log(),
            "log.connection.close": False,
            "reconnect.backoff.max.ms": 200,
        }
        admin = AdminClient(config)
        for _attempt in range(100_000):
            assert self.process is not None
            if self.process.poll() is not None:
                raise KafkaRuntimeError(
                    f"the local Apache Kafka broker exited with code {self.process.returncode} "
                    f"while starting: {self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaRuntimeError(
                    "the local Apache Kafka broker did not answer within "
                    f"{self.start_timeout_s:g} s: {self._log_tail()}"
                )
            try:
                metadata = admin.list_topics(timeout=min(2.0, remaining))
            except Exception:
                time.sleep(0.2)
                continue
            if metadata.brokers:
                self._warm_up_transactions(deadline)
                return

    def _warm_up_transactions(self, deadline: float) -> None:
        """Initialise one transactional producer: the broker creates its transaction-state
        topic and loads the coordinator now, so that the first real producer is not told
        "coordinator load in progress" (a warning in its log) while that happens."""
        from confluent_kafka import KafkaException, Producer

        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "transactional.id": f"unifeed-local-kafka-warm-up-{uuid.uuid4().hex[:8]}",
            "logger": _quiet_log(),
        }
        producer = Producer(config)
        try:
            producer.init_transactions(max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            raise KafkaRuntimeError(
                f"the local Apache Kafka broker did not initialise transactions: {exc}"
            ) from None
        finally:
            producer.flush(0)

    def _log_tail(self) -> str:
        for name in ("broker.log", "stdout.log"):
            path = None if self._dir is None else self._dir / name
            if path is None or not path.is_file():
                continue
            lines = [
                line.strip()
                for line in path.read_text("utf-8", "replace").splitlines()
                if "ERROR" in line or "Exception" in line
            ]
            if lines:
                return lines[0][:300]
        return "no error in its log"

    def close(self) -> None:
        """Stop the broker and delete its storage. Idempotent."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalKafka({self.bootstrap_servers!r}, {state})"


def run_local_kafka_foreground(out: IO[str] | None = None) -> int:
    """``unifeed broker --kafka``: start the local Apache Kafka, print its address, run
    until SIGINT or SIGTERM, then stop it. The first line of ``out`` (stdout) is the
    address alone; notes go to stderr. Returns the exit code (0; 1 if the broker died)."""
    available, why_not = local_kafka_available()
    if not available:
        raise ConfigError(
            f"unifeed broker --kafka needs Java 17+ and Apache Kafka {KAFKA_VERSION} "
            f"({why_not}); fill the cache with: {_fill_hint()}"
        )

    def describe(kafka: LocalKafka) -> tuple[str, str]:
        address = kafka.bootstrap_servers
        return address, (
            f"unifeed broker: Apache Kafka {KAFKA_VERSION} (KRaft, one node) listening "
            f"on {address}, pid {kafka.pid}, storage deleted when it stops.\n"
            f"  export UNIFEED_BOOTSTRAP_SERVERS={address}\n"
            "  Stop it with Ctrl-C or SIGTERM."
        )

    def check(kafka: LocalKafka) -> int | None:
        if kafka.running:
            return None
        print(
            f"unifeed broker: Apache Kafka exited on its own: {kafka._log_tail()}",
            file=sys.stderr,
            flush=True,
        )
        return 1

    return run_until_signal(LocalKafka, describe, check, out)
