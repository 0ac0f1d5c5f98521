"""Prometheus metrics of a running command (``--metrics-port``), read at scrape time.

The runtime keeps its counters in its own state; nothing here is touched on the hot
path. A scrape calls the ``collect`` function the command hands to `MetricsServer`, which
returns a `MetricsSnapshot`, and turns it into these series (a custom collector on a
private `CollectorRegistry`, so no process or platform metrics of the default registry
leak in, and two servers in one process do not clash):

* ``unifeed_info{command, unifeed_instance, version}`` gauge, always 1: who is talking;
* ``unifeed_messages_in_total{feed}``: input messages read;
* ``unifeed_messages_out_total``: output messages written;
* ``unifeed_dead_letters_total{reason}``: invalid input sent to the dead-letter sink;
* ``unifeed_unmapped_total``: aircraft ground positions written without a flight ID;
* ``unifeed_annotated_total``: aircraft ground positions annotated with their flight;
* ``unifeed_late_total``: messages emitted after a later one (real time only);
* ``unifeed_checkpoint_commits_total``, ``unifeed_transaction_aborts_total``;
* ``unifeed_mode{mode}`` gauge: 1 for the current mode (``starting``, ``realtime``,
  ``catchup``), 0 for the others;
* ``unifeed_lag_seconds{feed}`` gauge: wall clock minus the pitr of the feed's last
  message read;
* ``unifeed_queue_depth{queue}`` gauge: batches waiting in each internal queue.

The unifeed instance is a label of ``unifeed_info`` only (``unifeed_instance``: Prometheus
keeps ``instance`` for the scrape target), the usual "info metric" pattern: join on it
when a dashboard needs it.

>>> server = MetricsServer(0, lambda: MetricsSnapshot(messages_out=7),
...                        command="combine", instance="uf-a")
>>> server.start()
>>> import urllib.request
>>> with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as reply:
...     text = reply.read().decode()
>>> "unifeed_messages_out_total 7.0" in text
True
>>> server.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Final
from wsgiref.simple_server import WSGIServer

import msgspec
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from unifeed.core.errors import ConfigError

__all__ = [
    "MODES",
    "MetricsServer",
    "MetricsSnapshot",
    "UnifeedCollector",
    "snapshot_from_counters",
]

log = logging.getLogger("unifeed.metrics")

#: The values of ``MetricsSnapshot.mode``; ``unifeed_mode`` has one series for each.
MODES: Final[tuple[str, ...]] = ("starting", "realtime", "catchup")
_HOST: Final = "127.0.0.1"


class MetricsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What a command reports at one scrape. Counters only grow over a process's life.

    ``dead_letters`` is keyed by reason category, ``lag_ms`` by feed (wall clock minus
    the pitr of the last message read from it), ``queue_depth`` by queue name.
    """

    messages_in: dict[str, int] = msgspec.field(default_factory=dict)
    messages_out: int = 0
    dead_letters: dict[str, int] = msgspec.field(default_factory=dict)
    unmapped: int = 0
    annotated: int = 0
    late: int = 0
    mode: str = "starting"
    lag_ms: dict[str, int] = msgspec.field(default_factory=dict)
    queue_depth: dict[str, int] = msgspec.field(default_factory=dict)
    checkpoint_commits: int = 0
    transaction_aborts: int = 0


def snapshot_from_counters(
    counters: Mapping[str, int],
    *,
    lag_pitr: Mapping[str, int],
    mode: str,
    now_ms: int,
    queue_depth: Mapping[str, int] | None = None,
) -> MetricsSnapshot:
    """A snapshot from the runtime's counter names (``RunState.counters``).

    Reads ``in.<feed>``, ``out``, ``dead_letters`` (all categories as ``invalid``) or
    ``dead_letters.<category>``, ``late``, ``annotated``, ``unmapped``, ``commits`` and
    ``aborts``; ``lag_pitr`` is the last pitr per feed, turned into a lag at ``now_ms``.

    >>> s = snapshot_from_counters({"in.controlstream": 5, "out": 4, "dead_letters": 1},
    ...                            lag_pitr={"controlstream": 1_000}, mode="realtime",
    ...                            now_ms=3_500)
    >>> s.messages_in, s.messages_out, s.dead_letters, s.lag_ms
    ({'controlstream': 5}, 4, {'invalid': 1}, {'controlstream': 2500})
    """
    counts = dict(counters)  # one copy: the runtime's threads keep writing
    messages_in = {k[3:]: v for k, v in counts.items() if k.startswith("in.")}
    dead = {k[13:]: v for k, v in counts.items() if k.startswith("dead_letters.")}
    if not dead and counts.get("dead_letters"):
        dead = {"invalid": counts["dead_letters"]}
    return MetricsSnapshot(
        messages_in=messages_in,
        messages_out=counts.get("out", 0),
        dead_letters=dead,
        unmapped=counts.get("unmapped", 0),
        annotated=counts.get("annotated", 0),
        late=counts.get("late", 0),
        mode=mode,
        lag_ms={feed: max(now_ms - pitr, 0) for feed, pitr in dict(lag_pitr).items()},
        queue_depth=dict(queue_depth or {}),
        checkpoint_commits=counts.get("commits", 0),
        transaction_aborts=counts.get("aborts", 0),
    )


