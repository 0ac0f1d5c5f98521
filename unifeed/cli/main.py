"""The ``unifeed`` command line: one parser, one subcommand per module that owns it.

Each module that offers a subcommand exposes ``register(subparsers)``; the handler it
sets with ``set_defaults(handler=...)`` takes the parsed namespace and returns the exit
code. Errors derived from `UnifeedError` end the command with one line on stderr and
the error's exit code (0 ok, 2 usage, 3 broker unreachable, 4 bad data, 1 other).

Before the command line is parsed, the configuration file (``--config``) and the
``UNIFEED_*`` environment variables become the options' defaults (``unifeed.cli.config``),
so the command line wins over the environment, which wins over the file. Handlers also
get ``args.kafka_properties``, the file's ``[kafka]`` table, and logging is set up from
``--log-format`` / ``--log-level`` (``unifeed.cli.logs``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from unifeed.cli.config import (
    CONFIG_ENV,
    ENV_PREFIX,
    KAFKA_ENV_PREFIX,
    Configuration,
    add_global_options,
    config_path_from_argv,
    option_key,
)
from unifeed.cli.logs import setup_logging
from unifeed.core.errors import UnifeedError

log = logging.getLogger("unifeed.config")

# Modules that register subcommands, in the order `unifeed --help` lists them.
_COMMAND_MODULES = (
    "unifeed.cli.pipeline",
    "unifeed.cli.merge",
    "unifeed.cli.simulate",
    "unifeed.cli.ingest",
    "unifeed.cli.kafka",
    "unifeed.cli.demo",
    "unifeed.cli.config",
    "unifeed.cli.serve",
)

Handler = Callable[[argparse.Namespace], int]


#: Every command's help ends with these; `_epilog` adds the command's own variables.
EXIT_CODES: Final = (
    "exit codes: 0 done; 1 other failure; 2 usage or configuration error (also a start "
    "refused to protect output); 3 Kafka broker unreachable (--broker-timeout); 4 bad data "
    "beyond what the command accepts (--max-dead-letters, load's checks); 130 interrupted"
)


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, except that a line break in a description or epilog stays:
    each line is a paragraph, wrapped on its own."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(super(_Formatter, self)._fill_text(line, width, indent)
                         for line in text.splitlines())  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """Exits 2 on usage errors, and remembers its options (`recorded_options`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before super().__init__, which adds --help through add_argument.
        self.recorded_options: list[argparse.Action] = []
        self.subcommand_actions: list[argparse.Action] = []
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.recorded_options.append(action)
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        group = super().add_argument_group(*args, **kwargs)
        self._record_through(group)
        return group

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        group = super().add_mutually_exclusive_group(**kwargs)
        self._record_through(group)
        return group

    def _record_through(self, group: Any) -> None:
        add = group.add_argument
        recorded = self.recorded_options

        def add_and_record(*args: Any, **kwargs: Any) -> argparse.Action:
            action: argparse.Action = add(*args, **kwargs)
            recorded.append(action)
            return action

        group.add_argument = add_and_record

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.subcommand_actions.append(action)
        return action


@dataclass
class CommandLine:
    """The parser and every command's own parser, by path (``"combine"``, ``"checkpoint show"``)."""

    parser: _Parser
    commands: dict[str, _Parser] = field(default_factory=dict)


def _collect_commands(parser: _Parser, prefix: str, into: dict[str, _Parser]) -> None:
    for action in parser.subcommand_actions:
        choices: dict[str, Any] = dict(action.choices or {})
        for name, sub in choices.items():
            path = f"{prefix}{name}"
            if isinstance(sub, _Parser) and sub not in into.values():
                into[path] = sub
                _collect_commands(sub, f"{path} ", into)


def build_command_line() -> CommandLine:
    parser = _Parser(
        prog="unifeed",
        description=(
            "Merge controlstream (airborne) and surfacestream (airport surface) into one "
            "unified feed ordered by pitr, with every aircraft surface position annotated "
            "with its flight ID."
        ),
    )
    add_global_options(parser)
    parser.add_argument(
        "-V", "--version", action="version", version=f"unifeed {_version()}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    cli = CommandLine(parser)
    _collect_commands(parser, "", cli.commands)
    for command in cli.commands.values():
        if not command.subcommand_actions:
            add_global_options(command, suppress=True)
    for command in (parser, *cli.commands.values()):
        command.epilog = _epilog(command)
    return cli


def _version() -> str:
    import unifeed

    return str(unifeed.__version__)


def _epilog(parser: _Parser) -> str:
    """Exit codes and environment variables: the same words under every command."""
    own = sorted(
        {f"{ENV_PREFIX}{key.upper()}" for a in parser.recorded_options if (key := option_key(a))}
    )
    options = f"; for this command's options: {', '.join(own)}" if own else ""
    return (
        f"{EXIT_CODES}\n"
        f"environment: {CONFIG_ENV} (configuration file), UNIFEED_LOG_FORMAT, "
        f"UNIFEED_LOG_LEVEL, {KAFKA_ENV_PREFIX}<KEY> for a librdkafka setting ("
        f"{KAFKA_ENV_PREFIX}SASL_PASSWORD is sasl.password){options}. The command line wins "
        "over the environment, which wins over the file; `unifeed config show` shows the "
        "result."
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    cli = build_command_line()
    try:
        configuration = Configuration(
            cli.commands,
            path=config_path_from_argv(arguments) or os.environ.get("UNIFEED_CONFIG") or None,
            environ=os.environ,
        )
        configuration.apply()
    except UnifeedError as exc:
        print(f"unifeed: {exc}", file=sys.stderr)
        return exc.exit_code
    args = cli.parser.parse_args(arguments)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        cli.parser.print_help(sys.stderr)
        return 2
    args.kafka_properties = dict(configuration.kafka_properties)
    args.configuration = configuration
    try:
        setup_logging(
            configuration.global_setting("log_format", args.log_format).value,
            configuration.global_setting("log_level", args.log_level).value,
            instance=getattr(args, "instance", None),
        )
        configuration.log_summary()
        for warning in configuration.warnings:
            log.warning("%s", warning)
        configuration.check_for(args.command)
        code = handler(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # here, so that a full disk is reported like any error
        return code
    except UnifeedError as exc:
        print(f"unifeed {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"unifeed {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`unifeed dump ... | head`): not an error.
        _silence_stdout()
        if sys.stderr is not None:
            sys.stderr.close()
        return 0
    except OSError as exc:
        # Any I/O the command did not guard itself (a full disk, a closed descriptor):
        # one line, exit code 1.
        _silence_stdout()
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"unifeed {args.command}: I/O error{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what could not
    be written cannot fail again at exit."""
    if sys.stdout is None:
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
