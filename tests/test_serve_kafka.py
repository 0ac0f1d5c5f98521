"""unifeed serve on Kafka: rebuild from the window after a restart (no empty map, the same
state), flight data from the lookback, and live WebSocket updates for every audience."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.servetools import (
    AUDIENCES,
    MINUTE,
    T0,
    VISIBLE,
    feed_records,
    line,
    run_server,
    settings,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
END = T0 + 1_000 + 3 * MINUTE - 5_000


def _load(produce: Callable[..., list[int]], topic: str, records: list[dict[str, Any]]) -> None:
    produce(topic, [(line(r), r["pitr"]) for r in records])


def _answers(server: Any) -> dict[str, Any]:
    out = {}
    for token, _rank in AUDIENCES:
        out[f"list-{token}"] = server.get("/api/aircraft", token).content
        for key in sorted(VISIBLE[2]):
            answer = server.get(f"/api/aircraft/{key}", token)
            out[f"{key}-{token}"] = (answer.status_code, answer.content)
    return out


def test_restart_rebuilds_the_same_state(
    tmp_path: Path, kafka_bootstrap: str, unique_topic: Callable[..., str], produce: Callable[..., list[int]]
) -> None:
    topic = unique_topic("uf")
    _load(produce, topic, feed_records())
    # --window 1m: the restricted flightplans (at T0, two minutes before the end) are older
    # than the window; the lookback brings them back, so nothing restricted turns public.
    base = settings(f"kafka:{topic}", tmp_path, history_url="none", window_ms=MINUTE,
                    bootstrap=kafka_bootstrap)
    with run_server(base) as first:
        first.wait_ready()
        before = _answers(first)
        public = first.get("/api/aircraft").json()
        assert {a["id"] for a in public["aircraft"]} == VISIBLE[0]
        assert public["pitr"] == END
    with run_server(replace(base)) as second:
        second.wait_ready()
        after = _answers(second)
    assert after == before
    for token, rank in AUDIENCES:
        assert {a["id"] for a in json.loads(after[f"list-{token}"])["aircraft"]} == VISIBLE[rank]


def test_websocket_updates_by_audience(
    tmp_path: Path, kafka_bootstrap: str, unique_topic: Callable[..., str], produce: Callable[..., list[int]]
) -> None:
    topic = unique_topic("uf")
    records = feed_records()
    first_part = [r for r in records if r["pitr"] < T0 + MINUTE]
    rest = [r for r in records if r["pitr"] >= T0 + MINUTE]
    _load(produce, topic, first_part)
    base = settings(f"kafka:{topic}", tmp_path, history_url="none", bootstrap=kafka_bootstrap,
                    push_interval_s=0.05)
    with run_server(base) as server, contextlib.ExitStack() as stack:
        server.wait_ready()
        sockets = []
        for token, rank in AUDIENCES:
            ws = stack.enter_context(connect(server.ws_url(token), open_timeout=5))
            ws.send(json.dumps({"bbox": [-180, -90, 180, 90]}))
            snapshot = json.loads(ws.recv(timeout=5))
            assert snapshot["type"] == "snapshot"
            sockets.append((ws, token, rank, {a["id"]: a for a in snapshot["aircraft"]}, [snapshot]))
        _load(produce, topic, rest)
        server.wait_pitr(END)
        for ws, token, rank, view, frames in sockets:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    frame = json.loads(ws.recv(timeout=2))
                except TimeoutError:
                    break
                frames.append(frame)
                assert frame["type"] == "update"
                for key in frame["remove"]:
                    view.pop(key)
                for aircraft in frame["upsert"]:
                    view[aircraft["id"]] = aircraft
            ws.close()
            allowed = ("public", "restricted", "blocked")[: rank + 1]
            upserts = [a for f in frames for a in f.get("upsert", f.get("aircraft", []))]
            assert all(a["access"] in allowed for a in upserts)
            assert set(view) == VISIBLE[rank]
            expected = server.get("/api/aircraft", token).json()["aircraft"]
            assert view == {a["id"]: a for a in expected}
            if rank == 0:
                # SWI1 was public until T0 + 90 s; after its flightplan said restricted the
                # public client got its removal and nothing of it since.
                assert {a["id"] for a in upserts} == {"PUB1", "V1", "S9", "SWI1"}
                assert all(a["pitr"] < T0 + 91_000 for a in upserts if a["id"] == "SWI1")
                assert any("SWI1" in f.get("remove", []) for f in frames)


def test_several_partitions(
    tmp_path: Path, kafka_bootstrap: str, unique_topic: Callable[..., str], produce: Callable[..., list[int]]
) -> None:
    """The feed spread over partitions 0 and 1 by aircraft: the same answers as one
    partition, and history keeps a position per partition (a restart writes nothing twice)."""
    import sqlite3

    topic = unique_topic("uf")
    records = feed_records()
    second = {"PUB1", "BLK1", "V1", "GRD1"}
    for partition in (0, 1):
        part = [r for r in records if ((r.get("id") or r["surface_id"]) in second) == bool(partition)]
        produce(topic, [(line(r), r["pitr"]) for r in part], partition=partition)
    base = settings(f"kafka:{topic}:0,1", tmp_path, bootstrap=kafka_bootstrap)
    for _run in range(2):
        with run_server(replace(base)) as server:
            server.wait_ready()
            for token, rank in AUDIENCES:
                body = server.get("/api/aircraft", token).json()
                assert {a["id"] for a in body["aircraft"]} == VISIBLE[rank] and body["pitr"] == END
            history = server.service.history
            assert history is not None
            assert _wait_drained(history)
            assert set(history.positions) == {f"kafka:{topic}:0", f"kafka:{topic}:1"}
    with sqlite3.connect(tmp_path / "state" / "history.sqlite3") as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT pitr || id) FROM positions").fetchone()
    positions = [r for r in records if r["type"] in ("position", "ground_position", "vehicle_position")]
    assert rows == (len(positions), len(positions))


def _wait_drained(history: Any) -> bool:
    from unifeed.serve._history import wait_drained

    return wait_drained(history, 30)
