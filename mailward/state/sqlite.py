"""SQLite backend (the default): one file, shared by every Mailward process on the host.

- WAL journal (readers never block the writer) with `synchronous=NORMAL`: a power cut
  may lose the last few greylist or rate updates, never corrupt the file.
- Every operation is one `BEGIN IMMEDIATE` transaction: the write lock is taken before
  the read, so read-decide-write is atomic across processes.  A lock held elsewhere
  longer than `busy_timeout` seconds becomes StateUnavailable.
- Threads share one connection per process behind a lock, opened at first use and
  again after a fork (mailward.sqlitedb, shared with the Bayes and report stores).
- Rows carry `expires_at`; expired rows are ignored at once and deleted by `purge`,
  which every process also runs inside an operation at most every `purge_interval`
  seconds (of the `now` it is given).
- The directory is created if missing (0750), the file with `file_mode` (0600).
  The constructor does no I/O; `ping()` checks the file at startup.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from mailward.sqlitedb import SqliteDatabase
from mailward.state.base import (
    GreylistOutcome,
    GreylistParams,
    RateOutcome,
    RateWindow,
    StateStore,
    StateUnavailable,
    check_key,
    check_rate_arguments,
)
from mailward.state.logic import (
    ClientRecord,
    TripletRecord,
    greylist_step,
    rate_outcome,
    window_end,
    window_index,
)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS greylist_triplets (
    triplet    TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    passed     INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS greylist_triplets_expiry ON greylist_triplets (expires_at);
CREATE TABLE IF NOT EXISTS greylist_clients (
    client     TEXT PRIMARY KEY,
    passes     INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS greylist_clients_expiry ON greylist_clients (expires_at);
CREATE TABLE IF NOT EXISTS rate_counters (
    key        TEXT NOT NULL,
    seconds    INTEGER NOT NULL,
    window     INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, seconds, window)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_counters_expiry ON rate_counters (expires_at);
"""

#: The tables that `purge` cleans, all with an `expires_at` column.
_TABLES = ("greylist_triplets", "greylist_clients", "rate_counters")


class SqliteStore(StateStore):
    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = 5.0,
        purge_interval: float = 60.0,
        file_mode: int = 0o600,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.purge_interval = purge_interval
        self.file_mode = file_mode
        self._db = SqliteDatabase(
            self.path,
            schema=[statement for statement in _SCHEMA.split(";") if statement.strip()],
            schema_version=SCHEMA_VERSION,
            error=lambda message: StateUnavailable(self.backend, message),
            busy_timeout=busy_timeout,
            file_mode=file_mode,
        )
        self._next_purge = float("-inf")

    # ------------------------------------------------------------------ operations

    def greylist(
        self, triplet: str, client: str, now: float, params: GreylistParams
    ) -> GreylistOutcome:
        check_key("triplet", triplet)
        check_key("client", client)
        with self._transaction(now) as db:
            row = db.execute(
                "SELECT first_seen, passed, expires_at FROM greylist_triplets WHERE triplet = ?",
                (triplet,),
            ).fetchone()
            stored = TripletRecord(row[0], bool(row[1]), row[2]) if row else None
            known: ClientRecord | None = None
            if params.auto_allow_after > 0:
                crow = db.execute(
                    "SELECT passes, expires_at FROM greylist_clients WHERE client = ?",
                    (client,),
                ).fetchone()
                known = ClientRecord(crow[0], crow[1]) if crow else None
            step = greylist_step(stored, known, now, params)
            if step.triplet is not None:
                db.execute(
                    "INSERT OR REPLACE INTO greylist_triplets VALUES (?, ?, ?, ?)",
                    (triplet, step.triplet.first_seen, int(step.triplet.passed),
                     step.triplet.expires_at),
                )
            if step.client is not None:
                db.execute(
                    "INSERT OR REPLACE INTO greylist_clients VALUES (?, ?, ?)",
                    (client, step.client.passes, step.client.expires_at),
                )
            return step.outcome

    def rate_limit(
        self, key: str, windows: Sequence[RateWindow], amount: int, now: float
    ) -> RateOutcome:
        check_key("rate key", key)
        check_rate_arguments(windows, amount)
        slots = [(w.seconds, window_index(now, w.seconds)) for w in windows]
        with self._transaction(now) as db:
            counts = []
            for seconds, index in slots:
                row = db.execute(
                    "SELECT count FROM rate_counters WHERE key = ? AND seconds = ? AND window = ?",
                    (key, seconds, index),
                ).fetchone()
                counts.append(int(row[0]) if row else 0)
            outcome = rate_outcome(counts, windows, amount, now)
            if outcome.allowed:
                db.executemany(
                    "INSERT OR REPLACE INTO rate_counters VALUES (?, ?, ?, ?, ?)",
                    [
                        (key, seconds, index, count, float(window_end(now, seconds)))
                        for (seconds, index), count in zip(slots, outcome.counts, strict=True)
                    ],
                )
            return outcome

    def purge(self, now: float) -> int:
        with self._transaction(None) as db:
            return self._purge(db, now)

    def ping(self) -> None:
        with self._transaction(None) as db:
            db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _transaction(self, now: float | None) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (mailward.sqlitedb), with the purge when due."""
        purge_at = now if now is not None and now >= self._next_purge else None
        with self._db.transaction() as conn:
            yield conn
            if purge_at is not None:
                self._purge(conn, purge_at)
        if purge_at is not None:
            self._next_purge = purge_at + self.purge_interval

    @staticmethod
    def _purge(db: sqlite3.Connection, now: float) -> int:
        removed = 0
        for table in _TABLES:
            removed += db.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,)).rowcount
        return removed
