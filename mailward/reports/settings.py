"""The `[dmarc_reports]` section: who we are in reports, where reports go out, limits.

Read with mailward/configreader's Table (unknown keys are errors); config.py holds one
field of this type and calls `read_report_settings` once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailward.configreader import Table, domain_name, hostname


def _address(text: str) -> str:
    if not text:
        return ""  # unset; required only when enabled
    local, at, domain = text.rpartition("@")
    if not at or not local or any(c in text for c in " \t\r\n<>,;"):
        raise ValueError(f"{text!r} is not an e-mail address")
    return f"{local}@{domain_name(domain)}"


@dataclass(frozen=True)
class FailureReportSettings:
    """`[dmarc_reports.failure]`: RFC 9991 failure reports, off by default."""

    enabled: bool = False
    redact_local_parts: bool = True
    per_destination_per_hour: int = 10
    total_per_hour: int = 100


@dataclass(frozen=True)
class ReportSettings:
    """What `mailward dmarc-report` and the milter's recorder need."""

    enabled: bool = False
    path: str = "/var/lib/mailward/dmarc-reports.db"
    org_name: str = ""
    sender: str = ""
    contact_info: str = ""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_timeout: float = 30.0
    max_reports_per_run: int = 100
    pacing_seconds: float = 0.0
    max_attempts: int = 5
    retry_seconds: int = 3600
    keep_days: int = 31
    suppress: tuple[str, ...] = ()
    failure: FailureReportSettings = field(default_factory=FailureReportSettings)

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]


def read_report_settings(table: Table) -> ReportSettings:
    failure_table = table.table("failure")
    failure = FailureReportSettings(
        enabled=failure_table.scalar("enabled", bool, False),
        redact_local_parts=failure_table.scalar("redact_local_parts", bool, True),
        per_destination_per_hour=failure_table.number(
            "per_destination_per_hour", int, 10, 0, 100_000),
        total_per_hour=failure_table.number("total_per_hour", int, 100, 0, 1_000_000),
    )
    failure_table.finish()
    settings = ReportSettings(
        enabled=table.scalar("enabled", bool, False),
        path=table.scalar("path", str, ReportSettings.path),
        org_name=table.scalar("org_name", str, ""),
        sender=table.parsed("sender", _address, ""),
        contact_info=table.scalar("contact_info", str, ""),
        smtp_host=table.parsed("smtp_host", hostname, "127.0.0.1"),
        smtp_port=table.number("smtp_port", int, 25, 1, 65535),
        smtp_timeout=table.number("smtp_timeout", float, 30.0, 0.1, 600.0),
        max_reports_per_run=table.number("max_reports_per_run", int, 100, 1, 1_000_000),
        pacing_seconds=table.number("pacing_seconds", float, 0.0, 0.0, 3600.0),
        max_attempts=table.number("max_attempts", int, 5, 1, 100),
        retry_seconds=table.number("retry_seconds", int, 3600, 1, 7 * 86400),
        keep_days=table.number("keep_days", int, 31, 1, 3650),
        suppress=table.string_list("suppress", (), domain_name),
        failure=failure,
    )
    if settings.enabled and not settings.sender:
        table.error("sender", "required when enabled = true (the reports' From address)")
    if settings.enabled and not settings.org_name:
        table.error("org_name", "required when enabled = true (<org_name> of every report)")
    table.finish(subtables=("failure",))
    return settings
