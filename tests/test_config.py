"""Configuration layers: command line > UNIFEED_* environment > TOML file > defaults.

The user-facing behaviour (precedence, unknown keys, masking, log format) is checked
through real ``unifeed`` subprocesses; the small pieces in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from unifeed.cli.config import Configuration, config_path_from_argv, mask_secrets
from unifeed.cli.logs import teardown_logging
from unifeed.cli.main import build_command_line, main

ROOT = Path(__file__).resolve().parent.parent

CONTROL = (
    b'{"type":"flightplan","pitr":1000,"id":"F1","ident":"UAL1","access":"restricted"}\n'
    b'{"type":"power_on","pitr":2000,"id":"F1","surface_id":"S9","facility":"KSFO"}\n'
)
SURFACE = (
    b'{"type":"ground_position","pitr":3000,"surface_id":"S9","facility":"KSFO",'
    b'"clock":2900,"lat":37.6,"lon":-122.4}\n'
)


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "unifeed", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=60,
        check=False,
    )


class InProcess:
    """``unifeed`` through `main` in this process (fast), with a clean UNIFEED_* environment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def __call__(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        with self.monkeypatch.context() as m:
            for name in os.environ:
                if name.startswith("UNIFEED_"):
                    m.delenv(name)
            for name, value in (env or {}).items():
                m.setenv(name, value)
            self.capsys.readouterr()
            code = main(list(args))
            teardown_logging()
        captured = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    def show(self, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
        done = self(*args, "config", "show", env=env)
        assert done.returncode == 0, done.stderr
        return tomllib.loads(done.stdout)


@pytest.fixture
def unifeed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> InProcess:
    return InProcess(monkeypatch, capsys)


@pytest.fixture
def feeds(tmp_path: Path) -> Path:
    (tmp_path / "control.jsonl").write_bytes(CONTROL)
    (tmp_path / "surface.jsonl").write_bytes(SURFACE)
    return tmp_path


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path, unifeed: InProcess) -> None:
    config = tmp_path / "unifeed.toml"
    config.write_text(
        'instance = "file-top"\n'
        'log_level = "warning"\n'
        "[combine]\n"
        'instance = "file-combine"\n'
        'realtime_threshold = "10s"\n'
    )
    show = unifeed.show
    defaults = show()
    assert defaults["log_level"] == "info"
    combine = defaults["combine"]
    assert isinstance(combine, dict)
    assert combine["instance"] == "combine"
    assert combine["realtime_threshold"] == "30s"

    from_file = show("--config", str(config))
    assert from_file["log_level"] == "warning"
    assert from_file["combine"]["instance"] == "file-combine"  # type: ignore[index]
    assert from_file["mappings"]["instance"] == "file-top"  # type: ignore[index]
    assert from_file["combine"]["realtime_threshold"] == "10s"  # type: ignore[index]

    env = {"UNIFEED_INSTANCE": "env", "UNIFEED_LOG_LEVEL": "debug", "UNIFEED_CONFIG": str(config)}
    from_env = show(env=env)
    assert from_env["log_level"] == "debug"
    assert from_env["combine"]["instance"] == "env"  # type: ignore[index]
    assert from_env["mappings"]["instance"] == "env"  # type: ignore[index]
    assert from_env["combine"]["realtime_threshold"] == "10s"  # type: ignore[index]

    from_cli = show("--log-level", "error", env=env)
    assert from_cli["log_level"] == "error"


def test_precedence_decides_what_a_command_does(feeds: Path) -> None:
    """The file pipeline writes where the winning layer says."""
    config = feeds / "unifeed.toml"
    config.write_text(
        "[combine]\n"
        'control = "control.jsonl"\n'
        'surface = "surface.jsonl"\n'
        'output = "from-file.jsonl"\n'
        "quiet = true\n"
    )
    # Required options can come from the file alone.
    done = run("--config", "unifeed.toml", "combine", cwd=feeds)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # quiet = true from the file
    out = (feeds / "from-file.jsonl").read_bytes().splitlines()
    assert out[-1].endswith(b'"id":"F1","access":"restricted"}')

    env = {"UNIFEED_OUTPUT": "from-env.jsonl", "UNIFEED_QUIET": "false"}
    done = run("combine", "--config", "unifeed.toml", env=env, cwd=feeds)
    assert done.returncode == 0, done.stderr
    assert (feeds / "from-env.jsonl").exists()
    assert "messages out" in done.stderr  # the environment turned quiet off again

    done = run(
        "--config", "unifeed.toml", "combine", "--output", "from-cli.jsonl", env=env, cwd=feeds
    )
    assert done.returncode == 0, done.stderr
    assert (feeds / "from-cli.jsonl").read_bytes() == (feeds / "from-file.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[combine]\ncontroll = "x"\n', "unknown key 'controll' in [combine]"),
        ('bootstrap_server = "x"\n', "unknown key 'bootstrap_server'"),
        ('[combien]\ninstance = "x"\n', "unknown table [combien]"),
        ('[mappings]\nsurface = "x"\n', "unknown key 'surface' in [mappings]"),
        ('[combine]\nstrict_order = "maybe"\n', "expected true or false"),
        ("[combine]\nrealtime_threshold = true\n", "realtime_threshold"),
        ('log_format = "xml"\n', "expected one of text, json"),
        ("kafka = 1\n", "'kafka' must be a table"),
        ("[combine\n", "is not valid TOML"),
    ],
)
def test_bad_file_is_a_usage_error_naming_key_and_file(
    tmp_path: Path, unifeed: InProcess, toml: str, needle: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    done = unifeed("--config", str(config), "config", "show")
    assert done.returncode == 2
    assert needle in done.stderr
    assert str(config) in done.stderr
    assert done.stdout == ""


def test_unknown_key_stops_a_real_command(feeds: Path) -> None:
    (feeds / "unifeed.toml").write_text('[mappings]\ncontroll = "control.jsonl"\n')
    done = run(
        "--config",
        "unifeed.toml",
        "mappings",
        "--control",
        "control.jsonl",
        "--output",
        "m.jsonl",
        cwd=feeds,
    )
    assert done.returncode == 2
    assert "unifeed.toml: unknown key 'controll' in [mappings]" in done.stderr
    assert "did you mean 'control'" in done.stderr
    assert not (feeds / "m.jsonl").exists()

    done = run(
        "mappings",
        "--control",
        "control.jsonl",
        "--output",
        "m.jsonl",
        env={"UNIFEED_CONTROLL": "x"},
        cwd=feeds,
    )
    # An unknown variable is warned about once, and the command runs.
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("UNIFEED_CONTROLL: it names no unifeed option") == 1, done.stderr
    assert "did you mean 'UNIFEED_CONTROL'" in done.stderr
    assert (feeds / "m.jsonl").exists()


def test_missing_file_is_a_usage_error(tmp_path: Path, unifeed: InProcess) -> None:
    done = unifeed("--config", str(tmp_path / "nope.toml"), "config", "show")
    assert done.returncode == 2
    assert "nope.toml" in done.stderr and "does not exist" in done.stderr


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"UNIFEED_METRICS_PORT": "ninety"}, "UNIFEED_METRICS_PORT"),
        ({"UNIFEED_STRICT_ORDER": "perhaps"}, "UNIFEED_STRICT_ORDER: expected true or false"),
        ({"UNIFEED_LOG_LEVEL": "loud"}, "UNIFEED_LOG_LEVEL"),
    ],
)
def test_bad_environment_is_a_usage_error(
    unifeed: InProcess, env: dict[str, str], needle: str
) -> None:
    done = unifeed("config", "show", env=env)
    assert done.returncode == 2
    assert needle in done.stderr


