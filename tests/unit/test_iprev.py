"""iprev: forward-confirmed reverse DNS, with temporary failures kept apart."""

from __future__ import annotations

import ipaddress

import authres

from mailward.authresults import format_header
from mailward.checks.iprev import IprevResult, auth_result, evaluate_iprev
from mailward.dns import InMemoryResolver

ZONES = {
    "in-addr.arpa": """
10.2.0.192  IN PTR mail.example.org.
11.2.0.192  IN PTR liar.example.org.
12.2.0.192  IN PTR broken.example.org.
13.2.0.192  IN PTR liar.example.org.
13.2.0.192  IN PTR mail2.example.org.
""",
    "ip6.arpa": """
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 IN PTR v6.example.org.
""",
    "example.org": """
mail   IN A    192.0.2.10
mail2  IN A    192.0.2.13
liar   IN A    198.51.100.1
v6     IN AAAA 2001:db8::1
""",
}


def resolver() -> InMemoryResolver:
    return InMemoryResolver.from_zones(ZONES)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_pass_when_the_name_points_back():
    outcome = evaluate_iprev(resolver(), ip("192.0.2.10"))
    assert (outcome.result, outcome.name) == (IprevResult.PASS, "mail.example.org")


def test_pass_when_any_of_several_names_points_back():
    outcome = evaluate_iprev(resolver(), ip("192.0.2.13"))
    assert (outcome.result, outcome.name) == (IprevResult.PASS, "mail2.example.org")


def test_ipv6_and_ipv4_mapped_addresses():
    assert evaluate_iprev(resolver(), ip("2001:db8::1")).result is IprevResult.PASS
    assert evaluate_iprev(resolver(), ip("::ffff:192.0.2.10")).result is IprevResult.PASS


def test_fail_without_ptr_and_when_the_name_lies():
    assert evaluate_iprev(resolver(), ip("192.0.2.99")).result is IprevResult.FAIL
    liar = evaluate_iprev(resolver(), ip("192.0.2.11"))
    assert (liar.result, liar.name) == (IprevResult.FAIL, "liar.example.org")
    # broken.example.org has no address at all: still a plain fail.
    assert evaluate_iprev(resolver(), ip("192.0.2.12")).result is IprevResult.FAIL


def test_temporary_failures_are_temperror_never_fail():
    dns = resolver()
    dns.fail("10.2.0.192.in-addr.arpa")
    assert evaluate_iprev(dns, ip("192.0.2.10")).result is IprevResult.TEMPERROR
    dns = resolver()
    dns.fail("mail.example.org", "A")
    assert evaluate_iprev(dns, ip("192.0.2.10")).result is IprevResult.TEMPERROR


def test_auth_result_parses_with_authres():
    result = auth_result(evaluate_iprev(resolver(), ip("192.0.2.10")))
    header = authres.AuthenticationResultsHeader.parse_value(
        format_header("mx.example.net", [result]))
    (parsed,) = header.results
    assert (parsed.method, parsed.result) == ("iprev", "pass")
    assert [(p.type, p.name, p.value) for p in parsed.properties] == [
        ("policy", "iprev", "192.0.2.10")]
    assert result.reason == "mail.example.org"
