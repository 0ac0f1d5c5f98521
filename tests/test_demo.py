"""``unifeed demo`` end to end (a real subprocess, small size), and its checking pieces."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unifeed.demo.commands import parse_status
from unifeed.demo.traffic import compress_time
from unifeed.demo.verify import public_view, verify_access, verify_audience, verify_output

ROOT = Path(__file__).resolve().parent.parent
_DEMO_TIMEOUT_S = 120

_VERDICTS = (
    "identical to the file pipeline (unify_lines)",
    "ordered by pitr",
    "complete",
    "nothing duplicated",
    "no access leak",
    "dump --audience public shows nothing restricted or blocked",
)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIFEED_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_demo_end_to_end_with_outage_passes_every_check() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "unifeed", "demo",
            "--minutes", "3", "--speed", "12", "--seed", "3", "--keep-broker",
        ],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=_DEMO_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    out, err = done.stdout, done.stderr
    pid_match = re.search(r"still running at (\S+) \(pid (\d+)\)", out)
    try:
        assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        for name in _VERDICTS:
            assert re.search(rf"^  PASS  {re.escape(name)}", out, re.MULTILINE), out
        assert "FAIL" not in out
        assert "verdict: PASS" in out
        assert re.search(r"outage\s+\d+\.\d s \(combine SIGKILLed\)", out), out
        assert re.search(r"late\s+0 ", out), out
        assert re.search(r"dead letters\s+0", out), out
        # Progress went to stderr as plain lines (stderr is not a terminal here).
        assert "\x1b[" not in err
        assert "SIGKILL combine" in err and "restarted combine" in err
        assert re.search(r"combine (realtime|catchup) out [\d,]+", err), err
        # --keep-broker: the printed command works against the broker left running.
        assert pid_match is not None, out
        dumped = subprocess.run(
            [sys.executable, "-m", "unifeed", "dump", "kafka:unified",
             "--bootstrap-servers", pid_match.group(1)],
            capture_output=True,
            env=_environment(),
            timeout=60,
            check=False,
        )  # fmt: skip
        assert dumped.returncode == 0, dumped.stderr
        total = re.search(r"messages out\s+([\d,]+)", out)
        assert total is not None
        assert len(dumped.stdout.splitlines()) == int(total.group(1).replace(",", ""))
        _serve_answers(pid_match.group(1), dumped.stdout.splitlines())
    finally:
        if pid_match is not None:
            os.kill(int(pid_match.group(2)), signal.SIGTERM)
    for _ in range(50):
        if not _port_open(pid_match.group(1)):
            break
        time.sleep(0.1)
    assert not _port_open(pid_match.group(1)), "the broker did not stop on SIGTERM"
    assert took < _DEMO_TIMEOUT_S


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (["--speed", "0"], "--speed must be > 0"),
        (["--minutes", "40", "--speed", "100"], "would not fit the embedded broker"),
        (["--airports", "1"], "airports must be between 2"),
    ],
)
def test_demo_refuses_bad_options_before_starting_anything(
    arguments: list[str], needle: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "unifeed", "demo", *arguments],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert "starting the embedded broker" not in done.stderr


def test_demo_serve_refuses_a_busy_port_before_starting_anything() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "unifeed", "demo", "--serve", "--serve-port", str(port)],
            capture_output=True,
            text=True,
            env=_environment(),
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert f"--serve-port {port}: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "starting the embedded broker" not in done.stderr


def test_compress_time_moves_pitr_and_clock_only() -> None:
    line = b'{"type":"ground_position","pitr":2000,"surface_id":"S1","clock":1900,"lat":1.5}'
    assert compress_time(line, 1000, 10_000, 10) == (
        b'{"type":"ground_position","pitr":10100,"surface_id":"S1","clock":10090,"lat":1.5}'
    )


def test_status_lines_are_parsed_and_other_lines_ignored() -> None:
    status = parse_status(
        "unifeed combine [demo-combine] realtime: out=10 rate=1,000/s controlstream-lag=0.1s "
        "mappingstream-lag=-0.2s queues writer=0/1 annotator=2/3 late=0 dead=0 commits=4",
        at=5.0,
    )
    assert status is not None
    assert status.mode == "realtime"
    assert status.lag_s == {"controlstream": 0.1, "mappingstream": -0.2}
    assert status.queues == {"writer": "0/1", "annotator": "2/3"}
    assert (status.out, status.rate, status.commits, status.at) == (10, 1000.0, 4, 5.0)
    assert parse_status("2026-11-22T03:00:00Z INFO unifeed [a] resuming") is None


FP_RESTRICTED = b'{"type":"flightplan","pitr":1,"id":"F1","ident":"X","access":"restricted"}'
FP_PUBLIC = b'{"type":"flightplan","pitr":1,"id":"F2","ident":"Y"}'
GP_OK = b'{"type":"ground_position","pitr":2,"surface_id":"S1","id":"F1","access":"restricted"}'
GP_LEAK = b'{"type":"ground_position","pitr":3,"surface_id":"S1","id":"F1","access":"public"}'
GP_PUBLIC = b'{"type":"ground_position","pitr":3,"surface_id":"S2","id":"F2","access":"public"}'
GP_UNMAPPED = b'{"type":"ground_position","pitr":4,"surface_id":"S3"}'
POS_F1 = b'{"type":"position","pitr":5,"id":"F1","clock":5,"lat":1,"lon":2}'


def test_access_check_finds_a_position_weaker_than_its_flight() -> None:
    good = verify_access([FP_RESTRICTED, FP_PUBLIC, GP_OK, GP_PUBLIC, GP_UNMAPPED])
    assert good.verdict is not None and good.verdict.ok
    assert (good.ground_positions, good.annotated, good.restricted) == (3, 2, 1)
    bad = verify_access([FP_RESTRICTED, GP_OK, GP_LEAK])
    assert bad.verdict is not None and not bad.verdict.ok
    assert bad.weaker == 1


def test_public_view_hides_what_dump_hides() -> None:
    got = [FP_RESTRICTED, FP_PUBLIC, GP_OK, GP_PUBLIC, GP_UNMAPPED, POS_F1]
    assert public_view(got) == [FP_PUBLIC, GP_PUBLIC, GP_UNMAPPED]
    assert verify_audience(got, [FP_PUBLIC, GP_PUBLIC, GP_UNMAPPED]).ok
    assert not verify_audience(got, [FP_PUBLIC, GP_OK, GP_PUBLIC, GP_UNMAPPED]).ok


def test_output_check_names_what_is_wrong() -> None:
    expected = [b'{"pitr":1}', b'{"pitr":2}', b'{"pitr":3}']
    assert all(v.ok for v in verify_output(expected, expected))
    verdicts = {v.name: v for v in verify_output([expected[0], expected[2], expected[2]], expected)}
    assert not verdicts["identical to the file pipeline (unify_lines)"].ok
    assert not verdicts["complete"].ok
    assert not verdicts["nothing duplicated"].ok
    assert verdicts["ordered by pitr"].ok
    swapped = {v.name: v for v in verify_output([expected[1], expected[0], expected[2]], expected)}
    assert not swapped["ordered by pitr"].ok
    assert swapped["complete"].ok and swapped["nothing duplicated"].ok


def _serve_answers(bootstrap: str, feed: list[bytes]) -> None:
    """``unifeed serve`` on the demo's unified feed answers the API, public view only public."""
    import json

    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "unifeed", "serve", "--input", "kafka:unified",
         "--bootstrap-servers", bootstrap, "--port", "0", "--history", "none"],
        stderr=subprocess.PIPE, text=True, env=_environment(),
    )  # fmt: skip
    try:
        assert process.stderr is not None
        url = process.stderr.readline().split()[2].rstrip("/")
        deadline = time.monotonic() + 60
        ready = False
        while not ready and time.monotonic() < deadline:
            try:
                ready = httpx.get(url + "/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                time.sleep(0.1)
        assert ready
        answer = httpx.get(url + "/api/aircraft", timeout=10).json()
        pitrs = [json.loads(line)["pitr"] for line in feed if line.strip()]
        assert answer["pitr"] == max(pitrs)
        assert answer["aircraft"] and {a["access"] for a in answer["aircraft"]} == {"public"}
        flights = {json.loads(line).get("id") for line in feed}
        assert {a["id"] for a in answer["aircraft"] if a["kind"] == "flight"} <= flights
    finally:
        process.terminate()
        process.wait(20)
        if process.stderr is not None:
            process.stderr.close()


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: each task's parent)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads child processes from /proc")
@pytest.mark.parametrize(
    ("signum", "ignore_sigint"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigterm", "ctrl-c-when-started-with-sigint-ignored"],
)
def test_demo_stopped_mid_run_stops_everything_it_started(
    tmp_path: Path, signum: int, ignore_sigint: bool
) -> None:
    """SIGTERM, or Ctrl-C even when the demo was started with SIGINT ignored (as a
    background job of a script is), stops the demo during its run: the broker, the
    commands and serve it started all stop with it, and it says it was interrupted."""
    stderr_path = tmp_path / "demo.err"
    with stderr_path.open("wb") as stderr:
        demo = subprocess.Popen(
            [sys.executable, "-m", "unifeed", "demo", "--serve", "--serve-port", "0",
             "--minutes", "4"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            env=_environment(),
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if ignore_sigint else None,
        )  # fmt: skip
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while "live map:" not in stderr_path.read_text(errors="replace"):
            assert demo.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.2)
        started = _descendants(demo.pid)
        assert len(started) >= 4, "broker, mappings, combine and serve are running"
        demo.send_signal(signum)
        assert demo.wait(timeout=90) == 130, stderr_path.read_text()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if _alive(p)], "a process the demo started outlived it"
        assert "unifeed demo: interrupted" in stderr_path.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
