"""`dmarc-report send`: build each finished period's report and deliver it once.

For every (UTC day, policy domain) with rows, before today: skip it when already sent
or given up, or when its retry time has not come; otherwise build the report (same id
and bytes as any earlier attempt), and hand it to each `rua` destination that has not
taken it yet.  A destination is done when the MTA accepted the report, or when it is
refused for good (unauthorized, over its size limit, 5xx): that is logged and counted.
A report is `sent` only when every destination is done; a temporary problem (DNS,
the MTA) keeps it pending with a growing back-off, until `max_attempts`.

Pacing: at most `max_reports_per_run` reports per run and `pacing_seconds` between
two reports, so a big site spreads its reports instead of bursting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailward import metrics
from mailward.dns import Resolver
from mailward.reports.aggregate import AggregateReport, Reporter, build_report, report_id_for
from mailward.reports.aggregate_xml import compressed, report_xml
from mailward.reports.destinations import Authorization, authorize, parse_destination
from mailward.reports.mail import report_message
from mailward.reports.settings import ReportSettings
from mailward.reports.store import Period, ReportBackend, ReportState, ReportStatus, day_of
from mailward.reports.transport import Transport, TransportError

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one run did, line by line for the operator."""

    sent: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return ([f"sent: {s}" for s in self.sent] + [f"deferred: {s}" for s in self.deferred]
                + [f"dropped: {s}" for s in self.dropped] + [f"failed: {s}" for s in self.failed])


def reporter_of(settings: ReportSettings) -> Reporter:
    return Reporter(org_name=settings.org_name, email=settings.sender,
                    receiver_domain=settings.sender_domain,
                    contact_info=settings.contact_info)


