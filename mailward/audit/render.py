"""An audit report as text for people and as JSON for scripts."""

from __future__ import annotations

import json
from dataclasses import asdict

from mailward.audit.findings import AuditReport, Status

_MARK = {Status.OK: "ok  ", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.INFO: "info"}


def as_text(report: AuditReport) -> str:
    lines = [f"audit of {report.domain}"]
    family = None
    for finding in report.findings:
        if finding.family != family:
            family = finding.family
            lines.append(f"\n{family}:")
        lines.append(f"  [{_MARK[finding.status]}] {finding.subject}: {finding.evidence}")
        if finding.fix and finding.status is not Status.OK:
            lines.append(f"         fix: {finding.fix}")
    if report.unchecked:
        lines.append("\ncould not check (temporary failure, try again):")
        for item in report.unchecked:
            lines.append(f"  [????] {item.family}: {item.subject}: {item.error}")
    counts = {status: sum(1 for f in report.findings if f.status is status) for status in Status}
    lines.append(f"\n{counts[Status.FAIL]} fail, {counts[Status.WARN]} warn, "
                 f"{counts[Status.OK]} ok, {counts[Status.INFO]} info, "
                 f"{len(report.unchecked)} not checked")
    return "\n".join(lines) + "\n"


def as_json(report: AuditReport) -> str:
    return json.dumps({
        "domain": report.domain,
        "exit_status": report.exit_status,
        "findings": [asdict(finding) for finding in report.findings],
        "unchecked": [asdict(item) for item in report.unchecked],
    }, indent=2) + "\n"
