"""History sinks: a PostgreSQL outage mid-run (live state goes on, history catches up with
nothing lost or doubled), and a restart on SQLite that writes nothing twice."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.servetools import (
    MINUTE,
    T0,
    feed_records,
    line,
    postgres,
    run_server,
    settings,
    write_feed,
)
from unifeed.serve._history import wait_drained

pytestmark = pytest.mark.slow
POSITION_TYPES = ("position", "ground_position", "vehicle_position")


def _expected_rows(records: list[dict[str, Any]]) -> Counter[tuple[int, str]]:
    return Counter(
        (r["pitr"], r.get("id") if r["type"] != "vehicle_position" and "id" in r else r["surface_id"])
        for r in records
        if r["type"] in POSITION_TYPES
    )


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.kafka
def test_postgres_outage_live_goes_on_history_catches_up(
    tmp_path: Path, kafka_bootstrap: str, unique_topic: Callable[..., str], produce: Callable[..., list[int]]
) -> None:
    import psycopg

    records = feed_records()
    parts = [
        [r for r in records if r["pitr"] < T0 + MINUTE],
        [r for r in records if T0 + MINUTE <= r["pitr"] < T0 + 2 * MINUTE],
        [r for r in records if r["pitr"] >= T0 + 2 * MINUTE],
    ]
    topic = unique_topic("uf")
    with postgres() as pg:
        produce(topic, [(line(r), r["pitr"]) for r in parts[0]])
        base = settings(f"kafka:{topic}", tmp_path, history_url=pg.url, bootstrap=kafka_bootstrap)
        with run_server(base) as server:
            server.wait_ready()
            history = server.service.history
            assert history is not None
            assert wait_drained(history, 30) and history.up
            written_before = history.written
            pg.stop()
            # The database is down: live state keeps following the feed.
            produce(topic, [(line(r), r["pitr"]) for r in parts[1]])
            server.wait_pitr(parts[1][-1]["pitr"], timeout_s=30)
            live = server.get("/api/aircraft").json()
            assert live["pitr"] == parts[1][-1]["pitr"] and live["aircraft"]
            _wait(lambda: not history.up, 30, "history to notice the outage")
            assert history.backlog > 0 and history.written == written_before
            pg.start()
            produce(topic, [(line(r), r["pitr"]) for r in parts[2]])
            server.wait_pitr(parts[2][-1]["pitr"], timeout_s=30)
            _wait(lambda: history.drained() and history.up, 60, "history to catch up")
            track = server.get("/api/aircraft/PUB1/track", None, **{"from": T0, "to": T0 + 3 * MINUTE})
            assert track.status_code == 200
            assert len(track.json()["positions"]) == 36
        with psycopg.connect(pg.url) as conn:
            rows = conn.execute("SELECT pitr, id FROM unifeed_positions").fetchall()
            layout = conn.execute(
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'unifeed_positions' AND indexdef LIKE '%brin%'"
            ).fetchone()
    assert Counter((int(p), str(i)) for p, i in rows) == _expected_rows(records)
    assert layout is not None and layout[0] == 1  # no TimescaleDB here: BRIN on pitr


def test_sqlite_restart_writes_nothing_twice(tmp_path: Path) -> None:
    records = feed_records(minutes=2)
    feed = write_feed(tmp_path / "uf.jsonl", records)
    base = settings(str(feed), tmp_path)
    for _run in range(2):
        with run_server(base) as server:
            server.wait_ready()
            assert server.service.history is not None
            assert wait_drained(server.service.history, 30)
    with sqlite3.connect(tmp_path / "state" / "history.sqlite3") as conn:
        rows = conn.execute("SELECT pitr, id FROM positions").fetchall()
    assert Counter((int(p), str(i)) for p, i in rows) == _expected_rows(records)


@pytest.mark.kafka
def test_restart_reads_from_historys_position_when_it_is_before_the_window(
    tmp_path: Path, kafka_bootstrap: str, unique_topic: Callable[..., str], produce: Callable[..., list[int]]
) -> None:
    """The database is down when serve stops, so the rows it held in memory are gone; the
    next start (a 30 s window, no lookback) reads Kafka from history's own position, not
    from the window, and history ends with every position exactly once."""
    import psycopg

    records = feed_records()
    first = [r for r in records if r["pitr"] < T0 + MINUTE]
    rest = [r for r in records if r["pitr"] >= T0 + MINUTE]
    topic = unique_topic("uf")
    with postgres() as pg:
        produce(topic, [(line(r), r["pitr"]) for r in first])
        base = settings(f"kafka:{topic}", tmp_path, history_url=pg.url, bootstrap=kafka_bootstrap)
        with run_server(base) as server:
            server.wait_ready()
            history = server.service.history
            assert history is not None and wait_drained(history, 30)
            pg.stop()
            produce(topic, [(line(r), r["pitr"]) for r in rest])
            server.wait_pitr(rest[-1]["pitr"], timeout_s=30)
            _wait(lambda: not history.up, 30, "history to notice the outage")
            assert history.backlog > 0
        pg.start()
        # The window alone would start 30 s before the end, after the rows history lost.
        with run_server(replace(base, window_ms=30_000, lookback_ms=0)) as server:
            server.wait_ready()
            source = server.service.source
            assert source is not None
            history = server.service.history
            assert history is not None
            _wait(lambda: history.drained() and history.up, 60, "history to catch up")
        with psycopg.connect(pg.url) as conn:
            rows = conn.execute("SELECT pitr, id FROM unifeed_positions").fetchall()
    assert Counter((int(p), str(i)) for p, i in rows) == _expected_rows(records)
