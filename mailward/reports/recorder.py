"""The milter's side: record one DMARC evaluation, never failing the message.

`DmarcRecorder.record` is called once per inbound message after enforcement decided.
It turns the typed outcomes into a row (records.observe) and adds it to the store;
with failure reports on, a failing message whose policy asks for them is also queued
as an RFC 9991 report (rate-limited; `mailward dmarc-report send` delivers the queue).
Whatever goes wrong (a full disk, a locked or corrupt database, a bug) is logged,
counted in `mailward_dmarc_report_records_total{outcome="error"}` and swallowed: a
report is worth less than the message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailward import authresults, metrics
from mailward.checks import dkim as dkim_check
from mailward.checks import dmarc as dmarc_check
from mailward.checks import spf as spf_check
from mailward.checks.dkim import DkimOutcome
from mailward.checks.dmarc import DmarcOutcome
from mailward.checks.spf import SpfOutcome
from mailward.config import Settings
from mailward.dmarc_enforcement import Enforcement
from mailward.model import Action, IPAddress, Transaction
from mailward.reports.destinations import parse_destination
from mailward.reports.failure import FailedMessage, failure_report, wanted
from mailward.reports.records import Observation, observe
from mailward.reports.settings import FailureReportSettings
from mailward.reports.store import QueuedFailureReport

log = logging.getLogger(__name__)


class ReportSink(Protocol):
    def add(self, observation: Observation, now: float, count: int = 1) -> None: ...

    def queue_failure_report(self, report: QueuedFailureReport, now: float,
                             per_destination_per_hour: int, total_per_hour: int) -> bool: ...


class Recorder(Protocol):
    """What the pipeline calls; implementations must not raise."""

    def record(self, client_ip: IPAddress | str | None, dmarc: DmarcOutcome | None,
               spf: SpfOutcome | None, dkim: Sequence[DkimOutcome],
               decision: Enforcement, transaction: Transaction | None = None) -> None: ...


@dataclass(frozen=True)
class FailureReporting:
    """What queuing failure reports needs besides the outcomes."""

    settings: FailureReportSettings
    sender: str  # the reports' From
    authserv_id: str  # for the Authentication-Results field of the report


class DmarcRecorder:
    """Records into a report store; `clock` is injectable for tests."""

    def __init__(self, store: ReportSink, clock: Callable[[], float] = time.time,
                 failures: FailureReporting | None = None) -> None:
        self._store = store
        self._clock = clock
        self._failures = failures

    def record(self, client_ip: IPAddress | str | None, dmarc: DmarcOutcome | None,
               spf: SpfOutcome | None, dkim: Sequence[DkimOutcome],
               decision: Enforcement, transaction: Transaction | None = None) -> None:
        try:
            # A deferred message comes back and is evaluated again: count it then.
            if dmarc is None or client_ip is None or decision.action is Action.TEMPFAIL:
                metrics.DMARC_REPORT_RECORDS.labels("skipped").inc()
                return
            observation = observe(str(client_ip), dmarc, spf, dkim, decision)
            if observation is None:
                metrics.DMARC_REPORT_RECORDS.labels("skipped").inc()
                return
            now = self._clock()
            self._store.add(observation, now)
            if self._failures is not None and transaction is not None:
                self._queue_failure_reports(self._failures, str(client_ip), dmarc, spf,
                                            tuple(dkim), transaction, now)
        except Exception:
            # Reports never cost mail: log with the traceback, count, go on.
            log.exception("DMARC report recording failed; the message is not affected")
            metrics.DMARC_REPORT_RECORDS.labels("error").inc()
            return
        metrics.DMARC_REPORT_RECORDS.labels("recorded").inc()

    def _queue_failure_reports(self, failures: FailureReporting, client_ip: str,
                               dmarc: DmarcOutcome, spf: SpfOutcome | None,
                               dkim: tuple[DkimOutcome, ...], transaction: Transaction,
                               now: float) -> None:
        if dmarc.record is None or not wanted(dmarc, spf, dkim):
            return
        results = [*dkim_check.auth_results(dkim)]
        if spf is not None:
            results.append(spf_check.auth_result(spf))
        results.append(dmarc_check.auth_result(dmarc))
        failed = FailedMessage(
            client_ip=client_ip, mail_from=transaction.mail_from,
            recipients=transaction.recipients, headers=transaction.headers, arrival=now,
            dmarc=dmarc, spf=spf, dkim=dkim,
            authentication_results=authresults.format_header(failures.authserv_id, results))
        for uri in dmarc.record.ruf:
            destination = parse_destination(uri)
            if destination is None:
                continue
            message = failure_report(failed, failures.sender, destination.address,
                                     failures.settings.redact_local_parts)
            queued = self._store.queue_failure_report(
                QueuedFailureReport(uri, dmarc.policy_domain,
                                    dmarc.org_domain or dmarc.policy_domain, message),
                now, failures.settings.per_destination_per_hour,
                failures.settings.total_per_hour)
            metrics.DMARC_REPORTS.labels("failure", "generated" if queued
                                         else "rate_limited").inc()


def build_recorder(settings: Settings) -> DmarcRecorder | None:
    """The milter's recorder when `[dmarc_reports] enabled`; the store connects lazily
    (in each worker, after fork), so a bad path or a Redis that is down is an outage,
    counted per message, not a start failure."""
    reports = settings.dmarc_reports
    if not reports.enabled:
        return None
    from mailward.reports.backends import open_report_store

    failures = (FailureReporting(reports.failure, reports.sender,
                                 settings.general.authserv_id)
                if reports.failure.enabled else None)
    return DmarcRecorder(open_report_store(settings), failures=failures)
