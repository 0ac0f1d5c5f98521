"""The supervisor every Kafka run is built on (`Supervisor`): binds the metrics port,
plans the start and builds the threads (`setup`, the run's own), starts them, watches
the thread that writes the output and the broker's health, and stops everything at the
end; a failure in any thread ends the run with that failure. `CombineRun` and
`MappingsRun` differ only in their `setup` and queue depths."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from confluent_kafka import KafkaException

from unifeed.core.errors import BrokerUnreachableError, PartitionChangeError
from unifeed.kafka.foreground import stop_signals
from unifeed.runtime.health import BrokerHealth
from unifeed.runtime.limits import JOIN_TIMEOUT_S, SWITCH_INTERVAL_S
from unifeed.runtime.options import RuntimeOptions
from unifeed.runtime.state import RunState, Worker
from unifeed.runtime.transactions import wrap_kafka_error

log = logging.getLogger("unifeed")

#: How often the supervisor looks at the writer, the broker and the progress hook.
_WATCH_S = 0.2


class Supervisor:
    """One Kafka run: its options, shared state and threads.

    A run's `setup` appends its threads to ``threads`` and names the one that writes
    the output ``main``: the run ends when that thread returns (its last commit made),
    or when any thread fails, or on `stop`.
    """

    command = "run"

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self.state = RunState()
        self.threads: list[Worker] = []
        self.main: Worker | None = None
        self.metrics: Any = None
        #: Checks the supervisor runs every watch round (``check()`` raises the run's
        #: failure, ``close()`` at the end): `PartitionWatch`.
        self.watchers: list[Any] = []

    # --- what a run defines ---------------------------------------------------

    def setup(self) -> None:
        """Plan the start (checkpoint or --start), claim the instance, build the threads."""
        raise NotImplementedError

    def depths(self) -> dict[str, int]:
        """Queue depths by name for the metrics; empty while the run starts."""
        return {}

    # --- the common part ------------------------------------------------------

    def start_metrics(self) -> None:
        """Bind the metrics port (`ConfigError`, exit 2, when taken): before `setup`
        claims the instance, since a refused start must not stop a running incarnation."""
        self.metrics = start_metrics_server(self.options, self.state, self.command, self.depths)

    def start(self) -> None:
        """`start_metrics`, then `setup`; a Kafka error during start-up is one
        `UnifeedError`, and a failed start closes the metrics server again."""
        self.start_metrics()
        try:
            try:
                self.setup()
            except KafkaException as exc:
                raise wrap_kafka_error("start-up failed", exc) from None
        except BaseException:
            if self.metrics is not None:
                self.metrics.close()
            raise

    def stop(self) -> None:
        """Ask the run to finish: the open transaction is committed, then it returns."""
        self.state.stop.set()

    def run(self, progress: Callable[[bool], None] | None = None) -> int:
        """Start the threads, watch them, stop them; 0, or the first failure raised.

        ``progress(final)`` is called every watch round and once at the end (final).
        """
        for t in self.threads:
            t.start()
        # Everything alive now lives for the whole run: keep the collector off it, and
        # collect young objects rarely (the hot loop allocates no cycles).
        gc.freeze()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 50, 1000)
        health = BrokerHealth(self.options)
        try:
            main = self.main
            assert main is not None, "setup() names the thread that writes the output"
            while main.is_alive():
                main.join(_WATCH_S)
                if progress is not None:
                    progress(False)
                if self.state.stop.is_set():
                    continue  # ending: nothing left to watch for
                try:
                    health.check()
                    if health.answering:
                        for watcher in self.watchers:
                            watcher.check()
                except (BrokerUnreachableError, PartitionChangeError) as exc:
                    self.state.fail(exc)
        finally:
            self.state.stop.set()
            for t in self.threads:
                t.join(JOIN_TIMEOUT_S)
            health.close()
            for watcher in self.watchers:
                watcher.close()
            if self.metrics is not None:
                self.metrics.close()
            gc.set_threshold(*thresholds)
            sys.setswitchinterval(switch)
            gc.unfreeze()
            if progress is not None:
                progress(True)
        if self.state.failure is not None:
            raise self.state.failure
        return 0


def start_metrics_server(
    options: RuntimeOptions, state: RunState, command: str, depths: Callable[[], dict[str, int]]
) -> Any:
    """The metrics server of a run (started), or None without ``metrics_port``."""
    if options.metrics_port is None:
        return None
    from unifeed.runtime.metrics import MetricsServer, snapshot_from_counters

    def collect() -> Any:
        return snapshot_from_counters(
            state.counters,
            lag_pitr=dict(state.lag_pitr),
            mode=state.mode,
            now_ms=options.clock(),
            queue_depth=depths(),
        )

    server = MetricsServer(
        options.metrics_port,
        collect,
        command=command,
        instance=options.instance,
        host=options.metrics_host,
    )
    server.start()
    log.info("%s: metrics on %s", options.instance, server.url)
    return server


@contextlib.contextmanager
def signals_stop(run: Supervisor) -> Iterator[None]:
    """Inside the block SIGTERM and SIGINT finish the open transaction and end the run;
    the handlers from before come back on the way out (a program that runs unifeed in
    its main thread keeps its own; `stop_signals`)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the open transaction", signum)
        run.stop()

    with stop_signals(on_signal):
        yield