class ReportRunner:
    def __init__(self, settings: ReportSettings, store: ReportBackend, resolver: Resolver,
                 transport: Transport, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.store = store
        self.resolver = resolver
        self.transport = transport
        self.clock = clock
        self.sleep = sleep

    def build(self, period: Period) -> AggregateReport | None:
        policy = self.store.policy(period)
        rows = self.store.rows(period)
        if policy is None or not rows:
            return None
        return build_report(reporter_of(self.settings), period, policy, rows)

    def preview(self, day: int, domain: str | None = None) -> list[AggregateReport]:
        """The reports of one day (the period so far, when it is today)."""
        reports = []
        for period in self.store.periods(domain=domain):
            if period.day == day:
                report = self.build(period)
                if report is not None:
                    reports.append(report)
        return reports

    def send_due(self, domain: str | None = None) -> RunSummary:
        summary = RunSummary()
        now = self.clock()
        handled = 0
        for period in self.store.periods(before_day=day_of(now), domain=domain):
            if handled >= self.settings.max_reports_per_run:
                break
            status = self.store.status(self._report_id(period))
            if status is not None and (status.state is not ReportState.PENDING
                                       or status.next_attempt > now):
                continue
            report = self.build(period)
            if report is None:
                continue
            if handled:
                self.sleep(self.settings.pacing_seconds)
            handled += 1
            self._send(report, status, summary)
        self._send_failure_reports(summary)
        metrics.DMARC_REPORT_ROWS_PENDING.set(self.store.pending_rows())
        purged = self.store.purge(day_of(now) - self.settings.keep_days)
        if purged:
            log.info("purged %d report rows older than %d days", purged,
                     self.settings.keep_days)
        return summary

    def _report_id(self, period: Period) -> str:
        return report_id_for(self.settings.sender_domain, period)

    def _send(self, report: AggregateReport, status: ReportStatus | None,
              summary: RunSummary) -> None:
        period = report.period
        what = f"{period.policy_domain} {report.report_id} ({report.message_count} messages)"
        metrics.DMARC_REPORTS.labels("aggregate", "generated").inc()
        attempts = (status.attempts if status else 0) + 1
        done = self.store.delivered(report.report_id)
        pending = False
        payload = compressed(report_xml(report))
        if period.policy_domain in self.settings.suppress:
            summary.dropped.append(f"{what}: the domain is on the suppression list")
            self._finish(report, attempts, ReportState.SENT, "suppressed")
            return
        destinations = [parse_destination(uri) for uri in report.policy.rua]
        for uri, destination in zip(report.policy.rua, destinations, strict=True):
            if uri in done:
                continue
            if destination is None:
                self._drop(report, uri, f"{what} to {uri}: not a usable mailto: URI", summary)
                continue
            grant = authorize(self.resolver, destination, period.policy_domain,
                              report.policy.org_domain)
            if grant is Authorization.TEMPORARY_FAILURE:
                pending = True
                summary.deferred.append(f"{what} to {uri}: DNS error checking authorization")
                continue
            if grant is Authorization.UNAUTHORIZED:
                self._drop(report, uri, f"{what} to {uri}: {destination.host} publishes no "
                           f"{period.policy_domain}._report._dmarc authorization", summary)
                continue
            message = report_message(report, payload, destination.address, self.clock())
            if destination.max_bytes is not None and len(message) > destination.max_bytes:
                self._drop(report, uri, f"{what} to {uri}: {len(message)} bytes is over the "
                           f"destination's limit of {destination.max_bytes}", summary)
                continue
            try:
                self.transport.send(self.settings.sender, destination.address, message)
            except TransportError as exc:
                if exc.temporary:
                    pending = True
                    summary.deferred.append(f"{what} to {uri}: {exc}")
                else:
                    self._drop(report, uri, f"{what} to {uri}: refused: {exc}", summary)
                continue
            self.store.mark_delivered(report.report_id, uri, self.clock())
            metrics.DMARC_REPORTS.labels("aggregate", "sent").inc()
            summary.sent.append(f"{what} to {destination.address}")
        if not pending:
            self._finish(report, attempts, ReportState.SENT)
        elif attempts >= self.settings.max_attempts:
            metrics.DMARC_REPORTS.labels("aggregate", "failed").inc()
            summary.failed.append(f"{what}: gave up after {attempts} attempts")
            self._finish(report, attempts, ReportState.FAILED, "too many attempts")
        else:
            metrics.DMARC_REPORTS.labels("aggregate", "deferred").inc()
            delay = self.settings.retry_seconds * 2 ** (attempts - 1)
            self.store.set_status(report.report_id, period,
                                  ReportStatus(ReportState.PENDING, attempts, self.clock() + delay))

    def _send_failure_reports(self, summary: RunSummary) -> None:
        """Deliver queued failure reports (RFC 9991): authorization as for aggregates."""
        for queued in self.store.queued_failure_reports(self.settings.max_reports_per_run):
            what = f"failure report for {queued.policy_domain} to {queued.uri}"
            destination = parse_destination(queued.uri)
            attempts = queued.attempts + 1
            grant = (authorize(self.resolver, destination, queued.policy_domain,
                               queued.org_domain) if destination is not None
                     else Authorization.UNAUTHORIZED)
            if destination is None or grant is Authorization.UNAUTHORIZED:
                summary.dropped.append(f"{what}: destination not authorized")
                metrics.DMARC_REPORTS.labels("failure", "dropped").inc()
                self.store.finish_failure_report(queued.ident, "dropped", attempts)
                continue
            if (destination.max_bytes is not None
                    and len(queued.message) > destination.max_bytes):
                summary.dropped.append(f"{what}: over the destination's size limit")
                metrics.DMARC_REPORTS.labels("failure", "dropped").inc()
                self.store.finish_failure_report(queued.ident, "dropped", attempts)
                continue
            try:
                if grant is Authorization.TEMPORARY_FAILURE:
                    raise TransportError("DNS error checking authorization", temporary=True)
                self.transport.send(self.settings.sender, destination.address, queued.message)
            except TransportError as exc:
                state = ("queued" if exc.temporary and attempts < self.settings.max_attempts
                         else "failed")
                (summary.deferred if state == "queued" else summary.failed).append(
                    f"{what}: {exc}")
                metrics.DMARC_REPORTS.labels(
                    "failure", "deferred" if state == "queued" else "failed").inc()
                self.store.finish_failure_report(queued.ident, state, attempts)
                continue
            summary.sent.append(what)
            metrics.DMARC_REPORTS.labels("failure", "sent").inc()
            self.store.finish_failure_report(queued.ident, "sent", attempts)

    def _drop(self, report: AggregateReport, uri: str, text: str, summary: RunSummary) -> None:
        log.warning("DMARC report dropped: %s", text)
        metrics.DMARC_REPORTS.labels("aggregate", "dropped").inc()
        summary.dropped.append(text)
        self.store.mark_delivered(report.report_id, uri, self.clock())

    def _finish(self, report: AggregateReport, attempts: int, state: ReportState,
                note: str = "") -> None:
        self.store.set_status(report.report_id, report.period,
                              ReportStatus(state, attempts, 0.0), note)

