"""``unifeed ingest`` as a user runs it: real subprocesses, a local HTTP server, a local
SBS socket, files, the golden sample, and ``ingest -> combine`` over files and Kafka."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from unifeed.core.records import ACCESS_RANK, RecordDecoder
from unifeed.sim.adsb import adsb_responses

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "golden" / "ingest-adsb"
#: The sample as ingest is given it: relative to the repository (dead letters name it).
SAMPLE = "golden/ingest-adsb/responses.jsonl"
T0 = 1_700_000_000_000
CLI = [sys.executable, "-m", "unifeed"]


def unifeed(
    *args: str, timeout: float = 120, bootstrap: str | None = None,
    environ: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(environ or {})
    if bootstrap is not None:
        env["UNIFEED_BOOTSTRAP_SERVERS"] = bootstrap
    # From the repository, so that relative paths (the golden sample's) name the same
    # source wherever the repository is.
    return subprocess.run([*CLI, *args], env=env, capture_output=True, timeout=timeout,
                          check=False, cwd=REPO)  # fmt: skip


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def check_feeds(control: Path, surface: Path) -> None:
    """Every record passes unifeed's own validation; pitr never decreases per output."""
    for path, feed in ((control, "controlstream"), (surface, "surfacestream")):
        decoder = RecordDecoder(feed)
        pitrs = [decoder.decode(line).pitr for line in path.read_bytes().splitlines()]
        assert pitrs == sorted(pitrs), path


def aircraft(hex_: str, now_ms: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"hex": hex_, "flight": "UAL1    ", "alt_baro": "ground",
                            "lat": 37.62, "lon": -122.38, "gs": 3.0, "seen_pos": 0.4}  # fmt: skip
    base.update(fields)
    return base


def body(now_ms: int, *ac: dict[str, Any]) -> bytes:
    return json.dumps({"ac": list(ac), "now": now_ms, "msg": "No error"}).encode()


# --- a local HTTP server -------------------------------------------------------


