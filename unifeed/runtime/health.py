"""Broker health: a run whose broker stops answering ends (exit 3) instead of waiting for ever."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException

from unifeed.core.errors import (
    BrokerUnreachableError,
)
from unifeed.kafka.clients import (
    consumer_config,
)
from unifeed.runtime.options import RuntimeOptions

log = logging.getLogger("unifeed")

class BrokerHealth:
    """Asks the broker for metadata now and then; raises when it has not answered for
    ``broker_timeout_s`` (the readers and the producer retry quietly meanwhile)."""

    def __init__(self, options: RuntimeOptions, every_s: float = 1.0) -> None:
        self.options = options
        self.every_s = every_s
        self.last_ok = time.monotonic()
        self.last_check = 0.0
        self.last_error = ""
        self._client = Consumer(consumer_config(options.bootstrap, options.kafka_extra))

    @property
    def answering(self) -> bool:
        """The broker answered the last question (the run's other watchers ask it only
        then: their questions would wait for nothing, delaying the next check)."""
        return self.last_ok >= self.last_check

    def check(self) -> None:
        now = time.monotonic()
        if now - self.last_check < self.every_s:
            return
        self.last_check = now
        try:
            # One topic's metadata, not the cluster's: on a cluster with thousands of
            # topics a full listing every second would cost the run real GIL time.
            self._client.list_topics(
                self.options.checkpoint_topic, timeout=min(2.0, self.options.broker_timeout_s)
            )
            self.last_ok = time.monotonic()
        except KafkaException as exc:
            self.last_error = str(exc.args[0] if exc.args else exc)
            silent = time.monotonic() - self.last_ok
            log.warning(
                "%s: the broker does not answer (%.0f s): %s",
                self.options.instance,
                silent,
                self.last_error,
            )
            if silent >= self.options.broker_timeout_s:
                raise BrokerUnreachableError(
                    f"lost the broker at {self.options.bootstrap}: no answer for "
                    f"{silent:.0f} s ({self.last_error}); the open transaction is aborted, "
                    "nothing after the last checkpoint is committed; run again when the "
                    "broker is back"
                ) from None

    def close(self) -> None:
        self._client.close()