def test_test_suite_variables_are_not_options(unifeed: InProcess) -> None:
    done = unifeed("config", "show", env={"UNIFEED_TEST_NO_DOCKER": "1", "UNIFEED_TEST_X": "y"})
    assert done.returncode == 0, done.stderr


def test_show_masks_secrets_and_is_valid_toml(tmp_path: Path) -> None:
    config = tmp_path / "unifeed.toml"
    config.write_text(
        'bootstrap_servers = "broker-1:9093"\n'
        "[kafka]\n"
        '"security.protocol" = "SASL_SSL"\n'
        '"sasl.username" = "ops"\n'
        '"sasl.password" = "hunter2"\n'
        'ssl.key.password = "pem-pass"\n'
        '"sasl.oauthbearer.client.secret" = "oauth-secret"\n'
        '"custom.api.token" = "tok-123"\n'
        '"enable.idempotence" = true\n'
        '"linger.ms" = 5\n'
    )
    done = run("--config", str(config), "config", "show", "--command", "combine")
    assert done.returncode == 0, done.stderr
    for secret in ("hunter2", "pem-pass", "oauth-secret", "tok-123"):
        assert secret not in done.stdout
    parsed = tomllib.loads(done.stdout)
    kafka = parsed["kafka"]
    assert kafka["sasl.password"] == "********"
    assert kafka["ssl.key.password"] == "********"  # an unquoted dotted key: same property
    assert kafka["sasl.oauthbearer.client.secret"] == "********"
    assert kafka["custom.api.token"] == "********"
    assert kafka["sasl.username"] == "ops"
    assert kafka["enable.idempotence"] == "true"  # librdkafka takes strings
    assert kafka["linger.ms"] == "5"
    assert parsed["combine"]["bootstrap_servers"] == "broker-1:9093"
    assert set(parsed) == {"log_format", "log_level", "combine", "kafka"}
    assert "# file " in done.stdout  # every value says where it came from


