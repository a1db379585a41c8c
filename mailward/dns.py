"""DNS for every check: one resolver, one cache, outcomes that keep their meaning.

Authentication results hinge on telling DNS outcomes apart: NXDOMAIN ("no such
name") and NODATA ("name exists, no record of that type") are answers and may make a
check fail; a timeout, SERVFAIL or REFUSED says nothing about the sender and must become
`temperror`, never `fail`.  Every lookup therefore returns a `DnsAnswer` with an
explicit `Outcome` instead of raising library exceptions at the caller.

Checks depend on the `Resolver` protocol only.  `DnsResolver` talks to real servers
through dnspython with a TTL-honouring cache; `InMemoryResolver` answers from zone text
for unit tests and conformance suites.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.zone
from dns.rdata import Rdata
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT

from mailward import dnsbudget, metrics, turns
from mailward.config import DnsSettings
from mailward.ttlcache import TtlCache


class Outcome(StrEnum):
    """What a query established about the name."""

    ANSWER = "answer"  # records of the asked type exist
    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, but has no record of this type
    TEMPERROR = "temperror"  # timeout, SERVFAIL, REFUSED, network error: try again later
    INVALID_NAME = "invalid_name"  # the name cannot be queried (bad syntax, too long)


@dataclass(frozen=True)
class DnsAnswer:
    """The result of one lookup, cached or fresh.

    `records` is the presentation form of each record (addresses, host names without the
    trailing dot, TXT strings concatenated as RFC 7208 and RFC 6376 require).  For TXT,
    `txt_strings` keeps each record's character-strings as bytes, for libraries that want
    them unjoined.
    """

    name: str
    rdtype: str
    outcome: Outcome
    records: tuple[str, ...] = ()
    txt_strings: tuple[tuple[bytes, ...], ...] = ()
    ttl: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.ANSWER

    @property
    def is_temporary_failure(self) -> bool:
        return self.outcome is Outcome.TEMPERROR


class Resolver(Protocol):
    """What checks need from DNS; implemented by DnsResolver and InMemoryResolver."""

    def query(self, name: str, rdtype: str) -> DnsAnswer: ...


@runtime_checkable
class CachingResolver(Resolver, Protocol):
    """A resolver that can say what it already knows without asking the network."""

    def cached(self, name: str, rdtype: str) -> DnsAnswer | None: ...


def cached_answer(resolver: Resolver, name: str, rdtype: str) -> DnsAnswer | None:
    """The answer `resolver` has cached for (name, type), or None (also when it keeps no
    cache).  For callers that would otherwise hand a lookup to another thread: a cached
    answer is cheaper to take here than the hand-over."""
    # What isinstance(resolver, CachingResolver) tells, without its cost: a runtime
    # Protocol check walks the protocol's members on every call (1% of a scored message).
    cached = getattr(resolver, "cached", None)
    return cached(name, rdtype) if callable(cached) else None


def _record_text(rdata: Rdata) -> str:
    if isinstance(rdata, TXT):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return rdata.to_text().rstrip(".") if rdata.rdtype in _NAME_TYPES else rdata.to_text()


# Types whose presentation form ends in a host name: drop its trailing dot.
_NAME_TYPES = {dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS, dns.rdatatype.MX}


def answer_from_rdatas(
    name: str, rdtype: str, rdatas: Iterable[Rdata], ttl: int
) -> DnsAnswer:
    """Build an ANSWER from dnspython rdata, shared by the real and in-memory resolvers."""
    items = list(rdatas)
    txt = tuple(tuple(r.strings) for r in items if isinstance(r, TXT))
    return DnsAnswer(
        name=name,
        rdtype=rdtype,
        outcome=Outcome.ANSWER,
        records=tuple(_record_text(r) for r in items),
        txt_strings=txt,
        ttl=ttl,
    )


def _normalise(name: str) -> str:
    return name.rstrip(".").lower()


class _Served:
    """A cached answer and the copy last handed out (with the TTL it had then).

    Answers are immutable, so while the remaining TTL in whole seconds has not moved,
    every hit gets the same copy: a busy server asks the same names many times a
    second, and a new frozen dataclass per hit was most of a hit's cost.
    """

    __slots__ = ("served",)

    def __init__(self, answer: DnsAnswer) -> None:
        self.served = answer


class _Cache:
    """Answers by (name, type) until their TTL; reports the remaining TTL, as a caching
    resolver would."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._entries: TtlCache[tuple[str, str], _Served] = TtlCache(max_entries, clock)

    def get(self, key: tuple[str, str]) -> DnsAnswer | None:
        found = self._entries.get_with_remaining(key)
        if found is None:
            return None
        entry, remaining = found
        answer, ttl = entry.served, int(remaining)
        if answer.ttl != ttl:
            # Two threads may both build one here; either copy is the same value.
            answer = entry.served = DnsAnswer(
                answer.name, answer.rdtype, answer.outcome, answer.records,
                answer.txt_strings, ttl, answer.error,
            )
        return answer

    def put(self, key: tuple[str, str], answer: DnsAnswer) -> None:
        self._entries.put(key, _Served(answer), answer.ttl)

    def __len__(self) -> int:
        return len(self._entries)


