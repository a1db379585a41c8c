"""A PolicyCache in SQLite: learnt MTA-STS policies survive a restart.

RFC 8461's protection rests on the cache: a sender that forgets an `enforce` policy on
restart can be downgraded by whoever blocks the next fetch.  One small table, one row per
domain; each call uses its own short transaction, so several processes (and the
service's threads) can share the file.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from mailward.tlspolicy.mtasts import CachedPolicy, Mode, Policy

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mta_sts_policies (
    domain TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    mode TEXT NOT NULL,
    mx TEXT NOT NULL,
    max_age INTEGER NOT NULL
)
"""


class SqlitePolicyCache:
    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, timeout=busy_timeout,
                                           check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(_SCHEMA)
        path.chmod(0o600)

    def get(self, domain: str) -> CachedPolicy | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT policy_id, fetched_at, mode, mx, max_age FROM mta_sts_policies "
                "WHERE domain = ?", (domain,)).fetchone()
        if row is None:
            return None
        policy_id, fetched_at, mode, mx, max_age = row
        try:
            policy = Policy(Mode(mode), tuple(mx.split()), int(max_age))
        except ValueError:
            return None  # a row this version cannot read is no policy, not a crash
        return CachedPolicy(policy, str(policy_id), float(fetched_at))

    def put(self, domain: str, entry: CachedPolicy) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO mta_sts_policies VALUES (?, ?, ?, ?, ?, ?)",
                (domain, entry.policy_id, entry.fetched_at, entry.policy.mode.value,
                 " ".join(entry.policy.mx), entry.policy.max_age))

    def delete(self, domain: str) -> None:
        with self._lock:
            self._connection.execute("DELETE FROM mta_sts_policies WHERE domain = ?", (domain,))

    def close(self) -> None:
        with self._lock:
            self._connection.close()
