"""DNS outcomes and the cache: InMemoryResolver from zone text, DnsResolver over the wire."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from prometheus_client import REGISTRY

from mailward.config import DnsSettings
from mailward.dns import DnsAnswer, DnsResolver, InMemoryResolver, Outcome

ZONE = """\
www      300 IN A     192.0.2.1
www      300 IN A     192.0.2.2
www      600 IN AAAA  2001:db8::1
@       3600 IN MX    10 mx.example.test.
mx       300 IN A     192.0.2.25
@        300 IN TXT   "v=spf1 " "ip4:192.0.2.0/24 -all"
s1._domainkey 300 IN TXT "v=DKIM1; k=rsa; " "p=MIGf" "MA0G"
alias    300 IN CNAME www.example.test.
alias2   300 IN CNAME alias.example.test.
away     300 IN CNAME host.other.test.
dangling 300 IN CNAME nowhere.elsewhere.test.
loop1    300 IN CNAME loop2.example.test.
loop2    300 IN CNAME loop1.example.test.
deep.child 300 IN A   192.0.2.9
"""

OTHER = """\
host 120 IN A 198.51.100.7
"""


@pytest.fixture
def memory() -> InMemoryResolver:
    return InMemoryResolver.from_zones({"example.test": ZONE, "other.test.": OTHER})


# --------------------------------------------------------------------------- InMemoryResolver


def test_memory_a_and_aaaa(memory: InMemoryResolver):
    answer = memory.query("www.example.test", "A")
    assert answer.outcome is Outcome.ANSWER
    assert answer.ok and not answer.is_temporary_failure
    assert sorted(answer.records) == ["192.0.2.1", "192.0.2.2"]
    assert answer.ttl == 300
    assert answer.txt_strings == ()
    aaaa = memory.query("www.example.test.", "aaaa")
    assert aaaa.outcome is Outcome.ANSWER
    assert aaaa.records == ("2001:db8::1",)
    assert aaaa.ttl == 600


def test_memory_txt_strings_joined_and_kept_apart(memory: InMemoryResolver):
    spf = memory.query("example.test", "TXT")
    assert spf.outcome is Outcome.ANSWER
    assert spf.records == ("v=spf1 ip4:192.0.2.0/24 -all",)
    assert spf.txt_strings == ((b"v=spf1 ", b"ip4:192.0.2.0/24 -all"),)
    dkim = memory.query("s1._domainkey.example.test", "TXT")
    assert dkim.records == ("v=DKIM1; k=rsa; p=MIGfMA0G",)
    assert dkim.txt_strings == ((b"v=DKIM1; k=rsa; ", b"p=MIGf", b"MA0G"),)


def test_memory_mx(memory: InMemoryResolver):
    answer = memory.query("EXAMPLE.test", "MX")
    assert answer.outcome is Outcome.ANSWER
    assert answer.ttl == 3600
    assert len(answer.records) == 1
    preference, host = answer.records[0].split()
    assert (preference, host.rstrip(".")) == ("10", "mx.example.test")


def test_memory_nxdomain(memory: InMemoryResolver):
    answer = memory.query("missing.example.test", "A")
    assert answer.outcome is Outcome.NXDOMAIN
    assert not answer.ok and not answer.is_temporary_failure
    assert answer.records == ()


def test_memory_nodata(memory: InMemoryResolver):
    assert memory.query("www.example.test", "TXT").outcome is Outcome.NODATA
    assert memory.query("mx.example.test", "AAAA").outcome is Outcome.NODATA
    assert memory.query("example.test", "A").outcome is Outcome.NODATA


def test_memory_empty_non_terminal_is_nodata(memory: InMemoryResolver):
    # child.example.test exists only because deep.child.example.test does (RFC 8020).
    assert memory.query("child.example.test", "A").outcome is Outcome.NODATA
    assert memory.query("child.example.test", "TXT").outcome is Outcome.NODATA
    assert memory.query("deep.child.example.test", "A").records == ("192.0.2.9",)
    # A sibling that has no descendants is still NXDOMAIN.
    assert memory.query("kid.example.test", "A").outcome is Outcome.NXDOMAIN
    assert memory.query("x.deep.child.example.test", "A").outcome is Outcome.NXDOMAIN


def test_memory_outside_all_zones_is_nxdomain(memory: InMemoryResolver):
    assert memory.query("example.org", "A").outcome is Outcome.NXDOMAIN
    assert memory.query("test", "A").outcome is Outcome.NXDOMAIN
    assert memory.query("notexample.test", "A").outcome is Outcome.NXDOMAIN


def test_memory_cname_following(memory: InMemoryResolver):
    answer = memory.query("alias.example.test", "A")
    assert answer.outcome is Outcome.ANSWER
    assert sorted(answer.records) == ["192.0.2.1", "192.0.2.2"]
    assert answer.name == "alias.example.test"
    assert sorted(memory.query("alias2.example.test", "A").records) == [
        "192.0.2.1", "192.0.2.2",
    ]
    # Asking for the CNAME itself returns it, without the trailing dot.
    cname = memory.query("alias.example.test", "CNAME")
    assert cname.records == ("www.example.test",)
    # Into another loaded zone.
    assert memory.query("away.example.test", "A").records == ("198.51.100.7",)
    # Target exists but lacks the type; target outside every zone.
    assert memory.query("alias.example.test", "TXT").outcome is Outcome.NODATA
    assert memory.query("dangling.example.test", "A").outcome is Outcome.NXDOMAIN


def test_memory_cname_loop_terminates(memory: InMemoryResolver):
    answer = memory.query("loop1.example.test", "A")
    assert answer.outcome is not Outcome.ANSWER
    assert answer.records == ()


def test_memory_fail_gives_temperror(memory: InMemoryResolver):
    memory.fail("WWW.example.test.")
    for rdtype in ("A", "AAAA", "TXT"):
        answer = memory.query("www.example.test", rdtype)
        assert answer.outcome is Outcome.TEMPERROR
        assert answer.is_temporary_failure
        assert answer.records == ()
    memory.fail("example.test", "TXT")
    assert memory.query("example.test", "txt").outcome is Outcome.TEMPERROR
    assert memory.query("example.test", "MX").outcome is Outcome.ANSWER


def test_memory_invalid_names(memory: InMemoryResolver):
    too_long_label = "a" * 64 + ".example.test"
    assert memory.query(too_long_label, "A").outcome is Outcome.INVALID_NAME
    too_long_name = ".".join(["abcdefghij"] * 30)
    assert memory.query(too_long_name, "A").outcome is Outcome.INVALID_NAME
    answer = memory.query("a..example.test", "A")
    assert answer.outcome is Outcome.INVALID_NAME
    assert answer.error
    # A 63-octet label is fine.
    assert memory.query("a" * 63 + ".example.test", "A").outcome is Outcome.NXDOMAIN


def test_memory_counts_queries(memory: InMemoryResolver):
    memory.query("www.example.test", "A")
    memory.query("WWW.example.test.", "a")
    memory.query("missing.example.test", "TXT")
    assert memory.queries == [
        ("www.example.test", "A"),
        ("www.example.test", "A"),
        ("missing.example.test", "TXT"),
    ]


def test_memory_most_specific_zone_wins():
    resolver = InMemoryResolver.from_zones({
        "example.test": "sub 300 IN A 192.0.2.1\n",
        "sub.example.test": "@ 300 IN A 192.0.2.99\n",
    })
    assert resolver.query("sub.example.test", "A").records == ("192.0.2.99",)


def test_memory_zone_with_its_own_soa():
    resolver = InMemoryResolver.from_zones({
        "example.test": "@ 60 IN SOA ns hostmaster 1 2 3 4 5\nwww 60 IN A 192.0.2.1\n",
    })
    assert resolver.query("www.example.test", "A").records == ("192.0.2.1",)
    assert resolver.query("example.test", "SOA").outcome is Outcome.ANSWER


# --------------------------------------------------------------------------- wire servers

WIRE_ZONE = """\
@        300 IN SOA   ns.example.test. hostmaster.example.test. 1 3600 600 86400 120
@        300 IN NS    ns.example.test.
www      300 IN A     192.0.2.1
www      300 IN AAAA  2001:db8::1
one        1 IN A     192.0.2.11
@        300 IN TXT   "v=spf1 " "-all"
@       3600 IN MX    10 mx.example.test.
"""
for _index in range(8):
    WIRE_ZONE += f"h{_index} 300 IN A 192.0.2.{100 + _index}\n"


class FakeDnsServer:
    """A tiny authoritative UDP server on 127.0.0.1 that counts the queries it receives.

    mode: "normal" answers from WIRE_ZONE; "servfail" / "refused" answer that rcode;
    "silent" never answers.  Negative answers carry the zone's SOA in the authority
    section with TTL `soa_ttl` unless `send_soa` is False.
    """

    def __init__(self, mode: str = "normal") -> None:
        self.mode = mode
        self.soa_ttl = 600
        self.send_soa = True
        self.zone = dns.zone.from_text(WIRE_ZONE, origin="example.test.", relativize=False)
        self.received: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.02)
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(data)
            question = query.question[0]
            with self._lock:
                self.received.append(
                    (question.name.to_text(), dns.rdatatype.to_text(question.rdtype))
                )
            if self.mode == "silent":
                continue
            self.sock.sendto(self._respond(query).to_wire(), peer)

    def _respond(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if self.mode == "refused":
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        question = query.question[0]
        node = self.zone.get_node(question.name)
        if node is not None:
            rdataset = node.get_rdataset(dns.rdataclass.IN, question.rdtype)
            if rdataset is not None:
                response.answer.append(
                    dns.rrset.from_rdata_list(question.name, rdataset.ttl, list(rdataset))
                )
                return response
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if self.send_soa:
            soa = self.zone.find_rdataset("example.test.", "SOA")
            response.authority.append(
                dns.rrset.from_rdata_list("example.test.", self.soa_ttl, list(soa))
            )
        return response


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FakeDnsServer]:
    started = FakeDnsServer("normal")
    yield started
    started.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_resolver(
    server: FakeDnsServer, clock: FakeClock | None = None, *, timeout: float = 2.0,
    cache_entries: int = 1000, negative_ttl_max: int = 900,
) -> DnsResolver:
    settings = DnsSettings(
        nameservers=("127.0.0.1",), port=server.port, timeout=timeout,
        cache_entries=cache_entries, negative_ttl_max=negative_ttl_max,
    )
    return DnsResolver(settings, clock=clock or FakeClock())


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_wire_answer(server: FakeDnsServer):
    resolver = make_resolver(server)
    answer = resolver.query("www.example.test", "A")
    assert answer.outcome is Outcome.ANSWER
    assert answer.records == ("192.0.2.1",)
    assert answer.ttl == 300
    assert resolver.query("www.example.test", "AAAA").records == ("2001:db8::1",)
    txt = resolver.query("example.test", "TXT")
    assert txt.records == ("v=spf1 -all",)
    assert txt.txt_strings == ((b"v=spf1 ", b"-all"),)
    mx = resolver.query("example.test", "MX")
    assert mx.ttl == 3600
    assert mx.records[0].split()[0] == "10"
    assert server.received[0] == ("www.example.test.", "A")


def test_wire_nxdomain_negative_ttl_is_soa_minimum(server: FakeDnsServer):
    # min(SOA ttl 600, minimum 120, cap 900) = 120
    answer = make_resolver(server).query("missing.example.test", "A")
    assert answer.outcome is Outcome.NXDOMAIN
    assert answer.records == ()
    assert answer.ttl == 120


def test_wire_nxdomain_negative_ttl_is_soa_ttl(server: FakeDnsServer):
    server.soa_ttl = 45  # min(45, 120, 900)
    assert make_resolver(server).query("missing.example.test", "A").ttl == 45


def test_wire_nxdomain_negative_ttl_is_capped(server: FakeDnsServer):
    answer = make_resolver(server, negative_ttl_max=30).query("missing.example.test", "A")
    assert answer.outcome is Outcome.NXDOMAIN
    assert answer.ttl == 30


def test_wire_nodata(server: FakeDnsServer):
    answer = make_resolver(server).query("www.example.test", "TXT")
    assert answer.outcome is Outcome.NODATA
    assert answer.records == ()
    assert answer.ttl == 120


def test_wire_negative_answer_without_soa_is_not_cached(server: FakeDnsServer, clock: FakeClock):
    server.send_soa = False
    resolver = make_resolver(server, clock)
    first = resolver.query("missing.example.test", "A")
    assert first.outcome is Outcome.NXDOMAIN
    assert first.ttl == 0
    assert resolver.query("missing.example.test", "A").outcome is Outcome.NXDOMAIN
    assert server.count == 2
    assert resolver.query("www.example.test", "TXT").outcome is Outcome.NODATA
    assert resolver.query("www.example.test", "TXT").outcome is Outcome.NODATA
    assert server.count == 4


@pytest.mark.parametrize("mode", ["servfail", "refused"])
def test_wire_servfail_and_refused_are_temperror(mode: str, clock: FakeClock):
    failing = FakeDnsServer(mode)
    try:
        resolver = make_resolver(failing, clock)
        before = sample("mailward_dns_queries_total", {"rdtype": "A", "outcome": "temperror"})
        answer = resolver.query("www.example.test", "A")
        assert answer.outcome is Outcome.TEMPERROR
        assert answer.is_temporary_failure
        assert answer.error
        # Not cached: the next lookup asks again.
        assert resolver.query("www.example.test", "A").outcome is Outcome.TEMPERROR
        assert failing.count == 2
        after = sample("mailward_dns_queries_total", {"rdtype": "A", "outcome": "temperror"})
        assert after - before == 2
    finally:
        failing.close()


def test_wire_timeout_is_temperror(clock: FakeClock):
    silent = FakeDnsServer("silent")
    try:
        resolver = make_resolver(silent, clock, timeout=0.2)
        started = time.monotonic()
        answer = resolver.query("www.example.test", "A")
        elapsed = time.monotonic() - started
        assert answer.outcome is Outcome.TEMPERROR
        assert answer.error
        assert elapsed < 1.5
        assert silent.count >= 1
        resolver.query("www.example.test", "A")  # not cached
        assert silent.count >= 2
    finally:
        silent.close()


def test_wire_invalid_name_never_reaches_the_server(server: FakeDnsServer):
    resolver = make_resolver(server)
    assert resolver.query("a" * 64 + ".example.test", "A").outcome is Outcome.INVALID_NAME
    assert resolver.query("www.example.test", "NOSUCHTYPE").outcome is Outcome.INVALID_NAME
    assert server.count == 0


def test_cache_second_query_does_not_hit_server(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock)
    first = resolver.query("www.example.test", "A")
    second = resolver.query("www.example.test", "A")
    assert server.count == 1
    assert second.records == first.records
    assert second.outcome is Outcome.ANSWER


def test_cache_honours_ttl(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock)
    resolver.query("www.example.test", "A")
    clock.now += 299.5
    assert resolver.query("www.example.test", "A").ok
    assert server.count == 1
    clock.now += 1.0  # 300.5 s after the answer: expired
    assert resolver.query("www.example.test", "A").ok
    assert server.count == 2


def test_cache_short_ttl_record_is_cached_for_its_ttl(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock)
    assert resolver.query("one.example.test", "A").ttl == 1
    clock.now += 0.5
    resolver.query("one.example.test", "A")
    assert server.count == 1
    clock.now += 1.0
    resolver.query("one.example.test", "A")
    assert server.count == 2


def test_cache_negative_answers_for_negative_ttl(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock)
    assert resolver.query("missing.example.test", "A").outcome is Outcome.NXDOMAIN
    assert resolver.query("www.example.test", "TXT").outcome is Outcome.NODATA
    clock.now += 100
    cached = resolver.query("missing.example.test", "A")
    assert cached.outcome is Outcome.NXDOMAIN
    assert cached.ttl == 20
    assert resolver.query("www.example.test", "TXT").outcome is Outcome.NODATA
    assert server.count == 2
    clock.now += 21
    assert resolver.query("missing.example.test", "A").outcome is Outcome.NXDOMAIN
    assert server.count == 3


def test_cache_remaining_ttl_decreases(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock)
    assert resolver.query("www.example.test", "A").ttl == 300
    clock.now += 100
    assert resolver.query("www.example.test", "A").ttl == 200
    clock.now += 150.5
    assert resolver.query("www.example.test", "A").ttl == 49
    assert server.count == 1


def test_cache_is_case_insensitive(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock)
    resolver.query("www.example.test", "A")
    assert resolver.query("WWW.Example.TEST.", "a").records == ("192.0.2.1",)
    assert server.count == 1
    # Different types are different entries.
    resolver.query("www.example.test", "AAAA")
    assert server.count == 2


def test_cache_disabled_with_zero_entries(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock, cache_entries=0)
    for _ in range(3):
        assert resolver.query("www.example.test", "A").ok
    assert server.count == 3


def test_cache_lru_bound(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock, cache_entries=2)
    resolver.query("h0.example.test", "A")
    resolver.query("h1.example.test", "A")
    resolver.query("h0.example.test", "A")  # hit: h0 is now the most recent
    assert server.count == 2
    resolver.query("h2.example.test", "A")  # evicts h1, the least recently used
    assert server.count == 3
    resolver.query("h0.example.test", "A")
    resolver.query("h2.example.test", "A")
    assert server.count == 3
    resolver.query("h1.example.test", "A")  # evicted: asked again (and evicts h0)
    assert server.count == 4
    resolver.query("h0.example.test", "A")
    assert server.count == 5


def test_cache_size_never_exceeds_bound(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock, cache_entries=3)
    for index in range(8):
        resolver.query(f"h{index}.example.test", "A")
    assert server.count == 8
    for index in (5, 6, 7):
        resolver.query(f"h{index}.example.test", "A")
    assert server.count == 8
    for index in range(5):
        resolver.query(f"h{index}.example.test", "A")
    assert server.count == 13


def test_metrics_move(server: FakeDnsServer, clock: FakeClock):
    resolver = make_resolver(server, clock)
    names = {
        "answer": ("mailward_dns_queries_total", {"rdtype": "A", "outcome": "answer"}),
        "nxdomain": ("mailward_dns_queries_total", {"rdtype": "A", "outcome": "nxdomain"}),
        "nodata": ("mailward_dns_queries_total", {"rdtype": "TXT", "outcome": "nodata"}),
        "hit": ("mailward_dns_cache_lookups_total", {"result": "hit"}),
        "miss": ("mailward_dns_cache_lookups_total", {"result": "miss"}),
        "seconds": ("mailward_dns_query_duration_seconds_count", {"rdtype": "A"}),
    }
    before = {key: sample(*value) for key, value in names.items()}
    resolver.query("www.example.test", "A")
    resolver.query("www.example.test", "A")
    resolver.query("www.example.test", "A")
    resolver.query("missing.example.test", "A")
    resolver.query("www.example.test", "TXT")
    after = {key: sample(*value) for key, value in names.items()}
    assert {key: after[key] - before[key] for key in names} == {
        "answer": 1, "nxdomain": 1, "nodata": 1, "hit": 2, "miss": 3, "seconds": 2,
    }


def test_answer_properties():
    assert DnsAnswer("x", "A", Outcome.ANSWER).ok
    assert not DnsAnswer("x", "A", Outcome.NODATA).ok
    assert DnsAnswer("x", "A", Outcome.TEMPERROR).is_temporary_failure
    assert not DnsAnswer("x", "A", Outcome.NXDOMAIN).is_temporary_failure


def test_message_budget_caps_the_dns_time_of_one_message():
    """A black-holed server: the first lookup waits its timeout, the second what is left,
    the third answers temperror at once without asking (issue 9, item 4)."""
    from mailward import dnsbudget

    silent = FakeDnsServer("silent")
    try:
        resolver = make_resolver(silent, timeout=0.3)
        spent_before = sample("mailward_dns_queries_total", {"rdtype": "A", "outcome": "budget"})
        with dnsbudget.message_budget(0.45):
            first = resolver.query("a.example.test", "A")
            second = resolver.query("b.example.test", "A")
            asked = silent.count
            third = resolver.query("c.example.test", "A")
            assert dnsbudget.remaining() == 0.0
        assert dnsbudget.remaining() is None  # the budget ends with the message
        assert [a.outcome for a in (first, second, third)] == [Outcome.TEMPERROR] * 3
        assert third.error == "DNS time budget spent"
        assert silent.count == asked  # the third was never sent
        assert sample("mailward_dns_queries_total",
                      {"rdtype": "A", "outcome": "budget"}) == spent_before + 1
    finally:
        silent.close()


def test_message_budget_leaves_answers_and_the_cache_alone(server: FakeDnsServer):
    from mailward import dnsbudget

    resolver = make_resolver(server)
    with dnsbudget.message_budget(5.0):
        assert resolver.query("www.example.test", "A").ok
    with dnsbudget.message_budget(0.0):  # 0: no cap
        assert dnsbudget.remaining() is None
        assert resolver.query("www.example.test", "A").ok
