"""History: every position state, for tracks and playback, in SQLite or PostgreSQL.

The sink is independent of the live state: `HistorySink.offer` only appends to an
in-memory backlog and returns; one thread writes the backlog in batches, each batch in
one transaction together with the sink's **position in the feed** (the last input
position written: a Kafka offset or a line number). When the database is down or slow,
the backlog grows and live state goes on; when it returns, the thread reconnects, reads
the stored position back (a batch whose commit succeeded but whose answer was lost is
not written again) and catches up. Nothing is lost and nothing is written twice, up to
`MAX_BACKLOG` rows held while the database is away (beyond that new rows are dropped,
counted in ``dropped`` and logged as an error).

Stores:

* SQLite (``sqlite:///PATH`` or a path; the default is ``STATE_DIR/history.sqlite3``):
  WAL mode, indexes on (pitr) and (id, pitr).
* PostgreSQL (``postgresql://…``, psycopg 3): rows written with ``COPY``. A TimescaleDB
  hypertable on ``pitr`` (1-day chunks) when the extension is available, else a plain
  table with a BRIN index on ``pitr`` (rows arrive in pitr order, which is what BRIN
  needs) and a b-tree on (id, pitr).

Rows keep the access level of the state they hold; readers filter by audience, and a
track or a playback never holds a row its caller may not see.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from unifeed.core.access import access_rank
from unifeed.core.geo import Bbox, inside

from ._state import Aircraft

log = logging.getLogger("unifeed.serve.history")

#: Rows kept in memory while the database is away.
MAX_BACKLOG: Final = 2_000_000
#: Rows per transaction.
BATCH_ROWS: Final = 5_000
#: Rows returned by one read at most (a playback streams several reads).
READ_CHUNK: Final = 10_000

Row = tuple[int, str, int, float, float, bytes]  # pitr, id, access rank, lat, lon, state JSON


class HistoryStore(Protocol):
    """What the sink and the readers need from a database."""

    description: str

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def positions(self) -> dict[str, int]: ...

    def write(self, rows: Sequence[Row], progress: Mapping[str, int]) -> None: ...

    def track(self, key: str, start: int, end: int, audience: int) -> list[bytes]: ...

    def playback_chunk(
        self, start: int, end: int, audience: int, after: tuple[int, int]
    ) -> list[tuple[int, int, float, float, bytes]]: ...


def row_of(aircraft: Aircraft) -> Row:
    return (
        aircraft.pitr,
        aircraft.id,
        access_rank(aircraft.access),
        aircraft.lat,
        aircraft.lon,
        msgspec.json.encode(aircraft),
    )


# --- SQLite ----------------------------------------------------------------


class SqliteStore:
    """History in one SQLite file (WAL): one writer thread, readers on their own connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"sqlite:///{path}"
        self._conn: sqlite3.Connection | None = None

    def connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS positions (
                seq INTEGER PRIMARY KEY, pitr INTEGER NOT NULL, id TEXT NOT NULL,
                access INTEGER NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL,
                state BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS positions_pitr ON positions (pitr);
            CREATE INDEX IF NOT EXISTS positions_id_pitr ON positions (id, pitr);
            CREATE TABLE IF NOT EXISTS progress (source TEXT PRIMARY KEY, position INTEGER NOT NULL);
            """
        )
        conn.commit()
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _reader(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0)

    def positions(self) -> dict[str, int]:
        assert self._conn is not None
        return {str(k): int(v) for k, v in self._conn.execute("SELECT source, position FROM progress")}

    def write(self, rows: Sequence[Row], progress: Mapping[str, int]) -> None:
        conn = self._conn
        assert conn is not None
        with conn:  # one transaction: rows and position together
            conn.executemany(
                "INSERT INTO positions (pitr, id, access, lat, lon, state) VALUES (?,?,?,?,?,?)",
                rows,
            )
            conn.executemany(
                "INSERT INTO progress (source, position) VALUES (?, ?) "
                "ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                list(progress.items()),
            )

    def track(self, key: str, start: int, end: int, audience: int) -> list[bytes]:
        with contextlib.closing(self._reader()) as conn:
            return [
                bytes(r[0])
                for r in conn.execute(
                    "SELECT state FROM positions WHERE id = ? AND pitr >= ? AND pitr < ? "
                    "AND access <= ? ORDER BY pitr, seq",
                    (key, start, end, audience),
                )
            ]

    def playback_chunk(
        self, start: int, end: int, audience: int, after: tuple[int, int]
    ) -> list[tuple[int, int, float, float, bytes]]:
        with contextlib.closing(self._reader()) as conn:
            return [
                (int(r[0]), int(r[1]), float(r[2]), float(r[3]), bytes(r[4]))
                for r in conn.execute(
                    "SELECT pitr, seq, lat, lon, state FROM positions WHERE pitr >= ? AND pitr < ? "
                    "AND access <= ? AND (pitr > ? OR (pitr = ? AND seq > ?)) "
                    "ORDER BY pitr, seq LIMIT ?",
                    (start, end, audience, after[0], after[0], after[1], READ_CHUNK),
                )
            ]


# --- PostgreSQL ------------------------------------------------------------


class PostgresStore:
    """History in PostgreSQL (psycopg 3): COPY in, a hypertable or a BRIN-indexed table."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.description = _mask_url(url)
        self._conn: Any = None
        self.layout = "unknown"

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, connect_timeout=5)

    def connect(self) -> None:
        conn = self._connect()
        try:
            with conn.transaction():
                timescale = conn.execute(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
                ).fetchone()
                if timescale is not None:
                    try:
                        with conn.transaction():  # a savepoint: a failure leaves the rest
                            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                    except Exception as exc:
                        # Installed but not loadable (not in shared_preload_libraries), or
                        # no right to create it: the plain layout still works.
                        log.warning("TimescaleDB is available but cannot be used (%s); "
                                    "history uses a BRIN-indexed table", _short(exc))
                        timescale = None
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS unifeed_positions ("
                    " seq bigint GENERATED ALWAYS AS IDENTITY, pitr bigint NOT NULL,"
                    " id text NOT NULL, access smallint NOT NULL,"
                    " lat double precision NOT NULL, lon double precision NOT NULL,"
                    " state text NOT NULL)"
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS unifeed_history_progress ("
                    " source text PRIMARY KEY, position bigint NOT NULL)"
                )
                if timescale is not None:
                    conn.execute(
                        "SELECT create_hypertable('unifeed_positions', 'pitr',"
                        " chunk_time_interval => 86400000, if_not_exists => TRUE, migrate_data => TRUE)"
                    )
                    self.layout = "timescaledb hypertable"
                else:
                    conn.execute(
                        "CREATE INDEX IF NOT EXISTS unifeed_positions_pitr_brin"
                        " ON unifeed_positions USING brin (pitr)"
                    )
                    self.layout = "table with a BRIN index on pitr"
                conn.execute(
                    "CREATE INDEX IF NOT EXISTS unifeed_positions_id_pitr"
                    " ON unifeed_positions (id, pitr)"
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def positions(self) -> dict[str, int]:
        found = self._conn.execute("SELECT source, position FROM unifeed_history_progress").fetchall()
        self._conn.commit()
        return {str(k): int(v) for k, v in found}

    def write(self, rows: Sequence[Row], progress: Mapping[str, int]) -> None:
        conn = self._conn
        with conn.transaction():
            with conn.cursor() as cursor, cursor.copy(
                "COPY unifeed_positions (pitr, id, access, lat, lon, state) FROM STDIN"
            ) as copy:
                for pitr, key, access, lat, lon, state in rows:
                    copy.write_row((pitr, key, access, lat, lon, state.decode()))
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO unifeed_history_progress (source, position) VALUES (%s, %s)"
                    " ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                    list(progress.items()),
                )

    def track(self, key: str, start: int, end: int, audience: int) -> list[bytes]:
        with self._connect() as conn:
            return [
                r[0].encode()
                for r in conn.execute(
                    "SELECT state FROM unifeed_positions WHERE id = %s AND pitr >= %s"
                    " AND pitr < %s AND access <= %s ORDER BY pitr, seq",
                    (key, start, end, audience),
                )
            ]

    def playback_chunk(
        self, start: int, end: int, audience: int, after: tuple[int, int]
    ) -> list[tuple[int, int, float, float, bytes]]:
        with self._connect() as conn:
            return [
                (int(r[0]), int(r[1]), float(r[2]), float(r[3]), r[4].encode())
                for r in conn.execute(
                    "SELECT pitr, seq, lat, lon, state FROM unifeed_positions"
                    " WHERE pitr >= %s AND pitr < %s AND access <= %s"
                    " AND (pitr, seq) > (%s, %s) ORDER BY pitr, seq LIMIT %s",
                    (start, end, audience, after[0], after[1], READ_CHUNK),
                )
            ]


def _mask_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def open_store(url: str, state_dir: Path) -> HistoryStore | None:
    """The store a ``--history`` value names; None for ``none``."""
    if url == "none":
        return None
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url in ("", "sqlite"):
        return SqliteStore(state_dir / "history.sqlite3")
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url[len("sqlite:///") :]))
    if "://" in url:
        from unifeed.core.errors import ConfigError

        raise ConfigError(
            f"--history must be none, sqlite:///PATH, a path or postgresql://..., got {_mask_url(url)!r}"
        )
    return SqliteStore(Path(url))


