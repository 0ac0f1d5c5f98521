"""Log output of the ``unifeed`` logger: readable text for people, JSON lines for machines.

Every unifeed module logs to a child of the ``unifeed`` logger; librdkafka's own lines
arrive on ``unifeed.rdkafka`` (each client's ``logger`` setting, see
`unifeed.kafka.clients.RdkafkaLog`), so one handler formats them all. Context travels in
``extra=``: ``instance``, ``feed``, ``offset`` (Kafka input) and ``line`` (file input).

Text (the default), one line per record, UTC, context first::

    2026-11-22T03:00:00Z WARNING unifeed [uf-a] controlstream@offset 123: message

JSON, one object per line, keys in a fixed order, context keys only when present::

    {"ts":"2026-11-22T03:00:00.000Z","level":"WARNING","logger":"unifeed",
     "instance":"uf-a","feed":"controlstream","offset":123,"message":"message"}

>>> import io, logging
>>> stream = io.StringIO()
>>> handler = setup_logging("json", "info", stream=stream, instance="uf-a")
>>> logging.getLogger("unifeed.runtime").warning("slow commit", extra={"feed": "controlstream"})
>>> record = json.loads(stream.getvalue())
>>> record["level"], record["logger"], record["instance"], record["feed"], record["message"]
('WARNING', 'unifeed.runtime', 'uf-a', 'controlstream', 'slow commit')
>>> teardown_logging()
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Final, Literal

from unifeed.core.errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "setup_logging",
    "teardown_logging",
]

LogFormat = Literal["text", "json"]

LOG_FORMATS: Final[tuple[str, ...]] = ("text", "json")
LOG_LEVELS: Final[tuple[str, ...]] = ("debug", "info", "warning", "error", "critical")

#: The logger every unifeed module logs under.
ROOT: Final = "unifeed"
#: librdkafka's log lines (from every client) and the embedded broker's own.
_RDKAFKA: Final = "unifeed.rdkafka"
_MOCK_BROKER: Final = "unifeed.broker.mock"

#: The ``extra=`` keys that both formats show, in this order.
_CONTEXT: Final = ("instance", "feed", "offset", "line")
#: A run's progress line, every ``--status-interval``, and the last one (``final``).
STATUS: Final = "unifeed.status"
#: A command's closing summary.
SUMMARY: Final = "unifeed.summary"
_PLAIN: Final = frozenset({STATUS, SUMMARY})

_installed: logging.Handler | None = None


def _utc(created: float, *, millis: bool) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    if not millis:
        return whole + "Z"
    return f"{whole}.{int(created * 1000) % 1000:03d}Z"


def _context(record: logging.LogRecord, default_instance: str | None) -> dict[str, object]:
    found: dict[str, object] = {}
    for key in _CONTEXT:
        value = getattr(record, key, None)
        if value is None and key == "instance":
            value = default_instance
        if value is not None:
            found[key] = value
    return found


class TextFormatter(logging.Formatter):
    """``2026-11-22T03:00:00Z WARNING unifeed [uf-a] controlstream@offset 123: message``.

    The bracket holds the instance, ``feed@offset N`` or ``feed@line N`` where the message
    came from; both are left out when the record does not carry them. A traceback, when
    there is one, follows on the next lines.
    """

    def __init__(self, instance: str | None = None) -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        if record.name in _PLAIN:
            return record.getMessage()  # status and summary lines read as they always did
        ctx = _context(record, self.instance)
        parts = [_utc(record.created, millis=False), record.levelname, record.name]
        if "instance" in ctx:
            parts.append(f"[{ctx['instance']}]")
        where = ctx.get("feed")
        if where is not None:
            if "offset" in ctx:
                where = f"{where}@offset {ctx['offset']}"
            elif "line" in ctx:
                where = f"{where}@line {ctx['line']}"
            parts.append(f"{where}:")
        parts.append(record.getMessage())
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, context, ``message``.

    ``ts`` is UTC with milliseconds. ``exception`` holds the traceback text when there
    is one. Values that JSON cannot hold are written as their ``str``.
    """

    def __init__(self, instance: str | None = None) -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _utc(record.created, millis=True),
            "level": record.levelname,
            "logger": record.name,
        }
        out.update(_context(record, self.instance))
        out["message"] = record.getMessage()
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # A status or summary record: its numbers as fields of their own.
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes records one per line; with ``rewrite`` (text on a terminal) a status record
    replaces the previous one in place (``\\r``, clear to the end of the line), and any
    other record, or the final status, starts on a line of its own."""

    def __init__(self, stream: IO[str], *, rewrite: bool) -> None:
        super().__init__(stream)
        self.rewrite = rewrite
        self._open = False  # a status line without its newline is on the terminal

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = self.stream
            is_status = record.name == STATUS
            if self.rewrite and is_status:
                final = bool(getattr(record, "final", False))
                stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
                self._open = not final
            else:
                if self._open:
                    stream.write("\n")
                    self._open = False
                stream.write(text + self.terminator)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _level_number(level: str) -> int:
    name = level.strip().lower()
    if name not in LOG_LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return int(getattr(logging, name.upper()))


def setup_logging(
    fmt: str = "text",
    level: str = "info",
    *,
    stream: IO[str] | None = None,
    instance: str | None = None,
) -> logging.Handler:
    """Send the ``unifeed`` logger's records at ``level`` and above to ``stream`` (stderr).

    ``fmt`` is ``text`` or ``json``; ``instance`` is shown on records that do not name
    one. Calling it again replaces the handler it installed before (never anyone
    else's). librdkafka's lines go through the same handler; the embedded broker's
    chatter (connections coming and going) only at ``debug``. Raises `ConfigError`
    for an unknown format or level. Returns the installed handler.
    """
    global _installed
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    number = _level_number(level)
    teardown_logging()
    target = sys.stderr if stream is None else stream
    try:
        terminal = target.isatty()
    except (AttributeError, ValueError):
        terminal = False
    handler = _StderrHandler(target, rewrite=fmt == "text" and terminal)
    handler.setFormatter(JsonFormatter(instance) if fmt == "json" else TextFormatter(instance))
    root = logging.getLogger(ROOT)
    root.addHandler(handler)
    root.setLevel(number)
    # The embedded broker logs every connection at info: noise unless debugging.
    quiet = number if number <= logging.DEBUG else max(number, logging.WARNING)
    logging.getLogger(_MOCK_BROKER).setLevel(quiet)
    logging.getLogger(_RDKAFKA).setLevel(logging.NOTSET)
    # Status lines and summaries have their own switches (--status-interval, --quiet).
    for name in _PLAIN:
        logging.getLogger(name).setLevel(logging.INFO)
    _installed = handler
    return handler


def teardown_logging() -> None:
    """Remove the handler `setup_logging` installed, if any (tests; idempotent)."""
    global _installed
    handler, _installed = _installed, None
    if handler is None:
        return
    logging.getLogger(ROOT).removeHandler(handler)
    handler.flush()