# Looked up once: a cache hit is the hot path, and labels() costs more than inc().
_CACHE_HIT = metrics.DNS_CACHE_LOOKUPS.labels("hit")
_CACHE_MISS = metrics.DNS_CACHE_LOOKUPS.labels("miss")


class DnsResolver:
    """Resolver over dnspython with a TTL-honouring cache and per-query metrics.

    Positive answers are cached for their TTL, NXDOMAIN and NODATA for the SOA's
    negative TTL (RFC 2308) capped by `negative_ttl_max`; temporary failures are never
    cached, so that recovery is seen at once.
    """

    def __init__(
        self, settings: DnsSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        resolver = dns.resolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            resolver.nameservers = list(settings.nameservers)
        resolver.port = settings.port
        resolver.timeout = settings.timeout
        resolver.lifetime = settings.timeout
        # Never retry on SERVFAIL: it is an answer (temperror), and retrying multiplies
        # the time a message waits on a broken zone.
        resolver.retry_servfail = False
        self._resolver = resolver
        self._cache = _Cache(settings.cache_entries, clock)

    def cached(self, name: str, rdtype: str) -> DnsAnswer | None:
        """The cached answer, or None without asking (a miss is counted by `query`)."""
        cached = self._cache.get((_normalise(name), rdtype.upper()))
        if cached is not None:
            _CACHE_HIT.inc()
        return cached

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        key = (_normalise(name), rdtype.upper())
        cached = self._cache.get(key)
        if cached is not None:
            _CACHE_HIT.inc()
            return cached
        _CACHE_MISS.inc()
        left = dnsbudget.remaining()
        if left is not None and left <= 0:
            # The message's DNS time is spent: answer as a timeout would, without waiting.
            metrics.DNS_QUERIES.labels(key[1], "budget").inc()
            return DnsAnswer(key[0], key[1], Outcome.TEMPERROR, error="DNS time budget spent")
        started = time.perf_counter()
        answer = self._query_wire(*key, lifetime=self._settings.timeout if left is None
                                  else min(self._settings.timeout, left))
        metrics.DNS_QUERY_SECONDS.labels(key[1]).observe(time.perf_counter() - started)
        metrics.DNS_QUERIES.labels(key[1], answer.outcome.value).inc()
        self._cache.put(key, answer)
        return answer

    def _query_wire(self, name: str, rdtype: str, lifetime: float) -> DnsAnswer:
        try:
            qname = dns.name.from_text(name)
            qtype = dns.rdatatype.from_text(rdtype)
        except (dns.exception.DNSException, ValueError):
            return DnsAnswer(name, rdtype, Outcome.INVALID_NAME, error=INVALID_NAME_TEXT)
        try:
            with turns.waiting():  # another message computes meanwhile
                result = self._resolver.resolve(
                    qname, qtype, raise_on_no_answer=False, search=False, lifetime=lifetime
                )
        except dns.resolver.NXDOMAIN as exc:
            return DnsAnswer(
                name, rdtype, Outcome.NXDOMAIN, ttl=self._negative_ttl(exc.response(qname))  # type: ignore[no-untyped-call]
            )
        except (dns.exception.DNSException, OSError) as exc:
            # Timeout, SERVFAIL, REFUSED, network error: a short stable word, never the
            # library's text (it names our resolver's address, and it reaches A-R reasons).
            return DnsAnswer(name, rdtype, Outcome.TEMPERROR, error=describe_failure(exc))
        if result.rrset is None:
            return DnsAnswer(
                name, rdtype, Outcome.NODATA, ttl=self._negative_ttl(result.response)
            )
        # Round up: the answer is a few microseconds old, and flooring would report
        # 299 for a fresh TTL of 300 and never cache a TTL of 1.
        ttl = max(0, math.ceil(result.expiration - time.time()))
        return answer_from_rdatas(name, rdtype, result.rrset, ttl)

    def _negative_ttl(self, response: dns.message.Message | None) -> int:
        if response is None:
            return 0
        for rrset in response.authority:
            for rdata in rrset:
                if isinstance(rdata, SOA):
                    return min(rrset.ttl, rdata.minimum, self._settings.negative_ttl_max)
        return 0  # RFC 2308: without an SOA, a negative answer is not cached


class DnsFailure(StrEnum):
    """The words a failed lookup is described with, in A-R reasons, replies and logs.

    Short and stable on purpose: dnspython's own text ("All nameservers failed ...:
    Server Do53:127.0.0.1@53 answered REFUSED") names our resolver's address and changes
    between releases, and it ends up in headers that leave the site.
    """

    TIMEOUT = "DNS timeout"
    SERVFAIL = "SERVFAIL"
    REFUSED = "REFUSED"
    NXDOMAIN = "NXDOMAIN"
    ERROR = "DNS error"


# An unqueryable name (bad label, too long): dnspython's wording is not ours to publish.
INVALID_NAME_TEXT = "invalid DNS name"


def describe_failure(exc: BaseException) -> str:
    """The one place a DNS exception becomes text: one of the `DnsFailure` words."""
    if isinstance(exc, dns.exception.Timeout):
        return DnsFailure.TIMEOUT.value
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return DnsFailure.NXDOMAIN.value
    if isinstance(exc, dns.resolver.NoNameservers):
        return _describe_server_errors(exc.kwargs.get("errors") or ())
    return DnsFailure.ERROR.value


def _describe_server_errors(errors: Iterable[object]) -> str:
    """What the servers said, most telling first: an rcode, else a timeout, else error."""
    said: set[str] = set()
    for error in errors:
        # dnspython: (server, tcp, port, exception or rcode text, response)
        if not isinstance(error, tuple) or len(error) < 4:
            continue
        what = error[3]
        if isinstance(what, dns.exception.Timeout):
            said.add(DnsFailure.TIMEOUT.value)
        elif isinstance(what, str):
            said.add(what.upper())
        response = error[4] if len(error) > 4 else None
        if isinstance(response, dns.message.Message):
            said.add(dns.rcode.to_text(response.rcode()))
    for word in (DnsFailure.SERVFAIL, DnsFailure.REFUSED, DnsFailure.TIMEOUT):
        if word.value in said:
            return word.value
    return DnsFailure.ERROR.value


@dataclass
class InMemoryResolver:
    """Answers from zone text, for unit tests and conformance suites: no sockets.

    Names outside every loaded zone are NXDOMAIN.  `fail(name)` makes a name answer
    TEMPERROR (as a dead server would), and `queries` records every lookup so tests can
    count DNS work.
    """

    zones: dict[str, dns.zone.Zone] = field(default_factory=dict)
    failing: set[tuple[str, str | None]] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_zones(cls, zones: Mapping[str, str]) -> InMemoryResolver:
        resolver = cls()
        for origin, text in zones.items():
            resolver.add_zone(origin, text)
        return resolver

    def add_zone(self, origin: str, text: str) -> None:
        """Load a zone; an SOA is supplied if the text has none."""
        origin = _normalise(origin)
        if " SOA " not in text.upper() and "\tSOA\t" not in text.upper():
            text = f"@ 300 IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300\n" + text
        self.zones[origin] = dns.zone.from_text(
            text, origin=origin + ".", relativize=False, check_origin=False
        )

    def fail(self, name: str, rdtype: str | None = None) -> None:
        self.failing.add((_normalise(name), rdtype.upper() if rdtype else None))

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        qname_text, qtype_text = _normalise(name), rdtype.upper()
        self.queries.append((qname_text, qtype_text))
        if {(qname_text, qtype_text), (qname_text, None)} & self.failing:
            return DnsAnswer(name, rdtype, Outcome.TEMPERROR, error="simulated failure")
        try:
            qname = dns.name.from_text(qname_text)
            qtype = dns.rdatatype.from_text(qtype_text)
        except (dns.exception.DNSException, ValueError):
            return DnsAnswer(name, rdtype, Outcome.INVALID_NAME, error=INVALID_NAME_TEXT)
        return self._lookup(name, rdtype, qname, qtype, depth=0)

    def _lookup(
        self, name: str, rdtype: str, qname: dns.name.Name, qtype: dns.rdatatype.RdataType,
        depth: int,
    ) -> DnsAnswer:
        zone = self._zone_for(qname)
        if zone is None:
            return DnsAnswer(name, rdtype, Outcome.NXDOMAIN, ttl=300)
        node = zone.get_node(qname)
        if node is None:
            has_children = any(other.is_subdomain(qname) for other in zone.nodes)
            outcome = Outcome.NODATA if has_children else Outcome.NXDOMAIN
            return DnsAnswer(name, rdtype, outcome, ttl=300)
        rdataset = node.get_rdataset(dns.rdataclass.IN, qtype)
        if rdataset is not None:
            return answer_from_rdatas(name, rdtype, rdataset, rdataset.ttl)
        cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
        if cname is not None and depth < 8:
            target = next(iter(cname)).target
            return self._lookup(name, rdtype, target, qtype, depth + 1)
        return DnsAnswer(name, rdtype, Outcome.NODATA, ttl=300)

    def _zone_for(self, qname: dns.name.Name) -> dns.zone.Zone | None:
        best: dns.zone.Zone | None = None
        best_depth = -1
        for zone in self.zones.values():
            origin = zone.origin
            if origin is not None and qname.is_subdomain(origin) and len(origin) > best_depth:
                best, best_depth = zone, len(origin)
        return best
