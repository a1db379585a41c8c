"""The recording hook in Pipeline._evaluate_inbound: one call, never costing mail."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from mailward.config import Settings
from mailward.dns import InMemoryResolver
from mailward.model import Action, Connection, Header, Transaction
from mailward.pipeline import Pipeline, build_inbound_checks
from mailward.reports.recorder import DmarcRecorder
from mailward.reports.records import AppliedDisposition, Observation
from mailward.reports.store import ReportStore

ZONES = {
    "example": "",
    "org": "",
    "example.org": """
@       IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc  IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@example.org"
""",
    "in-addr.arpa": "",
}
MESSAGE = Transaction(queue_id="4ABC", mail_from="a@example.org",
                      recipients=("b@example.net",), headers=(Header("From", "a@example.org"),))


def pipeline(recorder: DmarcRecorder) -> Pipeline:
    settings = Settings()
    resolver = InMemoryResolver.from_zones(ZONES)
    return Pipeline(settings=settings, resolver=resolver,
                    inbound=build_inbound_checks(settings, resolver), recorder=recorder)


def test_an_inbound_message_is_recorded_with_its_spf_and_disposition(tmp_path: Path):
    store = ReportStore(tmp_path / "r.db")
    verdict = pipeline(DmarcRecorder(store, clock=lambda: 1_780_000_000.0)).evaluate(
        Connection(ipaddress.ip_address("198.51.100.7")), MESSAGE)
    assert verdict.action is Action.ACCEPT
    (period,) = store.periods()
    assert period.policy_domain == "example.org"
    (counted,) = store.rows(period)
    assert counted.count == 1
    assert counted.row.source_ip == "198.51.100.7"
    assert counted.row.disposition is AppliedDisposition.PASS
    assert [(s.domain, s.scope, s.result) for s in counted.row.spf] == [
        ("example.org", "mfrom", "pass")]


class BrokenStore(ReportStore):
    def add(self, observation: Observation, now: float, count: int = 1) -> None:
        raise RuntimeError("disk on fire")


def test_a_failing_store_does_not_change_the_verdict():
    verdict = pipeline(DmarcRecorder(BrokenStore("/nonexistent/r.db"))).evaluate(
        Connection(ipaddress.ip_address("198.51.100.7")), MESSAGE)
    assert verdict.action is Action.ACCEPT
    assert any("dmarc=pass" in str(edit) for edit in verdict.header_edits)
