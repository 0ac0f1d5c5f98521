"""The history sink alone: a commit whose answer is lost is not written again, and
failures never block `offer`."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from unifeed.serve._history import HistorySink, Row, SqliteStore, wait_drained
from unifeed.serve._state import Aircraft


class LosesAnswers(SqliteStore):
    """Commits, then raises as if the connection broke before the answer came (twice)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lost = 0

    def write(self, rows: Sequence[Row], source: str, position: int) -> None:
        super().write(rows, source, position)
        if self.lost < 2:
            self.lost += 1
            raise ConnectionError("connection reset after commit")


def _states(start: int, count: int) -> list[tuple[int, Aircraft]]:
    return [(n, Aircraft(id=f"F{n % 7}", kind="flight", lat=1.0, lon=2.0, pitr=1000 + n))
            for n in range(start, start + count)]


def test_a_lost_commit_answer_writes_nothing_twice(tmp_path: Path) -> None:
    store = LosesAnswers(tmp_path / "h.sqlite3")
    sink = HistorySink(store, "feed", retry_max_s=0.05)
    sink.start()
    began = time.monotonic()
    sink.offer(_states(1, 12_000))
    sink.offer(_states(12_001, 50))
    assert time.monotonic() - began < 5  # offer only queues
    assert wait_drained(sink, 30)
    sink.stop()
    assert store.lost == 2 and sink.failures >= 2
    with sqlite3.connect(tmp_path / "h.sqlite3") as conn:
        pitrs = [p for (p,) in conn.execute("SELECT pitr FROM positions ORDER BY pitr")]
        position = conn.execute("SELECT position FROM progress").fetchone()[0]
    assert pitrs == [1000 + n for n in (*range(1, 12_001), *range(12_001, 12_051))]
    assert position == 12_050
