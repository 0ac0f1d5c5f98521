"""Find the Docker engine the way docker's own client does, for the testcontainers broker.

Order, first match wins:

1. ``DOCKER_HOST``;
2. a context: ``DOCKER_CONTEXT``, else ``currentContext`` in ``$DOCKER_CONFIG/config.json``
   (``~/.docker``), its endpoint read from ``contexts/meta/<sha256 of the name>/meta.json``
   (``default`` means no context);
3. the sockets an engine listens on when nothing is configured: rootful
   ``/var/run/docker.sock``, rootless ``$XDG_RUNTIME_DIR/docker.sock``, Docker Desktop
   ``~/.docker/run/docker.sock``, Podman ``$XDG_RUNTIME_DIR/podman/podman.sock`` and
   ``/run/podman/podman.sock``.

`find_docker_host` only looks at files; whether the engine answers is the caller's ping.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["find_docker_host", "kafka_container"]


def _context_host(environ: Mapping[str, str], config_dir: Path) -> tuple[str | None, str]:
    name = environ.get("DOCKER_CONTEXT", "").strip()
    if not name:
        try:
            config = json.loads((config_dir / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        found = config.get("currentContext") if isinstance(config, dict) else None
        name = found if isinstance(found, str) else ""
    if not name or name == "default":
        return None, ""
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config_dir / "contexts" / "meta" / digest / "meta.json"
    try:
        endpoint = json.loads(meta.read_text())["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"docker context {name!r} has no readable endpoint ({meta})"
    return (str(endpoint), f"docker context {name!r}") if endpoint else (None, "")


def find_docker_host(
    environ: Mapping[str, str] | None = None,
    *,
    home: Path | None = None,
    root: Path = Path("/"),
) -> tuple[str | None, str]:
    """``(DOCKER_HOST value, where it came from)``, or ``(None, why not)``.

    ``home`` and ``root`` stand for the user's home and ``/`` (tests point them elsewhere).
    """
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "").strip()
    if host:
        return host, "DOCKER_HOST"
    home = Path(env.get("HOME", "~")).expanduser() if home is None else home
    config_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    host, source = _context_host(env, config_dir)
    if host:
        return host, source
    runtime = env.get("XDG_RUNTIME_DIR", "").strip()
    candidates = [root / "var/run/docker.sock"]
    if runtime:
        candidates.append(Path(runtime) / "docker.sock")
    candidates.append(home / ".docker/run/docker.sock")
    if runtime:
        candidates.append(Path(runtime) / "podman/podman.sock")
    candidates.append(root / "run/podman/podman.sock")
    for path in candidates:
        if path.exists():
            return f"unix://{path}", f"socket {path}"
    looked = ", ".join(str(p) for p in candidates)
    return None, source or f"no DOCKER_HOST, no docker context and no socket ({looked})"


def kafka_container() -> object:
    """testcontainers' Kafka (module ``testcontainers.community.kafka``, >= 4.15) as one
    KRaft node whose internal topics fit on it: the transaction-state topic at replication
    factor and min ISR 1 (cp-kafka's default of 3 makes ``init_transactions`` time out).
    Not started."""
    from testcontainers.community.kafka import KafkaContainer

    return (
        KafkaContainer()
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
    )
