"""What a new operator runs into (issue 11): defaults, options, environment, checks that
come before the broker, gzip, Kafka-tool habits. Each test drives the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from unifeed.cli.main import build_command_line

REPO = Path(__file__).resolve().parent.parent


def _unifeed(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    environ["PYTHONPATH"] = str(REPO)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "unifeed", *args],
        env=environ,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _default(command: str, dest: str) -> object:
    parser = build_command_line().commands[command]
    for action in parser.recorded_options:
        if action.dest == dest:
            return action.default
    raise AssertionError(f"{command} has no option {dest}")


# --- 1: instance names ---------------------------------------------------------------


def test_combine_and_mappings_default_to_different_instance_names() -> None:
    assert _default("combine", "instance") != _default("mappings", "instance")


@pytest.mark.kafka
def test_an_instance_name_held_by_another_command_is_a_usage_error(
    kafka_bootstrap: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    from tests.support.kafkatools import load

    ctl, srf, maps, out = (unique_topic(p) for p in ("ctl", "srf", "map", "out"))
    load(kafka_bootstrap, ctl, [b'{"type":"flightplan","pitr":1700000000000,"id":"F1"}'])
    load(kafka_bootstrap, srf, [b'{"type":"keepalive","pitr":1700000000000}'])
    name = f"shared-{out}"
    common = ["--bootstrap-servers", kafka_bootstrap, "--checkpoint-topic", f"{out}.cp",
              "--instance", name, "--exit-at-end", "--status-interval", "0"]  # fmt: skip
    first = _unifeed("mappings", "--control", f"kafka:{ctl}", "--output", f"kafka:{maps}",
                     *common)  # fmt: skip
    assert first.returncode == 0, first.stderr.decode()
    second = _unifeed("combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
                      "--output", f"kafka:{out}", *common)  # fmt: skip
    err = second.stderr.decode()
    assert second.returncode == 2, err
    assert f"instance name '{name}' is held by a `unifeed mappings` run" in err, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("unifeed combine:")


# --- 2 and 6: time options -----------------------------------------------------------


def test_broker_timeout_bounds_the_start_up_wait(tmp_path: Path) -> None:
    """The one-line error names the wait it used: --broker-timeout's, not a fixed 10 s."""
    address = _closed_port()
    result = _unifeed("combine", "--control", "kafka:c", "--surface", "kafka:s", "--output",
                      "kafka:o", "-b", address, "--broker-timeout", "1500ms",
                      "--status-interval", "0")  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert "within 1.5 s" in err, err


def test_every_time_option_takes_a_duration(tmp_path: Path) -> None:
    parser = build_command_line().parser
    args = parser.parse_args(["combine", "--control", "a", "--surface", "b", "--output", "c",
                              "--status-interval", "5s", "--broker-timeout", "3s"])  # fmt: skip
    assert (args.status_interval, args.broker_timeout) == (5000, 3000)
    args = parser.parse_args(["dump", "kafka:t", "--broker-timeout", "2s"])
    assert args.broker_timeout == 2000
    args = parser.parse_args(["dump", "kafka:t", "--connect-timeout", "2"])  # deprecated
    assert args.broker_timeout == 2000
    args = parser.parse_args(["demo", "--outage", "1.5s"])
    assert args.outage == 1500
    args = parser.parse_args(["ingest", "--replay", "x", "--control", "a", "--surface", "b",
                              "--status-interval", "500ms"])  # fmt: skip
    assert args.status_interval == 500


def test_a_bare_number_where_seconds_were_meant_asks_for_a_unit() -> None:
    result = _unifeed("combine", "--control", "a", "--surface", "b", "--output", "c",
                      "--status-interval", "5")  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "give a unit, e.g. 5s" in err, err


def test_no_time_option_is_in_seconds_only() -> None:
    """Every option whose value is a time reads a DURATION (one metavar for one idea)."""
    cli = build_command_line()
    for path, parser in cli.commands.items():
        for action in parser.recorded_options:
            if action.default is argparse_suppress():
                continue
            assert action.metavar != "SECONDS", f"unifeed {path} {action.option_strings}"


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS
