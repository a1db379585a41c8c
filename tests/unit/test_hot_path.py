"""The inbound hot path's shortcuts give what the long way gives (issue 8's speed work):
cached DNS list answers taken without the pool, the iprev PTR name, metric children
looked up once, the multiprocess pid cache across fork, the content fast paths."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import threading

import dns.reversename
import pytest
from prometheus_client import REGISTRY

from mailward import metricvalues
from mailward.checks import content
from mailward.checks.base import CheckInput
from mailward.checks.dnsbl import DnsblCheck, DnsblSettings, DnsList, ListLookups
from mailward.checks.iprev import reverse_pointer
from mailward.dns import CachingResolver, DnsAnswer, InMemoryResolver, Outcome, cached_answer
from mailward.mime import html_visible_text
from mailward.model import Connection, Symbol, Transaction
from mailward.pipeline import check_meter

ZEN = DnsList("zen", "zen.example", {"127.0.0.2": "RBL_SBL"})
TRANSACTION = Transaction(queue_id="Q", mail_from="", recipients=("a@example.net",), headers=())


class CountingCache:
    """A caching resolver that knows one name, and records who asked for what."""

    def __init__(self, known: dict[str, DnsAnswer]) -> None:
        self.known = known
        self.queries: list[tuple[str, str]] = []  # (name, thread name)

    def cached(self, name: str, rdtype: str) -> DnsAnswer | None:
        return self.known.get(name)

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.queries.append((name, threading.current_thread().name))
        return DnsAnswer(name, rdtype, Outcome.NXDOMAIN)


def test_cached_list_answers_are_taken_without_the_pool() -> None:
    listed = "2.2.0.192.zen.example"
    resolver = CountingCache({listed: DnsAnswer(listed, "A", Outcome.ANSWER, ("127.0.0.2",))})
    assert isinstance(resolver, CachingResolver)
    check = DnsblCheck(DnsblSettings(True, 2.0, (ZEN,)), ListLookups(resolver, "dnsbl"))
    result = check.evaluate(CheckInput(Connection(ipaddress.ip_address("192.0.2.2")),
                                       TRANSACTION))
    assert tuple(check.symbols(result)) == (Symbol("RBL_SBL", "zen"),)
    assert resolver.queries == []  # answered from the cache, no lookup handed over
    clean = check.evaluate(CheckInput(Connection(ipaddress.ip_address("192.0.2.3")),
                                      TRANSACTION))
    assert [answer.status for answer in clean.answers] == ["clean"]
    assert [name for name, _ in resolver.queries] == ["3.2.0.192.zen.example"]
    assert resolver.queries[0][1].startswith("mailward-dnsbl")  # a miss goes to the pool


def test_resolvers_without_a_cache_are_asked_as_before() -> None:
    resolver = InMemoryResolver.from_zones({"zen.example": "2.2.0.192 60 IN A 127.0.0.2\n"})
    assert cached_answer(resolver, "2.2.0.192.zen.example", "A") is None
    check = DnsblCheck(DnsblSettings(True, 2.0, (ZEN,)), ListLookups(resolver, "dnsbl"))
    result = check.evaluate(CheckInput(Connection(ipaddress.ip_address("192.0.2.2")),
                                       TRANSACTION))
    assert tuple(check.symbols(result)) == (Symbol("RBL_SBL", "zen"),)


@pytest.mark.parametrize("address", ["192.0.2.10", "203.0.113.255", "2001:db8::1", "::1",
                                     "fe80::1:2:3:4"])
def test_reverse_pointer_is_dnspythons_name(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert reverse_pointer(ip) == dns.reversename.from_address(address).to_text(
        omit_final_dot=True)


def test_check_meter_counts_into_the_labelled_metrics() -> None:
    labels = {"check": "hot_path_test", "result": "pass"}
    before = REGISTRY.get_sample_value("mailward_check_results_total", labels) or 0.0
    meter = check_meter("hot_path_test")
    assert check_meter("hot_path_test") is meter
    meter.result("pass").inc()
    meter.result("pass").inc()
    assert REGISTRY.get_sample_value("mailward_check_results_total", labels) == before + 2


def test_symbol_names_stay_validated_after_a_valid_one_was_seen() -> None:
    assert str(Symbol("HOT_PATH_OK")) == "HOT_PATH_OK"
    assert str(Symbol("HOT_PATH_OK", "x")) == "HOT_PATH_OK(x)"
    with pytest.raises(ValueError):
        Symbol("hot path ok")


def test_pid_cache_follows_a_fork() -> None:
    assert metricvalues.process_id() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        ok = metricvalues.process_id() == os.getpid()
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(child, 0)
    assert answer == b"1"


_PIECES = ["<a", "<A", "<a ", 'href="http://x.example/"', ">", "</a>", "display", " : ",
           "none", "DISPLAY:NONE", "font-size:0;", "visibility:hidden", "\u017f", "\u0131",
           "\u0130", "\u212a", "x", "\n", "\t", "\xa0", "\u3000", "<p>", "</p>", "<script>",
           "</script>", "&amp;", "<!--", "-->", "\xe9", " "]


def test_content_fast_paths_agree_with_the_full_parse() -> None:
    rng = random.Random(2026)
    for _ in range(3000):
        html = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 30)))
        assert content._hides_text(html) == (content._HIDDEN_STYLE.search(html) is not None)
        parser = content._Links()
        with contextlib.suppress(AssertionError, ValueError):
            parser.feed(html)
        assert content.links(html) == parser.links
    assert html_visible_text("<p>a\u3000\u3000b</p>\n\t<p> c\xa0</p>") == "a b c"