class Script:
    """Replies handed out in order (status, headers, body); the last one repeats."""

    def __init__(self, replies: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.replies = replies
        self.served: list[int] = []
        self.lock = threading.Lock()

    def next(self) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            i = min(len(self.served), len(self.replies) - 1)
            self.served.append(self.replies[i][0])
            return self.replies[i]


@pytest.fixture
def http_server() -> Iterator[Callable[[Script], str]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(script: Script) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers, payload = script.next()
                if "X-Test-Delay" in headers:  # answer later than the client waits
                    time.sleep(float(headers["X-Test-Delay"]))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()  # fmt: skip
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/api"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_polling_survives_errors_429_and_garbage(
    http_server: Callable[[Script], str], tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    script = Script([
        (200, {}, body(now, aircraft("a1b2c3", now))),
        (500, {}, b"oops"),
        (200, {}, b"<html>Bad Gateway</html>"),
        (429, {"Retry-After": "1"}, b"slow down"),
        (200, {}, body(now + 1000, aircraft("a1b2c3", now))[:40]),  # truncated
        (503, {}, b"busy"),
        (200, {"Content-Length": "5000"}, body(now + 1500, aircraft("a1b2c3", now))[:60]),
        (200, {"Content-Encoding": "gzip"}, b"\x1f\x8b not really gzip"),
        (200, {"X-Test-Delay": "1.5"}, body(now + 1800, aircraft("a1b2c3", now))),
        (200, {}, body(now + 2000, aircraft("a1b2c3", now + 1500, lat=37.621),
                       aircraft("b1b2c3", now + 1500, alt_baro=3000, lat=37.7))),
    ])  # fmt: skip
    url = http_server(script)
    down = f"http://127.0.0.1:{free_port()}/gone"  # refused: must not stop the other source
    ctl, srf, dead = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl", tmp_path / "dead.jsonl"
    done = unifeed("ingest", "--source", url, "--source", down, "--interval", "100ms",
                   "--stop-after", "6", "--control", str(ctl), "--surface", str(srf),
                   "--dead-letter", str(dead), "--status-interval", "0",
                   "--http-timeout", "500ms")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert script.served[:10] == [200, 500, 200, 429, 200, 503, 200, 200, 200, 200]
    letters = records(dead)
    assert [d["source"] for d in letters] == [url] * 4
    assert "not JSON" in letters[0]["reason"] and letters[0]["raw"].startswith("<html>")
    assert "truncated" in letters[1]["reason"]
    assert "truncated transfer: 60 bytes" in letters[2]["reason"]
    assert letters[2]["raw"].startswith('{"ac":')
    assert "gzip" in letters[3]["reason"]
    check_feeds(ctl, srf)
    control = records(ctl)
    assert [r["hexid"] for r in control if r["type"] == "flightplan"] == ["a1b2c3", "b1b2c3"]
    assert sum(r["type"] == "keepalive" for r in control) == 6  # one per poll, bad ones too
    assert len([r for r in records(srf) if r["type"] == "ground_position"]) == 2
    err = done.stderr.decode()
    assert "429" in err and "HTTP 500" in err and "timed out" in err  # the slow answer
    assert f"{down}: request failed" in err  # the refused source, which stopped nothing


def test_sources_from_the_environment_and_the_command_line_wins(
    http_server: Callable[[Script], str], tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    url = http_server(Script([(200, {}, body(now, aircraft("a1b2c3", now)))]))
    gone = f"http://127.0.0.1:{free_port()}/gone"
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    common = ["--interval", "100ms", "--stop-after", "1", "--control", str(ctl), "--surface",
              str(srf), "-q"]  # fmt: skip
    done = unifeed("ingest", *common, environ={"UNIFEED_SOURCE": url})
    assert done.returncode == 0, done.stderr.decode()
    assert b"flightplan" in ctl.read_bytes()
    ctl.unlink()
    done = unifeed("ingest", "--source", url, *common, environ={"UNIFEED_SOURCE": gone})
    assert done.returncode == 0, done.stderr.decode()
    assert b"flightplan" in ctl.read_bytes() and b"gone" not in done.stderr


def test_aircraft_json_file_is_reread_and_deduplicated(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    source = tmp_path / "aircraft.json"
    source.write_text(json.dumps({"now": now / 1000, "messages": 10, "aircraft": [
        aircraft("~0a0b0c", now, category="C2", flight="TUG1"), aircraft("a1b2c3", now)]}))  # fmt: skip
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    done = unifeed("ingest", "--source", str(source), "--interval", "50ms", "--stop-after", "3",
                   "--control", str(ctl), "--surface", str(srf), "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    check_feeds(ctl, srf)
    kinds = [r["type"] for r in records(srf)]
    assert kinds.count("vehicle_position") == 1 and kinds.count("ground_position") == 1
    assert kinds.count("keepalive") == 3


class SbsServer:
    """Serves BaseStation lines: the first connection gets ``first`` then is closed, every
    later one gets ``later`` and stays open."""

    def __init__(self, first: list[bytes], later: list[bytes]) -> None:
        self.connections = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                lines = first if outer.connections == 1 else later
                self.request.sendall(b"".join(line + b"\r\n" for line in lines))
                if outer.connections > 1:
                    outer.stop.wait(30)

        self.stop = threading.Event()
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()  # fmt: skip

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def test_sbs_socket_with_reconnect(tmp_path: Path) -> None:
    stamp = "2026/01/01,12:00:00.000,2026/01/01,12:00:00.000"
    first = [
        f"MSG,1,1,1,4CA2D6,1,{stamp},RYR1427 ,,,,,,,,,,,".encode(),
        f"MSG,3,1,1,4CA2D6,1,{stamp},,37000,,,51.45,-1.02,,,0,0,0,0".encode(),
        b"MSG,3,1,1,4CA2D6,garbage",
    ]
    later = [
        f"MSG,1,1,1,400A0B,1,{stamp},BAW12   ,,,,,,,,,,,".encode(),
        f"MSG,2,1,1,400A0B,1,{stamp},,,8.0,270.0,51.4700,-0.4543,,,,,,-1".encode(),
        f"MSG,4,1,1,4CA2D6,1,{stamp},,,450.0,90.0,,,-1200,,,,,".encode(),
        f"MSG,3,1,1,4CA2D6,1,{stamp},,36000,,,51.46,-1.00,,,0,0,0,0".encode(),
    ]
    server = SbsServer(first, later)
    ctl, srf, dead = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl", tmp_path / "dead.jsonl"
    try:
        done = unifeed("ingest", "--source", f"sbs://127.0.0.1:{server.port}", "--interval",
                       "300ms", "--stop-after", "8", "--control", str(ctl), "--surface",
                       str(srf), "--dead-letter", str(dead), "--status-interval", "0")  # fmt: skip
    finally:
        server.close()
    assert done.returncode == 0, done.stderr.decode()
    assert server.connections >= 2, done.stderr.decode()
    check_feeds(ctl, srf)
    control = records(ctl)
    plans = {r["hexid"]: r["ident"] for r in control if r["type"] == "flightplan"}
    assert plans == {"4ca2d6": "RYR1427", "400a0b": "BAW12"}
    positions = [r for r in control if r["type"] == "position"]
    assert positions[-1]["phase"] == "descent" and positions[-1]["alt"] == 36000
    ground = [r for r in records(srf) if r["type"] == "ground_position"]
    assert ground and ground[0]["facility"] == "EGLL"
    (letter,) = records(dead)
    assert "fields" in letter["reason"] and letter["raw"] == "MSG,3,1,1,4CA2D6,garbage"


def test_sigterm_flushes_and_exits_0(http_server: Callable[[Script], str], tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    url = http_server(Script([(200, {}, body(now, aircraft("a1b2c3", now)))]))
    ctl, srf = tmp_path / "ctl.jsonl", tmp_path / "srf.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen([*CLI, "ingest", "--source", url, "--interval", "30s",
                                "--control", str(ctl), "--surface", str(srf), "-q"],
                               env=env, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(300):  # at most 30 s for the first poll to be written
            if ctl.exists() and b"keepalive" in ctl.read_bytes():
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err.decode()
    assert [r["type"] for r in records(ctl)] == ["flightplan", "power_on", "keepalive"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--control", "c", "--surface", "s"], "--source"),
        (["--replay", "nope.jsonl", "--control", "c", "--surface", "s"], "no such file"),
        (["--source", "ftp://x", "--control", "c", "--surface", "s"], "expected an http"),
        (["--source", "sbs://host", "--control", "c", "--surface", "s"], "sbs://HOST:PORT"),
        (["--source", "x", "--bbox", "1,2,3", "--control", "c", "--surface", "s"], "W,S,E,N"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], words: str, tmp_path: Path) -> None:
    done = unifeed("ingest", *args)
    assert done.returncode == 2
    assert words in done.stderr.decode() and b"Traceback" not in done.stderr


# --- the golden sample ---------------------------------------------------------


def golden_sample() -> tuple[list[bytes], str]:
    """The recorded-format sample: 3 simulated minutes at two airports, one response every
    10 s, with a truncated and a non-JSON response among them; and its access list."""
    access: dict[str, str] = {}
    lines = list(adsb_responses(seed=7, minutes=3, airports=2, rate=10, access=access))
    lines.insert(5, lines[5][:120])
    lines.insert(11, b"<html><body>502 Bad Gateway</body></html>")
    listed = "".join(f"{a} {level}\n" for a, level in sorted(access.items()))
    return lines, "# the sample's non-public addresses\n" + listed


def ingest_golden(tmp_path: Path, *extra: str, access: bool = True) -> dict[str, Path]:
    out = {name: tmp_path / f"{name}.jsonl" for name in ("controlstream", "surfacestream",
                                                          "dead-letters")}  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    privacy = ["--access-file", str(GOLDEN / "access.txt")] if access else []
    done = unifeed("ingest", "--replay", SAMPLE, "--speed", "0",
                   *privacy, "--control",
                   str(out["controlstream"]), "--surface", str(out["surfacestream"]),
                   "--dead-letter", str(out["dead-letters"]), "-q", *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return out


def test_golden_sample(tmp_path: Path, update_golden: bool) -> None:
    lines, access = golden_sample()
    if update_golden:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / "responses.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
        (GOLDEN / "access.txt").write_text(access)
    assert (GOLDEN / "responses.jsonl").read_bytes().splitlines() == lines, (
        "golden/ingest-adsb/responses.jsonl is stale: run `pytest --update-golden`"
    )
    assert (GOLDEN / "access.txt").read_text() == access
    out = ingest_golden(tmp_path)
    for name, path in out.items():
        expected = GOLDEN / f"expected.{name}.jsonl"
        if update_golden:
            expected.write_bytes(path.read_bytes())
        assert path.read_bytes() == expected.read_bytes(), (
            f"{expected} differs from ingest's output (if intended: `pytest --update-golden`, "
            "then review the diff)"
        )
    check_feeds(out["controlstream"], out["surfacestream"])
    letters = records(out["dead-letters"])
    assert [d["line"] for d in letters] == [6, 12]
    kinds = {r["type"] for r in records(out["controlstream"])}
    assert kinds == {"flightplan", "position", "departure", "arrival", "power_on", "power_off",
                     "keepalive"}  # fmt: skip
    surface = records(out["surfacestream"])
    assert {r["type"] for r in surface} == {"ground_position", "vehicle_position", "keepalive"}
    assert any(r.get("emergency") for r in records(out["controlstream"]))
    # Two ingests of the same responses make the same bytes (flight IDs included).
    again = ingest_golden(tmp_path / "again")
    assert again["controlstream"].read_bytes() == out["controlstream"].read_bytes()


# --- ingest -> combine ---------------------------------------------------------


def restricted_addresses() -> set[str]:
    text = (GOLDEN / "access.txt").read_text()
    return {line.split()[0] for line in text.splitlines() if line and not line.startswith("#")}


def check_unified(unified: list[dict[str, Any]], control: list[dict[str, Any]]) -> None:
    """`check_annotated`, and nothing of a restricted address is public."""
    check_annotated(unified, control)
    flights = {r["id"]: r for r in control if r["type"] == "flightplan"}
    hidden = restricted_addresses()
    assert hidden
    assert any(r.get("hexid") in hidden for r in unified)  # they are there, but not public
    access_of = {fid: ACCESS_RANK[p.get("access", "public")] for fid, p in flights.items()}
    for r in unified:
        if r.get("hexid") in hidden:
            rank = max(ACCESS_RANK.get(r.get("access", "public"), 2), access_of.get(r.get("id"), 0))
            assert rank >= ACCESS_RANK["restricted"], r


def test_ingest_then_combine_files(tmp_path: Path) -> None:
    out = ingest_golden(tmp_path)
    unified = tmp_path / "unified.jsonl"
    done = unifeed("combine", "--control", str(out["controlstream"]), "--surface",
                   str(out["surfacestream"]), "--output", str(unified), "--dead-letter",
                   str(tmp_path / "dead.jsonl"), "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "dead.jsonl").read_bytes() == b""
    check_unified(records(unified), records(out["controlstream"]))


def check_annotated(unified: list[dict[str, Any]], control: list[dict[str, Any]]) -> None:
    """Every aircraft ground position carries the id and access of the flight ingest made
    for its address."""
    flights = {r["id"]: r for r in control if r["type"] == "flightplan"}  # the latest plan
    ground = [r for r in unified if r["type"] == "ground_position"]
    assert len(ground) > 100
    for r in ground:
        assert r["id"] in flights, r
        assert flights[r["id"]]["hexid"] == r["hexid"]
        assert r["access"] == flights[r["id"]].get("access", "public")


@pytest.mark.kafka
@pytest.mark.slow
def test_done_when_replay_into_kafka_then_combine(
    kafka_bootstrap: str, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    """The issue's command, as written, then `unifeed combine`: aircraft surface positions
    in the unified feed are annotated with the flights ingest made."""
    ctl, srf, uf = unique_topic("ctl"), unique_topic("srf"), unique_topic("uf")
    done = unifeed("ingest", "--replay", SAMPLE, "--speed", "20", "--control", f"kafka:{ctl}",
                   "--surface", f"kafka:{srf}", bootstrap=kafka_bootstrap)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    done = unifeed("combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
                   "--output", f"kafka:{uf}", "--instance", f"ingest-{uf}", "--exit-at-end",
                   "--status-interval", "0", bootstrap=kafka_bootstrap)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    unified = unifeed("dump", f"kafka:{uf}", bootstrap=kafka_bootstrap)
    control = unifeed("dump", f"kafka:{ctl}", bootstrap=kafka_bootstrap)
    assert unified.returncode == control.returncode == 0
    check_annotated([json.loads(x) for x in unified.stdout.splitlines()],
                    [json.loads(x) for x in control.stdout.splitlines()])  # fmt: skip
    # Into Kafka at --speed 20 exactly what the file run writes at full speed.
    files = ingest_golden(tmp_path, access=False)
    assert control.stdout == files["controlstream"].read_bytes()
    dead = unifeed("dump", f"kafka:{ctl}.dead-letter", bootstrap=kafka_bootstrap)
    assert dead.stdout == files["dead-letters"].read_bytes()


@pytest.mark.kafka
def test_restricted_address_never_public_downstream_on_kafka(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    ctl, srf, uf = unique_topic("ctl"), unique_topic("srf"), unique_topic("uf")
    kafka = ["--bootstrap-servers", kafka_bootstrap]
    done = unifeed("ingest", "--replay", SAMPLE, "--speed", "0",
                   "--access-file", str(GOLDEN / "access.txt"), "--control", f"kafka:{ctl}",
                   "--surface", f"kafka:{srf}", "-q", *kafka)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    done = unifeed("combine", "--control", f"kafka:{ctl}", "--surface", f"kafka:{srf}",
                   "--output", f"kafka:{uf}", "--instance", f"ingest-{uf}", "--exit-at-end",
                   "--status-interval", "0", *kafka)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    unified = [json.loads(x) for x in unifeed("dump", f"kafka:{uf}", *kafka).stdout.splitlines()]
    control = [json.loads(x) for x in unifeed("dump", f"kafka:{ctl}", *kafka).stdout.splitlines()]
    check_unified(unified, control)
    hidden = restricted_addresses()
    for audience in ("public",):
        public = unifeed("dump", f"kafka:{uf}", "--audience", audience, *kafka)
        assert public.returncode == 0
        shown = [json.loads(x) for x in public.stdout.splitlines()]
        assert shown and not [r for r in shown if r.get("hexid") in hidden]
        assert len(shown) < len(unified)


def test_simulate_format_adsb(tmp_path: Path) -> None:
    from unifeed.ingest import AccessList, decode_response

    outs = []
    for name in ("a", "b"):
        done = unifeed("simulate", "--format", "adsb", "--out-dir", str(tmp_path / name),
                       "--minutes", "2", "--airports", "2", "--rate", "10", "--seed", "3",
                       "--interval", "5s")  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        outs.append(((tmp_path / name / "adsb.jsonl").read_bytes(),
                     (tmp_path / name / "access.txt").read_text()))  # fmt: skip
    assert outs[0] == outs[1]  # deterministic
    lines = outs[0][0].splitlines()
    assert len(lines) == 24  # one response every 5 s of 2 minutes
    snapshots = [decode_response(line) for line in lines]
    assert [s.now_ms for s in snapshots] == [T0 + 5_000 * (i + 1) for i in range(24)]
    states = [a for s in snapshots for a in s.aircraft]
    assert {a.category for a in states} == {"A3", "C1", "C2"}
    assert any(a.alt_baro == "ground" for a in states if a.category == "A3")
    assert any(isinstance(a.alt_baro, float) for a in states)
    assert all(a.hex.startswith("~") for a in states if a.category != "A3")
    AccessList.parse(outs[0][1].splitlines())


def test_metrics_while_running(http_server: Callable[[Script], str], tmp_path: Path) -> None:
    import urllib.request

    now = int(time.time() * 1000)
    url = http_server(Script([(200, {}, body(now, aircraft("a1b2c3", now)))]))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen([*CLI, "ingest", "--source", url, "--interval", "100ms",
                                "--control", str(tmp_path / "c.jsonl"), "--surface",
                                str(tmp_path / "s.jsonl"), "--metrics-port", str(port), "-q"],
                               env=env, stderr=subprocess.PIPE)  # fmt: skip
    text = ""
    try:
        for _ in range(300):  # at most 30 s
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                if 'unifeed_messages_out_total' in text and "unifeed_messages_out_total 0.0" not in text:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0
    assert 'unifeed_info{command="ingest"' in text
    assert 'unifeed_messages_in_total{feed="adsb"}' in text
