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


def test_config_show_writes_every_duration_back_as_a_duration() -> None:
    """Every command's DURATION options, defaults and environment alike, read back as
    durations (``"10m"``), never as the milliseconds they parse to."""
    cli = build_command_line()
    commands = {path.split()[0] for path in cli.commands}
    for command in sorted(commands - {"config"}):
        durations = {
            action.dest
            for path, parser in cli.commands.items()
            if path.split()[0] == command
            for action in parser.recorded_options
            if action.metavar == "DURATION" and action.default not in (None, argparse_suppress())
        }
        if not durations:
            continue
        result = _unifeed("config", "show", "--command", command)
        out = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()
        for dest in durations:
            line = next(li for li in out.splitlines() if li.startswith(f"{dest} "))
            assert line.split("=")[1].split()[0].startswith('"'), f"{command}: {line}"


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


# --- 3 and 4: the environment ----------------------------------------------------------


_FILES = (
    b'{"type":"flightplan","pitr":1000,"id":"F1","ident":"UAL1"}\n'
    b'{"type":"power_on","pitr":2000,"id":"F1","surface_id":"S9","facility":"KSFO"}\n'
)


def test_kubernetes_service_links_and_unknown_variables_only_warn(tmp_path: Path) -> None:
    (tmp_path / "control.jsonl").write_bytes(_FILES)
    env = {
        "UNIFEED_PORT": "tcp://10.0.0.7:9100",
        "UNIFEED_PORT_9100_TCP_ADDR": "10.0.0.7",
        "UNIFEED_SERVICE_HOST": "10.0.0.7",
        "UNIFEED_METRICS_PORT": "tcp://10.0.0.8:9100",
    }
    for args in (("--help",), ("combine", "--help"), ("config", "show"),
                 ("mappings", "--control", "control.jsonl", "--output", "m.jsonl")):  # fmt: skip
        result = _unifeed(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr.decode())
    err = result.stderr.decode()
    assert err.count("UNIFEED_SERVICE_HOST") == 1, err
    assert "Kubernetes service link" in err and "UNIFEED_METRICS_PORT" in err, err
    assert b'"action":"link"' in (tmp_path / "m.jsonl").read_bytes()


def test_a_bad_value_stops_only_the_commands_that_have_the_option(tmp_path: Path) -> None:
    (tmp_path / "control.jsonl").write_bytes(_FILES)
    env = {"UNIFEED_REALTIME_THRESHOLD": "soon"}  # combine's option, not mappings'
    ok = _unifeed("mappings", "--control", "control.jsonl", "--output", "m.jsonl", env=env,
                  cwd=tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr.decode()
    bad = _unifeed("combine", "--control", "control.jsonl", "--surface", "control.jsonl",
                   "--output", "u.jsonl", env=env, cwd=tmp_path)  # fmt: skip
    err = bad.stderr.decode()
    assert bad.returncode == 2, err
    assert "UNIFEED_REALTIME_THRESHOLD" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "u.jsonl").exists()


def test_kafka_settings_from_the_environment_and_x_are_masked_in_config_show() -> None:
    env = {"UNIFEED_KAFKA__SASL_PASSWORD": "hunter2", "UNIFEED_KAFKA__SASL_USERNAME": "ops",
           "UNIFEED_KAFKA__SSL_KEY_PASSWORD": "pem-pass"}  # fmt: skip
    result = _unifeed("config", "show", env=env)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "hunter2" not in out and "pem-pass" not in out
    assert '"sasl.password" = "********"' in out, out
    assert '"sasl.username" = "ops"' in out and "UNIFEED_KAFKA__SASL_USERNAME" in out, out


def test_passwords_inside_urls_are_masked_in_config_show(tmp_path: Path) -> None:
    """serve's --redis and --history take URLs that may carry a password: config show
    prints the URL with its password masked, from the environment and from a file."""
    config = tmp_path / "unifeed.toml"
    config.write_text('[serve]\nhistory = "postgresql://ops:s3cr3t-pg@127.0.0.1:5432/fl"\n')
    env = {"UNIFEED_REDIS": "redis://:s3cr3t-redis@127.0.0.1:6379/0"}
    result = _unifeed("--config", str(config), "config", "show", "--command", "serve", env=env)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "s3cr3t" not in out, out
    assert "postgresql://ops:********@127.0.0.1:5432/fl" in out, out
    assert "redis://:********@127.0.0.1:6379/0" in out, out