class UnifeedCollector(Collector):
    """Turns the snapshot ``collect()`` returns at each scrape into metric families."""

    def __init__(
        self,
        collect: Callable[[], MetricsSnapshot],
        *,
        command: str,
        instance: str,
        version: str,
    ) -> None:
        self._collect = collect
        self._info = {"command": command, "unifeed_instance": instance, "version": version}

    def collect(self) -> Iterator[Metric]:
        try:
            s = self._collect()
        except Exception:
            # The scrape fails with HTTP 500; say why here, once per failed scrape.
            log.exception("collecting metrics failed")
            raise
        info = GaugeMetricFamily(
            "unifeed_info",
            "Which unifeed command and instance serves these metrics.",
            labels=list(self._info),
        )
        info.add_metric(list(self._info.values()), 1)
        yield info
        yield _labelled_counter(
            "unifeed_messages_in", "Input messages read, per feed.", "feed", s.messages_in
        )
        yield _counter("unifeed_messages_out", "Output messages written.", s.messages_out)
        yield _labelled_counter(
            "unifeed_dead_letters",
            "Invalid input messages sent to the dead-letter sink, per reason category.",
            "reason",
            s.dead_letters,
        )
        yield _counter(
            "unifeed_unmapped",
            "Aircraft ground positions written without a flight ID (no link at their pitr).",
            s.unmapped,
        )
        yield _counter(
            "unifeed_annotated",
            "Aircraft ground positions annotated with their flight ID and access.",
            s.annotated,
        )
        yield _counter(
            "unifeed_late",
            "Messages emitted after a later message (real time only; 0 with --strict-order).",
            s.late,
        )
        yield _counter(
            "unifeed_checkpoint_commits",
            "Checkpoints committed (with their output, in one transaction).",
            s.checkpoint_commits,
        )
        yield _counter(
            "unifeed_transaction_aborts", "Output transactions aborted.", s.transaction_aborts
        )
        mode = GaugeMetricFamily(
            "unifeed_mode",
            "1 for the current mode of the combining rule, 0 for the others.",
            labels=["mode"],
        )
        for name in MODES if s.mode in MODES else (*MODES, s.mode):
            mode.add_metric([name], 1 if name == s.mode else 0)
        yield mode
        lag = GaugeMetricFamily(
            "unifeed_lag_seconds",
            "Wall clock minus the pitr of the last message read, per feed.",
            labels=["feed"],
        )
        for feed, ms in sorted(s.lag_ms.items()):
            lag.add_metric([feed], ms / 1000)
        yield lag
        depth = GaugeMetricFamily(
            "unifeed_queue_depth", "Batches waiting in each internal queue.", labels=["queue"]
        )
        for queue, n in sorted(s.queue_depth.items()):
            depth.add_metric([queue], n)
        yield depth


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled_counter(
    name: str, doc: str, label: str, values: Mapping[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class MetricsServer:
    """Serves ``/metrics`` on ``host``:``port`` (127.0.0.1 unless told) from a daemon thread.

    ``collect`` runs in the server's thread at every scrape: it must only read shared
    state (a copy of a dict is fine). ``port`` 0 picks a free port; `port` tells which
    after `start`. `close` stops serving and frees the port; it is idempotent, and the
    object works as a context manager.
    """

    def __init__(
        self,
        port: int,
        collect: Callable[[], MetricsSnapshot],
        *,
        command: str,
        instance: str,
        host: str = _HOST,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--metrics-port must be between 0 and 65535, got {port}")
        from unifeed import __version__

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            UnifeedCollector(collect, command=command, instance=instance, version=__version__)
        )
        self.host = host
        self.port = port
        self._requested = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; `ConfigError` (exit 2) when the port is taken or the address
        cannot be bound. ``host`` may be IPv4 or IPv6 (``::``, ``::1``)."""
        if self._server is not None:
            return
        try:
            # prometheus_client's own server (a daemon thread, quiet, IPv6-aware); since
            # 0.20 it returns the server, so that it can be shut down.
            server, thread = start_http_server(self._requested, self.host, self.registry)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self._requested}: "
                f"{reason}; choose another --metrics-port (0 picks a free one) "
                "or --metrics-host"
            ) from None
        self._server = server
        self._thread = thread
        self.port = int(server.server_port)
        log.info("serving Prometheus metrics on %s", self.url)

    @property
    def url(self) -> str:
        """Where to scrape."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (waits at most a few seconds for the server thread)."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
