from __future__ import annotations

import email
from dataclasses import replace
from pathlib import Path

from mailward.checks.dmarc import DmarcRecord
from mailward.dmarc_enforcement import Enforcement, EnforcementOutcome
from mailward.dns import InMemoryResolver
from mailward.model import Action, Header, Transaction
from mailward.reports.failure import failure_options, redact, wanted
from mailward.reports.recorder import DmarcRecorder, FailureReporting
from mailward.reports.sender import ReportRunner
from mailward.reports.settings import FailureReportSettings, ReportSettings
from mailward.reports.store import ReportStore
from tests.unit.reports_helpers import dkim, dmarc, spf

NOW = 1_780_000_000.0
REJECT = Enforcement(Action.REJECT, EnforcementOutcome.REJECT)
MESSAGE = Transaction(queue_id="Q1", mail_from="ceo@sender.example",
                      recipients=("bob@example.net",),
                      headers=(Header("From", "The CEO <ceo@sender.example>"),
                               Header("Subject", "urgent payment")))


def failing(fo: str = "", psd: str = "u", ruf: tuple[str, ...] = ("mailto:ruf@sender.example",)):
    outcome = dmarc(passed=False)
    assert outcome.record is not None
    text = "v=DMARC1; p=reject" + (f"; fo={fo}" if fo else "")
    record: DmarcRecord = replace(outcome.record, text=text, ruf=ruf, psd=psd)
    return replace(outcome, record=record)


def test_fo_decides_which_failures_are_reported():
    assert failure_options(failing()) == {"0"}
    assert wanted(failing(), spf(passed=False), [dkim(passed=False)])
    assert not wanted(dmarc(), spf(), [dkim()])  # a pass is never reported
    assert failure_options(failing("1:d")) == {"1", "d"}
    # One aligned pass: fo=0 stays quiet, fo=d still reports the broken signature.
    half = replace(failing("d"), alignments=dmarc(passed=True).alignments[:1])
    assert wanted(half, spf(), [dkim(passed=False)])
    assert not wanted(replace(failing(), alignments=half.alignments), spf(), [dkim()])


def test_no_failure_reports_for_public_suffix_policies_or_without_ruf():
    assert not wanted(failing(psd="y"), spf(passed=False), [])
    assert not wanted(failing(ruf=()), spf(passed=False), [])


def test_local_parts_are_redacted():
    assert redact("The CEO <ceo@sender.example>, x.y+z@b.example") == (
        "The CEO <redacted@sender.example>, redacted@b.example")


def recorder(store: ReportStore, per_destination: int = 2, enabled: bool = True):
    settings = FailureReportSettings(enabled=enabled, per_destination_per_hour=per_destination)
    return DmarcRecorder(store, clock=lambda: NOW, failures=FailureReporting(
        settings, "dmarc@example.net", "mx.example.net") if enabled else None)


def test_one_afrf_report_per_failing_message_up_to_the_rate_limit(tmp_path: Path):
    store = ReportStore(tmp_path / "r.db")
    record = recorder(store)
    for _ in range(3):
        record.record("203.0.113.7", failing(), spf(passed=False), [dkim(passed=False)],
                      REJECT, MESSAGE)
    queued = store.queued_failure_reports(10)
    assert len(queued) == 2
    report = email.message_from_bytes(queued[0].message)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "feedback-report"
    raw = queued[0].message.decode()
    for field in ("Feedback-Type: auth-failure", "Auth-Failure: dmarc",
                  "Identity-Alignment: none", "Source-IP: 203.0.113.7",
                  "Reported-Domain: sender.example", "DKIM-Domain: sender.example",
                  "DKIM-Selector: s1", "Original-Mail-From: <redacted@sender.example>"):
        assert field in raw, field
    assert "ceo@" not in raw and "bob@" not in raw
    assert "urgent payment" in raw  # the original header, not the body


def test_none_when_failure_reports_are_off(tmp_path: Path):
    store = ReportStore(tmp_path / "r.db")
    recorder(store, enabled=False).record("203.0.113.7", failing(), spf(passed=False), [],
                                          REJECT, MESSAGE)
    assert store.queued_failure_reports(10) == []
    assert store.periods()  # the aggregate row is still recorded


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        self.sent.append((recipient, message))


def test_send_delivers_the_queue_once_and_drops_unauthorized_destinations(tmp_path: Path):
    store = ReportStore(tmp_path / "r.db")
    record = recorder(store, per_destination=5)
    outcome = failing(ruf=("mailto:ruf@sender.example", "mailto:ruf@vendor.example"))
    record.record("203.0.113.7", outcome, spf(passed=False), [], REJECT, MESSAGE)
    outbox = Outbox()
    settings = ReportSettings(enabled=True, org_name="E", sender="dmarc@example.net")
    runner = ReportRunner(settings, store, InMemoryResolver.from_zones({"vendor.example": ""}),
                          outbox, clock=lambda: NOW + 60, sleep=lambda _: None)
    summary = runner.send_due()
    assert [r for r, _ in outbox.sent] == ["ruf@sender.example"]
    assert any("vendor.example" in line for line in summary.dropped)
    runner.send_due()
    assert len(outbox.sent) == 1
