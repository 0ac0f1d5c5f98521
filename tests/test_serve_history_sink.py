"""The history sink alone: a commit whose answer is lost is not written again, and
failures never block `offer`."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from unifeed.serve._history import HistorySink, Row, SqliteStore, wait_drained
from unifeed.serve._state import Aircraft


class LosesAnswers(SqliteStore):
    """Commits, then raises as if the connection broke before the answer came (twice)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lost = 0

    def write(self, rows: Sequence[Row], progress: Mapping[str, int]) -> None:
        super().write(rows, progress)
        if self.lost < 2:
            self.lost += 1
            raise ConnectionError("connection reset after commit")


def _states(start: int, count: int) -> list[tuple[str, int, Aircraft]]:
    """Two partitions interleaved, each with its own growing offsets."""
    return [(f"kafka:uf:{n % 2}", n // 2, Aircraft(id=f"F{n % 7}", kind="flight", lat=1.0,
                                                   lon=2.0, pitr=1000 + n))
            for n in range(start, start + count)]


def test_a_lost_commit_answer_writes_nothing_twice(tmp_path: Path) -> None:
    store = LosesAnswers(tmp_path / "h.sqlite3")
    sink = HistorySink(store, retry_max_s=0.05)
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
        positions = dict(conn.execute("SELECT source, position FROM progress"))
    assert pitrs == [1000 + n for n in (*range(1, 12_001), *range(12_001, 12_051))]
    assert positions == {"kafka:uf:0": 12_050 // 2, "kafka:uf:1": 12_049 // 2}
    # A restart offered the same rows again writes none of them.
    again = HistorySink(SqliteStore(tmp_path / "h.sqlite3"))
    again.start()
    again.offer(_states(1, 12_050))
    assert again.backlog == 0
    again.offer(_states(12_051, 3))
    assert wait_drained(again, 30)
    again.stop()
    with sqlite3.connect(tmp_path / "h.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM positions").fetchone()[0] == 12_053
