"""One aggregate report: a policy domain's counted rows over one UTC day (pure).

The report id is derived from the receiver, domain and period, so building the same
report again (a retry, a second run) gives the same id and file name: the report
consumer can de-duplicate, and we never send two different reports for one period.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mailward.reports.records import PublishedPolicy
from mailward.reports.store import CountedRow, Period


@dataclass(frozen=True)
class Reporter:
    """Who we are in `<report_metadata>`."""

    org_name: str
    email: str
    receiver_domain: str  # the "receiver" part of the file name
    contact_info: str = ""
    generator: str = "Mailward"


@dataclass(frozen=True)
class AggregateReport:
    reporter: Reporter
    period: Period
    policy: PublishedPolicy
    rows: tuple[CountedRow, ...]

    @property
    def report_id(self) -> str:
        return report_id_for(self.reporter.receiver_domain, self.period)

    @property
    def message_count(self) -> int:
        return sum(row.count for row in self.rows)

    @property
    def filename(self) -> str:
        """RFC 9990 `receiver "!" policy-domain "!" begin "!" end "!" id ".xml.gz"`."""
        return (f"{self.reporter.receiver_domain}!{self.period.policy_domain}!"
                f"{self.period.begin}!{self.period.end}!{self.report_id}.xml.gz")

    @property
    def subject(self) -> str:
        return (f"Report Domain: {self.period.policy_domain} Submitter: "
                f"{self.reporter.receiver_domain} Report-ID: <{self.report_id}>")


def report_id_for(receiver_domain: str, period: Period) -> str:
    digest = hashlib.sha256(
        f"{receiver_domain}!{period.policy_domain}!{period.begin}".encode()).hexdigest()[:20]
    return f"{period.begin}.{digest}"


def build_report(reporter: Reporter, period: Period, policy: PublishedPolicy,
                 rows: list[CountedRow]) -> AggregateReport:
    return AggregateReport(reporter, period, policy, tuple(rows))
