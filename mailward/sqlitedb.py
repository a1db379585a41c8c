"""One SQLite database file shared by the threads of a process and by forked processes.

The greylisting/rate-limit state, the Bayes tokens and the DMARC report rows all live
in SQLite files that the milter's (or policy service's) worker processes open after the
supervisor forks them, and that a command (`mailward bayes`, `mailward dmarc-report`)
opens beside them.  Getting that right once, here, instead of in each store:

- **fork**: a connection inherited from the parent is never used in the child, nor
  closed there (closing it could checkpoint or remove the WAL under the parent's feet);
  it is kept referenced so the garbage collector does not close it either.  The lock is
  replaced too: another thread of the parent may have held it at the fork.
- **threads**: one connection per process behind a lock; SQLite serializes writers
  anyway, and the lock keeps one thread's transaction from interleaving with another's.
- **files**: the directory is created if missing (0750), the file with `file_mode`
  (0600) before SQLite creates it (it would use 0644 & umask); SQLite gives -wal and
  -shm the mode of the database.  WAL mode, switched with retries because the switch
  does not wait on the busy handler when several processes open a new file at once.
- **schema**: created or upgraded under `PRAGMA user_version`; a file from a newer
  Mailward is refused rather than guessed at.
- **failures**: any sqlite3/OS error drops the connection (the next transaction opens a
  fresh one, so a replaced or repaired file is picked up) and is raised as the store's
  own exception, made by `error(message)`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ErrorFactory = Callable[[str], Exception]


class SqliteDatabase:
    """A lazily opened, fork-aware, lock-guarded connection to one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        schema: Sequence[str],
        schema_version: int,
        error: ErrorFactory,
        busy_timeout: float = 5.0,
        file_mode: int = 0o600,
    ) -> None:
        self.path = Path(path)
        self.schema = tuple(schema)
        self.schema_version = schema_version
        self.busy_timeout = busy_timeout
        self.file_mode = file_mode
        self._error = error
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        self._inherited: list[sqlite3.Connection] = []  # opened by a parent process
        self._closed = False

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN (IMMEDIATE when `write`) ... COMMIT; any failure rolls back and drops the
        connection; sqlite3/OS errors are raised as the store's error."""
        with self._guard():
            if self._closed:
                raise self._error(f"{self.path}: store is closed")
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._discard()
                raise self._error(f"{self.path}: {exc}") from exc
            except BaseException:
                self._discard()
                raise

    def close(self) -> None:
        """Close this process's connection; later transactions raise the store's error."""
        with self._guard():
            self._closed = True
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    # ------------------------------------------------------------------ internals

    def _guard(self) -> threading.Lock:
        """The lock of this process: after a fork, a fresh lock and no connection."""
        pid = os.getpid()
        if self._owner_pid != pid:
            self._owner_pid = pid
            self._lock = threading.Lock()
            if self._conn is not None:
                self._inherited.append(self._conn)
                self._conn = None
        return self._lock

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.file_mode))
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (a no-op once it is: the mode is stored in the file),
        retrying SQLITE_BUSY until `busy_timeout`."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        if str(mode).lower() != "wal":
            raise self._error(f"{self.path}: cannot use WAL (got {mode})")

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == self.schema_version:
            return
        if version > self.schema_version:
            raise self._error(
                f"{self.path}: schema version {version} is newer than this Mailward "
                f"({self.schema_version})"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version < self.schema_version:
                for statement in self.schema:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {self.schema_version}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
