"""The ``unifeed`` command line: one parser, one subcommand per module that owns it.

Each module that offers a subcommand exposes ``register(subparsers)``; the handler it
sets with ``set_defaults(handler=...)`` takes the parsed namespace and returns the exit
code. Errors derived from `UnifeedError` end the command with one line on stderr and
the error's exit code (SPEC §5: 0 ok, 2 usage, 3 broker unreachable, 4 bad data, 1 other).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from ._errors import UnifeedError

# Modules that register subcommands, in the order `unifeed --help` lists them.
_COMMAND_MODULES = (
    "unifeed._cli_pipeline",
    "unifeed._simulate",
    "unifeed._cli_kafka",
    "unifeed._demo",
)

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unifeed",
        description=(
            "Merge controlstream (airborne) and surfacestream (airport surface) into one "
            "unified feed ordered by pitr, with every aircraft surface position annotated "
            "with its flight ID."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except UnifeedError as exc:
        print(f"unifeed {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"unifeed {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`unifeed dump ... | head`): not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
