"""What an audit reports: findings (ok / warn / fail / info) and checks it could not do."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One item of the checklist: what was looked at, what was seen, what to do.

    `code` is a stable identifier (`spf.too_many_lookups`) for scripts reading --json;
    `evidence` is one line of what DNS or the server said, `fix` one line of advice
    (empty when nothing needs doing).
    """

    family: str
    code: str
    status: Status
    subject: str
    evidence: str
    fix: str = ""


@dataclass(frozen=True)
class Unchecked:
    """A check that could not be done: DNS timeout/SERVFAIL, a connection that failed."""

    family: str
    subject: str
    error: str


class CouldNotCheck(Exception):
    """Raised inside a family when a lookup fails temporarily: the family stops there."""

    def __init__(self, subject: str, error: str) -> None:
        super().__init__(f"{subject}: {error}")
        self.subject = subject
        self.error = error


class ExitStatus:
    """The documented exit codes of `mailward audit` (and `mailward explain`)."""

    FINE = 0  # nothing failed
    PROBLEMS = 1  # at least one finding has status fail
    COULD_NOT_CHECK = 2  # no failure found, but some checks could not be done


@dataclass(frozen=True)
class AuditReport:
    domain: str
    findings: tuple[Finding, ...]
    unchecked: tuple[Unchecked, ...] = ()

    @property
    def exit_status(self) -> int:
        if any(finding.status is Status.FAIL for finding in self.findings):
            return ExitStatus.PROBLEMS
        if self.unchecked:
            return ExitStatus.COULD_NOT_CHECK
        return ExitStatus.FINE

    def by_code(self, code: str) -> tuple[Finding, ...]:
        return tuple(finding for finding in self.findings if finding.code == code)
