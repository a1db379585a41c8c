"""The report store: observations grouped into counted rows, and what was sent.

SQLite in WAL mode, shared by the milter's worker processes (each opens its own
connection after fork, lazily: mailward.sqlitedb) and `mailward dmarc-report`; the file
is created 0600 (it names the senders' addresses and domains).  Rows are keyed by UTC day,
policy domain and the row's canonical key, so recording a message is one UPSERT that
adds 1 to a count; a report is built from the rows of one (day, domain).

Every backend failure surfaces as `ReportStoreError`; the recorder counts it and lets
the message go on, the command reports it and exits non-zero.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from mailward.reports.records import Observation, PublishedPolicy, ReportRow
from mailward.sqlitedb import SqliteDatabase

DAY = 86400
BUSY_TIMEOUT_MS = 2000
SCHEMA_VERSION = 1  # files from before the version was recorded (0) take the same schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS report_rows (
    day INTEGER NOT NULL, policy_domain TEXT NOT NULL, row_key TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (day, policy_domain, row_key));
CREATE TABLE IF NOT EXISTS report_policies (
    day INTEGER NOT NULL, policy_domain TEXT NOT NULL, policy TEXT NOT NULL,
    PRIMARY KEY (day, policy_domain));
CREATE TABLE IF NOT EXISTS reports (
    report_id TEXT PRIMARY KEY, day INTEGER NOT NULL, policy_domain TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS report_deliveries (
    report_id TEXT NOT NULL, uri TEXT NOT NULL, sent_at REAL NOT NULL,
    PRIMARY KEY (report_id, uri));
CREATE TABLE IF NOT EXISTS failure_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uri TEXT NOT NULL, policy_domain TEXT NOT NULL,
    org_domain TEXT NOT NULL, message BLOB NOT NULL, created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS failure_queue_created ON failure_queue (created);
"""


class ReportStoreError(Exception):
    """The store could not carry out an operation (disk full, locked, unreadable)."""


class ReportState(StrEnum):
    PENDING = "pending"  # built, some destination not yet accepted
    SENT = "sent"  # every destination accepted it, or was dropped for good
    FAILED = "failed"  # gave up after max_attempts


@dataclass(frozen=True)
class CountedRow:
    row: ReportRow
    count: int


@dataclass(frozen=True)
class Period:
    """One UTC day of one policy domain: the unit of an aggregate report."""

    day: int
    policy_domain: str

    @property
    def begin(self) -> int:
        return self.day * DAY

    @property
    def end(self) -> int:
        return self.begin + DAY - 1


@dataclass(frozen=True)
class QueuedFailureReport:
    """A failure report waiting for `dmarc-report send` (id 0 until queued)."""

    uri: str
    policy_domain: str
    org_domain: str
    message: bytes
    ident: int = 0
    attempts: int = 0


@dataclass(frozen=True)
class ReportStatus:
    state: ReportState
    attempts: int
    next_attempt: float


