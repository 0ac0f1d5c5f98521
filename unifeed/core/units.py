"""Times and durations as unifeed reads them: epoch milliseconds or ISO-8601 for a time,
``250ms``/``30s``/``6h``/``2d`` or plain milliseconds for a duration.

Pure. Every command, the runtime and the simulator read times and durations here, so
one text means the same everywhere.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from unifeed.core.errors import ConfigError

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DURATION_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_time_ms(text: str, option: str = "time") -> int:
    """Epoch milliseconds from ``text``: an integer, or ISO-8601 (no zone = UTC).

    >>> parse_time_ms("1700000000000")
    1700000000000
    >>> parse_time_ms("2023-11-14T22:13:20Z")
    1700000000000
    >>> parse_time_ms("2023-11-14T23:13:20.5+01:00")
    1700000000500
    """
    stripped = text.strip()
    if stripped.lstrip("-").isdigit() and stripped.isascii():
        return int(stripped)
    try:
        moment = dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise ConfigError(
            f"{option} must be epoch milliseconds or ISO-8601 "
            f"(e.g. 2024-05-01T12:00:00Z), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def parse_duration_ms(text: str) -> int:
    """Milliseconds from ``30s``, ``6h``, ``100ms``, ``2m``, ``1d`` or plain milliseconds.

    >>> parse_duration_ms("250ms"), parse_duration_ms("1.5s"), parse_duration_ms("6h")
    (250, 1500, 21600000)
    """
    t = text.strip().lower()
    for suffix in ("ms", "s", "m", "h", "d"):
        if t.endswith(suffix) and t[: -len(suffix)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(suffix)]) * _DURATION_UNITS[suffix])
    if t.isdigit():
        return int(t)
    raise ConfigError(f"expected a duration like 30s, 6h or 250ms, got {text!r}")
