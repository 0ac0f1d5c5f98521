"""``unifeed COMMAND --help`` exits 0 for every command and names every option it has."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from unifeed.cli.main import build_command_line

ROOT = Path(__file__).resolve().parent.parent
_TIMEOUT_S = 60


def _help_of_all() -> dict[str, subprocess.CompletedProcess[str]]:
    cli = build_command_line()
    paths = ["", *cli.commands]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    environ.update(PYTHONPATH=str(ROOT), COLUMNS="200")
    # All at once: each is a fresh interpreter, mostly waiting on imports.
    running = {
        path: subprocess.Popen(
            [sys.executable, "-m", "unifeed", *path.split(), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        for path in paths
    }
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    for path, process in running.items():
        try:
            out, err = process.communicate(timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate(timeout=10)
        done[path] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def test_every_command_help_exits_0_and_lists_its_options() -> None:
    cli = build_command_line()
    results = _help_of_all()
    expected_commands = {
        "combine",
        "mappings",
        "simulate",
        "ingest",
        "load",
        "dump",
        "broker",
        "checkpoint",
        "demo",
        "config",
    }
    top = results[""]
    assert top.returncode == 0, top.stderr
    for name in expected_commands & set(cli.commands):
        assert name in top.stdout
    assert "--config" in top.stdout and "--log-format" in top.stdout
    for path, parser in cli.commands.items():
        result = results[path]
        assert result.returncode == 0, f"unifeed {path} --help: {result.stderr}"
        assert result.stdout.startswith("usage: unifeed " + path), result.stdout[:200]
        for action in parser.recorded_options:
            for option in action.option_strings:
                assert option in result.stdout, f"unifeed {path} --help does not show {option}"
        if not parser.subcommand_actions:
            assert "--log-level" in result.stdout  # global options work after the command too


def test_commands_of_the_spec_exist() -> None:
    commands = set(build_command_line().commands)
    for name in ("combine", "mappings", "simulate", "ingest", "load", "dump", "broker",
                 "config show"):
        assert name in commands
    assert {"checkpoint show", "checkpoint reset"} <= commands


_PROPER_NOUNS = {"Kafka", "TOML", "JSON", "JSON-lines", "Prometheus"}
_KAFKA_SPELLINGS = ("-b", "--bootstrap-servers", "--bootstrap-server", "--broker-timeout",
                    "--kafka-config", "-X")  # fmt: skip


def test_every_help_reads_the_same_way() -> None:
    """One style for every command, present or added later: a description, every option
    explained, help text starting in lower case, times as DURATION, the same Kafka option
    spellings, and the exit codes and environment variables at the end."""
    cli = build_command_line()
    results = _help_of_all()
    for path, parser in {"": cli.parser, **cli.commands}.items():
        name = f"unifeed {path}".strip()
        text = results[path].stdout
        assert parser.description or not path, f"{name} has no description"
        assert "exit codes: 0 done; 1 other failure; 2 usage" in text, name
        assert "environment: UNIFEED_CONFIG" in text, name
        options = [a for a in parser.recorded_options if a.option_strings]
        for action in options:
            spelled = "/".join(action.option_strings)
            if action.help == "==SUPPRESS==":
                continue
            assert action.help, f"{name} {spelled} has no help"
            first_word = action.help.split()[0].strip(",")
            assert action.help[0].islower() or first_word in _PROPER_NOUNS, (
                f"{name} {spelled}: help starts in upper case: {action.help!r}"
            )
            assert not action.help.rstrip().endswith("."), f"{name} {spelled}: ends with '.'"
            assert action.metavar not in ("SECONDS", "MS", "MILLISECONDS"), f"{name} {spelled}"
        strings = {s for a in options for s in a.option_strings}
        if "--bootstrap-servers" in strings:
            missing = [s for s in _KAFKA_SPELLINGS if s not in strings]
            assert not missing, f"{name} lacks {missing}"
