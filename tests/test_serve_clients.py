"""Safe by default: a slow WebSocket client is dropped without slowing others, message
floods close the socket, and ``import unifeed`` stays free of the server stack."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.servetools import T0, run_server, settings, write_feed

pytestmark = pytest.mark.slow


def _many_aircraft(count: int) -> list[dict[str, Any]]:
    return [
        {"type": "position", "pitr": T0 + i, "id": f"F{i:05d}", "clock": T0, "lat": (i % 170) - 85.0,
         "lon": (i % 350) - 175.0, "alt": 30_000, "gs": 450, "heading": 90, "ident": f"X{i}",
         "air_ground": "A"}
        for i in range(count)
    ]


def _frame(payload: bytes) -> bytes:
    """A masked client text frame (RFC 6455)."""
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x81])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _silent_client(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def test_slow_client_is_dropped_and_others_are_served(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "uf.jsonl", _many_aircraft(3000))
    with run_server(settings(str(feed), tmp_path, history_url="none", client_queue=2, stale_ms=10**9)) as server:
        server.wait_ready()
        port = int(server.url.rsplit(":", 1)[1])
        slow = _silent_client(port)
        try:
            message = _frame(json.dumps({"bbox": [-180, -90, 180, 90]}).encode())
            for _ in range(15):  # 15 snapshots of ~1 MB each, none read
                slow.sendall(message)
            deadline = time.monotonic() + 20
            while server.service.metrics.dropped_slow == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.service.metrics.dropped_slow == 1
            assert all(c.dropped is None for c in server.service.clients)
            # Meanwhile another client is served at once.
            with connect(server.ws_url(), open_timeout=5, max_size=None) as ws:
                ws.send(json.dumps({"bbox": [0, 0, 10, 10]}))
                frame = json.loads(ws.recv(timeout=5))
                assert frame["type"] == "snapshot" and frame["aircraft"]
        finally:
            slow.close()


def test_message_flood_closes_the_socket(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "uf.jsonl", _many_aircraft(10))
    with run_server(settings(str(feed), tmp_path, history_url="none")) as server:
        server.wait_ready()
        with connect(server.ws_url(), open_timeout=5) as ws:
            # The server may close while the flood is still being sent: a send then
            # raises the same ConnectionClosed, carrying the server's close frame.
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(40):
                    ws.send(json.dumps({"bbox": [0, 0, 1, 1]}))
                for _ in range(100):
                    ws.recv(timeout=5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008 and "too many messages" in closed.value.rcvd.reason


def test_import_unifeed_stays_light() -> None:
    heavy = ("fastapi", "starlette", "uvicorn", "redis", "psycopg", "websockets", "httpx")
    code = (
        "import sys, unifeed, unifeed.serve, unifeed.serve._state\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_lists_serve_without_importing_the_stack() -> None:
    code = (
        "import sys\nfrom unifeed.cli.main import build_command_line\n"
        "text = build_command_line().parser.format_help()\n"
        "print('serve' in text, [m for m in ('starlette', 'uvicorn', 'redis', 'psycopg') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True []", done.stderr


def test_cors_only_when_configured(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "uf.jsonl", _many_aircraft(10))
    origin = {"Origin": "https://map.example.org"}
    with run_server(settings(str(feed), tmp_path, history_url="none",
                             cors_origins=["https://map.example.org"])) as server:
        server.wait_ready()
        allowed = server.http.get("/api/aircraft", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://map.example.org"
        other = server.http.get("/api/aircraft", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
