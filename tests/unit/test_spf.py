"""SPF check: results, identities, limits and DNS errors, with in-memory zones."""

from __future__ import annotations

import ipaddress

import pytest
import spf
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.checks.spf import (
    RECEIVED_SPF,
    SpfCheck,
    SpfIdentity,
    SpfLimits,
    SpfOutcome,
    SpfResult,
    auth_result,
    evaluate_helo,
    evaluate_spf,
    lookup_domain,
    normalise_client_ip,
    received_spf,
)
from mailward.dns import InMemoryResolver
from mailward.model import AuthProperty, AuthResult, Connection, Transaction
from tests.support.checks import spf_auth_results

CLIENT = ipaddress.ip_address("192.0.2.10")
OTHER = ipaddress.ip_address("198.51.100.7")
CLIENT6 = ipaddress.ip_address("2001:db8::10")

EXAMPLE = """
@          TXT "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/64 -all"
soft       TXT "v=spf1 ip4:192.0.2.0/24 ~all"
neutral    TXT "v=spf1 ip4:192.0.2.0/24 ?all"
nothing    A   192.0.2.99
broken     TXT "v=spf1 ip4:192.0.2.0/24 moo -all"
explained  TXT "v=spf1 -all exp=why.example.com"
why        TXT "%{i} may not send for %{d}"
badexp     TXT "v=spf1 -all exp=ctl.example.com"
ctl        TXT "line one\\010line two"
twice      TXT "v=spf1 -all"
twice      TXT "v=spf1 +all"
viamx      TXT "v=spf1 mx -all"
viamx      MX  10 mx1.example.com.
mx1        A   192.0.2.25
viaa       TXT "v=spf1 a -all"
viaa       A   192.0.2.30
viaa       AAAA 2001:db8::30
inc        TXT "v=spf1 include:partner.example.com -all"
partner    TXT "v=spf1 ip4:198.51.100.0/24 -all"
mail       TXT "v=spf1 a -all"
mail       A   192.0.2.10
junk       TXT "v=spf1 a:nx1.example.com a:nx2.example.com a:nx3.example.com ?all"
twovoid    TXT "v=spf1 a:nx1.example.com a:nx2.example.com ?all"
"""


def zone(text: str = EXAMPLE, origin: str = "example.com") -> InMemoryResolver:
    return InMemoryResolver.from_zones({origin: text})


# --------------------------------------------------------------------------- the seven results


@pytest.mark.parametrize(
    ("mail_from", "client", "expected"),
    [
        ("user@example.com", CLIENT, SpfResult.PASS),
        ("user@example.com", OTHER, SpfResult.FAIL),
        ("user@soft.example.com", OTHER, SpfResult.SOFTFAIL),
        ("user@neutral.example.com", OTHER, SpfResult.NEUTRAL),
        ("user@nothing.example.com", CLIENT, SpfResult.NONE),
        ("user@nx.example.com", CLIENT, SpfResult.NONE),
        ("user@broken.example.com", CLIENT, SpfResult.PERMERROR),
    ],
)
def test_mail_from_results(mail_from, client, expected) -> None:
    outcome = evaluate_spf(zone(), client, "mail.example.org", mail_from)
    assert outcome.result is expected
    assert outcome.identity is SpfIdentity.MAILFROM
    assert outcome.sender == mail_from


def test_temperror_when_the_record_lookup_fails() -> None:
    resolver = zone()
    resolver.fail("example.com", "TXT")
    outcome = evaluate_spf(resolver, CLIENT, "mail.example.org", "user@example.com")
    assert outcome.result is SpfResult.TEMPERROR
    assert "example.com/TXT" in outcome.problem


def test_temperror_when_an_include_lookup_fails() -> None:
    resolver = zone()
    resolver.fail("partner.example.com")
    outcome = evaluate_spf(resolver, OTHER, "mail.example.org", "user@inc.example.com")
    assert outcome.result is SpfResult.TEMPERROR
    assert "partner.example.com" in outcome.problem


