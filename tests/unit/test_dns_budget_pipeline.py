"""A message during a DNS outage: its checks share one DNS time budget (issue 9, item 4)."""

from __future__ import annotations

import ipaddress

from prometheus_client import REGISTRY

from mailward.config import DnsSettings, GeneralSettings, Settings
from mailward.dns import DnsResolver
from mailward.messagefile import transaction_from_bytes
from mailward.model import Action, Connection
from mailward.pipeline import Pipeline, build_inbound_checks
from tests.unit.test_dns import FakeDnsServer

MESSAGE = (b"From: Alice <alice@sender.example>\r\nTo: bob@example.net\r\n"
           b"Subject: hi\r\nDKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=s1;"
           b" h=from; bh=AAAA; b=AAAA\r\n\r\nhello\r\n")


def budget_hits() -> float:
    return sum(REGISTRY.get_sample_value("mailward_dns_queries_total",
                                         {"rdtype": rdtype, "outcome": "budget"}) or 0.0
               for rdtype in ("A", "AAAA", "PTR", "TXT", "MX"))


def test_a_black_holed_dns_server_costs_one_budget_and_never_a_rejection():
    silent = FakeDnsServer("silent")
    try:
        dns = DnsSettings(nameservers=("127.0.0.1",), port=silent.port, timeout=0.3,
                          message_budget=0.6)
        settings = Settings(general=GeneralSettings(authserv_id="mx.example.net"), dns=dns)
        resolver = DnsResolver(dns)
        pipeline = Pipeline(settings, resolver, build_inbound_checks(settings, resolver))
        before = budget_hits()
        verdict = pipeline.evaluate(
            Connection(client_ip=ipaddress.ip_address("203.0.113.9"),
                       client_name="unknown", helo="mail.sender.example"),
            transaction_from_bytes(MESSAGE, mail_from="alice@sender.example",
                                   recipients=("bob@example.net",), queue_id="Q1"))
        # iprev, SPF for MAIL FROM and HELO, the DKIM key, DMARC: more lookups than the
        # budget has time for; the late ones were answered temperror without asking.
        assert budget_hits() > before
        assert verdict.action is Action.TEMPFAIL  # 451: try again, never a rejection
        assert any(result.result == "temperror" for result in verdict.results)
    finally:
        silent.close()
