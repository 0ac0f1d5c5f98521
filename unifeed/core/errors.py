"""The error hierarchy: one root, a few subclasses named by whose fault it was."""

from __future__ import annotations

import enum


class UnifeedError(Exception):
    """Root of every error unifeed raises on purpose."""

    #: Process exit code the CLI uses when this error ends a command.
    exit_code: int = 1


class DeadLetterReason(enum.Enum):
    """Why a message became a dead letter, as a kind; its value is the metrics label
    (``unifeed_dead_letters_total{reason=...}``). The dead letter's ``reason`` text says
    the same for people, with the details."""

    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNKNOWN_TYPE = "unknown_type"
    BAD_PITR = "bad_pitr"
    INVALID_FIELD = "invalid_field"
    PITR_BACKWARDS = "pitr_backwards"
    TOO_LARGE = "too_large"
    TOO_LATE = "too_late"


class BadRecordError(UnifeedError):
    """Raised when one input message is not a valid record (the outside world's fault).

    The runtime never lets it stop a run: the record goes to the dead-letter sink.
    ``reason`` is a sentence a person understands, ``kind`` the same as a
    `DeadLetterReason`; ``feed`` names the feed.
    """

    exit_code = 4

    def __init__(
        self, feed: str, reason: str, kind: DeadLetterReason = DeadLetterReason.INVALID_FIELD
    ) -> None:
        super().__init__(f"{feed}: {reason}")
        self.feed = feed
        self.reason = reason
        self.kind = kind


class FeedOrderError(UnifeedError):
    """Raised by ``Combiner.push`` when a message's ``pitr`` is below what its feed promised.

    The queue is left exactly as it was before the call.
    """

    exit_code = 4

    def __init__(self, feed: str, pitr: int, floor: int, why: str) -> None:
        super().__init__(
            f"{feed}: pitr {pitr} is below {why} {floor}; a feed's pitr must never decrease"
        )
        self.feed = feed
        self.pitr = pitr
        self.floor = floor


class ConfigError(UnifeedError):
    """Raised when settings or command-line arguments are wrong (the caller's fault)."""

    exit_code = 2


class BrokerUnreachableError(UnifeedError):
    """Raised when no Kafka broker answers within the configured time."""

    exit_code = 3


class KafkaRuntimeError(UnifeedError):
    """Raised when the broker answers with an error unifeed cannot recover from.

    ``code`` keeps the librdkafka error name when there is one.
    """

    exit_code = 1

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message if code is None else f"{message} [{code}]")
        self.code = code


class CheckpointError(UnifeedError):
    """Raised when a checkpoint record cannot be read or does not match the output."""

    exit_code = 1


class DeadLetterLimitError(UnifeedError):
    """Raised when bad input exceeds the dead-letter policy (exit code 4)."""

    exit_code = 4


class InstanceFencedError(UnifeedError):
    """Raised when a newer incarnation of the same instance name has taken over.

    The older one stops without committing again; the newer one carries on from the
    checkpoint.
    """

    exit_code = 1


class StartRefusedError(ConfigError):
    """Raised before a Kafka run claims its instance when starting would lose or duplicate
    output: an input topic is missing, or the checkpoint does not fit the output, the
    inputs or the present. The message says what to check and how to start over.
    """


class PartitionChangeError(ConfigError):
    """Raised when an input topic read whole (``kafka:TOPIC``) gains partitions while a run
    reads it: the run stops without committing again; the message says how to go on."""