# --- the sink --------------------------------------------------------------


class HistorySink:
    """Writes offered rows in the background; see the module docstring.

    Positions are kept per source (a file, or one Kafka partition): rows of several
    partitions interleave, and each partition's offsets only grow.
    """

    def __init__(self, store: HistoryStore, *, retry_max_s: float = 5.0) -> None:
        self.store = store
        self.retry_max_s = retry_max_s
        self._backlog: deque[tuple[str, int, Row]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Last input position stored, per source.
        self.positions: dict[str, int] = {}
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.up = False

    def start(self) -> None:
        """Connect (waiting at most a few seconds) and start the writer thread. The stored
        positions are known after this when the database answered."""
        try:
            self.store.connect()
            self.positions = self.store.positions()
            self.up = True
        except Exception as exc:
            log.warning("history %s is not reachable (%s); live state goes on, history "
                        "will catch up", self.store.description, _short(exc))
            self.store.close()
        self._thread = threading.Thread(target=self._run, name="unifeed-serve-history", daemon=True)
        self._thread.start()

    def offer(self, rows: Sequence[tuple[str, int, Aircraft]]) -> None:
        """Queue (source, input position, state) in feed order; never blocks on the database."""
        if not rows:
            return
        with self._lock:
            floors = self.positions
            backlog = self._backlog
            refused = 0
            for source, position, aircraft in rows:
                if position <= floors.get(source, -1):
                    continue  # written before a restart
                if len(backlog) >= MAX_BACKLOG:
                    refused += 1  # the head may be in flight: new rows are the ones to go
                    continue
                backlog.append((source, position, row_of(aircraft)))
            if refused:
                self.dropped += refused
                log.error("history backlog full (%d rows): %d new rows dropped",
                          MAX_BACKLOG, refused)
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def drained(self) -> bool:
        return not self._backlog

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what the database takes within ``timeout_s``, then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.store.close()

    def _run(self) -> None:
        delay = 0.2
        while True:
            stopping = self._stop.is_set()
            if not self._backlog:
                if stopping:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                if not self.up:
                    self.store.close()
                    self.store.connect()
                    self._forget_stored(self.store.positions())
                    if self.failures:
                        log.warning("history %s is back; catching up %d rows",
                                    self.store.description, len(self._backlog))
                    self.up = True
                self._write_batch()
                delay = 0.2
            except Exception as exc:
                if self.up:
                    log.warning("history %s failed (%s); live state goes on, history will "
                                "catch up", self.store.description, _short(exc))
                self.up = False
                self.failures += 1
                if stopping:
                    log.error("history %s: stopped with %d rows not written",
                              self.store.description, len(self._backlog))
                    return
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _forget_stored(self, stored: Mapping[str, int]) -> None:
        """Drop backlog rows the database already holds (a commit whose answer was lost)."""
        with self._lock:
            for source, position in stored.items():
                if position > self.positions.get(source, -1):
                    self.positions[source] = position
            floors = self.positions
            kept = [entry for entry in self._backlog if entry[1] > floors.get(entry[0], -1)]
            self._backlog = deque(kept)

    def _write_batch(self) -> None:
        with self._lock:
            batch = [self._backlog[i] for i in range(min(BATCH_ROWS, len(self._backlog)))]
        if not batch:
            return
        progress: dict[str, int] = {}
        for source, position, _row in batch:
            progress[source] = position
        self.store.write([row for _, _, row in batch], progress)
        with self._lock:
            for _ in range(len(batch)):
                self._backlog.popleft()
            self.positions.update(progress)
            self.written += len(batch)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# --- reading ---------------------------------------------------------------


def playback_lines(
    store: HistoryStore, start: int, end: int, audience: int, bbox: Bbox | None
) -> Iterator[bytes]:
    """States with ``start <= pitr < end`` in pitr order, visible to ``audience`` and inside
    ``bbox``, read in bounded chunks."""
    after = (start - 1, 2**62)
    for _ in range(10**9):
        chunk = store.playback_chunk(start, end, audience, after)
        for pitr, seq, lat, lon, state in chunk:
            after = (pitr, seq)
            if inside(bbox, lat, lon):
                yield state
        if len(chunk) < READ_CHUNK:
            return


def wait_drained(sink: HistorySink, timeout_s: float) -> bool:
    """Whether the sink's backlog emptied within ``timeout_s`` (tests, shutdown)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sink.drained():
            return True
        time.sleep(0.05)
    return sink.drained()
