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