@pytest.mark.kafka
def test_kafka_settings_reach_the_client_from_env_and_x(
    kafka_bootstrap: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A setting librdkafka refuses proves it arrived: from UNIFEED_KAFKA__*, and from -X
    over it; a good -X value then wins over the bad variable."""
    topic = unique_topic("x")
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"type":"keepalive","pitr":1700000000000}\n')
    env = {"UNIFEED_KAFKA__SOCKET_TIMEOUT_MS": "nonsense"}
    bad = _unifeed("load", str(src), "--topic", f"kafka:{topic}", "-b", kafka_bootstrap, env=env)
    assert bad.returncode == 2, bad.stderr.decode()
    assert "socket.timeout.ms" in bad.stderr.decode()
    bad_x = _unifeed("load", str(src), "--topic", f"kafka:{topic}", "-b", kafka_bootstrap,
                     "-X", "socket.timeout.ms=nonsense")  # fmt: skip
    assert bad_x.returncode == 2 and "socket.timeout.ms" in bad_x.stderr.decode()
    good = _unifeed("load", str(src), "--topic", f"kafka:{topic}", "--bootstrap-server",
                    kafka_bootstrap, "-X", "socket.timeout.ms=30000", env=env)  # fmt: skip
    assert good.returncode == 0, good.stderr.decode()
    assert b"loaded 1 records" in good.stdout


# --- 7: checks before the broker ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("combine", "--control", "kafka:c", "--surface", "kafka:s", "--output", "kafka:o",
          "--metrics-port", "99999"), "0-65535"),
        (("mappings", "--control", "kafka:c", "--output", "kafka:o", "--max-dead-letters", "-1"),
         "must be >= 0"),
        (("load", "/nope.jsonl", "--topic", "kafka:t"), "/nope.jsonl"),
        (("serve", "--input", "kafka:uf", "--port", "99999"), "0-65535"),
        (("ingest", "--source", "/nope/aircraft.json", "--control", "kafka:c", "--surface",
          "kafka:s", "--metrics-port", "99999"), "0-65535"),
        (("combine", "--control", "kafka:c", "--surface", "kafka:s", "--output", "kafka:o",
          "--start", "yesterday-ish"), "--start"),
    ],
)  # fmt: skip
def test_what_can_be_checked_is_checked_before_the_broker(args: tuple[str, ...], needle: str) -> None:
    """Against an address nobody answers, with a long --broker-timeout: a usage error (2)
    comes back, not the unreachable broker's 3 after the wait."""
    result = _unifeed(*args, "-b", _closed_port(), "--broker-timeout", "60s", timeout=45)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert needle in err, err


def test_metrics_port_in_a_file_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "control.jsonl").write_bytes(_FILES)
    result = _unifeed("mappings", "--control", "control.jsonl", "--output", "m.jsonl",
                      "--metrics-port", "0", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr.decode()
    assert "--metrics-port" in result.stderr.decode()
    assert not (tmp_path / "m.jsonl").exists()


# --- 8: gzip ----------------------------------------------------------------------------


def test_gzip_is_recognised_by_its_bytes_and_gz_outputs_are_gzip(tmp_path: Path) -> None:
    import gzip

    plain = _unifeed("mappings", "--control", "-", "--output", "-", stdin=_FILES)
    assert plain.returncode == 0 and plain.stdout, plain.stderr.decode()
    # gzip on stdin, and in a file whose name does not say so
    (tmp_path / "control.data").write_bytes(gzip.compress(_FILES))
    for args, stdin in ((("--control", "-"), gzip.compress(_FILES)),
                        (("--control", "control.data"), None)):  # fmt: skip
        result = _unifeed("mappings", *args, "--output", "-", stdin=stdin, cwd=tmp_path)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == plain.stdout
        assert b"0 dead letters" in result.stderr
    # a .gz output is gzip, with the same content, and equal runs give equal bytes
    for name in ("m1.jsonl.gz", "m2.jsonl.gz"):
        result = _unifeed("mappings", "--control", "control.data", "--output", name,
                          cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
    written = (tmp_path / "m1.jsonl.gz").read_bytes()
    assert written[:2] == b"\x1f\x8b" and gzip.decompress(written) == plain.stdout
    assert written == (tmp_path / "m2.jsonl.gz").read_bytes()


@pytest.mark.parametrize("how", ["truncated", "garbage", "stdin"])
def test_a_corrupt_gzip_archive_is_a_one_line_usage_error(tmp_path: Path, how: str) -> None:
    import gzip

    whole = gzip.compress(_FILES * 50)
    data = whole[: len(whole) // 2] if how != "garbage" else whole[:10] + b"\x00" * 40
    (tmp_path / "control.jsonl.gz").write_bytes(data)
    source = "-" if how == "stdin" else "control.jsonl.gz"
    result = _unifeed("mappings", "--control", source, "--output", "m.jsonl",
                      stdin=data if how == "stdin" else None, cwd=tmp_path)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "not a valid gzip archive" in err, err


@pytest.mark.parametrize("name", ["feed.jsonl", "feed.jsonl.gz"])
def test_serve_reads_a_gzip_file_by_its_bytes(tmp_path: Path, name: str) -> None:
    import gzip

    from unifeed.serve._source import LineSource

    lines = [b'{"type":"keepalive","pitr":1000}', b'{"type":"keepalive","pitr":2000}']
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    source = LineSource(str(path))
    source.run()
    batch = source.batches.get(timeout=5)
    assert not isinstance(batch, BaseException), batch
    assert batch.lines == lines and batch.rebuilt


def test_a_gz_name_on_plain_text_is_read_as_text(tmp_path: Path) -> None:
    (tmp_path / "control.jsonl.gz").write_bytes(_FILES)
    result = _unifeed("mappings", "--control", "control.jsonl.gz", "--output", "-",
                      cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert b'"action":"link"' in result.stdout


@pytest.mark.kafka
def test_load_takes_gzip_from_stdin(kafka_bootstrap: str, unique_topic: Callable[..., str]) -> None:
    import gzip

    topic = unique_topic("gz")
    result = _unifeed("load", "-", "--topic", f"kafka:{topic}", "-b", kafka_bootstrap,
                      stdin=gzip.compress(_FILES))  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert b"loaded 2 records" in result.stdout
    dumped = _unifeed("dump", f"kafka:{topic}", "-b", kafka_bootstrap)
    assert dumped.stdout == _FILES


# --- 9: Kafka-tool habits ---------------------------------------------------------------


def test_version() -> None:
    import unifeed

    for flag in ("--version", "-V"):
        result = _unifeed(flag)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().strip() == f"unifeed {unifeed.__version__}"


def _numbered(n: int) -> list[bytes]:
    return [b'{"type":"keepalive","pitr":%d}' % (1_700_000_000_000 + i) for i in range(n)]


@pytest.mark.kafka
def test_load_and_dump_name_a_topic_alike_and_dump_takes_offset_and_count(
    kafka_bootstrap: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = unique_topic("sym")
    lines = _numbered(10)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines[:5]) + b"\n")
    # positional and --topic, with or without kafka:, for both commands
    first = _unifeed("load", str(src), topic, "-b", kafka_bootstrap)
    assert first.returncode == 0, first.stderr.decode()
    src.write_bytes(b"\n".join(lines[5:]) + b"\n")
    second = _unifeed("load", str(src), "-t", f"kafka:{topic}", "--bootstrap-server",
                      kafka_bootstrap)  # fmt: skip
    assert second.returncode == 0, second.stderr.decode()
    whole = b"\n".join(lines) + b"\n"
    for spelling in ((topic,), (f"kafka:{topic}",), ("--topic", topic), ("-t", f"kafka:{topic}:0")):
        dumped = _unifeed("dump", *spelling, "-b", kafka_bootstrap)
        assert dumped.returncode == 0, dumped.stderr.decode()
        assert dumped.stdout == whole
    cases = {
        ("--offset", "3", "--count", "2"): lines[3:5],
        ("-o", "-4"): lines[6:],
        ("--offset", "end"): [],
        ("-c", "3"): lines[:3],
        ("--offset", "beginning", "--count", "0"): [],
    }
    for extra, expected in cases.items():
        dumped = _unifeed("dump", topic, "-b", kafka_bootstrap, *extra)
        assert dumped.returncode == 0, (extra, dumped.stderr.decode())
        assert dumped.stdout == b"".join(line + b"\n" for line in expected), extra
    bad = _unifeed("dump", topic, "-b", kafka_bootstrap, "--offset", "middle")
    assert bad.returncode == 2 and b"--offset" in bad.stderr
    both = _unifeed("dump", topic, "--topic", "other", "-b", kafka_bootstrap)
    assert both.returncode == 2 and b"two topics" in both.stderr


@pytest.mark.kafka
def test_dump_follow_prints_records_committed_later_and_stops_on_sigterm(
    kafka_bootstrap: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    import signal

    from tests.support.kafkatools import load, wait_for

    topic = unique_topic("follow")
    lines = _numbered(6)
    load(kafka_bootstrap, topic, lines[:3])
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    environ.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    out = tmp_path / "followed.jsonl"
    with out.open("wb") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "unifeed", "dump", topic, "-b", kafka_bootstrap, "--follow"],
            stdout=sink, stderr=subprocess.PIPE, env=environ,
        )  # fmt: skip
        try:
            wait_for(lambda: out.read_bytes().count(b"\n") >= 3 or follower.poll() is not None,
                     60, "the records already there")  # fmt: skip
            assert follower.poll() is None, follower.stderr.read() if follower.stderr else ""
            load(kafka_bootstrap, topic, lines[3:])
            wait_for(lambda: out.read_bytes().count(b"\n") >= 6 or follower.poll() is not None,
                     60, "the records loaded later")  # fmt: skip
            follower.send_signal(signal.SIGTERM)
            assert follower.wait(timeout=30) == 0
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait(10)
    assert out.read_bytes() == b"".join(line + b"\n" for line in lines)


# --- 5: JSON logs, status lines ---------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, object]]:
    import json

    records = []
    for line in text.splitlines():
        records.append(json.loads(line))  # every line is a JSON record
    return records


def test_json_log_format_makes_the_summary_a_json_record(tmp_path: Path) -> None:
    (tmp_path / "control.jsonl").write_bytes(_FILES)
    (tmp_path / "surface.jsonl").write_bytes(b'{"type":"keepalive","pitr":2000}\n')
    for command, inputs in (
        ("mappings", ("--control", "control.jsonl")),
        ("combine", ("--control", "control.jsonl", "--surface", "surface.jsonl")),
        ("merge", ("--input", "control=control.jsonl", "--input", "surface=surface.jsonl")),
    ):
        result = _unifeed(command, *inputs, "--output", "o.jsonl", "--log-format", "json",
                          cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        records = _json_lines(result.stderr.decode())
        summary = [r for r in records if r["logger"] == "unifeed.summary"]
        assert len(summary) == 1, records
        assert summary[0]["command"] == command and summary[0]["dead"] == 0


@pytest.mark.kafka
def test_status_lines_are_json_records_or_one_text_line_each(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    from tests.support.kafkatools import load, read_all

    ctl, srf, out = (unique_topic(p) for p in ("ctl", "srf", "out"))
    load(kafka_bootstrap, ctl, _FILES.splitlines())
    load(kafka_bootstrap, srf, [b'{"type":"keepalive","pitr":2000}'])
    for fmt in ("json", "text"):
        result = _unifeed("combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
                          "--output", f"kafka:{out}-{fmt}", "-b", kafka_bootstrap,
                          "--checkpoint-topic", f"{out}.cp", "--instance", f"st-{out}-{fmt}",
                          "--exit-at-end", "--status-interval", "100ms", "--log-format", fmt)  # fmt: skip
        err = result.stderr.decode()
        assert result.returncode == 0, err
        assert "\r" not in err  # stderr is not a terminal: one line per interval
        if fmt == "json":
            records = _json_lines(err)
            status = [r for r in records if r["logger"] == "unifeed.status"]
            assert status and status[-1]["mode"] == "done", records
            written = len(read_all(kafka_bootstrap, f"{out}-{fmt}"))
            assert status[-1]["out"] == written and status[-1]["command"] == "combine"
        else:
            written = len(read_all(kafka_bootstrap, f"{out}-{fmt}"))
            done = [line for line in err.splitlines() if line.startswith("unifeed combine [")]
            assert done and f" done: out={written} " in done[-1], err


def test_on_a_terminal_the_status_line_rewrites_itself() -> None:
    import io
    import logging

    from unifeed.cli.logs import setup_logging, teardown_logging

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    setup_logging("text", "info", stream=screen)
    try:
        status = logging.getLogger("unifeed.status")
        status.info("step 1", extra={"final": False})
        status.info("step 2", extra={"final": False})
        logging.getLogger("unifeed.runtime").warning("something happened")
        status.info("step 3", extra={"final": False})
        status.info("done", extra={"final": True})
    finally:
        teardown_logging()
    text = screen.getvalue()
    assert text.startswith("\rstep 1\x1b[K\rstep 2\x1b[K\n"), repr(text)
    assert text.endswith("something happened\n\rstep 3\x1b[K\rdone\x1b[K\n"), repr(text)


def test_simulated_time_is_a_duration_and_minutes_still_works(tmp_path: Path) -> None:
    for name, option in (("a", ("--duration", "90s")), ("b", ("--minutes", "1.5"))):
        result = _unifeed("simulate", "--out-dir", str(tmp_path / name), "--rate", "5", *option)
        assert result.returncode == 0, result.stderr.decode()
    for feed in ("controlstream.jsonl", "surfacestream.jsonl"):
        assert (tmp_path / "a" / feed).read_bytes() == (tmp_path / "b" / feed).read_bytes()
        assert (tmp_path / "a" / feed).stat().st_size > 0


def test_the_run_kind_that_holds_a_name_reads_partitioned_and_merge_checkpoints() -> None:
    """A name is refused when another command's run holds it; a combine over partitions
    (keys like surfacestream[2]) is still a combine, and merge feeds are a merge."""
    import doctest

    import unifeed.runtime.startcheck as startcheck

    found = doctest.DocTestFinder().find(startcheck.run_kind, "run_kind", globs=vars(startcheck))
    runner = doctest.DocTestRunner()
    for test in found:
        runner.run(test)
    assert runner.summarize(verbose=False).attempted == 2
    assert runner.summarize(verbose=False).failed == 0
