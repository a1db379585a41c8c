"""DNS failures become short stable words, never dnspython's text (issue 9, item 7).

dnspython describes a REFUSED answer as "All nameservers failed to answer the query
...: Server Do53:127.0.0.1@53 answered REFUSED": our resolver's address, in an A-R
reason that leaves the site.  These tests run a real UDP server on loopback.
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.resolver
import pytest

from mailward.authresults import format_result
from mailward.checks.iprev import evaluate_iprev
from mailward.dns import DnsFailure, Outcome, describe_failure
from mailward.model import AuthResult
from tests.unit.test_dns import FakeClock, FakeDnsServer, make_resolver

LEAKS = ("127.0.0.1", "Do53", "nameservers", "Server", "@")


def _assert_no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} in {text!r}"


@pytest.mark.parametrize(("mode", "word"), [("refused", "REFUSED"), ("servfail", "SERVFAIL")])
def test_rcode_failures_are_the_rcode_word(mode: str, word: str):
    server = FakeDnsServer(mode)
    try:
        answer = make_resolver(server, FakeClock()).query("www.example.test", "A")
    finally:
        server.close()
    assert answer.outcome is Outcome.TEMPERROR
    assert answer.error == word
    _assert_no_leak(answer.error)


def test_timeout_is_dns_timeout():
    silent = FakeDnsServer("silent")
    try:
        answer = make_resolver(silent, FakeClock(), timeout=0.2).query("www.example.test", "A")
    finally:
        silent.close()
    assert answer.outcome is Outcome.TEMPERROR
    assert answer.error == "DNS timeout"


def test_refused_iprev_reason_in_authentication_results_is_short():
    server = FakeDnsServer("refused")
    try:
        outcome = evaluate_iprev(make_resolver(server, FakeClock()),
                                 ipaddress.ip_address("192.0.2.10"))
    finally:
        server.close()
    assert outcome.reason == "PTR lookup: REFUSED"
    header = format_result(AuthResult("iprev", outcome.result.value, reason=outcome.reason))
    assert header == 'iprev=temperror reason="PTR lookup: REFUSED"'
    _assert_no_leak(header)


def test_describe_failure_maps_library_exceptions():
    timeout = dns.exception.Timeout()  # type: ignore[no-untyped-call]
    lifetime = dns.resolver.LifetimeTimeout(timeout=2.0, errors=[])  # type: ignore[no-untyped-call]
    nxdomain = dns.resolver.NXDOMAIN()  # type: ignore[no-untyped-call]
    odd = dns.exception.DNSException("odd")  # type: ignore[no-untyped-call]
    no_servers = dns.resolver.NoNameservers()  # type: ignore[no-untyped-call]
    assert describe_failure(timeout) == "DNS timeout"
    assert describe_failure(lifetime) == "DNS timeout"
    assert describe_failure(nxdomain) == "NXDOMAIN"
    assert describe_failure(OSError("[Errno 101] Network is unreachable")) == "DNS error"
    assert describe_failure(odd) == "DNS error"
    assert describe_failure(no_servers) == "DNS error"


def test_every_word_is_short_and_plain():
    for word in DnsFailure:
        assert len(word.value) <= 12
        _assert_no_leak(word.value)


def test_invalid_name_is_described_plainly():
    server = FakeDnsServer("normal")
    try:
        answer = make_resolver(server, FakeClock()).query("a" * 64 + ".example.test", "A")
    finally:
        server.close()
    assert answer.outcome is Outcome.INVALID_NAME
    assert answer.error == "invalid DNS name"