def test_nxdomain_is_none_not_temperror() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "h.example.org", "user@missing.example.com")
    assert outcome.result is SpfResult.NONE
    assert outcome.problem == ""


def test_pass_records_the_matching_mechanism() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "h.example.org", "user@example.com")
    assert outcome.mechanism == "ip4:192.0.2.0/24"
    assert outcome.domain == "example.com"


def test_permerror_names_the_problem() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "h.example.org", "user@broken.example.com")
    assert outcome.problem == "Unknown mechanism found: moo"
    assert outcome.mechanism == ""


def test_mx_and_a_mechanisms() -> None:
    mx = evaluate_spf(zone(), "192.0.2.25", "h.example.org", "user@viamx.example.com")
    assert (mx.result, mx.mechanism) == (SpfResult.PASS, "mx")
    a = evaluate_spf(zone(), "192.0.2.30", "h.example.org", "user@viaa.example.com")
    assert (a.result, a.mechanism) == (SpfResult.PASS, "a")


# --------------------------------------------------------------------------- explanations


def test_fail_carries_the_domains_explanation() -> None:
    outcome = evaluate_spf(zone(), OTHER, "h.example.org", "user@explained.example.com")
    assert outcome.result is SpfResult.FAIL
    assert outcome.explanation == "198.51.100.7 may not send for explained.example.com"


def test_fail_without_exp_has_no_explanation() -> None:
    outcome = evaluate_spf(zone(), OTHER, "h.example.org", "user@example.com")
    assert outcome.explanation == ""


def test_explanation_control_characters_are_removed() -> None:
    outcome = evaluate_spf(zone(), OTHER, "h.example.org", "user@badexp.example.com")
    assert outcome.explanation == "line one line two"


def test_explanation_is_only_kept_for_fail() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "h.example.org", "user@explained.example.com")
    assert outcome.result is SpfResult.FAIL
    soft = evaluate_spf(zone(), OTHER, "h.example.org", "user@soft.example.com")
    assert soft.explanation == ""


# --------------------------------------------------------------------------- identities


@pytest.mark.parametrize("null_sender", ["", "<>", " <> ", None])
def test_null_sender_checks_helo(null_sender) -> None:
    outcome = evaluate_spf(zone(), CLIENT, "mail.example.com", null_sender)
    assert outcome.identity is SpfIdentity.HELO
    assert outcome.result is SpfResult.PASS
    assert outcome.sender == "postmaster@mail.example.com"
    assert outcome.domain == "mail.example.com"


def test_angle_brackets_and_empty_local_part() -> None:
    outcome = evaluate_spf(zone(), OTHER, "h.example.org", "<@explained.example.com>")
    assert outcome.sender == "postmaster@explained.example.com"
    assert outcome.explanation == "198.51.100.7 may not send for explained.example.com"


def test_quoted_local_part_with_at_sign() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "h.example.org", '"odd@local"@example.com')
    assert outcome.domain == "example.com"
    assert outcome.result is SpfResult.PASS


def test_helo_check() -> None:
    assert evaluate_helo(zone(), CLIENT, "mail.example.com").result is SpfResult.PASS
    outcome = evaluate_helo(zone(), OTHER, "mail.example.com")
    assert outcome.result is SpfResult.FAIL
    assert outcome.identity is SpfIdentity.HELO
    assert outcome.helo == "mail.example.com"


@pytest.mark.parametrize(
    "helo", ["[192.0.2.10]", "localhost", "192.0.2.10", "", None, "bad..example.com", "a b.com"]
)
def test_unusable_helo_is_none_without_dns(helo) -> None:
    resolver = zone()
    outcome = evaluate_helo(resolver, CLIENT, helo)
    assert outcome.result is SpfResult.NONE
    assert outcome.domain == ""
    assert resolver.queries == []


