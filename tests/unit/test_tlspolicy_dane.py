"""DANE decisions (RFC 7672) from validated and unvalidated answers, how they rank above
MTA-STS in the engine, the response parsing of the wire client, and the settings."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from mailward.config import ConfigError, parse_settings
from mailward.dns import InMemoryResolver, Outcome
from mailward.tlspolicy.dane import (
    Dane,
    DaneOutcome,
    SecureAnswer,
    answer_from_response,
    key_port,
    mx_hosts,
    usable_tlsa,
)
from mailward.tlspolicy.engine import AnswerKind, TlsPolicyEngine
from mailward.tlspolicy.mtasts import MemoryPolicyCache
from mailward.tlspolicy.settings import ResolverAddress, TlsPolicySettings
from mailward.tlspolicy.socketmap import ReplyStatus

EE = "3 1 1 " + "ab" * 32
PKIX = "1 1 1 " + "cd" * 32
POLICY = "version: STSv1\nmode: enforce\nmx: mx1.example.org\nmax_age: 86400\n"


class FakeDnssec:
    """Answers from a table: (name, type) -> SecureAnswer; anything else is a validated
    NXDOMAIN.  Records every query."""

    def __init__(self, table: dict[tuple[str, str], SecureAnswer]) -> None:
        self.table = table
        self.queries: list[tuple[str, str]] = []

    def query(self, name: str, rdtype: str) -> SecureAnswer:
        self.queries.append((name, rdtype))
        return self.table.get((name, rdtype), SecureAnswer(Outcome.NXDOMAIN, secure=True,
                                                           ttl=60))


def secure(*records: str, ttl: int = 300) -> SecureAnswer:
    return SecureAnswer(Outcome.ANSWER, records, True, ttl)


def insecure(*records: str) -> SecureAnswer:
    return SecureAnswer(Outcome.ANSWER, records, False, 300)


SERVFAIL = SecureAnswer(Outcome.TEMPERROR, error="SERVFAIL")
TWO_MX = secure("10 mx1.example.org.", "20 mx2.example.org.")


def decide(table: dict[tuple[str, str], SecureAnswer], port: int = 25) -> DaneOutcome:
    return Dane(FakeDnssec(table)).decide("example.org", port).outcome


def test_every_mx_with_usable_tlsa_is_dane_only() -> None:
    decision = Dane(FakeDnssec({
        ("example.org", "MX"): TWO_MX,
        ("_25._tcp.mx1.example.org", "TLSA"): secure(EE, ttl=120),
        ("_25._tcp.mx2.example.org", "TLSA"): secure(EE),
    })).decide("example.org")
    assert decision.outcome is DaneOutcome.DANE_ONLY
    assert decision.policy == "dane-only"
    assert decision.ttl == 120


def test_some_mx_with_tlsa_is_dane() -> None:
    assert decide({("example.org", "MX"): TWO_MX,
                   ("_25._tcp.mx2.example.org", "TLSA"): secure(EE)}) is DaneOutcome.DANE


def test_only_unusable_tlsa_records_is_dane_not_dane_only() -> None:
    """PKIX-EE(1) is unusable for SMTP (RFC 7672 3.1.3): Postfix must still use TLS."""
    assert decide({("example.org", "MX"): secure("10 mx1.example.org."),
                   ("_25._tcp.mx1.example.org", "TLSA"): secure(PKIX)}) is DaneOutcome.DANE


def test_no_tlsa_insecure_mx_and_insecure_tlsa_give_no_dane() -> None:
    one_mx = secure("10 mx1.example.org.")
    assert decide({("example.org", "MX"): one_mx}) is DaneOutcome.NO_TLSA
    assert decide({("example.org", "MX"): insecure("10 mx1.example.org."),
                   ("_25._tcp.mx1.example.org", "TLSA"): secure(EE)}) is DaneOutcome.INSECURE
    assert decide({("example.org", "MX"): one_mx,
                   ("_25._tcp.mx1.example.org", "TLSA"): insecure(EE)}) is DaneOutcome.NO_TLSA


def test_failures_in_a_signed_zone_are_tempfail() -> None:
    assert decide({("example.org", "MX"): SERVFAIL}) is DaneOutcome.TEMPFAIL
    assert decide({("example.org", "MX"): TWO_MX,
                   ("_25._tcp.mx1.example.org", "TLSA"): secure(EE),
                   ("_25._tcp.mx2.example.org", "TLSA"): SERVFAIL}) is DaneOutcome.TEMPFAIL


def test_a_failing_tlsa_lookup_for_a_host_in_an_unsigned_zone_is_no_dane() -> None:
    """RFC 7672 2.2.2: an MX host whose address is insecure cannot use DANE, so its
    broken DNS does not defer the domain; a secure or failing address still does."""
    table = {("example.org", "MX"): secure("10 mx1.example.org.", "20 mx.unsigned.example."),
             ("_25._tcp.mx1.example.org", "TLSA"): secure(EE),
             ("_25._tcp.mx.unsigned.example", "TLSA"): SERVFAIL,
             ("mx.unsigned.example", "A"): insecure("192.0.2.1")}
    assert decide(table) is DaneOutcome.DANE
    table[("mx.unsigned.example", "A")] = secure("192.0.2.1")
    assert decide(table) is DaneOutcome.TEMPFAIL
    table[("mx.unsigned.example", "A")] = SERVFAIL
    assert decide(table) is DaneOutcome.TEMPFAIL


def test_null_mx_and_missing_domain_are_no_mx() -> None:
    assert decide({("example.org", "MX"): secure("0 .")}) is DaneOutcome.NO_MX
    assert decide({}) is DaneOutcome.NO_MX


def test_implicit_mx_uses_the_domain_itself() -> None:
    table = {("example.org", "MX"): SecureAnswer(Outcome.NODATA, secure=True, ttl=60),
             ("_25._tcp.example.org", "TLSA"): secure(EE)}
    assert decide(table) is DaneOutcome.DANE_ONLY


def test_tlsa_name_follows_the_next_hop_port() -> None:
    fake = FakeDnssec({("example.org", "MX"): secure("10 mx1.example.org."),
                       ("_2525._tcp.mx1.example.org", "TLSA"): secure(EE)})
    assert Dane(fake).decide("example.org", key_port("example.org:2525")).policy == "dane-only"
    assert ("_2525._tcp.mx1.example.org", "TLSA") in fake.queries
    assert key_port("example.org") == 25 and key_port("example.org:x") == 25


def test_helpers() -> None:
    assert mx_hosts(("20 b.example.", "10 A.example.", "30 b.example.")) == \
        ["a.example", "b.example"]
    assert usable_tlsa(("2 0 1 " + "00" * 32,)) and not usable_tlsa((PKIX, "3 7 1 00", "bad"))


# --------------------------------------------------------------------------- engine


def engine(table: dict[tuple[str, str], SecureAnswer], dane: bool = True
           ) -> tuple[TlsPolicyEngine, list[str]]:
    resolver = InMemoryResolver.from_zones({
        "example.org": '_mta-sts 300 IN TXT "v=STSv1; id=1"\n'})
    fetched: list[str] = []

    def fetch(domain: str) -> str:
        fetched.append(domain)
        return POLICY

    settings = TlsPolicySettings(servername=False, cache="memory", dane=dane,
                                 dnssec_resolver=ResolverAddress("127.0.0.1", 53))
    return TlsPolicyEngine(settings, resolver, fetch, MemoryPolicyCache(),
                           FakeDnssec(table)), fetched


def test_dane_wins_over_an_enforce_policy() -> None:
    tlsa = {("example.org", "MX"): secure("10 mx1.example.org.", ttl=100),
            ("_25._tcp.mx1.example.org", "TLSA"): secure(EE)}
    tls, fetched = engine(tlsa)
    answer = tls.answer("example.org")
    assert (answer.kind, answer.reply.status, answer.reply.data) == \
        (AnswerKind.DANE, ReplyStatus.OK, "dane-only")
    assert fetched == []  # MTA-STS not even asked
    assert tls.known_answer("example.org") is answer  # kept for the TTL
    tls, fetched = engine(tlsa, dane=False)
    assert tls.answer("example.org").reply.data == "secure match=mx1.example.org"


def test_without_tlsa_mta_sts_decides() -> None:
    tls, fetched = engine({("example.org", "MX"): secure("10 mx1.example.org.")})
    answer = tls.answer("example.org")
    assert answer.kind is AnswerKind.SECURE and fetched == ["example.org"]
    assert answer.dane is not None and answer.dane.outcome is DaneOutcome.NO_TLSA


def test_bogus_tlsa_is_temp_and_not_remembered() -> None:
    tls, fetched = engine({("example.org", "MX"): secure("10 mx1.example.org."),
                           ("_25._tcp.mx1.example.org", "TLSA"): SERVFAIL})
    answer = tls.answer("example.org")
    assert (answer.kind, answer.reply.status) == (AnswerKind.TEMP, ReplyStatus.TEMP)
    assert answer.changes_delivery and fetched == []
    assert tls.known_answer("example.org") is None  # asked again next time


# --------------------------------------------------------------------------- wire parsing


def response(rcode: dns.rcode.Rcode, ad: bool, answer: list[dns.rrset.RRset] | None = None
             ) -> dns.message.Message:
    query = dns.message.make_query("example.org", "MX", want_dnssec=True)
    message = dns.message.make_response(query)
    message.set_rcode(rcode)
    if ad:
        message.flags |= dns.flags.AD
    message.answer = answer or []
    return message


def test_answer_from_response() -> None:
    mx = dns.rrset.from_text("example.org.", 77, "IN", "MX", "10 mx1.example.org.")
    found = answer_from_response(response(dns.rcode.NOERROR, True, [mx]), "MX")
    assert (found.outcome, found.records, found.secure, found.ttl) == \
        (Outcome.ANSWER, ("10 mx1.example.org.",), True, 77)
    assert not answer_from_response(response(dns.rcode.NOERROR, False, [mx]), "MX").secure
    assert answer_from_response(response(dns.rcode.NOERROR, True), "MX").outcome is \
        Outcome.NODATA
    assert answer_from_response(response(dns.rcode.NXDOMAIN, True), "MX").outcome is \
        Outcome.NXDOMAIN
    failed = answer_from_response(response(dns.rcode.SERVFAIL, False), "MX")
    assert (failed.outcome, failed.error) == (Outcome.TEMPERROR, "SERVFAIL")


# --------------------------------------------------------------------------- settings


def test_resolver_address() -> None:
    assert ResolverAddress.parse("127.0.0.1:5353") == ResolverAddress("127.0.0.1", 5353)
    assert ResolverAddress.parse("[::1]:53") == ResolverAddress("::1", 53)
    assert ResolverAddress.parse("127.0.0.53") == ResolverAddress("127.0.0.53", 53)
    for bad in ("192.0.2.1:53", "localhost:53", "127.0.0.1:0", "[::1]x"):
        with pytest.raises(ValueError):
            ResolverAddress.parse(bad)


def test_dane_settings() -> None:
    settings = parse_settings('[tlspolicy]\ndane = true\n'
                                  'dnssec_resolver = "127.0.0.1:5353"\n').tlspolicy
    assert settings.dane and settings.dnssec_resolver == ResolverAddress("127.0.0.1", 5353)
    with pytest.raises(ConfigError, match="dnssec_resolver"):
        parse_settings("[tlspolicy]\ndane = true\n")
    with pytest.raises(ConfigError, match="loopback"):
        parse_settings('[tlspolicy]\ndane = true\ndnssec_resolver = "192.0.2.1:53"\n')


def test_redis_cache_setting() -> None:
    assert parse_settings('[tlspolicy]\ncache = "redis"\n').tlspolicy.cache == "redis"
    with pytest.raises(ConfigError, match="'redis'"):
        parse_settings('[tlspolicy]\ncache = "memcached"\n')
