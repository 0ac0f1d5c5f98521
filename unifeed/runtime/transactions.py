"""The output producer and its transactions (`Transactions`): open, commit, abort, and
the client's errors turned into the run's (a fenced producer, a failed delivery)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Producer

from unifeed.core.errors import (
    BrokerUnreachableError,
    InstanceFencedError,
    KafkaRuntimeError,
    UnifeedError,
)
from unifeed.kafka.clients import DEFAULT_LINGER_MS, Target, kafka_error, producer_config
from unifeed.runtime.options import EXACTLY_ONCE, RuntimeOptions
from unifeed.runtime.state import RunState

log = logging.getLogger("unifeed")

#: How long a commit waits for the broker: the flush of a transaction's records, the
#: transaction's commit, ``init_transactions``.
FLUSH_TIMEOUT_S: Final = 30
#: A flush and a transaction's commit wait in slices this long, so that a run that has
#: failed meanwhile (the broker lost: `unifeed.runtime.health`) stops waiting for them
#: at once instead of at `FLUSH_TIMEOUT_S`.
WAIT_SLICE_S: Final = 0.2
#: How long closing a failed run waits to abort its transaction and flush (a lost
#: broker is not waited for: its transaction times out there, and the restart's
#: ``init_transactions`` aborts it anyway).
CLOSE_TIMEOUT_S: Final = 5.0
#: The longest the exactly-once output producer lets a record wait for more to send
#: with it (``linger.ms``; at most the commit interval). Nothing of a transaction is
#: visible to a ``read_committed`` reader before its commit, and the commit sends every
#: waiting record at once (librdkafka's flush ignores ``linger.ms``), so lingering up to
#: the commit interval delays nothing anyone sees, while the producer builds fewer,
#: larger batches: on Apache Kafka, catch-up over 1,000,000 records took a third less
#: CPU in the clients' threads at 100 ms than at 5 ms, left the run thread waiting less
#: for a CPU and ran 9-11% faster (benchmarks/README.md, "The output producer's
#: linger"). With at-least-once, records are visible as they arrive at the broker: the
#: producer keeps `DEFAULT_LINGER_MS` (5 ms).
OUTPUT_LINGER_MAX_MS: Final = 100


def output_producer_config(options: RuntimeOptions, transactional_id: str | None) -> dict[str, Any]:
    """The output producer's settings: `producer_config`, lingering up to the commit
    interval (`OUTPUT_LINGER_MAX_MS`) when it is transactional; the run's Kafka
    settings (``-X``, ``[kafka]``) override it, ``linger.ms`` included."""
    linger_ms = (
        DEFAULT_LINGER_MS
        if transactional_id is None
        else max(0, min(options.commit_interval_ms, OUTPUT_LINGER_MAX_MS))
    )
    return producer_config(
        options.bootstrap,
        options.kafka_extra,
        transactional_id=transactional_id,
        linger_ms=linger_ms,
    )


class Transactions:
    """Owns the output producer (one for the output, the dead letters, the checkpoints
    and the saved state): with ``--delivery exactly-once`` everything produced between
    `begin` and `commit` is one transaction; with at-least-once, `commit` flushes.

    ``error`` is the first delivery or fatal error the client reported: a commit checks
    it after its flush. A fatal error also fails the run (``state.fail``).
    """

    def __init__(self, options: RuntimeOptions, output: Target, state: RunState) -> None:
        self.options = options
        self.output = output
        self.state = state
        self.transactional = options.delivery == EXACTLY_ONCE
        config = output_producer_config(
            options, f"unifeed-{options.instance}" if self.transactional else None
        )
        config.setdefault("queue.buffering.max.messages", 500_000)
        config.setdefault("queue.buffering.max.kbytes", 262_144)
        config["error_cb"] = self._on_error
        #: The largest record value the producer sends (room left for its headers).
        self.max_record_bytes = int(config.get("message.max.bytes", 1_000_000)) - 1024
        self.producer = Producer(config)
        self.error: KafkaError | None = None
        self._in_txn = False

    def init(self) -> None:
        """``init_transactions`` (exactly-once only): fences every older producer of
        this instance name."""
        if not self.transactional:
            return
        try:
            self.producer.init_transactions(FLUSH_TIMEOUT_S)
        except KafkaException as exc:
            raise wrap_kafka_error(
                "cannot initialise transactions (use --delivery at-least-once "
                "for brokers without them)",
                exc,
            ) from None

    def begin(self) -> None:
        """Open a transaction unless one is open (exactly-once only)."""
        if self.transactional and not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True

    def flush(self) -> int:
        """Deliver everything produced so far; how many records are still undelivered:
        some when `FLUSH_TIMEOUT_S` passed, or when the run failed meanwhile (then its
        failure is what it ends with)."""
        producer = self.producer
        remaining = 0
        for wait_s in self._waits():
            remaining = self.served(lambda: producer.flush(wait_s))  # noqa: B023 (called here)
            if not remaining:
                break
        return remaining

    def _waits(self) -> Iterator[float]:
        """The waits of one call to the broker that is repeated until it is done: slices
        of `WAIT_SLICE_S` until `FLUSH_TIMEOUT_S` has passed, the last one 0. Between two,
        the run's failure, if it has failed meanwhile, is raised (`_raise_if_failed`)."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while True:
            wait_s = min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic()))
            yield wait_s
            if wait_s <= 0:
                return
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        """The run has failed meanwhile (another thread saw the broker lost, ...): its
        failure, instead of waiting on for a broker that may never answer."""
        failure = self.state.failure
        if failure is not None:
            raise failure

    def commit(self) -> None:
        """Commit the open transaction; at-least-once: flush (the checkpoint record)."""
        if self.transactional:
            for wait_s in self._waits():
                try:
                    self.producer.commit_transaction(wait_s)
                    break
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    # A commit that timed out resumes where it was when called again
                    # (librdkafka: retriable); any other error, or the last wait's
                    # time-out, ends the run.
                    if not (
                        isinstance(error, KafkaError)
                        and error.code() == KafkaError._TIMED_OUT
                        and error.retriable()
                        and wait_s > 0
                    ):
                        raise wrap_kafka_error(
                            "committing a transaction failed", exc, self.options.instance
                        ) from None
            self._in_txn = False
        elif self.flush():
            raise KafkaRuntimeError(
                f"a checkpoint record was not delivered within {FLUSH_TIMEOUT_S} s"
            )

    def close(self) -> None:
        """Abort an open transaction (nothing of it becomes visible) and flush.

        When the run ended because the broker was lost, neither is waited for: what was
        not committed never becomes visible (the broker aborts the transaction when it
        times out, or when the restart initialises), and the records still queued are
        dropped (a restart writes them again from the last checkpoint)."""
        if isinstance(self.state.failure, BrokerUnreachableError):
            if self._in_txn:
                self.state.add("aborts")
                self._in_txn = False
            with contextlib.suppress(KafkaException, SystemError, NotImplementedError):
                self.producer.purge()
            with contextlib.suppress(KafkaException, SystemError):
                self.producer.flush(0)
            return
        if self._in_txn:
            self.state.add("aborts")
            try:
                self.producer.abort_transaction(CLOSE_TIMEOUT_S)
            except KafkaException as exc:
                log.warning(
                    "%s: aborting the open transaction failed: %s", self.options.instance, exc
                )
            self._in_txn = False
        try:
            self.producer.flush(CLOSE_TIMEOUT_S)
        except SystemError:  # a fatal error's reports: see `served`
            pass
        except KafkaException as exc:
            # A fatal error (a fenced producer) is raised again by this last flush, often
            # while the error that ended the run is on its way out of a `finally`: raising
            # here would replace that error (and its one line) with this one. What this
            # flush could not deliver was never committed, so nothing is lost.
            log.warning(
                "%s: flushing the output while closing failed: %s", self.options.instance, exc
            )

    def produce_refused(self, exc: KafkaException) -> BaseException:
        """The run's error for a record the client refused to produce.

        After a fatal error (a fenced producer) the client refuses every record with
        ``_FATAL`` and says why only through its error callback, which a poll serves: it
        is served here first, so that the run ends with that reason (the fenced line)."""
        # A fatal error's reports may raise here too: see `served`.
        with contextlib.suppress(SystemError, KafkaException):
            self.producer.poll(0)
        if self.state.failure is not None:
            return self.state.failure
        return wrap_kafka_error(f"writing to {self.output} failed", exc, self.options.instance)

    def served(self, call: Callable[[], int]) -> int:
        """``call()``, a producer call that serves delivery reports (flush, poll).

        After a fatal error (a fenced producer), confluent-kafka hands the purged records'
        reports to their callbacks with its own exception still pending, so the first
        client method a callback calls raises SystemError, and the serving call fails
        with SystemError too. The callbacks take the pending error as the run's failure;
        here that failure is raised instead of the SystemError.
        """
        try:
            return call()
        except KafkaException as exc:
            # A fatal error raised by the call itself (a fenced producer's flush), maybe
            # before its error callback was served: the run's error, named as that is.
            if self.state.failure is not None:
                raise self.state.failure from None
            raise wrap_kafka_error(
                f"writing to {self.output} failed", exc, self.options.instance
            ) from None
        except SystemError:
            if self.state.failure is not None:
                raise self.state.failure from None
            if self.error is not None:
                raise _fenced(self.options.instance, self.error) or kafka_error(
                    f"writing to {self.output} failed", self.error
                ) from None
            raise

    def delivery_failed(self, error: KafkaError) -> None:
        """A delivery report's error (the output's last record of a batch): the run's
        failure."""
        try:
            failure = _fenced(self.options.instance, error) or kafka_error(
                f"writing to {self.output} failed", error
            )
        except SystemError as exc:  # called with a fatal error pending: see `served`
            error = pending_error(exc, error)
            failure = _fenced(self.options.instance, error) or kafka_error(
                f"writing to {self.output} failed", error
            )
        self.error = error
        self.state.fail(failure)

    def _on_error(self, error: KafkaError) -> None:
        try:
            fatal = error.fatal()
        except SystemError as exc:  # called with a fatal error pending: see `served`
            error, fatal = pending_error(exc, error), True
        if fatal:
            self.error = error
            self.state.fail(
                _fenced(self.options.instance, error)
                or kafka_error("the output producer failed", error)
            )
        else:
            log.debug("producer: %s", error.str())


def wrap_kafka_error(message: str, exc: KafkaException, instance: str = "") -> UnifeedError:
    """The run's error for a client call's `KafkaException`: `InstanceFencedError` when
    the broker fenced ``instance``'s producer, else the Kafka error with ``message``."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return _fenced(instance, error) or kafka_error(message, error)
    return KafkaRuntimeError(f"{message}: {exc}")


#: What a broker that fences says to the producer of an older incarnation: another
#: producer with the same transactional.id (the instance name) has initialised since.
_FENCED_CODES: Final = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


def pending_error(exc: SystemError, fallback: KafkaError) -> KafkaError:
    """The client's error that was pending when a callback's call raised ``exc``."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, KafkaException) and cause.args and isinstance(cause.args[0], KafkaError):
        return cause.args[0]
    return fallback


def _fenced(instance: str, error: KafkaError) -> InstanceFencedError | None:
    """The error a fenced producer of ``instance`` ends the run with, or None."""
    if not instance or error.code() not in _FENCED_CODES:
        return None
    return InstanceFencedError(
        f"another incarnation of instance {instance!r} took over: the broker fenced this "
        f"one's transactional producer ({error.name()}); this one stops without committing "
        "again"
    )