@pytest.mark.parametrize(
    "mail_from",
    [
        "user@[192.0.2.10]",
        "user@" + "a" * 64 + ".example.com",
        "user@a..example.com",
        "user@com",
        "user@" + ("abcdefghi." * 26) + "com",
    ],
)
def test_malformed_mail_from_domain_is_none(mail_from) -> None:
    resolver = zone()
    outcome = evaluate_spf(resolver, CLIENT, "h.example.org", mail_from)
    assert outcome.result is SpfResult.NONE
    assert outcome.identity is SpfIdentity.MAILFROM
    assert resolver.queries == []


def test_internationalised_domain_is_checked_as_a_labels() -> None:
    resolver = zone('@ TXT "v=spf1 ip4:192.0.2.0/24 -all"', origin="xn--bcher-kva.example")
    outcome = evaluate_spf(resolver, CLIENT, "h.example.org", "käufer@bücher.example")
    assert outcome.result is SpfResult.PASS
    assert outcome.domain == "xn--bcher-kva.example"
    assert resolver.queries[0] == ("xn--bcher-kva.example", "TXT")


def test_non_ascii_policy_is_permerror() -> None:
    record = '@ TXT "v=spf1 a:\\195\\169.example.net -all"'  # a UTF-8 "é" in the record
    resolver = InMemoryResolver.from_zones({"example.net": record})
    outcome = evaluate_spf(resolver, CLIENT, "h.example.org", "user@example.net")
    assert outcome.result is SpfResult.PERMERROR


# --------------------------------------------------------------------------- client addresses


def test_ipv6_client() -> None:
    resolver = zone()
    assert evaluate_spf(resolver, CLIENT6, "h", "u@example.com").result is SpfResult.PASS
    outcome = evaluate_spf(resolver, "2001:db8::30", "h", "u@viaa.example.com")
    assert outcome.result is SpfResult.PASS
    assert ("viaa.example.com", "AAAA") in resolver.queries
    assert evaluate_spf(resolver, "2001:db8:1::1", "h", "u@example.com").result is SpfResult.FAIL


def test_ipv4_mapped_ipv6_client_is_evaluated_as_ipv4() -> None:
    outcome = evaluate_spf(zone(), "::ffff:192.0.2.10", "h", "user@example.com")
    assert outcome.result is SpfResult.PASS
    assert outcome.client_ip == ipaddress.IPv4Address("192.0.2.10")
    assert outcome.mechanism == "ip4:192.0.2.0/24"


def test_normalise_client_ip() -> None:
    assert normalise_client_ip("::ffff:198.51.100.1") == ipaddress.ip_address("198.51.100.1")
    assert normalise_client_ip(CLIENT6) == CLIENT6


def test_unparsable_client_ip_is_the_callers_error() -> None:
    with pytest.raises(ValueError):
        evaluate_spf(zone(), "not-an-ip", "h", "user@example.com")


# --------------------------------------------------------------------------- limits


def _includes(count: int) -> str:
    # One character-string per include: a TXT string holds at most 255 octets.
    terms = " ".join(f'"include:i{n}.example.org "' for n in range(count))
    lines = [f'@ TXT "v=spf1 " {terms} "-all"']
    lines += [f'i{n} TXT "v=spf1 ip4:203.0.113.{n}"' for n in range(count)]
    return "\n".join(lines)


def test_ten_includes_are_allowed() -> None:
    resolver = zone(_includes(10), origin="example.org")
    outcome = evaluate_spf(resolver, "203.0.113.9", "h", "user@example.org")
    assert outcome.result is SpfResult.PASS


def test_eleven_includes_are_permerror() -> None:
    resolver = zone(_includes(11), origin="example.org")
    outcome = evaluate_spf(resolver, "203.0.113.10", "h", "user@example.org")
    assert outcome.result is SpfResult.PERMERROR
    assert "Too many DNS lookups" in outcome.problem
    # The eleventh include is refused before it is looked up.
    assert ("i10.example.org", "TXT") not in resolver.queries


def test_lookup_limit_is_configurable() -> None:
    resolver = zone(_includes(3), origin="example.org")
    limits = SpfLimits(dns_mechanisms=2)
    outcome = evaluate_spf(resolver, "203.0.113.2", "h", "user@example.org", limits=limits)
    assert outcome.result is SpfResult.PERMERROR