def test_show_output_is_itself_a_valid_config(tmp_path: Path, unifeed: InProcess) -> None:
    first = unifeed("config", "show", env={"UNIFEED_INSTANCE": "uf-b"})
    assert first.returncode == 0, first.stderr
    config = tmp_path / "effective.toml"
    config.write_text(first.stdout)
    again = unifeed("--config", str(config), "config", "show")
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == tomllib.loads(first.stdout)


def test_json_log_format_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "unifeed.toml"
    config.write_text('instance = "uf-a"\n')
    done = run(
        "--log-format", "json", "--log-level", "debug", "config", "show", "--config", str(config)
    )  # --config may follow the command too
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines, "expected a debug line about the configuration file"
    for record in lines:
        assert set(record) >= {"ts", "level", "logger", "message"}
        assert record["ts"].endswith("Z")
    assert any(r["logger"] == "unifeed.config" and r["level"] == "DEBUG" for r in lines)


def test_kafka_properties_reach_the_handler(tmp_path: Path) -> None:
    config = tmp_path / "unifeed.toml"
    config.write_text('[kafka]\n"client.id" = "uf"\nsocket.timeout.ms = 3000\n')
    cli = build_command_line()
    configuration = Configuration(cli.commands, path=str(config), environ={})
    configuration.apply()
    assert configuration.kafka_properties == {"client.id": "uf", "socket.timeout.ms": "3000"}


def test_environment_fills_required_options_in_process(tmp_path: Path) -> None:
    cli = build_command_line()
    configuration = Configuration(
        cli.commands,
        path=None,
        environ={"UNIFEED_CONTROL": "c.jsonl", "UNIFEED_OUTPUT": "m.jsonl", "HOME": "/x"},
    )
    configuration.apply()
    args = cli.parser.parse_args(["mappings"])
    assert (args.control, args.output) == ("c.jsonl", "m.jsonl")
    args = cli.parser.parse_args(["mappings", "--output", "cli.jsonl"])
    assert args.output == "cli.jsonl"


def test_small_pieces() -> None:
    assert config_path_from_argv(["--config", "a.toml", "combine"]) == "a.toml"
    assert config_path_from_argv(["combine", "--config=b.toml"]) == "b.toml"
    assert config_path_from_argv(["combine", "--", "--config", "c"]) is None
    assert mask_secrets("ssl.keystore.password", "x") == "********"
    assert mask_secrets("sasl.jaas.config", "x") == "********"
    assert mask_secrets("bootstrap.servers", "x") == "x"


def _compose_config() -> str:
    """The unifeed.toml that compose.yaml embeds (`configs.unifeed_toml.content`)."""
    lines = (Path(__file__).resolve().parent.parent / "compose.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "content: |") + 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    body: list[str] = []
    for line in lines[start:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        body.append(line[indent:])
    return "\n".join(body) + "\n"


def test_the_compose_files_configuration_is_accepted(tmp_path: Path, unifeed: InProcess) -> None:
    """compose.yaml cannot run here (no Docker engine); its unifeed configuration can be
    checked: every key known, and the values it sets are the ones in effect."""
    config = tmp_path / "unifeed.toml"
    config.write_text(_compose_config())
    shown = unifeed.show("--config", str(config))
    combine = shown["combine"]
    assert isinstance(combine, dict)
    assert combine["metrics_host"] == "0.0.0.0"
    assert combine["metrics_port"] == 9100
    assert combine["mapping"] == "kafka:mappingstream"
    assert combine["bootstrap_servers"] == "kafka:19092"  # a top-level key, in effect here
    assert shown["log_format"] == "json"
    serve = shown["serve"]
    assert isinstance(serve, dict)
    assert serve["input"] == "kafka:unified-a" and serve["redis"] == "redis://redis:6379/0"
    assert serve["history"] == "postgresql://unifeed@timescaledb:5432/unifeed"
