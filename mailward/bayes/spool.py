"""The learning spool: where IMAPSieve's pipe program leaves messages for the learner.

A Maildir-like directory, so that handing over a message is one `rename` and survives
restarts and crashes of either side:

    SPOOL/tmp/      the pipe program writes here first (then fsyncs)
    SPOOL/new/      CLASS.UNIQUE files, complete, waiting to be learned
    SPOOL/failed/   files the learner could not use (not a class it knows, or learning
                    raised unexpectedly); kept for the admin, never deleted

The pipe program (sieve/bin/mailward-learn) is a few lines of POSIX shell that never
interprets the message (it only copies stdin to a file), so an IMAP MOVE of 500 messages
costs 500 small file writes, not 500 learnings.  The learner removes a file only after
the store committed its learning; a store that is down leaves the file for the next
pass (a temporary failure loses nothing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailward.bayes.store import LearnResult, MessageClass
from mailward.state.base import StateUnavailable

log = logging.getLogger(__name__)

SUBDIRS = ("tmp", "new", "failed")


def ensure_spool(spool: Path) -> None:
    """Create the spool tree (group-writable and setgid: the mail user writes into it)."""
    spool.mkdir(mode=0o2770, parents=True, exist_ok=True)
    for name in SUBDIRS:
        (spool / name).mkdir(mode=0o2770, exist_ok=True)


def spool_message(spool: Path, message_class: MessageClass, raw: bytes, unique: str) -> Path:
    """Hand one message to the learner the way the pipe program does (for tests, tools)."""
    tmp = spool / "tmp" / f"{message_class.value}.{unique}"
    with tmp.open("xb") as handle:
        handle.write(raw)
        handle.flush()
        os.fsync(handle.fileno())
    target = spool / "new" / tmp.name
    os.rename(tmp, target)
    return target


@dataclass
class DrainReport:
    results: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    deferred: int = 0

    def count(self, result: LearnResult) -> None:
        self.results[result.value] = self.results.get(result.value, 0) + 1


def drain_spool(spool: Path, learn: Callable[[bytes, MessageClass], LearnResult],
                limit: int = 1000) -> DrainReport:
    """Learn up to `limit` waiting messages, oldest first; remove each once learned."""
    report = DrainReport()
    new = spool / "new"
    try:
        entries = sorted(new.iterdir(), key=_mtime)[:limit]
    except FileNotFoundError:
        return report
    for entry in entries:
        class_name = entry.name.partition(".")[0]
        try:
            message_class = MessageClass(class_name)
        except ValueError:
            log.warning("learner: %s is not spam.* or ham.*; moved to failed/", entry.name)
            os.replace(entry, spool / "failed" / entry.name)
            report.failed += 1
            continue
        try:
            raw = entry.read_bytes()
        except FileNotFoundError:
            continue  # another learner took it
        try:
            result = learn(raw, message_class)
        except StateUnavailable as exc:
            report.deferred = len(entries) - sum(report.results.values()) - report.failed
            log.warning("learner: %s; %d message(s) stay in the spool", exc, report.deferred)
            return report
        except Exception:
            # A bug, not the sender's fault nor an outage: keep the file for the admin
            # and go on, rather than crash on it at every restart.
            log.exception("learner: cannot learn %s; moved to failed/", entry.name)
            os.replace(entry, spool / "failed" / entry.name)
            report.failed += 1
            continue
        report.count(result)
        entry.unlink(missing_ok=True)
    return report


def _mtime(entry: Path) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0
