"""The milter's side: record one DMARC evaluation, never failing the message.

`DmarcRecorder.record` is called once per inbound message after enforcement decided.
It turns the typed outcomes into a row (records.observe) and adds it to the store.
Whatever goes wrong (a full disk, a locked or corrupt database, a bug) is logged,
counted in `mailward_dmarc_report_records_total{outcome="error"}` and swallowed: a
report is worth less than the message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from mailward import metrics
from mailward.checks.dkim import DkimOutcome
from mailward.checks.dmarc import DmarcOutcome
from mailward.checks.spf import SpfOutcome
from mailward.dmarc_enforcement import Enforcement
from mailward.model import Action, IPAddress
from mailward.reports.records import Observation, observe
from mailward.reports.settings import ReportSettings

log = logging.getLogger(__name__)


class ObservationSink(Protocol):
    def add(self, observation: Observation, now: float, count: int = 1) -> None: ...


class Recorder(Protocol):
    """What the pipeline calls; implementations must not raise."""

    def record(self, client_ip: IPAddress | str | None, dmarc: DmarcOutcome | None,
               spf: SpfOutcome | None, dkim: Sequence[DkimOutcome],
               decision: Enforcement) -> None: ...


class DmarcRecorder:
    """Records into a report store; `clock` is injectable for tests."""

    def __init__(self, store: ObservationSink, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def record(self, client_ip: IPAddress | str | None, dmarc: DmarcOutcome | None,
               spf: SpfOutcome | None, dkim: Sequence[DkimOutcome],
               decision: Enforcement) -> None:
        try:
            # A deferred message comes back and is evaluated again: count it then.
            if dmarc is None or client_ip is None or decision.action is Action.TEMPFAIL:
                metrics.DMARC_REPORT_RECORDS.labels("skipped").inc()
                return
            observation = observe(str(client_ip), dmarc, spf, dkim, decision)
            if observation is None:
                metrics.DMARC_REPORT_RECORDS.labels("skipped").inc()
                return
            self._store.add(observation, self._clock())
        except Exception:
            # Reports never cost mail: log with the traceback, count, go on.
            log.exception("DMARC report recording failed; the message is not affected")
            metrics.DMARC_REPORT_RECORDS.labels("error").inc()
            return
        metrics.DMARC_REPORT_RECORDS.labels("recorded").inc()


def build_recorder(settings: ReportSettings) -> DmarcRecorder | None:
    """The milter's recorder when `[dmarc_reports] enabled`; the store opens lazily
    (in each worker, after fork), so a bad path is an outage, not a start failure."""
    if not settings.enabled:
        return None
    from mailward.reports.store import ReportStore

    return DmarcRecorder(ReportStore(settings.path))
