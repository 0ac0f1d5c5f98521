"""unifeed serve over HTTP and WebSocket, against every audience, with adversarial requests.

A real uvicorn server in a thread, real HTTP (httpx) and WebSocket (websockets) clients,
SQLite history in the test's directory.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.servetools import (
    AUDIENCES,
    MINUTE,
    SQUAWKS,
    T0,
    VISIBLE,
    RunningServer,
    feed_records,
    run_server,
    settings,
    write_feed,
    write_tokens,
)
from unifeed.serve._history import wait_drained

pytestmark = pytest.mark.slow
END = T0 + 1_000 + 3 * MINUTE - 5_000  # the last positions' pitr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("serve-api")
    feed = write_feed(tmp / "uf.jsonl", feed_records())
    with run_server(settings(str(feed), tmp, stale_ms=2 * MINUTE)) as running:
        running.wait_ready()
        assert running.service.history is not None
        assert wait_drained(running.service.history, 30)
        yield running


def _ids(items: list[dict[str, Any]]) -> set[str]:
    return {a["id"] for a in items}


@pytest.mark.parametrize(("token", "rank"), AUDIENCES)
def test_aircraft_list_shows_exactly_what_the_audience_may_see(
    server: RunningServer, token: str | None, rank: int
) -> None:
    answer = server.get("/api/aircraft", token)
    assert answer.status_code == 200
    body = answer.json()
    assert body["pitr"] == END and body["mode"] == "catchup"
    assert _ids(body["aircraft"]) == VISIBLE[rank]
    allowed = ("public", "restricted", "blocked")[: rank + 1]
    assert all(a["access"] in allowed for a in body["aircraft"])
    # A box drawn tightly around the restricted and blocked airborne aircraft.
    box = server.get("/api/aircraft", token, bbox="-122.025,37.0,-122.005,37.1").json()
    assert _ids(box["aircraft"]) == {"RES1", "BLK1"} & VISIBLE[rank]
    # Counts leak nothing either: the gauge counts what this caller may see.
    metrics = server.get("/metrics", token).text
    assert f'unifeed_serve_aircraft{{audience="{allowed[-1]}"}} {len(VISIBLE[rank])}' in metrics
    assert ("unifeed_serve_records_total" in metrics) is (rank == 2)


@pytest.mark.parametrize(("token", "rank"), AUDIENCES)
def test_one_aircraft_and_404_identical_for_unknown_and_hidden(
    server: RunningServer, token: str | None, rank: int
) -> None:
    unknown = server.get("/api/aircraft/NO-SUCH", token)
    assert unknown.status_code == 404
    for key in VISIBLE[2]:
        answer = server.get(f"/api/aircraft/{key}", token)
        if key in VISIBLE[rank]:
            assert answer.status_code == 200 and answer.json()["id"] == key
        else:
            assert (answer.status_code, answer.content, answer.headers["content-type"]) == (
                unknown.status_code, unknown.content, unknown.headers["content-type"])
            track = server.get(f"/api/aircraft/{key}/track", token)
            unknown_track = server.get("/api/aircraft/NO-SUCH/track", token)
            assert unknown_track.content == unknown.content
            if key == "SWI1":  # public in the past: that part of its track is public
                assert all(p["access"] == "public" for p in track.json()["positions"])
                continue
            assert (track.status_code, track.content) == (404, unknown_track.content)


def test_tracks_hold_only_visible_positions(server: RunningServer) -> None:
    # SWI1 was public until T0 + 90 s: the public sees that part of its track only.
    public = server.get("/api/aircraft/SWI1/track", None, **{"from": T0, "to": END + 1})
    assert public.status_code == 200
    positions = public.json()["positions"]
    assert positions and all(p["access"] == "public" and p["pitr"] < T0 + 91_000 for p in positions)
    full = server.get("/api/aircraft/SWI1/track", "tok-restricted", **{"from": T0, "to": END + 1})
    pitrs = [p["pitr"] for p in full.json()["positions"]]
    assert pitrs == sorted(pitrs) and len(pitrs) == 3 * 12 and pitrs[-1] == END
    assert server.get("/api/aircraft/PUB1/track", None, **{"from": T0, "to": END + 1}).json()["positions"][0]["id"] == "PUB1"


@pytest.mark.parametrize(("token", "rank"), AUDIENCES)
def test_playback_never_holds_a_hidden_state(server: RunningServer, token: str | None, rank: int) -> None:
    answer = server.get("/api/playback", token, **{"from": T0, "to": END + 1})
    assert answer.status_code == 200
    states = [json.loads(x) for x in answer.text.splitlines()]
    pitrs = [s["pitr"] for s in states]
    assert pitrs == sorted(pitrs)
    limit = ("public", "restricted", "blocked")[: rank + 1]
    assert all(s["access"] in limit for s in states)
    seen = _ids(states)
    if rank == 0:
        assert seen == {"PUB1", "V1", "S9", "SWI1"}  # SWI1 while it was public
        assert not any(s["id"] == "SWI1" and s["pitr"] > T0 + 91_000 for s in states)
    else:
        assert seen == VISIBLE[rank]
    boxed = server.get("/api/playback", token, bbox="-122.025,37.0,-122.005,37.1", **{"from": T0, "to": END + 1})
    assert _ids([json.loads(x) for x in boxed.text.splitlines()]) == {"RES1", "BLK1"} & VISIBLE[rank]


@pytest.mark.parametrize(("path", "params", "reason"), [
    ("/api/aircraft", {"bbox": "1,2,3"}, "bbox must be W,S,E,N"),
    ("/api/aircraft", {"bbox": "0,50,1,10"}, "south must not exceed north"),
    ("/api/aircraft", {"bbox": "0,0,200,1"}, "within -180..180"),
    ("/api/aircraft", {"bbox": "nan,0,1,1"}, "finite"),
    ("/api/playback", {"from": T0, "to": T0 + 2 * 3_600_000}, "at most 60 minutes"),
    ("/api/playback", {"from": T0, "to": T0}, "from must be before to"),
    ("/api/playback", {"from": "yesterday", "to": T0}, "epoch milliseconds or ISO-8601"),
    ("/api/aircraft/PUB1/track", {"from": T0 + 5, "to": T0}, "from must be before to"),
])
def test_bad_parameters_are_400_with_a_reason(server: RunningServer, path: str, params: dict[str, Any], reason: str) -> None:
    answer = server.get(path, None, **params)
    assert answer.status_code == 400 and reason in answer.json()["detail"]


def test_tokens(server: RunningServer) -> None:
    for path in ("/api/aircraft", "/api/aircraft/PUB1", "/api/aircraft/PUB1/track", "/api/playback", "/metrics"):
        assert server.get(path, "wrong-token").status_code == 401
        assert server.http.get(path, headers={"Authorization": "Basic dG9rLWJsb2NrZWQ="}).status_code == 401
    # ?token= is for WebSockets only: on HTTP it grants nothing.
    answer = server.http.get("/api/aircraft/RES1", params={"token": "tok-restricted"})
    assert answer.status_code == 404
    with pytest.raises(InvalidStatus) as denied:
        connect(server.ws_url("wrong-token"), open_timeout=5).close()
    assert denied.value.response.status_code == 401


def test_static_index_and_no_cors_by_default(server: RunningServer) -> None:
    index = server.http.get("/")
    assert index.status_code == 200 and "/api/aircraft" in index.text
    answer = server.http.get("/api/aircraft", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in answer.headers


def test_page_config_names_the_tiles_style(server: RunningServer, tmp_path: Path) -> None:
    """/config.json tells the page its base map: null (the bundled layers) by default, the
    --tiles style when given, never cached."""
    answer = server.http.get("/config.json")
    assert answer.json() == {"style": None} and answer.headers["cache-control"] == "no-store"
    style = "https://tiles.example.org/styles/dark/style.json?key=k"
    feed = write_feed(tmp_path / "uf.jsonl", feed_records(minutes=1))
    with run_server(settings(str(feed), tmp_path, history_url="none", tiles_url=style)) as tiled:
        tiled.wait_ready()
        assert tiled.http.get("/config.json").json() == {"style": style}


def _frames(ws: Any, until: float) -> Iterator[dict[str, Any]]:
    while time.monotonic() < until:
        try:
            yield json.loads(ws.recv(timeout=max(0.01, until - time.monotonic())))
        except TimeoutError:
            return


@pytest.mark.parametrize(("token", "rank"), AUDIENCES)
def test_websocket_snapshot_by_audience(server: RunningServer, token: str | None, rank: int) -> None:
    with connect(server.ws_url(token), open_timeout=5) as ws:
        ws.send(json.dumps({"bbox": [-180, -90, 180, 90]}))
        frame = json.loads(ws.recv(timeout=5))
        assert frame["type"] == "snapshot" and frame["pitr"] == END
        assert _ids(frame["aircraft"]) == VISIBLE[rank]
        ws.send(json.dumps({"bbox": [-122.025, 37.0, -122.005, 37.1]}))
        frame = json.loads(ws.recv(timeout=5))
        assert frame["type"] == "snapshot" and _ids(frame["aircraft"]) == {"RES1", "BLK1"} & VISIBLE[rank]


def test_websocket_frames_carry_the_mode(server: RunningServer) -> None:
    with connect(server.ws_url(), open_timeout=5) as ws:
        ws.send(json.dumps({"bbox": [-180, -90, 180, 90]}))
        frame = json.loads(ws.recv(timeout=5))
    # The feed is years old: catching up, as /api/aircraft says too.
    assert frame["type"] == "snapshot" and frame["mode"] == "catchup"
    assert server.get("/api/aircraft").json()["mode"] == frame["mode"]


def _squawks(states: list[dict[str, Any]]) -> dict[str, tuple[str | None, str | None]]:
    return {a["id"]: (a["squawk"], a["emergency"]) for a in states}


def _expected_squawk(key: str) -> tuple[str | None, str | None]:
    """The feed's squawk as the API speaks it (four digits, a string) and the emergency
    it means (7500 hijack, 7600 radio failure, 7700 general)."""
    if key not in SQUAWKS:
        return (None, None)
    code = f"{int(SQUAWKS[key]):04d}"
    return (code, {"7500": "hijack", "7600": "radio_failure", "7700": "general"}.get(code))


def test_squawk_in_every_answer(server: RunningServer) -> None:
    """The squawk of each aircraft's latest position in the list, by id, in tracks, in
    playback and in WebSocket frames; squawk 7600 makes an emergency."""
    listing = server.get("/api/aircraft", "tok-blocked").json()["aircraft"]
    assert _squawks(listing) == {a["id"]: _expected_squawk(a["id"]) for a in listing}
    assert _squawks(listing)["PUB1"] == ("7600", "radio_failure")
    assert server.get("/api/aircraft/RES1", "tok-blocked").json()["squawk"] == "1200"
    for key in ("PUB1", "GRD1", "BLK1"):
        positions = server.get(f"/api/aircraft/{key}/track", "tok-blocked").json()["positions"]
        assert positions and {(p["squawk"], p["emergency"]) for p in positions} == {_expected_squawk(key)}
    lines = server.get("/api/playback", "tok-blocked", **{"from": T0, "to": END + 1}).text.splitlines()
    played = [json.loads(text) for text in lines]
    assert {a["id"] for a in played} == VISIBLE[2]
    assert all((a["squawk"], a["emergency"]) == _expected_squawk(a["id"]) for a in played)
    with connect(server.ws_url("tok-blocked"), open_timeout=5) as ws:
        ws.send(json.dumps({"bbox": [-180, -90, 180, 90]}))
        frame = json.loads(ws.recv(timeout=5))
    assert _squawks(frame["aircraft"]) == _squawks(listing)


def test_websocket_mode_turns_live_with_the_feed(tmp_path: Path) -> None:
    """``--input -`` fed an old feed and then a record of now: the socket's frames say
    catchup, then live, the change alone sent as an empty update to a view with nothing
    in it."""
    import httpx

    from tests.support.servetools import line

    process = subprocess.Popen(
        [sys.executable, "-m", "unifeed", "serve", "--input", "-", "--port", "0", "--history", "none",
         "--push-interval", "100ms"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None and process.stderr is not None
    try:
        process.stdin.write(b"".join(line(r) + b"\n" for r in feed_records(minutes=1)))
        process.stdin.flush()
        url = process.stderr.readline().decode().split()[2].rstrip("/")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.05)
        with connect(url.replace("http://", "ws://") + "/ws", open_timeout=5) as ws:
            empty = [-30.0, -10.0, -20.0, 0.0]  # the Atlantic: nothing there
            ws.send(json.dumps({"bbox": empty}))
            snapshot = json.loads(ws.recv(timeout=5))
            assert (snapshot["type"], snapshot["mode"], snapshot["aircraft"]) == ("snapshot", "catchup", [])
            now = int(time.time() * 1000)
            process.stdin.write(line({"type": "position", "pitr": now, "id": "NOW1", "clock": now,
                                      "lat": 37.0, "lon": -122.0}) + b"\n")
            process.stdin.flush()
            frames = list(_frames(ws, time.monotonic() + 3))
        assert frames, "no update after the feed turned live"
        assert frames[0] == {"type": "update", "pitr": now, "mode": "live", "upsert": [], "remove": []}
        assert all(f["mode"] == "live" for f in frames)
        assert httpx.get(url + "/api/aircraft", timeout=5).json()["mode"] == "live"
    finally:
        process.terminate()
        process.wait(20)
        process.stdin.close()
        process.stderr.close()
    assert process.returncode == 0


@pytest.mark.parametrize(("message", "code", "reason"), [
    ("not json", 1008, "expected"),
    ('{"bbox":[1,2,3]}', 1008, "four numbers"),
    ('{"bbox":[0,50,1,10]}', 1008, "south must not exceed north"),
    ('{"bbox":[0,0,1,1],"audience":"blocked"}', 1008, "expected"),
    ('{"bbox":"all"}', 1008, "expected"),
    ("x" * 5000, 1009, "larger than 4096 bytes"),
])
def test_websocket_bad_messages_close_with_a_reason(server: RunningServer, message: str, code: int, reason: str) -> None:
    with connect(server.ws_url(), open_timeout=5) as ws:
        ws.send(message)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == code and reason in closed.value.rcvd.reason


def test_cli_subprocess_answers_http(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "uf.jsonl", feed_records())
    tokens = write_tokens(tmp_path / "tokens.txt")
    process = subprocess.Popen(
        [sys.executable, "-m", "unifeed", "serve", "--input", str(feed), "--port", "0",
         "--tokens", str(tokens), "--state-dir", str(tmp_path / "state")],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("unifeed serve: http://127.0.0.1:"), first
        url = first.split()[2].rstrip("/")
        import httpx

        deadline = time.monotonic() + 30
        ready = False
        while not ready and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(url + "/healthz", timeout=5).status_code == 200
            time.sleep(0.1)
        assert ready
        assert _ids(httpx.get(url + "/api/aircraft", timeout=5).json()["aircraft"]) == VISIBLE[0]
        restricted = httpx.get(url + "/api/aircraft", timeout=5, headers={"Authorization": "Bearer tok-restricted"})
        assert _ids(restricted.json()["aircraft"]) == VISIBLE[1]
        ws_url = url.replace("http://", "ws://") + "/ws?token=tok-restricted"
        with connect(ws_url, open_timeout=5) as ws:
            ws.send(json.dumps({"bbox": [-180, -90, 180, 90]}))
            assert _ids(json.loads(ws.recv(timeout=5))["aircraft"]) == VISIBLE[1]
        with pytest.raises(InvalidStatus):
            connect(url.replace("http://", "ws://") + "/ws?token=tok-guessed", open_timeout=5).close()
        assert httpx.get(url + "/api/aircraft", timeout=5,
                         headers={"Authorization": "Bearer tok-guessed"}).status_code == 401
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "tok-" not in err  # tokens, known or not, are never logged


@pytest.mark.parametrize(("args", "message"), [
    (["--input", "/no/such/file.jsonl"], "no such file"),
    (["--input", "x.jsonl", "--stale", "soon"], "expected a duration"),
    (["--input", "kafka:bad topic!"], "not a Kafka topic name"),
    (["--input", "x.jsonl", "--tiles", "ftp://tiles.example.org/style.json"], "http:// or https://"),
    (["--input", "x.jsonl", "--tiles", "style.json"], "http:// or https://"),
    (["--input", "x.jsonl", "--tiles", "https:///style.json"], "http:// or https://"),
    (["--input", "x.jsonl", "--tiles", "http://host:99999/style.json"], "not a URL"),
])
def test_cli_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "x.jsonl").write_text("")
    done = subprocess.run([sys.executable, "-m", "unifeed", "serve", *args, "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_bad_tokens_file_names_the_line_not_the_token(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "uf.jsonl", feed_records(minutes=1))
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("s3cr3t-token public\nother-s3cr3t everyone\n")
    done = subprocess.run([sys.executable, "-m", "unifeed", "serve", "--input", str(feed),
                           "--tokens", str(tokens), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{tokens}:2" in done.stderr and "s3cr3t" not in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_port_in_use_is_one_line(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "uf.jsonl", feed_records(minutes=1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "unifeed", "serve", "--input", str(feed),
                               "--port", str(port), "--history", "none"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "cannot listen on 127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_follows_stdin_live(tmp_path: Path) -> None:
    """``--input -`` is a live stream: ready once what was written is read, then each new
    line shows up without waiting for more input."""
    import httpx

    from tests.support.servetools import line

    records = feed_records()
    half = len(records) // 2
    process = subprocess.Popen(
        [sys.executable, "-m", "unifeed", "serve", "--input", "-", "--port", "0", "--history", "none"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=False,
    )
    assert process.stdin is not None and process.stderr is not None
    try:
        process.stdin.write(b"".join(line(r) + b"\n" for r in records[:half]))
        process.stdin.flush()
        url = process.stderr.readline().decode().split()[2].rstrip("/")

        def health() -> dict[str, Any]:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    answer = httpx.get(url + "/healthz", timeout=5)
                    if answer.status_code == 200:
                        return dict(answer.json())
                time.sleep(0.05)
            raise AssertionError("not ready")

        def wait_pitr(pitr: int) -> None:
            deadline = time.monotonic() + 30
            while health()["pitr"] < pitr:
                assert time.monotonic() < deadline, f"pitr {pitr} not reached"
                time.sleep(0.05)

        wait_pitr(records[half - 1]["pitr"])
        # One more line, and nothing after it for a while: it must still arrive.
        process.stdin.write(line(records[half]) + b"\n")
        process.stdin.flush()
        wait_pitr(records[half]["pitr"])
        process.stdin.write(b"".join(line(r) + b"\n" for r in records[half + 1 :]))
        process.stdin.close()
        wait_pitr(END)
        assert _ids(httpx.get(url + "/api/aircraft", timeout=5).json()["aircraft"]) == VISIBLE[0]
    finally:
        process.terminate()
        process.wait(20)
        process.stderr.close()
    assert process.returncode == 0
