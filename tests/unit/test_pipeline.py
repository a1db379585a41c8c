"""The pipeline: direction, forged A-R removal, our A-R header, failing checks; Verdict rules."""

from __future__ import annotations

import ipaddress
import logging
import random
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from mailward.authresults import HEADER_NAME
from mailward.config import GeneralSettings, InternalErrorAction, Settings, SpfSettings
from mailward.dns import DnsAnswer, InMemoryResolver
from mailward.model import (
    Action,
    AppendHeader,
    Connection,
    Direction,
    Header,
    HeaderEdit,
    InsertHeader,
    RemoveHeader,
    SmtpReply,
    Transaction,
    Verdict,
)
from mailward.pipeline import Pipeline, build_inbound_checks
from mailward.signing.dkim import SigningError

OURS = "mx.example.net"
SETTINGS = Settings(
    general=GeneralSettings(
        authserv_id=OURS,
        trusted_networks=(
            ipaddress.ip_network("127.0.0.0/8"),
            ipaddress.ip_network("::1/128"),
            ipaddress.ip_network("192.0.2.0/24"),
            ipaddress.ip_network("2001:db8:1::/48"),
        ),
    )
)

HEADERS = (
    Header("Received", "from x by y"),
    Header("Authentication-Results", "mx.example.net; dmarc=pass"),  # 1: forged
    Header("Authentication-Results", "relay.example.org; spf=pass"),  # 2
    Header("From", "a@example.org"),
    Header("authentication-results", "(x) MX.example.net;\r\n\tdkim=pass"),  # 3: forged
)
TRANSACTION = Transaction(
    queue_id="4ABC", mail_from="a@example.org", recipients=("b@example.net",), headers=HEADERS,
)


def connection(ip: str | None, auth_user: str | None = None) -> Connection:
    return Connection(
        client_ip=ipaddress.ip_address(ip) if ip is not None else None, auth_user=auth_user
    )


ZONES = {
    "example.org": """
@      IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
mail   IN A   198.51.100.7
""",
    "in-addr.arpa": "7.100.51.198 IN PTR mail.example.org.\n",
}


class CountingResolver(InMemoryResolver):
    """Zone answers, plus a switch that makes every lookup raise (a bug in a check)."""

    explode: bool = False

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        if self.explode:
            raise RuntimeError("bug below the check")
        return super().query(name, rdtype)


def checking_pipeline(*, explode: bool = False, received_spf: bool = False) -> Pipeline:
    resolver = CountingResolver()
    for origin, text in ZONES.items():
        resolver.add_zone(origin, text)
    resolver.explode = explode
    settings = replace(SETTINGS, spf=SpfSettings(helo=False, received_spf=received_spf))
    return Pipeline(settings=settings, resolver=resolver,
                    inbound=build_inbound_checks(settings, resolver))


def pipeline() -> Pipeline:
    return Pipeline(settings=SETTINGS, resolver=InMemoryResolver())


def forged_removed() -> float:
    name = "mailward_milter_forged_authentication_results_removed_total"
    return REGISTRY.get_sample_value(name) or 0.0


def not_spam_headers(edits: tuple[HeaderEdit, ...]) -> tuple[HeaderEdit, ...]:
    """The edits without the X-Spam-* headers scoring adds (tests/unit/test_scoring.py)."""
    return tuple(edit for edit in edits if not edit.name.startswith("X-Spam-"))


def errors(component: str) -> float:
    return REGISTRY.get_sample_value("mailward_errors_total", {"component": component}) or 0.0


# --------------------------------------------------------------------------- direction


def test_inbound_removes_forged_then_adds_one_header():
    before = forged_removed()
    verdict = pipeline().evaluate(connection("198.51.100.7"), TRANSACTION)
    assert verdict.direction is Direction.INBOUND
    assert verdict.action is Action.ACCEPT
    assert verdict.reply is None
    assert verdict.results == ()
    assert not_spam_headers(verdict.header_edits) == (
        RemoveHeader(HEADER_NAME, 3),
        RemoveHeader(HEADER_NAME, 1),
        InsertHeader(HEADER_NAME, "mx.example.net; none", 0),
    )
    assert AppendHeader("X-Spam-Flag", "NO") in verdict.header_edits
    assert forged_removed() - before == 2


def test_inbound_without_forgeries_only_adds_our_header():
    clean = Transaction(
        queue_id=None, mail_from="", recipients=("b@example.net",),
        headers=(Header("Authentication-Results", "relay.example.org; spf=pass"),),
    )
    before = forged_removed()
    verdict = pipeline().evaluate(connection("2001:db8:2::1"), clean)
    assert verdict.direction is Direction.INBOUND
    assert not_spam_headers(verdict.header_edits) == (
        InsertHeader(HEADER_NAME, "mx.example.net; none"),)
    assert forged_removed() == before


