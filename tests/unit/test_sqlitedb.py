"""mailward.sqlitedb: the one fork-aware SQLite connection holder of the three stores."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from mailward.sqlitedb import SqliteDatabase

SCHEMA = ["CREATE TABLE IF NOT EXISTS items (name TEXT PRIMARY KEY, n INTEGER NOT NULL)"]


class StoreError(Exception):
    pass


def database(path: Path, version: int = 1) -> SqliteDatabase:
    return SqliteDatabase(path, schema=SCHEMA, schema_version=version, error=StoreError,
                          busy_timeout=1.0)


def test_file_is_created_0600_in_wal_mode_with_the_schema(tmp_path: Path) -> None:
    db = database(tmp_path / "sub" / "x.db")
    with db.transaction() as conn:
        conn.execute("INSERT INTO items VALUES ('a', 1)")
    assert stat.S_IMODE((tmp_path / "sub" / "x.db").stat().st_mode) == 0o600
    with db.transaction(write=False) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("SELECT n FROM items").fetchall() == [(1,)]


def test_a_failed_transaction_rolls_back_and_raises_the_stores_error(tmp_path: Path) -> None:
    db = database(tmp_path / "x.db")
    with pytest.raises(StoreError, match=r"x\.db: .*no such table"), db.transaction() as conn:
        conn.execute("INSERT INTO items VALUES ('a', 1)")
        conn.execute("SELECT * FROM missing")
    with db.transaction(write=False) as conn:  # a fresh connection, nothing committed
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_an_exception_of_the_caller_rolls_back_and_propagates(tmp_path: Path) -> None:
    db = database(tmp_path / "x.db")
    with pytest.raises(KeyError), db.transaction() as conn:
        conn.execute("INSERT INTO items VALUES ('a', 1)")
        raise KeyError("caller")
    with db.transaction(write=False) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_a_newer_schema_is_refused_and_a_closed_store_says_so(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with database(path, version=3).transaction():
        pass
    newer = pytest.raises(StoreError, match="schema version 3 is newer than this Mailward")
    with newer, database(path, version=1).transaction():
        pass
    db = database(tmp_path / "y.db")
    db.close()
    with pytest.raises(StoreError, match="store is closed"), db.transaction():
        pass


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(
    tmp_path: Path,
) -> None:
    db = database(tmp_path / "x.db")
    with db.transaction() as conn:
        conn.execute("INSERT INTO items VALUES ('parent', 1)")
    parent_conn = db._conn
    pid = os.fork()
    if pid == 0:  # the child: write through the same object, then exit without cleanup
        status = 1
        try:
            with db.transaction() as conn:
                conn.execute("UPDATE items SET n = n + 1")
            status = 0 if db._conn is not parent_conn and parent_conn in db._inherited else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection still works and sees the child's committed write.
    assert db._conn is parent_conn
    with db.transaction(write=False) as conn:
        assert conn.execute("SELECT n FROM items").fetchone() == (2,)
    assert isinstance(parent_conn, sqlite3.Connection)
