"""``unifeed checkpoint show|reset`` and the Kafka connection options several commands share."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from typing import Any

from unifeed.checkpoint.store import (
    CHECKPOINT_PARTITION,
    CHECKPOINT_TOPIC,
    CheckpointStore,
    decode_checkpoint,
    encode_checkpoint,
)
from unifeed.core.errors import CheckpointError, ConfigError
from unifeed.core.units import parse_duration_ms
from unifeed.kafka.clients import (
    BOOTSTRAP_ENV,
    ensure_reachable,
    read_properties,
    resolve_bootstrap,
)

__all__ = [
    "add_bootstrap_option",
    "add_broker_timeout",
    "add_client_options",
    "add_kafka_options",
    "client_properties",
    "kafka_settings",
    "register",
]


def _duration(text: str) -> int:
    """argparse ``type=`` for a DURATION (``30s``, ``250ms``, plain milliseconds)."""
    try:
        return parse_duration_ms(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_duration.is_duration = True  # type: ignore[attr-defined]


def _legacy_seconds(text: str) -> int:
    """The deprecated ``--connect-timeout``: a DURATION, or a plain number of seconds as before."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        return _duration(text)


def _kafka_property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a librdkafka setting), got {text!r}")
    return key.strip(), value


def add_bootstrap_option(parser: Any, help_text: str | None = None) -> None:
    """``-b``/``--bootstrap-servers``/``--bootstrap-server`` (kcat's and Kafka's tools' spellings)."""
    parser.add_argument(
        "-b",
        "--bootstrap-servers",
        "--bootstrap-server",
        dest="bootstrap_servers",
        metavar="HOST:PORT",
        help=help_text or f"Kafka brokers, comma-separated (default: ${BOOTSTRAP_ENV})",
    )


def add_client_options(parser: Any) -> None:
    """``--kafka-config FILE`` and the repeatable ``-X KEY=VALUE`` (librdkafka settings)."""
    parser.add_argument(
        "--kafka-config",
        metavar="FILE",
        help="extra librdkafka settings, one key=value per line (security, timeouts, ...)",
    )
    parser.add_argument(
        "-X",
        "--kafka-property",
        dest="kafka_set",
        type=_kafka_property,
        action="append",
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="one librdkafka setting, like kcat's -X (repeatable; wins over --kafka-config, "
        "UNIFEED_KAFKA__* variables and the [kafka] table)",
    )


def add_broker_timeout(parser: Any, default_ms: int, *, watched: bool = True) -> None:
    """``--broker-timeout DURATION``, and ``--connect-timeout`` as its deprecated spelling.

    ``watched``: the command also watches the broker while it runs (combine, mappings);
    otherwise the timeout bounds the start-up wait alone, and the help says so."""
    when = "at start-up or later" if watched else "at start-up"
    parser.add_argument(
        "--broker-timeout",
        type=_duration,
        default=default_ms,
        metavar="DURATION",
        help=f"give up (exit 3) when no broker answers for this long, {when} "
        f"(default {default_ms // 1000}s)",
    )
    parser.add_argument(
        "--connect-timeout",
        dest="broker_timeout",
        type=_legacy_seconds,
        default=argparse.SUPPRESS,
        metavar="DURATION",
        help="deprecated spelling of --broker-timeout (a plain number is seconds here)",
    )


def add_kafka_options(parser: argparse.ArgumentParser) -> None:
    """``-b/--bootstrap-servers``, ``--kafka-config``, ``-X`` and ``--broker-timeout``."""
    add_bootstrap_option(parser)
    add_client_options(parser)
    add_broker_timeout(parser, 10_000, watched=False)


def client_properties(args: argparse.Namespace) -> dict[str, str]:
    """librdkafka settings of a command, lowest precedence first: the configuration
    file's ``[kafka]`` table, ``UNIFEED_KAFKA__*`` variables (both in
    ``args.kafka_properties``), ``--kafka-config FILE``, then each ``-X KEY=VALUE``."""
    extra: dict[str, str] = dict(getattr(args, "kafka_properties", None) or {})
    if getattr(args, "kafka_config", None):
        extra.update(read_properties(args.kafka_config))
    for key, value in getattr(args, "kafka_set", None) or ():
        extra[key] = value
    return extra


