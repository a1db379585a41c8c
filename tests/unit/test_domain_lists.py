"""RHSBL and URI lists: which names are asked, how listings become symbols, the bounds."""

from __future__ import annotations

import ipaddress

import pytest

from mailward.checks import dkim as dkim_check
from mailward.checks import mime as mime_check
from mailward.checks import urilist
from mailward.checks.base import CheckInput, Results
from mailward.checks.dkim import DkimOutcome, DkimResult
from mailward.checks.dnsbl import DnsList, ListLookups
from mailward.checks.mime import MimeView
from mailward.checks.rhsbl import RhsblCheck, RhsblSettings, claimed_domains
from mailward.checks.urilist import MAX_URLS_EXAMINED, UriListCheck, UriListSettings, link_names
from mailward.config import settings_from_mapping
from mailward.configreader import ConfigError
from mailward.dns import InMemoryResolver
from mailward.messagefile import transaction_from_bytes
from mailward.mime import parse_message
from mailward.model import Connection
from mailward.orgdomain import PublicSuffixes

DBL = DnsList("dbl", "dbl.example", {"127.0.1.2": "DBL_SPAM"}, "RHSBL_LISTED")
URI = DnsList("uri", "uri.example", {}, "URIBL_LISTED")
RESOLVER = InMemoryResolver.from_zones({
    "dbl.example": "bad-sender.test.dbl.example. 60 IN A 127.0.1.2\n"
                   "signer.test.dbl.example. 60 IN A 127.0.1.9\n",
    "uri.example": "shop.co.uk.uri.example. 60 IN A 127.0.0.2\n"
                   "7.113.0.203.uri.example. 60 IN A 127.0.0.2\n",
})


def message(body: str, sender: str = "news@bad-sender.test", html: bool = False) -> bytes:
    kind = "html" if html else "plain"
    return (f"From: News <{sender}>\r\nTo: a@example.net\r\nSubject: s\r\n"
            f"Content-Type: text/{kind}; charset=utf-8\r\n\r\n{body}\r\n").encode()


def check_input(raw: bytes, sender: str = "news@bad-sender.test", helo: str = "mx.helo.test",
                dkim_domains: tuple[str, ...] = ()) -> CheckInput:
    transaction = transaction_from_bytes(raw, mail_from=sender, recipients=("a@example.net",))
    results = Results()
    results = results.with_result(mime_check.RESULT, MimeView(transaction))
    results = results.with_result(dkim_check.RESULT, tuple(
        DkimOutcome(result=DkimResult.PASS, domain=domain) for domain in dkim_domains))
    return CheckInput(Connection(ipaddress.ip_address("198.51.100.1"), helo=helo),
                      transaction, results)


def test_rhsbl_asks_each_claimed_domain_once_in_source_order():
    found = claimed_domains(check_input(message("hi"), dkim_domains=("signer.test",
                                                                    "bad-sender.test")),
                            ("mail_from", "helo", "from", "dkim"))
    assert found == {"bad-sender.test": "mail_from", "mx.helo.test": "helo",
                     "signer.test": "dkim"}


def test_rhsbl_symbols_name_the_list_and_the_domain():
    check = RhsblCheck(RhsblSettings(True, 2.0, ("mail_from", "dkim"), (DBL,)),
                       ListLookups(RESOLVER, "rhsbl"))
    result = check.evaluate(check_input(message("hi"), dkim_domains=("signer.test",)))
    assert sorted(map(str, check.symbols(result))) == [
        "DBL_SPAM(dbl:bad-sender.test)", "RHSBL_LISTED(dbl:signer.test)"]
    assert check.metric_result(result) == "listed"


def test_rhsbl_sources_are_configurable():
    check = RhsblCheck(RhsblSettings(True, 2.0, ("helo",), (DBL,)),
                       ListLookups(RESOLVER, "rhsbl"))
    result = check.evaluate(check_input(message("hi")))
    assert check.symbols(result) == ()
    assert [answer.query for answer in result.answers] == ["mx.helo.test.dbl.example"]


def test_uri_hosts_are_reduced_to_registrable_domains_and_ip_literals_kept():
    body = ("Buy at https://www.shop.co.uk/offer?x=1 or http://user:pw@203.0.113.7:8080/x "
            "or www.other.example/path, again HTTPS://SHOP.CO.UK and http://[2001:db8::1]/")
    parsed = parse_message(transaction_from_bytes(message(body)))
    names = link_names(parsed, PublicSuffixes.bundled(), limit=20)
    assert names == {
        "shop.co.uk": "shop.co.uk",
        "7.113.0.203": "203.0.113.7",
        "other.example": "other.example",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2": "2001:db8::1",
    }


@pytest.mark.parametrize("text", [
    "HTTP://Shop.Example/x WWW.Other.Example hTtPs://[2001:DB8::A]/ x.www.sub.test",
    "ahttp://glued.test _www.under.test 9www.digit.test (www.paren.test) http://a.www.b.test",
    "<a href=\"HTTPS://user@Host.Test:8080/\">www.shown.test</a>http://x.test.",
    "http:/one-slash.test www. https:// http://[::1 www.\u00e9t\u00e9.test",
])
def test_uri_hosts_on_ascii_text_as_the_case_folding_expression_finds_them(text):
    """The lower-cased ASCII fast path finds exactly what `_URL` with re.I finds."""
    expected = [match.group(0).lower() for match in urilist._URL.finditer(text)]
    assert [match.group(0) for match in urilist._url_matches(text)] == expected
    assert expected  # every sample holds at least one URL


def test_uri_list_scores_listed_link_domains_in_html():
    check = UriListCheck(UriListSettings(True, 2.0, 20, (URI,)), ListLookups(RESOLVER, "urilist"),
                         PublicSuffixes.bundled())
    html = '<p>Hello <a href="https://deals.shop.co.uk/x">our shop</a> <a href="https://ok.test/">ok</a>'
    result = check.evaluate(check_input(message(html, html=True)))
    assert [str(symbol) for symbol in check.symbols(result)] == ["URIBL_LISTED(uri:shop.co.uk)"]


def test_a_million_urls_cost_a_bounded_scan():
    body = " ".join(f"http://d{index}.example/" for index in range(1_000_000))
    parsed = parse_message(transaction_from_bytes(message(body)))
    names = link_names(parsed, PublicSuffixes.bundled(), limit=10_000)
    # The MIME parse keeps a bounded prefix, and at most MAX_URLS_EXAMINED are looked at.
    assert 0 < len(names) <= MAX_URLS_EXAMINED


def test_max_domains_caps_the_lookups():
    body = " ".join(f"http://d{index}.example/" for index in range(100))
    check = UriListCheck(UriListSettings(True, 2.0, 5, (URI,)), ListLookups(RESOLVER, "urilist"),
                         PublicSuffixes.bundled())
    assert len(check.evaluate(check_input(message(body))).answers) == 5


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"rhsbl": {"enabled": True, "sources": ["helo", "rcpt"],
                                         "lists": [{"zone": "dbl.example"}]},
                               "urilist": {"max_domains": 0, "lists": [{"name": "x"}]}})
    text = str(info.value)
    assert "rhsbl.sources[1]" in text and "'rcpt' is not one of" in text
    assert "urilist.max_domains" in text
    assert "urilist.lists[0].zone: required" in text
