"""Settings from a TOML file and ``UNIFEED_*`` environment variables, under the command line.

Every long option of every command can also be set in a configuration file
(``--config FILE`` or ``$UNIFEED_CONFIG``) and in the environment. Precedence, highest
first: **command line > environment > file > built-in defaults**. A value from the
file or the environment becomes the option's default before the command line is parsed,
so a required option (``--control``) may come from either, and ``--help`` shows it.

File layout (TOML)::

    # keys at the top apply to every command that has that option
    bootstrap_servers = "kafka-1:9092,kafka-2:9092"
    instance = "uf-a"
    log_format = "json"                  # global: --log-format
    log_level = "info"                   # global: --log-level

    [combine]                            # one table per command
    control = "kafka:controlstream"
    surface = "kafka:surfacestream"
    output = "kafka:unified"
    strict_order = true
    realtime_threshold = "30s"

    [kafka]                              # librdkafka properties, passed through as strings
    "security.protocol" = "SASL_SSL"
    "sasl.password" = "..."

A key is the option's long name without its dashes, ``-`` written ``_``
(``--bootstrap-servers`` is ``bootstrap_servers``). Flags take ``true``/``false``;
durations take ``"30s"`` or plain milliseconds. ``[kafka]`` reaches the command as
``args.kafka_properties`` (``dict[str, str]``); unquoted dotted keys
(``sasl.mechanism = "PLAIN"``) are read as the same property.

The environment variable of a key is ``UNIFEED_`` + the key in capitals
(``UNIFEED_BOOTSTRAP_SERVERS``, ``UNIFEED_INSTANCE``, ``UNIFEED_STRICT_ORDER=true``,
``UNIFEED_LOG_FORMAT``); it applies to every command with that option. An empty value
counts as unset. ``UNIFEED_TEST_*`` is left to the test suite, ``UNIFEED_KAFKA_CACHE`` to
``unifeed broker --kafka``.

Librdkafka settings also come from ``UNIFEED_KAFKA__<KEY>`` variables (secrets without a
file): ``<KEY>`` in lower case with ``_`` for each dot and ``__`` for an underscore, so
``UNIFEED_KAFKA__SASL_PASSWORD`` is ``sasl.password``. They override the file's
``[kafka]`` table; ``--kafka-config FILE`` and ``-X KEY=VALUE`` override them.

Mistakes in the file are caught before anything runs: an unknown key (with the file and
table it is in) or a value of the wrong type is a `ConfigError` (exit code 2). An
``UNIFEED_*`` variable that names no option is warned about once and ignored (Kubernetes
injects ``UNIFEED_PORT=tcp://...`` for a Service named ``unifeed``); so is a value shaped
like a Kubernetes service link. A variable's value of the wrong type is an error (exit
code 2) for the commands that have that option, and only for them.

``unifeed config show [--command NAME]`` prints the effective configuration as TOML, each
value with where it came from, passwords, secrets and tokens masked.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from unifeed.core.errors import ConfigError, UnifeedError

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "GLOBAL_KEYS",
    "Configuration",
    "Setting",
    "add_global_options",
    "config_path_from_argv",
    "mask_secrets",
    "option_key",
    "register",
]

log = logging.getLogger("unifeed.config")

ENV_PREFIX: Final = "UNIFEED_"
#: Names the configuration file when ``--config`` is not given.
CONFIG_ENV: Final = "UNIFEED_CONFIG"
#: Environment variables with these prefixes are not options: the test suite's, and the
#: local Apache Kafka's jar cache (`unifeed.kafka.apache`).
_RESERVED_ENV: Final = ("UNIFEED_TEST_", "UNIFEED_KAFKA_CACHE")
#: Keys of the options every command has (``--log-format``, ``--log-level``).
GLOBAL_KEYS: Final[tuple[str, ...]] = ("log_format", "log_level")
_GLOBAL_DESTS: Final = frozenset({"config", "log_format", "log_level"})
_GLOBAL_DEFAULTS: Final[Mapping[str, str]] = {"log_format": "text", "log_level": "info"}
_GLOBAL_CHOICES: Final[Mapping[str, tuple[str, ...]]] = {
    "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error", "critical"),
}
KAFKA_TABLE: Final = "kafka"
_MASK: Final = "********"
_SECRET_KEY: Final = re.compile(
    r"password|passwd|secret|token|credential|jaas|private|ssl\.key\.pem", re.IGNORECASE
)
#: Commands whose options are not settings (``config show --command`` picks a view).
_NOT_SETTINGS: Final = frozenset({"config"})
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
#: A Kubernetes service-link value (``tcp://10.0.0.7:9100``), never a unifeed setting.
_SERVICE_LINK: Final = re.compile(r"(tcp|udp|sctp)://[^\s/]+:\d+")
#: ``UNIFEED_KAFKA__SASL_PASSWORD`` is the librdkafka setting ``sasl.password``.
KAFKA_ENV_PREFIX: Final = "UNIFEED_KAFKA__"


def kafka_env_key(name: str) -> str:
    """The librdkafka setting an ``UNIFEED_KAFKA__<KEY>`` variable sets: ``<KEY>`` in lower
    case, each ``_`` a dot and each ``__`` an underscore (librdkafka's keys are dotted).

    >>> kafka_env_key("UNIFEED_KAFKA__SASL_PASSWORD"), kafka_env_key("UNIFEED_KAFKA__A__B_C")
    ('sasl.password', 'a_b.c')
    """
    key = name[len(KAFKA_ENV_PREFIX) :].lower()
    return ".".join(part.replace("\0", "_") for part in key.replace("__", "\0").split("_"))
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


class OptionParser(Protocol):
    """A parser that remembers the options added to it (``unifeed.cli.main``'s parser)."""

    recorded_options: list[argparse.Action]


def option_key(action: argparse.Action) -> str | None:
    """The configuration key of an option (``--bootstrap-servers`` -> ``bootstrap_servers``).

    None for positional arguments, ``--help`` and the global ``--config``/``--log-*``
    options, which are not per-command settings.
    """
    if not action.option_strings or action.dest in _GLOBAL_DESTS:
        return None
    if action.default is argparse.SUPPRESS:
        return None
    for text in action.option_strings:
        if text.startswith("--"):
            return text[2:].replace("-", "_")
    return action.dest


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """``--config``, ``--log-format``, ``--log-level``.

    ``suppress`` is for the commands' own parsers, so that the options may also follow
    the command name without their defaults hiding a value given before it.
    """
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help=f"TOML configuration file (or ${CONFIG_ENV}); the command line wins over "
        "UNIFEED_* variables, which win over the file",
    )
    group.add_argument(
        "--log-format",
        choices=_GLOBAL_CHOICES["log_format"],
        default=default,
        help="log lines on stderr as readable text (default) or one JSON object each",
    )
    group.add_argument(
        "--log-level",
        choices=_GLOBAL_CHOICES["log_level"],
        default=default,
        help="least severe log level shown (default info)",
    )


def config_path_from_argv(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` anywhere before a ``--``, or None; the last one wins."""
    found: str | None = None
    tokens = list(argv)
    for i, token in enumerate(tokens):
        if token == "--":
            break
        if token == "--config" and i + 1 < len(tokens):
            found = tokens[i + 1]
        elif token.startswith("--config="):
            found = token[len("--config=") :]
    return found


def mask_secrets(key: str, value: Any) -> Any:
    """``********`` for a key that names a password, secret, token or private key, and for
    the password inside a URL (``redis://:pw@host``, ``postgresql://user:pw@host/db``)
    whatever its key.

    >>> mask_secrets("sasl.password", "hunter2"), mask_secrets("sasl.username", "ops")
    ('********', 'ops')
    >>> mask_secrets("history", "postgresql://ops:hunter2@127.0.0.1:5432/flights")
    'postgresql://ops:********@127.0.0.1:5432/flights'
    """
    if value is None:
        return None
    if _SECRET_KEY.search(key):
        return _MASK
    if isinstance(value, str) and "@" in value and "://" in value:
        return _mask_url_password(value)
    return value


def _mask_url_password(url: str) -> str:
    """``url`` with the password of its user info masked (unchanged without one)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{_MASK}@{hostport}"))


@dataclass(frozen=True)
class Setting:
    """One effective value and where it came from.

    ``source`` is ``default``, ``file``, ``environment`` or ``command line``; ``origin``
    names the file (and table) or the variable.
    """

    value: Any
    source: str
    origin: str = ""

    def describe(self) -> str:
        return self.source if not self.origin else f"{self.source} {self.origin}"


# --- reading ---------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {exc}") from None


def _flatten(table: Mapping[str, Any], prefix: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}.", where))
        else:
            out[name] = _property_text(name, value, where)
    return out


def _property_text(name: str, value: Any, where: str) -> str:
    match value:
        case bool():
            return "true" if value else "false"
        case int() | float() | str():
            return str(value)
        case list():
            return ",".join(_property_text(name, v, where) for v in value)
        case _:
            raise ConfigError(
                f"{where}: [kafka] {name!r} must be a string, number, boolean or list, "
                f"got {type(value).__name__}"
            )


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Configuration:
    """The file and environment layers for one run, checked against the known options.

    ``commands`` maps a command path (``"combine"``, ``"checkpoint show"``) to its parser;
    a file table is named by the first word. Raises `ConfigError` for unknown keys or
    variables, and for values of the wrong type (naming the key and where it was set).
    """

    def __init__(
        self,
        commands: Mapping[str, OptionParser],
        *,
        path: str | None,
        environ: Mapping[str, str],
    ) -> None:
        self.commands = dict(commands)
        self.path = Path(path) if path else None
        self.document: dict[str, Any] = {} if self.path is None else _read_file(self.path)
        self.environ = {
            name: value
            for name, value in environ.items()
            if name.startswith(ENV_PREFIX)
            and name != CONFIG_ENV
            and not name.startswith((*_RESERVED_ENV, KAFKA_ENV_PREFIX))
        }
        #: ``UNIFEED_KAFKA__<KEY>`` variables: librdkafka settings over the file's [kafka].
        self.kafka_environ = {
            kafka_env_key(name): (name, value)
            for name, value in sorted(environ.items())
            if name.startswith(KAFKA_ENV_PREFIX) and len(name) > len(KAFKA_ENV_PREFIX) and value
        }
        #: Said once, after logging is set up: variables that name no option.
        self.warnings: list[str] = []
        #: Command table -> the first bad value of an option it has, raised by `check_for`.
        self.deferred: dict[str, ConfigError] = {}
        # table -> key -> the options (one per parser) it sets
        self.tables: dict[str, dict[str, list[argparse.Action]]] = {}
        for command, parser in self.commands.items():
            if command.split()[0] in _NOT_SETTINGS:
                continue
            table = self.tables.setdefault(command.split()[0], {})
            for action in parser.recorded_options:
                key = option_key(action)
                if key is not None:
                    table.setdefault(key, []).append(action)
        self.all_keys = {key for table in self.tables.values() for key in table}
        self.kafka_properties: dict[str, str] = {}
        self._check_file()
        self._check_environment()
        self.kafka_properties.update({k: v for k, (_n, v) in self.kafka_environ.items()})

    def log_summary(self) -> None:
        """One debug line: which file and which variables this run's settings came from."""
        log.debug(
            "configuration: file %s, environment %s",
            self.path if self.path is not None else "none",
            ", ".join(sorted(self.environ)) or "none",
        )

    # checks ----------------------------------------------------------------

    @property
    def _where(self) -> str:
        return str(self.path)

    def _check_file(self) -> None:
        where = self._where
        for key, value in self.document.items():
            if key == KAFKA_TABLE:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: 'kafka' must be a table ([kafka])")
                self.kafka_properties = _flatten(value, "", where)
            elif key in self.tables and isinstance(value, dict):
                known = self.tables[key]
                for sub, sub_value in value.items():
                    if sub not in known:
                        raise ConfigError(
                            f"{where}: unknown key {sub!r} in [{key}]{_suggest(sub, known)}; "
                            f"`unifeed {key} --help` lists the options"
                        )
                    self._convert_all(known[sub], sub_value, f"{where} [{key}] {sub}")
            elif isinstance(value, dict):
                raise ConfigError(
                    f"{where}: unknown table [{key}]{_suggest(key, [*self.tables, KAFKA_TABLE])}; "
                    "tables are named after commands, plus [kafka]"
                )
            elif key in GLOBAL_KEYS:
                self._check_global(key, value, f"{where} {key}")
            elif key in self.all_keys:
                for table in self.tables.values():
                    if key in table:
                        self._convert_all(table[key], value, f"{where} {key}")
            else:
                raise ConfigError(
                    f"{where}: unknown key {key!r}"
                    f"{_suggest(key, [*self.all_keys, *GLOBAL_KEYS])}; top-level keys are "
                    "options common to commands (bootstrap_servers, instance, ...), "
                    "log_format and log_level"
                )

    def _check_environment(self) -> None:
        """Unknown ``UNIFEED_*`` variables are warned about, not fatal: Kubernetes adds
        ``<SERVICE>_PORT=tcp://...`` and friends for every Service, and a Service named
        ``unifeed-...`` gives them this prefix. A value shaped like such a service link is
        ignored even for a known option (``UNIFEED_METRICS_PORT=tcp://10.0.0.7:9100``). A
        known option's value is checked by `apply`, for the commands that have it."""
        for name, value in sorted(self.environ.items()):
            key = name[len(ENV_PREFIX) :].lower()
            if _SERVICE_LINK.fullmatch(value.strip()):
                self.warnings.append(
                    f"ignoring {name}={value}: a Kubernetes service link, not a unifeed "
                    "setting (set enableServiceLinks: false in the pod spec to drop them)"
                )
                del self.environ[name]
                continue
            if key in GLOBAL_KEYS:
                if value:
                    self._check_global(key, value, name)
                continue
            if key not in self.all_keys:
                known = [ENV_PREFIX + k.upper() for k in (*self.all_keys, *GLOBAL_KEYS)]
                self.warnings.append(
                    f"ignoring environment variable {name}: it names no unifeed option"
                    f"{_suggest(name, known)} (`unifeed config show` lists the options; "
                    f"{KAFKA_ENV_PREFIX}<KEY> sets a Kafka client setting)"
                )
                del self.environ[name]

    def check_for(self, command: str | None) -> None:
        """Raise the `ConfigError` of a bad value for an option that ``command`` has."""
        if command is not None and command in self.deferred:
            raise self.deferred[command]

    def _check_global(self, key: str, value: Any, where: str) -> str:
        choices = _GLOBAL_CHOICES[key]
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return str(text)

    def _convert_all(self, actions: list[argparse.Action], value: Any, where: str) -> None:
        for action in actions:
            _convert(action, value, where)

    # lookups ---------------------------------------------------------------

    def setting(self, command: str, action: argparse.Action) -> Setting:
        """The effective value of one option of ``command`` before the command line."""
        key = option_key(action)
        if key is None:
            return Setting(action.default, "default")
        env_name = ENV_PREFIX + key.upper()
        env_value = self.environ.get(env_name, "")
        if env_value:
            return Setting(_convert(action, env_value, env_name), "environment", env_name)
        table_name = command.split()[0]
        table = self.document.get(table_name)
        if isinstance(table, dict) and key in table:
            where = f"{self._where} [{table_name}]"
            return Setting(_convert(action, table[key], where), "file", where)
        if key in self.document and not isinstance(self.document[key], dict):
            return Setting(_convert(action, self.document[key], self._where), "file", self._where)
        return Setting(action.default, "default")

    def global_setting(self, key: str, cli_value: str | None = None) -> Setting:
        """``log_format`` or ``log_level``: command line, environment, file, default."""
        if cli_value is not None:
            return Setting(cli_value, "command line")
        env_name = ENV_PREFIX + key.upper()
        if self.environ.get(env_name):
            return Setting(
                self._check_global(key, self.environ[env_name], env_name), "environment", env_name
            )
        if key in self.document:
            return Setting(
                self._check_global(key, self.document[key], self._where), "file", self._where
            )
        return Setting(_GLOBAL_DEFAULTS[key], "default")

    def apply(self) -> None:
        """Make the file and environment values the defaults of the commands' options.

        A required option that gets a value here is no longer required on the command line.
        """
        for command, parser in self.commands.items():
            if command.split()[0] in _NOT_SETTINGS:
                continue
            for action in parser.recorded_options:
                try:
                    setting = self.setting(command, action)
                except ConfigError as exc:
                    # Only an error for a run of this command (`check_for`).
                    self.deferred.setdefault(command.split()[0], exc)
                    continue
                if setting.source == "default":
                    continue
                action.default = setting.value
                action.required = False

    # show ------------------------------------------------------------------

    def render(
        self, command: str | None = None, cli_globals: Mapping[str, str | None] | None = None
    ) -> str:
        """The effective configuration as TOML (secrets masked), each value's source noted.

        ``command`` limits it to one command's table; ``cli_globals`` holds
        ``--log-format``/``--log-level`` as given on this command line.
        """
        cli_globals = cli_globals or {}
        tables = sorted(self.tables) if command is None else [command]
        for name in tables:
            if name not in self.tables:
                raise ConfigError(
                    f"--command must be one of {', '.join(sorted(self.tables))}, got {name!r}"
                )
        file_note = str(self.path) if self.path is not None else f"none (--config or {CONFIG_ENV})"
        lines = [
            "# unifeed effective configuration",
            "# precedence: command line > UNIFEED_* environment > file > defaults",
            f"# file: {file_note}",
            "",
        ]
        rows = [(key, self.global_setting(key, cli_globals.get(key))) for key in GLOBAL_KEYS]
        lines.extend(_render_rows(rows))
        for name in tables:
            rows = []
            seen: set[str] = set()
            for path, parser in self.commands.items():
                if path.split()[0] != name:
                    continue
                for action in parser.recorded_options:
                    key = option_key(action)
                    if key is None or key in seen:
                        continue
                    seen.add(key)
                    setting = self.setting(path, action)
                    if getattr(action.type, "is_duration", False) and type(setting.value) is int:
                        # Written back as a duration, which every duration option reads.
                        setting = Setting(
                            duration_text(setting.value), setting.source, setting.origin
                        )
                    rows.append((key, setting))
            if not rows:
                continue
            lines.extend(["", f"[{_toml_key(name)}]"])
            lines.extend(_render_rows(rows))
        if self.kafka_properties:
            lines.extend(["", f"[{KAFKA_TABLE}]"])
            lines.extend(
                _render_rows(
                    [
                        (
                            k,
                            Setting(v, "environment", self.kafka_environ[k][0])
                            if k in self.kafka_environ
                            else Setting(v, "file", self._where),
                        )
                        for k, v in self.kafka_properties.items()
                    ]
                )
            )
        return "\n".join(lines) + "\n"


def duration_text(ms: int) -> str:
    """A duration in milliseconds as the largest whole unit that `parse_duration_ms` reads.

    >>> [duration_text(ms) for ms in (0, 250, 2000, 90_000, 21_600_000, 86_400_000)]
    ['0s', '250ms', '2s', '90s', '6h', '1d']
    """
    if ms == 0:
        return "0s"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _render_rows(rows: list[tuple[str, Setting]]) -> list[str]:
    out: list[tuple[str, str]] = []
    for key, setting in rows:
        value = mask_secrets(key, setting.value)
        note = setting.describe()
        if value is not None and value != setting.value:
            note += ", masked"
        if value is None:
            out.append((f"# {_toml_key(key)} = (not set)", ""))
        else:
            out.append((f"{_toml_key(key)} = {_toml_value(value)}", note))
    width = max((len(text) for text, note in out if note), default=0)
    return [f"{text:<{width}}  # {note}" if note else text for text, note in out]


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's; TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    match value:
        case bool():
            return "true" if value else "false"
        case int():
            return str(value)
        case float():
            if math.isnan(value):
                return "nan"
            if math.isinf(value):
                return "inf" if value > 0 else "-inf"
            return repr(value)
        case str():
            return _toml_string(value)
        case list() | tuple():
            return "[" + ", ".join(_toml_value(v) for v in value) + "]"
        case _:
            return _toml_string(str(value))


# --- conversion ------------------------------------------------------------


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0 and isinstance(action.const, bool)


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` (a TOML value or an environment string) as the option's parsed value."""
    if _is_flag(action):
        return action.const if _flag(value, where) else action.default
    if (
        action.nargs in ("*", "+")
        or isinstance(action.nargs, int)
        or isinstance(action, argparse._AppendAction)
    ):
        items = value if isinstance(value, list) else str(value).replace(",", " ").split()
        return [_convert_one(action, item, where) for item in items]
    return _convert_one(action, value, where)


def _convert_one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(
            f"{where}: expected a string or number for {action.option_strings[-1]}, got {value!r}"
        )
    text = str(value).strip() if isinstance(value, str) else str(value)
    converter = action.type
    try:
        result: Any = text if converter is None else converter(text)  # type: ignore[operator]
    except (argparse.ArgumentTypeError, ValueError, TypeError, UnifeedError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ConfigError(
            f"{where}: invalid value {value!r} for {action.option_strings[-1]} ({reason})"
        ) from None
    if action.choices is not None and result not in action.choices:
        raise ConfigError(
            f"{where}: {action.option_strings[-1]} must be one of "
            f"{', '.join(map(str, action.choices))}, got {value!r}"
        )
    return result


# --- unifeed config show ----------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``unifeed config show``."""
    parser = subparsers.add_parser(
        "config",
        help="show the effective configuration (file, environment, defaults)",
        description=(
            "Show the configuration each command would run with: values from --config FILE "
            f"(or ${CONFIG_ENV}), UNIFEED_* environment variables and built-in defaults, "
            "as TOML, each with its source; passwords, secrets and tokens are masked."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print the effective configuration as TOML",
        description="Print the effective configuration as TOML, secrets masked.",
    )
    show.add_argument(
        "--command",
        dest="show_command",
        metavar="NAME",
        help="only this command's table (e.g. combine); default: every command",
    )
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace) -> int:
    configuration: Configuration | None = getattr(args, "configuration", None)
    if configuration is None:  # pragma: no cover - main() always sets it
        raise ConfigError("no configuration was loaded")
    text = configuration.render(
        args.show_command,
        {"log_format": args.log_format, "log_level": args.log_level},
    )
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
