"""The Bayes database in SQLite (the default): one file, shared by the milter and learner.

WAL journal, so the milter's readers never wait for a learner's write transaction and
always see the counts of a whole learned message, never half of one.  Writes are one
`BEGIN IMMEDIATE` transaction each.  A separate file from the greylist/rate-limit state
(`[bayes] path`), because the token table is by far the largest and is trimmed on its
own schedule.  The connection is mailward.sqlitedb's: opened lazily, again after a
fork, dropped after any error; the file is created 0600.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from mailward.bayes.classifier import TokenCounts
from mailward.bayes.store import (
    DEFAULT_LIMITS,
    BayesStore,
    LearnResult,
    MessageClass,
    StoreLimits,
    Totals,
    hash_tokens,
    plan_learning,
)
from mailward.sqlitedb import SqliteDatabase
from mailward.state.base import StateUnavailable

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS bayes_tokens (
        token     INTEGER PRIMARY KEY,
        spam      INTEGER NOT NULL,
        ham       INTEGER NOT NULL,
        last_seen REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS bayes_tokens_seen ON bayes_tokens (last_seen)",
    """CREATE TABLE IF NOT EXISTS bayes_messages (
        digest TEXT PRIMARY KEY,
        class  TEXT NOT NULL,
        learned_at REAL NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS bayes_totals (
        class TEXT PRIMARY KEY,
        messages INTEGER NOT NULL) WITHOUT ROWID""",
    "INSERT OR IGNORE INTO bayes_totals VALUES ('spam', 0), ('ham', 0)",
)

_LOOKUP_BATCH = 500  # below SQLite's host-parameter limit


class SqliteBayesStore(BayesStore):
    backend = "sqlite"

    def __init__(self, path: Path, limits: StoreLimits = DEFAULT_LIMITS, *,
                 busy_timeout: float = 5.0, file_mode: int = 0o600) -> None:
        self.path = Path(path)
        self.limits = limits
        self.busy_timeout = busy_timeout
        self.file_mode = file_mode
        self._db = SqliteDatabase(
            self.path, schema=_SCHEMA, schema_version=SCHEMA_VERSION,
            error=lambda message: StateUnavailable(self.backend, message),
            busy_timeout=busy_timeout, file_mode=file_mode,
        )

    # ------------------------------------------------------------------ reads

    def totals(self) -> Totals:
        with self._db.transaction(write=False) as db:
            rows = dict(db.execute("SELECT class, messages FROM bayes_totals").fetchall())
            return Totals(int(rows.get("spam", 0)), int(rows.get("ham", 0)))

    def token_rows(self) -> int:
        with self._db.transaction(write=False) as db:
            (tokens,) = db.execute("SELECT count(*) FROM bayes_tokens").fetchone()
            return int(tokens)

    def token_counts(self, tokens: Collection[str]) -> Mapping[str, TokenCounts]:
        hashed = hash_tokens(tokens)
        keys = list(hashed)
        found: dict[str, TokenCounts] = {}
        with self._db.transaction(write=False) as db:
            for start in range(0, len(keys), _LOOKUP_BATCH):
                batch = keys[start:start + _LOOKUP_BATCH]
                marks = ",".join("?" * len(batch))
                for key, spam, ham in db.execute(
                        f"SELECT token, spam, ham FROM bayes_tokens WHERE token IN ({marks})",
                        batch):
                    found[hashed[key]] = TokenCounts(spam, ham)
        return found

    # ------------------------------------------------------------------ writes

    def _step(self, digest: str, wanted: MessageClass | None, tokens: Collection[str],
              now: float) -> LearnResult:
        keys = [(key,) for key in hash_tokens(tokens)]
        with self._db.transaction(write=True) as db:
            row = db.execute("SELECT class FROM bayes_messages WHERE digest = ?",
                             (digest,)).fetchone()
            plan = plan_learning(MessageClass(row[0]) if row else None, wanted)
            if plan.undo is not None:
                column = plan.undo.value
                db.executemany(
                    f"UPDATE bayes_tokens SET {column} = max({column} - 1, 0) WHERE token = ?",
                    keys)
                db.execute("UPDATE bayes_totals SET messages = max(messages - 1, 0) "
                           "WHERE class = ?", (column,))
                db.execute("DELETE FROM bayes_messages WHERE digest = ?", (digest,))
            if plan.add is not None:
                column = plan.add.value
                db.executemany(
                    f"INSERT INTO bayes_tokens (token, spam, ham, last_seen) "
                    f"VALUES (?1, {int(column == 'spam')}, {int(column == 'ham')}, ?2) "
                    f"ON CONFLICT (token) DO UPDATE SET {column} = {column} + 1, "
                    f"last_seen = ?2",
                    [(key, now) for (key,) in keys])
                db.execute("UPDATE bayes_totals SET messages = messages + 1 WHERE class = ?",
                           (column,))
                db.execute("INSERT INTO bayes_messages VALUES (?, ?, ?)",
                           (digest, column, now))
            if plan.undo is not None:
                db.execute("DELETE FROM bayes_tokens WHERE spam = 0 AND ham = 0")
            return plan.result

    def expire(self, now: float) -> int:
        with self._db.transaction(write=True) as db:
            removed = db.execute("DELETE FROM bayes_tokens WHERE last_seen < ?",
                                 (now - self.limits.token_expiry,)).rowcount
            (count,) = db.execute("SELECT count(*) FROM bayes_tokens").fetchone()
            excess = count - self.limits.max_tokens
            if excess > 0:
                removed += db.execute(
                    "DELETE FROM bayes_tokens WHERE token IN (SELECT token FROM bayes_tokens "
                    "ORDER BY last_seen LIMIT ?)", (excess,)).rowcount
            return int(removed)

    def ping(self) -> None:
        with self._db.transaction(write=False) as db:
            db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._db.close()
