"""The state layer: the shared contract against SQLite (and the memory store), plus what
only SQLite has: the file, WAL, purging, locking, errors, and several processes at once.
The Redis backend runs the same contract in tests/integration/test_state_redis.py."""

from __future__ import annotations

import functools
import pickle
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.config import StateBackend
from mailward.state import (
    GreylistParams,
    MemoryStore,
    RateWindow,
    SqliteStore,
    StateStore,
    StateUnavailable,
    open_store,
)
from mailward.state.redis import RedisStore
from mailward.state.sqlite import SCHEMA_VERSION
from tests.unit.state_contract import (
    AUTO,
    MINUTE,
    PARAMS,
    RATE_T0,
    T0,
    Clock,
    StoreContract,
    hammer_greylist,
    hammer_rate,
)


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[StateStore]:
        with SqliteStore(tmp_path / "state.db") as sqlite_store:
            yield sqlite_store


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[StateStore]:
        with MemoryStore() as memory_store:
            yield memory_store


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


def triplets(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT triplet FROM greylist_triplets")}


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": 0, "retry_window": 10, "expiry": 10}, "delay"),
        ({"delay": 300, "retry_window": 300, "expiry": 10}, "retry_window"),
        ({"delay": 300, "retry_window": 600, "expiry": 0}, "expiry"),
        ({"delay": 300, "retry_window": 600, "expiry": 10, "auto_allow_after": -1}, "auto"),
    ],
)
def test_greylist_params_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GreylistParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "limit"), [(0, 1), (60.5, 1), (True, 1), (60, -1), (60, 1.5)]
)
def test_rate_windows_are_validated(seconds: object, limit: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        RateWindow(seconds, limit)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- factory


def test_open_store_maps_the_config_values(tmp_path: Path) -> None:
    nowhere = "redis://127.0.0.1:1/0"  # nothing listens: constructing must not connect
    with open_store(StateBackend.SQLITE, tmp_path / "s.db", nowhere) as sqlite_store:
        assert isinstance(sqlite_store, SqliteStore)
        assert sqlite_store.path == tmp_path / "s.db"
    assert not (tmp_path / "s.db").exists()  # nothing is opened before the first use
    with open_store("redis", tmp_path / "s.db", nowhere, key_prefix="mx:") as redis_store:
        assert isinstance(redis_store, RedisStore)
        assert (redis_store.prefix, redis_store.url) == ("mx:", nowhere)
    with pytest.raises(ValueError, match="unknown state backend"):
        open_store("memcached", tmp_path / "s.db", nowhere)


# --------------------------------------------------------------------------- the file


def test_database_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "mailward" / "state.db"
    with SqliteStore(path) as store:
        store.greylist("t", "c", T0, PARAMS)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o027 == 0
        wal = path.with_name("state.db-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_state_survives_reopening(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db") as store:
        store.greylist("t", "c", T0, PARAMS)
        store.rate_limit("k", [MINUTE], 2, T0 + 300)
    with SqliteStore(tmp_path / "state.db") as store:
        assert store.greylist("t", "c", T0 + 300, PARAMS).newly_passed
        assert store.rate_limit("k", [MINUTE], 1, T0 + 300).counts == (3,)


def test_purge_removes_expired_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        clock = Clock()
        store.greylist("pending", "c", clock.now, AUTO)  # alive until T0 + 4 h
        store.greylist("passed", "c", clock.now, AUTO)
        store.greylist("passed", "c", clock.advance(300), AUTO)  # + 30 days, client too
        store.rate_limit("k", [RateWindow(60, 9), RateWindow(3600, 9)], 1, clock.now)
        assert [rows(path, t) for t in ("greylist_triplets", "greylist_clients")] == [2, 1]
        assert rows(path, "rate_counters") == 2

        # The counters were made at T0 + 300: the minute window ends at T0 + 339.5, the
        # hour window at T0 + 2799.5.
        assert store.purge(T0 + 60) == 0
        assert store.purge(T0 + 340) == 1  # the minute window
        assert store.purge(T0 + 4 * 3600) == 2  # the pending triplet and the hour window
        assert rows(path, "greylist_triplets") == 1
        assert store.purge(T0 + 300 + 30 * 86400) == 2  # the passed triplet and its client
        assert [rows(path, t) for t in ("greylist_triplets", "greylist_clients")] == [0, 0]
        assert rows(path, "rate_counters") == 0
        assert store.purge(T0 + 400 * 86400) == 0


def test_expired_rows_are_purged_by_the_operations_themselves(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    hour = 3600.0
    with SqliteStore(path, purge_interval=hour) as store:
        store.greylist("a", "c", T0, PARAMS)  # purges (nothing); next purge at T0 + 1 h
        store.greylist("b", "c", T0 + 0.5 * hour, PARAMS)
        assert triplets(path) == {"a", "b"}  # pending until T0 + 4 h and + 4.5 h
        store.greylist("c", "c", T0 + 4 * hour, PARAMS)  # purges "a"; next at T0 + 5 h
        assert triplets(path) == {"b", "c"}
        store.greylist("d", "c", T0 + 4.75 * hour, PARAMS)  # "b" expired, not yet purged
        assert triplets(path) == {"b", "c", "d"}
        store.rate_limit("k", [MINUTE], 1, T0 + 5 * hour)  # any operation purges
        assert triplets(path) == {"c", "d"}


# --------------------------------------------------------------------------- errors


def test_unopenable_path_raises_state_unavailable(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    store = SqliteStore(not_a_dir / "state.db")  # no I/O yet: no error
    with pytest.raises(StateUnavailable, match="sqlite") as raised:
        store.greylist("t", "c", T0, PARAMS)
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.backend == "sqlite"
    assert str(raised.value).startswith(f"sqlite state backend unavailable: {not_a_dir}")
    assert pickle.loads(pickle.dumps(raised.value)).args == raised.value.args
    with pytest.raises(StateUnavailable):
        store.rate_limit("k", [MINUTE], 1, RATE_T0)
    with pytest.raises(StateUnavailable):
        store.purge(T0)
    with pytest.raises(StateUnavailable):
        store.ping()
    store.close()


def test_a_file_that_is_not_a_database_raises_state_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite database, just some text" * 100)
    with SqliteStore(path) as store, pytest.raises(StateUnavailable) as raised:
        store.greylist("t", "c", T0, PARAMS)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with SqliteStore(path) as store, pytest.raises(StateUnavailable, match="newer"):
        store.ping()


def test_a_lock_held_beyond_the_busy_timeout_raises_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path, busy_timeout=0.05) as store:
        store.greylist("t", "c", T0, PARAMS)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StateUnavailable, match="locked") as raised:
                store.greylist("t", "c", T0 + 300, PARAMS)
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
            other.execute("ROLLBACK")
        finally:
            other.close()
        # Nothing was written by the failed step; the same store works again.
        assert store.greylist("t", "c", T0 + 300, PARAMS).newly_passed


# --------------------------------------------------------------------------- processes


def test_two_processes_count_exactly(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.ping()  # the parent's connection is open when the children fork

    def shared() -> StateStore:
        return store  # the children use the inherited object: it must reopen after fork

    runs = hammer_rate(shared, "user:alice", RateWindow(60, 1000), processes=2, times=200)
    counts = sorted(count for run in runs for count in run.allowed_counts)
    assert counts == list(range(1, 401))  # every increment seen once: none lost
    assert [run.refused for run in runs] == [0, 0]

    runs = hammer_rate(shared, "user:bob", RateWindow(60, 300), processes=2, times=200)
    counts = sorted(count for run in runs for count in run.allowed_counts)
    assert counts == list(range(1, 301))
    assert sum(run.refused for run in runs) == 100
    store.ping()  # and the parent's connection still works
    store.close()


def test_two_processes_greylist_one_client_exactly(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    factory = functools.partial(SqliteStore, path)
    counting = GreylistParams(delay=300, retry_window=3600, expiry=86400, auto_allow_after=10**6)
    results = hammer_greylist(factory, "net", counting, processes=2, per_process=100)
    for deferred, passed in results:
        assert set(deferred) == {"defer"}
        assert all(outcome.newly_passed for outcome in passed)
    # 200 passed triplets for the client, not one lost: auto-allowed at 200, not at 201.
    with SqliteStore(path) as store:
        later = T0 + 400
        at = GreylistParams(delay=300, retry_window=3600, expiry=86400, auto_allow_after=200)
        above = GreylistParams(delay=300, retry_window=3600, expiry=86400, auto_allow_after=201)
        assert not store.greylist("probe1", "net", later, above).auto_allowed
        assert store.greylist("probe2", "net", later, at).auto_allowed


def test_threads_share_one_store(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db") as store:
        seen: list[int] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(100):
                outcome = store.rate_limit("k", [RateWindow(60, 10_000)], 1, RATE_T0)
                with lock:
                    seen.append(outcome.counts[0])

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(seen) == list(range(1, 401))
