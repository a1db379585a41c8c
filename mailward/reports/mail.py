"""The report as a mail message (pure): RFC 9990 section 5's subject, file name and type."""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from email.policy import SMTP

from mailward.reports.aggregate import AggregateReport


def report_message(report: AggregateReport, compressed_xml: bytes, to: str,
                   date: float) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = report.reporter.email
    message["To"] = to
    message["Subject"] = report.subject
    message["Date"] = email.utils.formatdate(date, usegmt=True)
    # Stable per report and destination: a resend is recognisably the same message.
    domain = report.reporter.email.rpartition("@")[2]
    message["Message-ID"] = f"<{report.report_id}.{hash_text(to)}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        f"This is a DMARC aggregate report for {report.period.policy_domain} from "
        f"{report.reporter.org_name}, covering {report.message_count} message(s).\r\n")
    message.add_attachment(compressed_xml, maintype="application", subtype="gzip",
                           filename=report.filename)
    return message.as_bytes()


def hash_text(text: str) -> int:
    """A stable (unlike hash()) small number for a string."""
    value = 0
    for char in text.lower().encode():
        value = (value * 31 + char) % 1_000_000_007
    return value
