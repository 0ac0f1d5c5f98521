"""compose.yaml, Dockerfile and .dockerignore checked by their structure, since no Docker
engine runs here (docs/deploy.md has the manual steps): compose.yaml parses, every
unifeed service's command is a valid invocation of this version with the shared
configuration (every key known), the topics a service needs are created, long-running
services are probed through their metrics endpoint, and signals reach unifeed."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from unifeed.cli.config import Configuration
from unifeed.cli.main import build_command_line

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
UNIFEED = {name: s for name, s in SERVICES.items() if s.get("image", "").startswith("unifeed")}
LONG_RUNNING = ("mappings", "combine-a", "combine-b")


def _invocations(service: dict[str, Any]) -> list[list[str]]:
    """The unifeed command lines a service runs: its command, or each `unifeed ...` line
    of its shell script with shell expansions standing in as "1"."""
    command = service.get("command", [])
    if service.get("entrypoint") != ["/bin/sh", "-c"]:
        return [list(command)]
    script = "\n".join(command).replace("\\\n", " ")
    script = re.sub(r"\$\$\(\([^)]*\)\)", "1", script)  # $$(( arithmetic ))
    script = re.sub(r"\$\$\w+", "1", script)  # $$variable
    found = []
    for line in script.splitlines():
        if line.strip().startswith("unifeed "):
            found.append(shlex.split(line.strip().rstrip("&"))[1:])
    return found


def _parse(service: dict[str, Any], argv: list[str], tmp_path: Path) -> argparse.Namespace:
    config = tmp_path / "unifeed.toml"
    config.write_text(COMPOSE["configs"]["unifeed_toml"]["content"])
    environ = {k: str(v) for k, v in service.get("environment", {}).items()}
    environ.pop("UNIFEED_CONFIG", None)
    cli = build_command_line()
    Configuration(cli.commands, path=str(config), environ=environ).apply()  # unknown keys raise
    try:
        return cli.parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and argv == ["--help"]:
            return argparse.Namespace()
        raise AssertionError(f"not a valid unifeed command line: {argv} (exit {exc.code})") from None


def test_every_unifeed_command_in_compose_is_valid_on_this_version(tmp_path: Path) -> None:
    assert set(LONG_RUNNING) | {"loader", "cli"} <= set(UNIFEED)
    for name, service in UNIFEED.items():
        invocations = _invocations(service)
        assert invocations, f"{name} runs no unifeed command"
        for argv in invocations:
            args = _parse(service, argv, tmp_path)
            if argv != ["--help"]:
                assert getattr(args, "handler", None) is not None, (name, argv)


def test_the_topics_service_creates_what_the_runs_need(tmp_path: Path) -> None:
    script = "\n".join(SERVICES["topics"]["command"])
    created: set[str] = set()
    for names, suffix in re.findall(r'for t in ([^;]+); do\s+create "\$\$t([^"]*)"', script):
        created |= {f"{t}{suffix}" for t in names.split()}
    created |= set(re.findall(r"^\s*create ([\w.-]+)", script, re.MULTILINE))
    for name in LONG_RUNNING:
        args = _parse(UNIFEED[name], list(UNIFEED[name]["command"]), tmp_path)
        feeds = [getattr(args, f, None) for f in ("control", "surface", "mapping", "output")]
        topics = {f.split(":")[1] for f in feeds if f}
        output = args.output.split(":")[1]
        needed = topics | {f"{output}.dead-letter", args.checkpoint_topic,
                           f"{args.checkpoint_topic}.state"}  # fmt: skip
        assert needed <= created, f"{name} needs {sorted(needed - created)}"


def test_long_running_services_are_probed_through_their_metrics(tmp_path: Path) -> None:
    for name in LONG_RUNNING:
        service = UNIFEED[name]
        args = _parse(service, list(service["command"]), tmp_path)
        assert args.metrics_port is not None and args.metrics_host == "0.0.0.0", name
        probe = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{args.metrics_port}/metrics" in probe, name
        assert service.get("stop_grace_period"), name
    for name in ("loader", "cli"):  # no metrics server: the image's probe is off
        assert UNIFEED[name]["healthcheck"] == {"disable": True}, name


def test_signals_reach_unifeed_and_a_failed_load_is_not_hidden() -> None:
    for name, service in UNIFEED.items():
        assert service.get("init") is True, f"{name}: no init, so SIGTERM waits out the grace"
    script = "\n".join(UNIFEED["loader"]["command"])
    assert "set -eu" in script
    assert not re.search(r"^\s*wait\s*$", script, re.MULTILINE), "a bare wait hides failures"
    assert len(re.findall(r'^\s*wait "\$\$\w+"', script, re.MULTILINE)) == script.count(" &\n")
    assert "%3N" not in script  # GNU-only date


@pytest.mark.parametrize(
    "needle",
    [
        "--no-index --find-links /wheels",
        "EXPOSE 9100 8080",
        "HEALTHCHECK ",
        "org.opencontainers.image.title=",
        "org.opencontainers.image.licenses=\"Apache-2.0\"",
        "org.opencontainers.image.version=",
        "org.opencontainers.image.source=",
        "USER unifeed",
    ],
)
def test_dockerfile(needle: str) -> None:
    assert needle in (ROOT / "Dockerfile").read_text()


def test_the_image_installs_the_extras_it_builds() -> None:
    """The wheel stage builds unifeed with extras; the final stage must install the same
    ones (--no-index installs only what it is asked for), and `serve` is among them
    since compose runs `unifeed serve` from the image."""
    text = (ROOT / "Dockerfile").read_text()
    built = re.search(r"pip wheel .*'\.\[([a-z,]+)\]'", text)
    installed = re.search(r"--find-links /wheels 'unifeed\[([a-z,]+)\]'", text)
    assert built and installed, "the Dockerfile names the extras it builds and installs"
    assert set(installed[1].split(",")) == set(built[1].split(","))
    if any(s.get("command", [None])[0] == "serve" for s in UNIFEED.values()):
        assert "serve" in installed[1].split(",")


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for entry in (".git", ".venv", "tests", "benchmarks", "golden"):
        assert entry in ignored
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            assert source not in ignored and (ROOT / source).exists(), source


def test_deploy_docs_use_portable_date_and_name_the_topics_of_a_new_instance() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert "%3N" not in text  # BSD date (macOS) has no %N
    assert ".dead-letter" in text and "## Adding an instance" in text