def day_of(now: float) -> int:
    return int(now // DAY)


def _policy_from_json(text: str) -> PublishedPolicy:
    data = json.loads(text)
    data["rua"] = tuple(data["rua"])
    data["ruf"] = tuple(data["ruf"])
    return PublishedPolicy(**data)


class ReportBackend(Protocol):
    """What the recorder and `dmarc-report` need from a store: ReportStore (SQLite)
    or RedisReportStore (several MX hosts).  Failures raise ReportStoreError."""

    def add(self, observation: Observation, now: float, count: int = 1) -> None: ...
    def periods(self, before_day: int | None = None,
                domain: str | None = None) -> list[Period]: ...
    def rows(self, period: Period) -> list[CountedRow]: ...
    def policy(self, period: Period) -> PublishedPolicy | None: ...
    def pending_rows(self) -> int: ...
    def status(self, report_id: str) -> ReportStatus | None: ...
    def delivered(self, report_id: str) -> set[str]: ...
    def mark_delivered(self, report_id: str, uri: str, now: float) -> None: ...
    def set_status(self, report_id: str, period: Period, status: ReportStatus,
                   error: str = "") -> None: ...
    def queue_failure_report(self, report: QueuedFailureReport, now: float,
                             per_destination_per_hour: int, total_per_hour: int) -> bool: ...
    def queued_failure_reports(self, limit: int) -> list[QueuedFailureReport]: ...
    def finish_failure_report(self, ident: int, state: str, attempts: int) -> None: ...
    def purge(self, before_day: int) -> int: ...
    def close(self) -> None: ...


class ReportStore:
    """SQLite-backed; safe for threads (one lock) and processes (one connection each)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = SqliteDatabase(
            self.path,
            schema=[statement for statement in _SCHEMA.split(";") if statement.strip()],
            schema_version=SCHEMA_VERSION,
            error=ReportStoreError,
            busy_timeout=BUSY_TIMEOUT_MS / 1000,
        )

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ recording

    def add(self, observation: Observation, now: float, count: int = 1) -> None:
        day = day_of(now)
        domain = observation.policy.domain
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO report_rows (day, policy_domain, row_key, count) VALUES (?,?,?,?)"
                " ON CONFLICT (day, policy_domain, row_key) DO UPDATE SET count = count + ?",
                (day, domain, observation.row.key(), count, count))
            db.execute(
                "INSERT INTO report_policies (day, policy_domain, policy) VALUES (?,?,?)"
                " ON CONFLICT (day, policy_domain) DO UPDATE SET policy = excluded.policy",
                (day, domain, json.dumps(asdict(observation.policy), sort_keys=True)))

    # ------------------------------------------------------------------ reading

    def periods(self, before_day: int | None = None, domain: str | None = None) -> list[Period]:
        """Periods with rows (before `before_day` if given), oldest first."""
        sql = "SELECT DISTINCT day, policy_domain FROM report_rows WHERE 1=1"
        args: list[object] = []
        if before_day is not None:
            sql += " AND day < ?"
            args.append(before_day)
        if domain is not None:
            sql += " AND policy_domain = ?"
            args.append(domain)
        with self._db.transaction() as db:
            found = db.execute(sql + " ORDER BY day, policy_domain", args).fetchall()
        return [Period(day, name) for day, name in found]

    def rows(self, period: Period) -> list[CountedRow]:
        with self._db.transaction() as db:
            found = db.execute(
                "SELECT row_key, count FROM report_rows WHERE day = ? AND policy_domain = ?"
                " ORDER BY count DESC, row_key", (period.day, period.policy_domain)).fetchall()
        return [CountedRow(ReportRow.from_key(key), count) for key, count in found]

    def policy(self, period: Period) -> PublishedPolicy | None:
        with self._db.transaction() as db:
            found = db.execute(
                "SELECT policy FROM report_policies WHERE day = ? AND policy_domain = ?",
                (period.day, period.policy_domain)).fetchone()
        return _policy_from_json(found[0]) if found else None

    def pending_rows(self) -> int:
        with self._db.transaction() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM report_rows r WHERE NOT EXISTS (SELECT 1 FROM reports p"
                " WHERE p.day = r.day AND p.policy_domain = r.policy_domain"
                " AND p.state != 'pending')").fetchone()
        return int(count)

    # ------------------------------------------------------------------ sending state

    def status(self, report_id: str) -> ReportStatus | None:
        with self._db.transaction() as db:
            found = db.execute("SELECT state, attempts, next_attempt FROM reports"
                               " WHERE report_id = ?", (report_id,)).fetchone()
        return ReportStatus(ReportState(found[0]), found[1], found[2]) if found else None

    def delivered(self, report_id: str) -> set[str]:
        with self._db.transaction() as db:
            found = db.execute("SELECT uri FROM report_deliveries WHERE report_id = ?",
                               (report_id,)).fetchall()
        return {uri for (uri,) in found}

    def mark_delivered(self, report_id: str, uri: str, now: float) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO report_deliveries VALUES (?,?,?)",
                       (report_id, uri, now))

    def set_status(self, report_id: str, period: Period, status: ReportStatus,
                   error: str = "") -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO reports (report_id, day, policy_domain, state, attempts,"
                " next_attempt, last_error) VALUES (?,?,?,?,?,?,?) ON CONFLICT (report_id)"
                " DO UPDATE SET state = excluded.state, attempts = excluded.attempts,"
                " next_attempt = excluded.next_attempt, last_error = excluded.last_error",
                (report_id, period.day, period.policy_domain, status.state.value,
                 status.attempts, status.next_attempt, error[:500]))

    # ------------------------------------------------------------------ failure reports

    def queue_failure_report(self, report: QueuedFailureReport, now: float,
                             per_destination_per_hour: int, total_per_hour: int) -> bool:
        """Queue one report unless a rate limit says no (checked and queued atomically,
        across milter workers); True when queued."""
        since = now - 3600
        with self._db.transaction() as db:
            (total,) = db.execute("SELECT COUNT(*) FROM failure_queue WHERE created >= ?",
                                  (since,)).fetchone()
            (mine,) = db.execute("SELECT COUNT(*) FROM failure_queue WHERE created >= ?"
                                 " AND uri = ?", (since, report.uri)).fetchone()
            if total >= total_per_hour or mine >= per_destination_per_hour:
                return False
            db.execute("INSERT INTO failure_queue (uri, policy_domain, org_domain, message,"
                       " created) VALUES (?,?,?,?,?)",
                       (report.uri, report.policy_domain, report.org_domain, report.message,
                        now))
        return True

    def queued_failure_reports(self, limit: int) -> list[QueuedFailureReport]:
        with self._db.transaction() as db:
            found = db.execute("SELECT id, uri, policy_domain, org_domain, message, attempts"
                               " FROM failure_queue WHERE state = 'queued' ORDER BY id LIMIT ?",
                               (limit,)).fetchall()
        return [QueuedFailureReport(uri, domain, org, bytes(message), ident, attempts)
                for ident, uri, domain, org, message, attempts in found]

    def finish_failure_report(self, ident: int, state: str, attempts: int) -> None:
        """`state`: sent, dropped, failed, or queued again (a temporary problem)."""
        with self._db.transaction() as db:
            # The message itself is no longer needed once the report is done.
            db.execute("UPDATE failure_queue SET state = ?, attempts = ?,"
                       " message = CASE WHEN ? = 'queued' THEN message ELSE x'' END"
                       " WHERE id = ?", (state, attempts, state, ident))

    # ------------------------------------------------------------------ housekeeping

    def purge(self, before_day: int) -> int:
        """Forget rows and report state older than `before_day`."""
        with self._db.transaction() as db:
            removed = db.execute("DELETE FROM report_rows WHERE day < ?", (before_day,)).rowcount
            db.execute("DELETE FROM report_policies WHERE day < ?", (before_day,))
            db.execute("DELETE FROM report_deliveries WHERE report_id IN"
                       " (SELECT report_id FROM reports WHERE day < ?)", (before_day,))
            db.execute("DELETE FROM reports WHERE day < ?", (before_day,))
            db.execute("DELETE FROM failure_queue WHERE created < ?", (before_day * DAY,))
        return int(removed)
