"""The test fixture finds a Docker engine as docker's client does, and configures the
testcontainers broker so that transactions work on one node (no engine runs here: these
check the discovery on real files and the container's configuration before start)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.docker_engine import find_docker_host, kafka_container


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def test_docker_host_wins(tmp_path: Path) -> None:
    _touch(tmp_path / "var/run/docker.sock")
    env = {"DOCKER_HOST": "tcp://127.0.0.1:2375"}
    assert find_docker_host(env, home=tmp_path, root=tmp_path) == (
        "tcp://127.0.0.1:2375", "DOCKER_HOST")


def test_the_current_context_is_read_like_the_docker_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = home / ".docker"
    meta = config / "contexts/meta" / hashlib.sha256(b"colima").hexdigest() / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"Name": "colima", "Endpoints": {
        "docker": {"Host": "unix:///home/u/.colima/docker.sock"}}}))  # fmt: skip
    (config / "config.json").write_text(json.dumps({"currentContext": "colima"}))
    assert find_docker_host({}, home=home, root=tmp_path) == (
        "unix:///home/u/.colima/docker.sock", "docker context 'colima'")
    # DOCKER_CONTEXT names one too; "default" means the usual socket
    _touch(tmp_path / "var/run/docker.sock")
    host, _ = find_docker_host({"DOCKER_CONTEXT": "default"}, home=home, root=tmp_path)
    assert host == f"unix://{tmp_path / 'var/run/docker.sock'}"


def test_rootless_desktop_and_podman_sockets(tmp_path: Path) -> None:
    home, runtime = tmp_path / "home", tmp_path / "run-user-1000"
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    assert find_docker_host(env, home=home, root=tmp_path)[0] is None
    for path in (tmp_path / "run/podman/podman.sock", runtime / "podman/podman.sock",
                 home / ".docker/run/docker.sock", runtime / "docker.sock",
                 tmp_path / "var/run/docker.sock"):  # fmt: skip
        socket = _touch(path)
        # each one found, and preferred over those touched before it
        assert find_docker_host(env, home=home, root=tmp_path) == (
            f"unix://{socket}", f"socket {socket}")


def test_the_kafka_container_is_one_kraft_node_with_transactions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import testcontainers.core.container as tc

    class NoEngine:  # the container is only configured here, never started
        def __init__(self, **_kwargs: object) -> None:
            pass

    monkeypatch.setattr(tc, "DockerClient", NoEngine)
    container = kafka_container()
    env = container.env  # type: ignore[attr-defined]
    assert container.kraft_enabled  # type: ignore[attr-defined]
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