def kafka_settings(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """Bootstrap servers and extra settings from `add_kafka_options` arguments, checked.

    Extra settings: `client_properties`. Raises `ConfigError` (exit 2) without brokers,
    `BrokerUnreachableError` (exit 3) when none answers within ``--broker-timeout``.
    """
    bootstrap = resolve_bootstrap(args.bootstrap_servers)
    extra = client_properties(args)
    if args.broker_timeout <= 0:
        raise ConfigError("--broker-timeout must be > 0")
    ensure_reachable(bootstrap, args.broker_timeout / 1000, extra)
    return bootstrap, extra


def register(subparsers: Any) -> None:
    """Add ``unifeed checkpoint show|reset``."""
    parser = subparsers.add_parser(
        "checkpoint",
        help="inspect or reset an instance's checkpoint",
        description=(
            "Inspect or reset the checkpoint of a combine or mappings instance. `show` prints "
            "the stored JSON value on stdout and where it is on stderr; with no checkpoint it "
            "prints nothing on stdout, says so on stderr and exits 0; a record that is not a "
            "checkpoint is printed escaped as {\"raw\":...} or {\"raw_b64\":...}. `reset` "
            "writes a tombstone: a running incarnation of the instance stops without "
            "committing again, and the next run starts from --start."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text, handler in (
        ("show", "print the latest checkpoint of an instance", _show),
        ("reset", "forget an instance's checkpoint (its next run starts from --start)", _reset),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument("--instance", required=True, help="instance name")
        action.add_argument(
            "--checkpoint-topic",
            default=CHECKPOINT_TOPIC,
            metavar="TOPIC",
            help=f"checkpoint topic (default {CHECKPOINT_TOPIC}); partition 0 is used",
        )
        add_kafka_options(action)
        action.set_defaults(handler=handler)


def _raw_line(value: bytes) -> str:
    r"""A stored value that is not a checkpoint, printable whatever its bytes: its text as a
    JSON string when it is UTF-8, else base64 (the dead letters' ``raw``/``raw_b64``).

    >>> _raw_line(b'{"version":1,"instance":')
    '{"raw":"{\\"version\\":1,\\"instance\\":"}'
    >>> _raw_line(b"\xff\x00")
    '{"raw_b64":"/wA="}'
    """
    try:
        text = value.decode("utf-8")
        return json.dumps({"raw": text}, ensure_ascii=True, separators=(",", ":"))
    except UnicodeDecodeError:
        encoded = base64.b64encode(value).decode("ascii")
        return json.dumps({"raw_b64": encoded}, separators=(",", ":"))


def _show(args: argparse.Namespace) -> int:
    bootstrap, extra = kafka_settings(args)
    where = f"kafka:{args.checkpoint_topic}:{CHECKPOINT_PARTITION}"
    with CheckpointStore(bootstrap, args.checkpoint_topic, extra) as store:
        value, offset = store.load_raw(args.instance)
    if value is None:
        if offset >= 0:
            print(
                f"no checkpoint for instance {args.instance!r} in {where}: it was reset "
                f"(tombstone at offset {offset})",
                file=sys.stderr,
            )
        else:
            print(f"no checkpoint for instance {args.instance!r} in {where}", file=sys.stderr)
        return 0
    try:
        checkpoint = decode_checkpoint(
            value, topic=args.checkpoint_topic, offset=offset, instance=args.instance
        )
    except CheckpointError as exc:
        # Shown as stored, escaped: junk must not reach a terminal as raw bytes.
        sys.stdout.write(_raw_line(value) + "\n")
        sys.stdout.flush()
        print(
            f"the latest record of instance {args.instance!r} at {where} offset {offset} "
            f"({len(value)} bytes, printed as raw or raw_b64) is not a checkpoint: {exc}",
            file=sys.stderr,
        )
        return 0
    sys.stdout.write(encode_checkpoint(checkpoint).decode("utf-8") + "\n")
    sys.stdout.flush()
    written = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(checkpoint.written_ms / 1000))
        if checkpoint.written_ms
        else "unknown"
    )
    claim_only = "; a start-up claim, no progress yet" if not checkpoint.feeds else ""
    print(
        f"checkpoint of instance {args.instance!r} at {where} offset {offset} "
        f"(generation {checkpoint.generation}, written {written}{claim_only})",
        file=sys.stderr,
    )
    return 0


def _reset(args: argparse.Namespace) -> int:
    bootstrap, extra = kafka_settings(args)
    with CheckpointStore(bootstrap, args.checkpoint_topic, extra) as store:
        try:
            before, _offset = store.load(args.instance)
        except CheckpointError:
            before, previous = None, " (the previous one was unreadable)"
        else:
            previous = (
                "; feeds were at "
                + json.dumps({name: feed.pitr for name, feed in before.feeds.items()})
                if before is not None
                else " (there was none)"
            )
        offset, rewritten = store.reset_until_quiet(args.instance)
    stopped = (
        f"; a running incarnation committed after the tombstone, which was written again "
        f"({rewritten}x)"
        if rewritten
        else ""
    )
    print(
        f"checkpoint of instance {args.instance!r} reset: tombstone at "
        f"kafka:{args.checkpoint_topic}:{CHECKPOINT_PARTITION} offset {offset}{previous}"
        f"{stopped}; a running incarnation of the instance stops without committing again",
        file=sys.stderr,
    )
    return 0