def test_two_void_lookups_are_allowed() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "h", "user@twovoid.example.com")
    assert outcome.result is SpfResult.NEUTRAL


def test_third_void_lookup_is_permerror() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "h", "user@junk.example.com")
    assert outcome.result is SpfResult.PERMERROR
    assert outcome.problem == "Void lookup limit of 2 exceeded: nx3.example.com"


def test_nodata_counts_as_void() -> None:
    # nothing.example.com exists (A) but has no AAAA: NODATA.
    text = EXAMPLE + '\nnodata TXT "v=spf1 a:nothing.example.com a:nx1.example.com ?all"\n'
    resolver = zone(text)
    outcome = evaluate_spf(
        resolver, CLIENT6, "h", "user@nodata.example.com", limits=SpfLimits(void_lookups=1)
    )
    assert outcome.result is SpfResult.PERMERROR
    assert outcome.problem.startswith("Void lookup limit of 1 exceeded")


def test_temperror_is_not_a_void_lookup() -> None:
    resolver = zone()
    for name in ("nx1.example.com", "nx2.example.com", "nx3.example.com"):
        resolver.fail(name)
    outcome = evaluate_spf(resolver, CLIENT, "h", "user@junk.example.com")
    assert outcome.result is SpfResult.TEMPERROR


def test_multiple_spf_records_are_permerror() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "h", "user@twice.example.com")
    assert outcome.result is SpfResult.PERMERROR
    assert "Two or more" in outcome.problem


def test_absurdly_long_record_is_permerror() -> None:
    strings = " ".join('"' + ("ip4:203.0.113.1 " * 15) + '"' for _ in range(30))
    resolver = zone(f'@ TXT "v=spf1 " {strings} "-all"', origin="long.example")
    outcome = evaluate_spf(resolver, CLIENT, "h", "user@long.example")
    assert outcome.result is SpfResult.PERMERROR
    assert "longer than 4096" in outcome.problem
    small = SpfLimits(max_record_length=8192)
    assert evaluate_spf(resolver, CLIENT, "h", "u@long.example", limits=small).result is (
        SpfResult.FAIL
    )


@pytest.mark.parametrize(
    "bad",
    [{"dns_mechanisms": 0}, {"dns_mechanisms": 21}, {"void_lookups": -1}, {"max_seconds": -1}],
)
def test_limits_are_validated(bad) -> None:
    with pytest.raises(ValueError):
        SpfLimits(**bad)


def test_time_budget_exceeded_is_temperror() -> None:
    limits = SpfLimits(max_seconds=0)
    outcome = evaluate_spf(zone(), CLIENT, "h", "user@example.com", limits=limits)
    assert outcome.result is SpfResult.TEMPERROR
    assert "exceeded" in outcome.problem


# ------------------------------------------------------------------ DNS through our resolver


def test_every_lookup_goes_through_the_resolver_once() -> None:
    """pyspf's own cache is bypassed: our resolver (which caches with TTLs) sees each query.

    The in-memory resolver records every lookup and keeps no cache, so a second
    evaluation repeats exactly the same queries: no state survives between evaluations
    inside pyspf, and no query goes elsewhere (no type-99 SPF lookups either).  With the
    real DnsResolver those repeats are cache hits.
    """
    resolver = zone()
    expected = [
        ("viamx.example.com", "TXT"),
        ("viamx.example.com", "MX"),
        ("mx1.example.com", "A"),
    ]
    evaluate_spf(resolver, "192.0.2.25", "h", "user@viamx.example.com")
    assert resolver.queries == expected
    evaluate_spf(resolver, "192.0.2.25", "h", "user@viamx.example.com")
    assert resolver.queries == expected * 2


def test_pyspf_module_is_left_alone() -> None:
    before = (spf.DNSLookup, spf.MAX_LOOKUP, spf.MAX_VOID_LOOKUPS)
    evaluate_spf(zone(), CLIENT, "h", "user@junk.example.com", limits=SpfLimits(void_lookups=5))
    assert (spf.DNSLookup, spf.MAX_LOOKUP, spf.MAX_VOID_LOOKUPS) == before


