from __future__ import annotations

import email
import gzip
import xml.etree.ElementTree as ET
from pathlib import Path

from mailward.dmarc_enforcement import ACCEPT, Enforcement, EnforcementOutcome
from mailward.dns import InMemoryResolver
from mailward.model import Action
from mailward.reports.aggregate_xml import NAMESPACE, report_xml
from mailward.reports.destinations import parse_destination
from mailward.reports.recorder import DmarcRecorder
from mailward.reports.sender import ReportRunner
from mailward.reports.settings import ReportSettings
from mailward.reports.store import DAY, ReportStore
from mailward.reports.transport import TransportError
from tests.unit.reports_helpers import dkim, dmarc, spf, validate

YESTERDAY = 1_780_000_000.0
TODAY = YESTERDAY + DAY
NS = {"d": NAMESPACE}
SETTINGS = ReportSettings(enabled=True, org_name="Example Net", sender="dmarc@example.net")
ARC = Enforcement(Action.ACCEPT, EnforcementOutcome.ARC_OVERRIDE, dmarc_note="sealer x")


class Outbox:
    def __init__(self, fail_with: TransportError | None = None) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.fail_with = fail_with

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((sender, recipient, message))


def recorded(tmp_path: Path, rua: tuple[str, ...] = ("mailto:dmarc@sender.example",)
             ) -> ReportStore:
    store = ReportStore(tmp_path / "r.db")
    recorder = DmarcRecorder(store, clock=lambda: YESTERDAY)
    for _ in range(4):
        recorder.record("192.0.2.10", dmarc(rua=rua), spf(), [dkim()], ACCEPT)
    recorder.record("2001:db8::7", dmarc(passed=False, rua=rua), spf(passed=False),
                    [dkim(passed=False)], ARC)
    return store


def runner(store: ReportStore, outbox: Outbox, zones: dict[str, str] | None = None,
           settings: ReportSettings = SETTINGS) -> ReportRunner:
    return ReportRunner(settings, store, InMemoryResolver.from_zones(zones or {}), outbox,
                        clock=lambda: TODAY, sleep=lambda _: None)


