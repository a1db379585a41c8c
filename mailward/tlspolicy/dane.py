"""DANE for SMTP (RFC 7672): does a destination publish usable TLSA records for its MX
hosts in DNSSEC-validated zones?

RFC 8461 section 2: where DANE and MTA-STS both exist, DANE wins.  So the engine asks
here first, and answers Postfix `dane-only` (every MX host has usable TLSA records) or
`dane` (some have: Postfix then authenticates those and uses opportunistic TLS for the
others, RFC 7672 section 2.2) and stops; otherwise MTA-STS decides.

Security rests on the AD bit, which only means something from a validating resolver on
loopback that the admin trusts (`[tlspolicy] dnssec_resolver`): an answer without AD
never gives DANE.  A failed lookup (SERVFAIL: a bogus signature looks exactly like
this from a validating resolver) in a zone that is signed is not "no DANE": an attacker
who can break the TLSA answer must not win a downgrade.  That becomes `TEMPFAIL`, which
the engine answers TEMP (Postfix defers and retries; never a bounce).

Pure logic over a `DnssecResolver`; `ValidatingResolverClient` is the wire adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
from dns.rdtypes.ANY.SOA import SOA

from mailward.dns import Outcome
from mailward.tlspolicy.settings import ResolverAddress

#: MX hosts whose TLSA records are looked up; more are rare, and the lookups are bounded.
MAX_MX_HOSTS = 10
SMTP_PORT = 25
# RFC 7672 section 3.1: only DANE-TA(2) and DANE-EE(3) are used for SMTP; PKIX-TA(0) and
# PKIX-EE(1) records are "unusable".  Selectors 0 and 1, matching types 0, 1 and 2.
_USABLE_USAGES = frozenset({2, 3})
_KNOWN_SELECTORS = frozenset({0, 1})
_KNOWN_MATCHING = frozenset({0, 1, 2})


# --------------------------------------------------------------------------- resolver


@dataclass(frozen=True)
class SecureAnswer:
    """One lookup through the validating resolver; `secure` is its AD bit."""

    outcome: Outcome
    records: tuple[str, ...] = ()
    secure: bool = False
    ttl: int = 0
    error: str = ""


class DnssecResolver(Protocol):
    def query(self, name: str, rdtype: str) -> SecureAnswer: ...


class ValidatingResolverClient:
    """Queries with the DO and AD bits set (RFC 6840 section 5.7), so the resolver says
    whether it validated the answer.  No cache of its own: the engine keeps decisions
    for their TTL, and the resolver caches records."""

    def __init__(self, address: ResolverAddress, timeout: float) -> None:
        self._address = address
        self._timeout = timeout

    def query(self, name: str, rdtype: str) -> SecureAnswer:
        try:
            request = dns.message.make_query(name, rdtype, want_dnssec=True)
        except (dns.exception.DNSException, ValueError):
            return SecureAnswer(Outcome.INVALID_NAME, error="invalid DNS name")
        request.flags |= dns.flags.AD | dns.flags.RD
        try:
            response, _ = dns.query.udp_with_fallback(
                request, self._address.host, port=self._address.port, timeout=self._timeout)
        except dns.exception.Timeout:
            return SecureAnswer(Outcome.TEMPERROR, error="DNS timeout")
        except (dns.exception.DNSException, OSError):
            return SecureAnswer(Outcome.TEMPERROR, error="DNS error")
        return answer_from_response(response, rdtype)


def answer_from_response(response: dns.message.Message, rdtype: str) -> SecureAnswer:
    """The outcome, records (presentation form), AD bit and TTL of a response."""
    secure = bool(response.flags & dns.flags.AD)
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return SecureAnswer(Outcome.NXDOMAIN, secure=secure, ttl=_negative_ttl(response))
    if rcode != dns.rcode.NOERROR:
        return SecureAnswer(Outcome.TEMPERROR, error=dns.rcode.to_text(rcode))
    wanted = dns.rdatatype.from_text(rdtype)
    # A CNAME chain ends in the RRset of the type asked for (its owner is the target).
    rrsets = [rrset for rrset in response.answer if rrset.rdtype == wanted]
    if not rrsets:
        return SecureAnswer(Outcome.NODATA, secure=secure, ttl=_negative_ttl(response))
    records = tuple(rdata.to_text() for rrset in rrsets for rdata in rrset)
    ttl = min(rrset.ttl for rrset in response.answer)
    return SecureAnswer(Outcome.ANSWER, records, secure, ttl)


def _negative_ttl(response: dns.message.Message) -> int:
    for rrset in response.authority:
        for rdata in rrset:
            if isinstance(rdata, SOA):
                return int(min(rrset.ttl, rdata.minimum))
    return 0


# --------------------------------------------------------------------------- decision


class DaneOutcome(StrEnum):
    """What DANE says about a destination (also the `outcome` metric label)."""

    DANE_ONLY = "dane_only"  # every MX host has usable TLSA records
    DANE = "dane"  # some MX hosts have TLSA records
    NO_TLSA = "no_tlsa"  # MX validated, no TLSA records: DANE does not apply
    INSECURE = "insecure"  # MX (or TLSA) answers not validated: DANE cannot apply
    NO_MX = "no_mx"  # no MX hosts to look at (NXDOMAIN, null MX)
    TEMPFAIL = "tempfail"  # a lookup failed where the answer may be signed


@dataclass(frozen=True)
class DaneDecision:
    domain: str
    outcome: DaneOutcome
    reason: str
    #: Seconds the DNS data behind this decision stays valid; 0: decide again next time.
    ttl: int = 0

    @property
    def policy(self) -> str | None:
        """The Postfix TLS policy to answer, or None when MTA-STS decides."""
        if self.outcome is DaneOutcome.DANE_ONLY:
            return "dane-only"
        if self.outcome is DaneOutcome.DANE:
            return "dane"
        return None


class HostTlsa(StrEnum):
    USABLE = "usable"  # validated, at least one usable record
    UNUSABLE = "unusable"  # validated, but only records SMTP cannot use
    NONE = "none"  # validated absence, or not validated at all


def usable_tlsa(records: tuple[str, ...]) -> bool:
    """RFC 7672 section 3.1: at least one DANE-TA(2) or DANE-EE(3) record with a known
    selector and matching type."""
    for record in records:
        fields = record.split()
        if len(fields) < 4 or not all(field.isdigit() for field in fields[:3]):
            continue
        usage, selector, matching = (int(field) for field in fields[:3])
        if (usage in _USABLE_USAGES and selector in _KNOWN_SELECTORS
                and matching in _KNOWN_MATCHING):
            return True
    return False


def mx_hosts(records: tuple[str, ...]) -> list[str]:
    """Host names of MX records in preference order; a null MX ("0 .") yields none."""
    parsed: list[tuple[int, str]] = []
    for record in records:
        preference, _, host = record.partition(" ")
        host = host.strip().rstrip(".").lower()
        if preference.isdigit() and host:
            parsed.append((int(preference), host))
    return list(dict.fromkeys(host for _, host in sorted(parsed)))


def _failed(answer: SecureAnswer) -> bool:
    return answer.outcome in (Outcome.TEMPERROR, Outcome.INVALID_NAME)


class Dane:
    """Decides, per RFC 7672 section 2.2, from the MX RRset and each host's TLSA RRset."""

    def __init__(self, resolver: DnssecResolver) -> None:
        self._resolver = resolver

    def decide(self, domain: str, port: int = SMTP_PORT) -> DaneDecision:
        mx = self._resolver.query(domain, "MX")
        if _failed(mx):
            return DaneDecision(domain, DaneOutcome.TEMPFAIL,
                                f"MX lookup failed ({mx.error or mx.outcome}): DANE unknown")
        if not mx.secure:
            return DaneDecision(domain, DaneOutcome.INSECURE, "MX RRset not DNSSEC-validated",
                                mx.ttl)
        if mx.outcome is Outcome.NXDOMAIN:
            return DaneDecision(domain, DaneOutcome.NO_MX, "domain does not exist", mx.ttl)
        # No MX: the domain itself is the host (RFC 5321 section 5.1 implicit MX).
        hosts = mx_hosts(mx.records) if mx.outcome is Outcome.ANSWER else [domain]
        if not hosts:
            return DaneDecision(domain, DaneOutcome.NO_MX, "null MX", mx.ttl)
        return self._hosts(domain, hosts[:MAX_MX_HOSTS], port, mx.ttl)

    def _hosts(self, domain: str, hosts: list[str], port: int, mx_ttl: int) -> DaneDecision:
        found: dict[str, HostTlsa] = {}
        ttl = mx_ttl
        for host in hosts:
            answer = self._resolver.query(f"_{port}._tcp.{host}", "TLSA")
            if _failed(answer) and self._host_is_insecure(host):
                found[host] = HostTlsa.NONE
                continue
            if _failed(answer):
                return DaneDecision(domain, DaneOutcome.TEMPFAIL,
                                    f"TLSA lookup for MX {host} failed "
                                    f"({answer.error or answer.outcome}) in a signed MX "
                                    "RRset: not downgrading")
            ttl = min(ttl, answer.ttl)
            if answer.outcome is Outcome.ANSWER and answer.secure:
                found[host] = HostTlsa.USABLE if usable_tlsa(answer.records) \
                    else HostTlsa.UNUSABLE
            else:
                found[host] = HostTlsa.NONE
        with_tlsa = [host for host, state in found.items() if state is not HostTlsa.NONE]
        if not with_tlsa:
            return DaneDecision(domain, DaneOutcome.NO_TLSA,
                                f"no validated TLSA records for {len(hosts)} MX host(s)", ttl)
        if all(state is HostTlsa.USABLE for state in found.values()):
            return DaneDecision(domain, DaneOutcome.DANE_ONLY,
                                f"DANE: usable TLSA records for every MX ({', '.join(hosts)})",
                                ttl)
        return DaneDecision(domain, DaneOutcome.DANE,
                            f"DANE: TLSA records for {len(with_tlsa)} of {len(hosts)} MX "
                            f"host(s) ({', '.join(with_tlsa)})", ttl)


    def _host_is_insecure(self, host: str) -> bool:
        """After a failed TLSA lookup: is the MX host provably in an unsigned zone (its
        address answer validated as insecure)?  Then DANE cannot apply to it (RFC 7672
        section 2.2.2: TLSA records matter only for hosts with secure addresses), and its
        broken DNS must not defer the whole domain.  A bogus zone fails here too (a
        validator answers SERVFAIL, not "insecure"), so this opens no downgrade."""
        address = self._resolver.query(host, "A")
        return not _failed(address) and not address.secure


def key_port(key: str) -> int:
    """The port of a Postfix next-hop key `domain:port` (a transport map's), else 25:
    Postfix looks TLSA records up at `_PORT._tcp.HOST` for the port it connects to."""
    _, colon, port = key.strip().partition(":")
    if colon and port.isdigit() and 0 < int(port) < 65536:
        return int(port)
    return SMTP_PORT