@settings(max_examples=200, deadline=None)
@given(
    helo=st.one_of(st.none(), st.text(max_size=80)),
    mail_from=st.one_of(st.none(), st.text(max_size=120)),
)
def test_any_identity_gives_a_defined_result(helo, mail_from) -> None:
    outcome = evaluate_spf(zone(), CLIENT, helo, mail_from)
    assert outcome.result in SpfResult
    header = received_spf(outcome, "mx.example.net")
    assert "\r" not in header
    assert all(line.startswith("\t") for line in header.split("\n")[1:])


MACROS = """
@ TXT "v=spf1 exists:%{l}.%{d} exists:%{L}.x.%{d} a:%{h} ptr:%{s} -all"
"""


@settings(max_examples=200, deadline=None)
@given(
    local=st.text(min_size=1, max_size=70).filter(lambda s: "@" not in s),
    helo=st.text(max_size=70),
)
def test_sender_controlled_macros_give_a_defined_result(local, helo) -> None:
    """%{l}, %{s} and %{h} put what the client sent into DNS names: never a crash."""
    resolver = zone(MACROS, origin="macro.example")
    outcome = evaluate_spf(resolver, CLIENT6, helo, f"{local}@macro.example")
    assert outcome.result in SpfResult


class ExplodingResolver:
    def query(self, name: str, rdtype: str):
        raise RuntimeError("bug in the resolver")


def test_unexpected_exceptions_are_not_swallowed() -> None:
    """The pipeline turns a check's exception into temperror and logs it; we must not hide it."""
    with pytest.raises(RuntimeError):
        evaluate_spf(ExplodingResolver(), CLIENT, "h.example.org", "user@example.com")
    with pytest.raises(RuntimeError):
        spf_auth_results(
            SpfCheck(ExplodingResolver()), _connection(), _transaction("u@example.com"))


# --------------------------------------------------------------------------- A-R results


def _connection(helo: str | None = "mail.example.com", ip=CLIENT) -> Connection:
    return Connection(client_ip=ip, client_name="mail.example.com", helo=helo)


def _transaction(mail_from: str) -> Transaction:
    return Transaction(queue_id="ABC123", mail_from=mail_from, recipients=("a@b.example",),
                       headers=())


def test_check_reports_mail_from_and_helo() -> None:
    check = SpfCheck(zone(), check_helo=True)
    results = spf_auth_results(check, _connection(), _transaction("user@example.com"))
    assert check.method == "spf"
    assert results == (
        AuthResult("spf", "pass", None, (AuthProperty("smtp", "mailfrom", "user@example.com"),)),
        AuthResult("spf", "pass", None, (AuthProperty("smtp", "helo", "mail.example.com"),)),
    )


def test_check_without_helo_identity() -> None:
    check = SpfCheck(zone(), check_helo=False)
    results = spf_auth_results(
        check, _connection(ip=OTHER), _transaction("<user@explained.example.com>"))
    assert results == (
        AuthResult(
            "spf", "fail", "198.51.100.7 may not send for explained.example.com",
            (AuthProperty("smtp", "mailfrom", "user@explained.example.com"),),
        ),
    )


def test_check_null_sender_reports_helo_once() -> None:
    check = SpfCheck(zone(), check_helo=True)
    results = spf_auth_results(check, _connection(ip=OTHER), _transaction("<>"))
    assert results == (
        AuthResult("spf", "fail", None, (AuthProperty("smtp", "helo", "mail.example.com"),)),
    )


def test_check_errors_carry_a_reason() -> None:
    resolver = zone()
    resolver.fail("example.com", "TXT")
    check = SpfCheck(resolver, check_helo=False)
    (temp,) = spf_auth_results(check, _connection(), _transaction("user@example.com"))
    assert temp.result == "temperror"
    assert temp.reason and "example.com/TXT" in temp.reason
    (perm,) = spf_auth_results(check, _connection(), _transaction("user@broken.example.com"))
    assert (perm.result, perm.reason) == ("permerror", "Unknown mechanism found: moo")