def attachment(message: bytes) -> tuple[str, bytes]:
    parsed = email.message_from_bytes(message)
    (part,) = [p for p in parsed.walk() if p.get_content_type() == "application/gzip"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return str(part.get_filename()), gzip.decompress(payload)


def test_the_report_validates_and_counts_every_message(tmp_path: Path):
    store = recorded(tmp_path)
    (report,) = runner(store, Outbox()).preview(int(YESTERDAY // DAY))
    xml = report_xml(report)
    validate(xml, tmp_path)
    root = ET.fromstring(xml)
    counts = [int(c.text or 0) for c in root.findall("d:record/d:row/d:count", NS)]
    assert sorted(counts) == [1, 4]
    reason = root.find("d:record/d:row/d:policy_evaluated/d:reason/d:type", NS)
    assert reason is not None and reason.text == "trusted_forwarder"
    assert root.find("d:record/d:auth_results/d:spf/d:scope", NS) is not None
    assert root.find("d:policy_published/d:fo", NS) is None  # not published: not made up


def test_fo_as_published_is_reported(tmp_path: Path):
    from dataclasses import replace

    from mailward.reports.records import observe

    outcome = dmarc()
    assert outcome.record is not None
    published = replace(outcome, record=replace(outcome.record, text="v=DMARC1; p=reject; fo=1"))
    observation = observe("192.0.2.10", published, spf(), [], ACCEPT)
    assert observation is not None and observation.policy.fo == "1"


def test_send_mails_a_gzip_report_with_the_rfc_names_once(tmp_path: Path):
    store = recorded(tmp_path)
    outbox = Outbox()
    summary = runner(store, outbox).send_due()
    assert len(outbox.sent) == 1, summary.lines()
    sender, recipient, message = outbox.sent[0]
    assert (sender, recipient) == ("dmarc@example.net", "dmarc@sender.example")
    parsed = email.message_from_bytes(message)
    assert " ".join(str(parsed["Subject"]).split()).startswith(
        "Report Domain: sender.example Submitter: example.net Report-ID: <")
    filename, xml = attachment(message)
    parts = filename.split("!")
    assert parts[:2] == ["example.net", "sender.example"] and filename.endswith(".xml.gz")
    validate(xml, tmp_path)
    assert runner(store, outbox).send_due().sent == []
    assert len(outbox.sent) == 1


def test_a_temporary_failure_is_retried_with_the_same_report_id(tmp_path: Path):
    store = recorded(tmp_path)
    failing = Outbox(TransportError("451 try later", temporary=True))
    summary = runner(store, failing).send_due()
    assert summary.deferred and not summary.sent
    outbox = Outbox()
    too_soon = ReportRunner(SETTINGS, store, InMemoryResolver(), outbox,
                            clock=lambda: TODAY + 10, sleep=lambda _: None)
    assert too_soon.send_due().sent == []
    later = ReportRunner(SETTINGS, store, InMemoryResolver(), outbox,
                         clock=lambda: TODAY + SETTINGS.retry_seconds + 1, sleep=lambda _: None)
    assert later.send_due().sent
    (report,) = later.preview(int(YESTERDAY // DAY))
    assert report.filename == attachment(outbox.sent[0][2])[0]


def test_an_unauthorized_external_destination_gets_nothing(tmp_path: Path):
    store = recorded(tmp_path, rua=("mailto:reports@vendor.example",))
    outbox = Outbox()
    summary = runner(store, outbox, {"vendor.example": ""}).send_due()
    assert outbox.sent == []
    assert any("publishes no sender.example._report._dmarc" in d for d in summary.dropped)


def test_an_authorized_external_destination_gets_the_report(tmp_path: Path):
    store = recorded(tmp_path, rua=("mailto:reports@vendor.example!10m",))
    outbox = Outbox()
    zones = {"vendor.example": 'sender.example._report._dmarc IN TXT "v=DMARC1"'}
    runner(store, outbox, zones).send_due()
    assert [r for _, r, _ in outbox.sent] == ["reports@vendor.example"]


def test_a_dns_error_on_authorization_defers(tmp_path: Path):
    store = recorded(tmp_path, rua=("mailto:reports@vendor.example",))
    resolver = InMemoryResolver.from_zones({"vendor.example": ""})
    resolver.fail("sender.example._report._dmarc.vendor.example")
    outbox = Outbox()
    summary = ReportRunner(SETTINGS, store, resolver, outbox, clock=lambda: TODAY,
                           sleep=lambda _: None).send_due()
    assert summary.deferred and outbox.sent == []


def test_size_limits_and_the_suppression_list(tmp_path: Path):
    store = recorded(tmp_path, rua=("mailto:dmarc@sender.example!1k",))
    outbox = Outbox()
    summary = runner(store, outbox).send_due()
    assert outbox.sent == [] and any("limit of 1024" in d for d in summary.dropped)
    store2 = recorded(tmp_path / "x")
    suppressed = ReportSettings(enabled=True, org_name="E", sender="dmarc@example.net",
                                suppress=("sender.example",))
    runner(store2, outbox, settings=suppressed).send_due()
    assert outbox.sent == []


def test_today_is_not_sent_before_it_is_over(tmp_path: Path):
    store = recorded(tmp_path)
    outbox = Outbox()
    early = ReportRunner(SETTINGS, store, InMemoryResolver(), outbox,
                         clock=lambda: YESTERDAY + 60, sleep=lambda _: None)
    assert early.send_due().sent == [] and outbox.sent == []


def test_destination_uris():
    limited = parse_destination("mailto:a@b.example!10m")
    assert limited is not None and limited.max_bytes == 10 << 20
    assert parse_destination("https://b.example/") is None
    assert parse_destination("mailto:nobody") is None
