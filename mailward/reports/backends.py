"""Which report store: the `[state]` backend decides, as for every shared state.

`[state] backend = "redis"` (several MX hosts): Redis at `[state] url`, so every host's
milter counts into the same rows and one `dmarc-report send` reports for all of them.
Otherwise SQLite at `[dmarc_reports] path`.
"""

from __future__ import annotations

from mailward.config import Settings, StateBackend
from mailward.reports.store import ReportBackend, ReportStore


def open_report_store(settings: Settings) -> ReportBackend:
    if settings.state.backend is StateBackend.REDIS:
        from mailward.reports.redis_store import RedisReportStore

        return RedisReportStore(settings.state.url, keep_days=settings.dmarc_reports.keep_days)
    return ReportStore(settings.dmarc_reports.path)