def test_check_without_client_address() -> None:
    check = SpfCheck(zone())
    (result,) = spf_auth_results(check, _connection(ip=None), _transaction("user@example.com"))
    assert result.result == "none"


def test_check_skips_helo_when_none_was_given() -> None:
    check = SpfCheck(zone(), check_helo=True)
    results = spf_auth_results(check, _connection(helo=None), _transaction("user@example.com"))
    assert [r.properties[0].name for r in results] == ["mailfrom"]


def test_null_sender_without_helo_is_none_without_properties() -> None:
    outcome = evaluate_spf(zone(), CLIENT, None, "<>")
    assert auth_result(outcome) == AuthResult("spf", "none", None, ())


def test_evaluate_is_usable_without_a_transaction() -> None:
    check = SpfCheck(zone(), check_helo=True)
    outcomes = check.evaluate("192.0.2.10", "mail.example.com", "user@example.com")
    assert [(o.identity, o.result) for o in outcomes] == [
        (SpfIdentity.MAILFROM, SpfResult.PASS),
        (SpfIdentity.HELO, SpfResult.PASS),
    ]


# --------------------------------------------------------------------------- Received-SPF


def test_received_spf_pass() -> None:
    outcome = evaluate_spf(zone(), CLIENT, "mail.example.org", "user@example.com")
    assert received_spf(outcome, "mx.example.net") == (
        "pass (mx.example.net: domain of user@example.com designates\n"
        "\t192.0.2.10 as permitted sender) client-ip=192.0.2.10;\n"
        '\tenvelope-from="user@example.com"; helo=mail.example.org;\n'
        '\treceiver=mx.example.net; mechanism="ip4:192.0.2.0/24"; identity=mailfrom'
    )


def test_received_spf_lines_stay_short() -> None:
    outcome = evaluate_spf(zone(), CLIENT6, "mail.example.org", "user@broken.example.com")
    lines = f"{RECEIVED_SPF}: {received_spf(outcome, 'mx.example.net')}".split("\n")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)


def test_received_spf_permerror_and_helo_identity() -> None:
    outcome = evaluate_spf(zone(), CLIENT6, "mail.example.org", "user@broken.example.com")
    value = received_spf(outcome, "mx.example.net")
    unfolded = value.replace("\n\t", " ")
    assert unfolded.startswith(
        "permerror (mx.example.net: permanent error in processing domain of broken.example.com)"
    )
    assert 'client-ip="2001:db8::10";' in unfolded
    assert 'problem="Unknown mechanism found: moo";' in unfolded
    helo = received_spf(evaluate_helo(zone(), OTHER, "mail.example.com"), "mx.example.net")
    assert "envelope-from" not in helo
    assert helo.replace("\n\t", " ").endswith(
        "receiver=mx.example.net; mechanism=-all; identity=helo"
    )


def test_received_spf_quotes_what_the_client_sent() -> None:
    outcome = SpfOutcome(
        result=SpfResult.NONE,
        identity=SpfIdentity.MAILFROM,
        domain="",
        sender='a"b\r\nX-Evil: 1@x',
        client_ip=CLIENT,
        helo="evil (host)\n",
    )
    value = received_spf(outcome, "mx.example.net")
    assert "\r" not in value
    assert "\nX-Evil" not in value
    assert 'envelope-from="a\\"b  X-Evil: 1@x";' in value.replace("\n\t", " ")
    assert "helo=\"evil (host) \"" in value.replace("\n\t", " ")


def test_lookup_domain() -> None:
    assert lookup_domain("Example.COM.") == "example.com"
    assert lookup_domain("_spf.example.com") == "_spf.example.com"
    assert lookup_domain("bücher.example") == "xn--bcher-kva.example"
    assert lookup_domain("bad!.example.com") is None
    assert lookup_domain("a b.example.com") is None
    assert lookup_domain("example") is None