@pytest.mark.parametrize(
    ("ip", "auth_user"),
    [
        ("192.0.2.25", None),  # trusted network
        ("127.0.0.1", None),
        ("::1", None),
        ("2001:db8:1::25", None),
        ("::ffff:192.0.2.25", None),  # IPv4-mapped IPv6 from a dual-stack listener
        ("::ffff:127.0.0.1", None),
        ("198.51.100.7", "alice"),  # authenticated submission from anywhere
        (None, None),  # local submission (sendmail command)
    ],
)
def test_outbound_keeps_headers_and_runs_no_inbound_checks(ip: str | None, auth_user: str | None):
    p = checking_pipeline()
    conn = connection(ip, auth_user)
    assert p.direction(conn) is Direction.OUTBOUND
    verdict = p.evaluate(conn, TRANSACTION)
    assert verdict.direction is Direction.OUTBOUND
    assert verdict.action is Action.ACCEPT
    assert not any(isinstance(edit, RemoveHeader) for edit in verdict.header_edits)
    assert verdict.header_edits == (InsertHeader(HEADER_NAME, "mx.example.net; none"),)
    assert verdict.results == ()  # no inbound check ran


@pytest.mark.parametrize(
    "ip", ["198.51.100.7", "::ffff:198.51.100.7", "2001:db8:2::1", "192.0.3.1", "128.0.0.1"]
)
def test_untrusted_addresses_are_inbound(ip: str):
    assert pipeline().direction(connection(ip)) is Direction.INBOUND


def test_empty_auth_user_is_not_authenticated():
    assert pipeline().direction(connection("198.51.100.7", "")) is Direction.INBOUND


# --------------------------------------------------------------------------- checks


def test_inbound_checks_report_in_the_conventional_order():
    verdict = checking_pipeline().evaluate(connection("198.51.100.7"), TRANSACTION)
    assert [(r.method, r.result) for r in verdict.results] == [
        ("iprev", "pass"), ("spf", "pass"), ("dkim", "none"), ("arc", "none"), ("dmarc", "none")]
    assert verdict.header_edits[:2] == (RemoveHeader(HEADER_NAME, 3), RemoveHeader(HEADER_NAME, 1))
    assert verdict.header_edits[2] == InsertHeader(
        HEADER_NAME,
        "mx.example.net;\n\tiprev=pass reason=mail.example.org policy.iprev=198.51.100.7;"
        "\n\tspf=pass smtp.mailfrom=a@example.org;\n\tdkim=none;"
        "\n\tarc=none smtp.remote-ip=198.51.100.7;"
        '\n\tdmarc=none reason="no DMARC record" header.from=example.org',
    )
    # no Received-SPF unless asked for
    assert len(not_spam_headers(verdict.header_edits)) == 3


def test_received_spf_is_added_when_configured():
    verdict = checking_pipeline(received_spf=True).evaluate(
        connection("203.0.113.9"), TRANSACTION)
    received = [e for e in verdict.header_edits
                if isinstance(e, InsertHeader) and e.name == "Received-SPF"]
    assert len(received) == 1
    assert received[0].value.startswith("fail")
    assert ("spf", "fail") in [(r.method, r.result) for r in verdict.results]


def test_failing_check_becomes_temperror_and_others_still_run(caplog: pytest.LogCaptureFixture):
    errors_before = errors("check_iprev"), errors("check_spf")
    with caplog.at_level(logging.ERROR, logger="mailward.pipeline"):
        verdict = checking_pipeline(explode=True).evaluate(connection("198.51.100.7"),
                                                           TRANSACTION)
    # Each failed check is temperror in its own place; the others still ran.
    assert [(r.method, r.result, r.reason) for r in verdict.results] == [
        ("iprev", "temperror", "internal error"),
        ("spf", "temperror", "internal error"),
        ("dkim", "none", None),
        ("arc", "none", None),
        ("dmarc", "temperror", "internal error"),
    ]
    assert verdict.action is Action.ACCEPT
    assert (errors("check_iprev") - errors_before[0], errors("check_spf") - errors_before[1]) == (
        1, 1)
    logged = [record for record in caplog.records if "check spf failed" in record.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None  # with its traceback
    assert "4ABC" in logged[0].getMessage()


def test_evaluate_is_repeatable():
    p = checking_pipeline()
    conn = connection("198.51.100.7")
    assert p.evaluate(conn, TRANSACTION) == p.evaluate(conn, TRANSACTION)


# --------------------------------------------------------------------------- model rules


@pytest.mark.parametrize("action", [Action.REJECT, Action.TEMPFAIL])
def test_reject_and_tempfail_need_a_reply(action: Action):
    with pytest.raises(ValueError, match="needs an SMTP reply"):
        Verdict(action=action)
    reply = SmtpReply("550", "5.7.1", "rejected") if action is Action.REJECT else SmtpReply(
        "451", "4.7.1", "try later"
    )
    assert Verdict(action=action, reply=reply).reply == reply


@pytest.mark.parametrize("action", [Action.ACCEPT, Action.QUARANTINE, Action.DISCARD])
def test_other_actions_need_no_reply(action: Action):
    assert Verdict(action=action).reply is None


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [("250", "2.0.0"), ("55", "5.7.1"), ("5500", ""), ("abc", ""), ("650", ""),
     ("550", "4.7.1"), ("451", "5.7.1")],
)
def test_smtp_reply_validation(code: str, enhanced: str):
    with pytest.raises(ValueError):
        SmtpReply(code, enhanced, "text")


def test_smtp_reply_text():
    assert str(SmtpReply("550", "5.7.1", "DMARC policy")) == "550 5.7.1 DMARC policy"
    assert str(SmtpReply("451", "", "try again")) == "451 try again"


def test_connection_label_and_headers_named():
    assert Connection(None).client_label == "unknown[local]"
    assert Connection(ipaddress.ip_address("192.0.2.1"), "mail.example").client_label == (
        "mail.example[192.0.2.1]"
    )
    assert [(n, h.value) for n, h in TRANSACTION.headers_named("AUTHENTICATION-RESULTS")] == [
        (1, "mx.example.net; dmarc=pass"),
        (2, "relay.example.org; spf=pass"),
        (3, "(x) MX.example.net;\r\n\tdkim=pass"),
    ]
    assert TRANSACTION.log_id == "4ABC"


def test_headers_named_answers_as_a_scan_of_every_header_would():
    # The lookups come from an index made once per Transaction: the same pairs, in
    # order, as the scan it replaced, for every spelling of every name and for none.
    rng = random.Random(8)
    names = ["Received", "received", "RECEIVED", "From", "X-Spam-Flag", "x-spam-flag", "To"]
    for _ in range(200):
        headers = tuple(Header(rng.choice(names), f"v{n}") for n in range(rng.randint(0, 12)))
        transaction = Transaction("Q", "a@example.org", ("b@example.net",), headers)
        for wanted in [*names, "Subject", "subject"]:
            scanned = [header for header in headers if header.name.lower() == wanted.lower()]
            assert list(transaction.headers_named(wanted)) == list(enumerate(scanned, 1))


# --------------------------------------------------------------------------- signing


class RefusingSigner:
    def sign(self, connection: Connection, transaction: Transaction) -> tuple[InsertHeader, ...]:
        raise SigningError("key unreadable")


class Signer:
    def sign(self, connection: Connection, transaction: Transaction) -> tuple[InsertHeader, ...]:
        return (InsertHeader("DKIM-Signature", "v=1; a=rsa-sha256; d=example.org"),)


def test_outbound_mail_gets_the_signers_headers_after_ours():
    p = Pipeline(settings=SETTINGS, resolver=InMemoryResolver(), signer=Signer())
    verdict = p.evaluate(connection("127.0.0.1"), TRANSACTION)
    assert verdict.header_edits == (
        InsertHeader(HEADER_NAME, "mx.example.net; none"),
        InsertHeader("DKIM-Signature", "v=1; a=rsa-sha256; d=example.org"),
    )
    # Inbound mail is never signed.
    inbound = p.evaluate(connection("198.51.100.7"), TRANSACTION)
    assert not [e for e in inbound.header_edits
                if isinstance(e, InsertHeader) and e.name == "DKIM-Signature"]


def test_a_refused_signature_defers_even_when_internal_errors_accept():
    settings = replace(SETTINGS, general=replace(SETTINGS.general,
                                                 on_internal_error=InternalErrorAction.ACCEPT))
    p = Pipeline(settings=settings, resolver=InMemoryResolver(), signer=RefusingSigner())
    verdict = p.evaluate(connection("127.0.0.1", "alice"), TRANSACTION)
    assert verdict.action is Action.TEMPFAIL
    assert verdict.reply == SmtpReply("451", "4.7.0",
                                      "Message could not be signed, try again later")
    assert verdict.header_edits == ()
