"""iprev (RFC 8601 section 3): does the client's reverse DNS name point back to it?

The client address's PTR names are looked up, then each name's A/AAAA records; the
check passes when one of them contains the address ("forward-confirmed reverse DNS").
It says nothing about authorization; spam scoring and humans reading the header use it
as a signal of a properly run sending host.

Results: `pass`; `fail` when there is no PTR or no name points back; `temperror` when
a lookup failed temporarily (never `fail`: a broken resolver says nothing about the
sender).  Mail from local submissions (no client address) gets no iprev result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.dns import Outcome, Resolver
from mailward.model import AuthProperty, AuthResult, Connection, IPAddress, unmapped

METHOD = "iprev"
# RFC 8601 gives no number; like Postfix and OpenDKIM, look at a handful of PTR names only,
# so that a hostile reverse zone cannot make us do unbounded work.
MAX_PTR_NAMES = 10


class IprevResult(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class IprevOutcome:
    client_ip: IPAddress
    result: IprevResult
    name: str = ""  # the confirmed name (pass) or the first PTR name seen
    reason: str = ""


def evaluate_iprev(resolver: Resolver, client_ip: IPAddress) -> IprevOutcome:
    client_ip = unmapped(client_ip)
    reverse = reverse_pointer(client_ip)
    ptr = resolver.query(reverse, "PTR")
    if ptr.outcome is Outcome.TEMPERROR:
        return IprevOutcome(client_ip, IprevResult.TEMPERROR, reason=f"PTR lookup: {ptr.error}")
    if ptr.outcome is not Outcome.ANSWER:
        return IprevOutcome(client_ip, IprevResult.FAIL, reason="no PTR record")
    forward_type = "AAAA" if client_ip.version == 6 else "A"
    shown = str(client_ip)
    temporary = False
    for name in ptr.records[:MAX_PTR_NAMES]:
        forward = resolver.query(name, forward_type)
        if forward.outcome is Outcome.TEMPERROR:
            temporary = True
            continue
        if any(_same_address(record, client_ip, shown) for record in forward.records):
            return IprevOutcome(client_ip, IprevResult.PASS, name=name)
    first = ptr.records[0] if ptr.records else ""
    if temporary:
        return IprevOutcome(client_ip, IprevResult.TEMPERROR, first,
                            "forward lookup failed temporarily")
    return IprevOutcome(client_ip, IprevResult.FAIL, first, "PTR name does not point back")


def reverse_pointer(address: IPAddress) -> str:
    """The PTR name of an address without the final dot: 10.2.0.192.in-addr.arpa.

    The standard library's `reverse_pointer` gives the RFC 1035 / RFC 3596 names that
    dnspython's `reversename.from_address` builds, without making a dns.name on the way
    (that was a third of this check's time on a cached lookup).
    """
    return address.reverse_pointer


def _same_address(record: str, client_ip: IPAddress, shown: str) -> bool:
    """Whether the A/AAAA record is the client's address (`shown` is its str()).

    The record is the resolver's presentation form, which for a matching address is
    nearly always exactly `shown`: that comparison answers without parsing; any other
    spelling is parsed and compared as an address.
    """
    if record == shown:
        return True
    try:
        return ipaddress.ip_address(record) == client_ip
    except ValueError:
        return False


def auth_result(outcome: IprevOutcome) -> AuthResult:
    """`iprev=pass policy.iprev=192.0.2.1`, with the name in the reason when known."""
    reason = outcome.reason
    if outcome.result is IprevResult.PASS:
        reason = outcome.name
    return AuthResult(
        METHOD,
        outcome.result.value,
        reason=reason or None,
        properties=(AuthProperty("policy", "iprev", str(outcome.client_ip)),),
    )


# --------------------------------------------------------------------------- the check

RESULT: ResultKey[IprevOutcome] = ResultKey("iprev")

_SYMBOLS = {
    IprevResult.PASS: "IPREV_PASS",
    IprevResult.FAIL: "IPREV_FAIL",
    IprevResult.TEMPERROR: "IPREV_TEMPERROR",
    IprevResult.PERMERROR: "IPREV_PERMERROR",
}


class InboundIprev(Check[IprevOutcome]):
    """iprev on the inbound path: needs the client address, nothing else."""

    name = "iprev"
    produces = RESULT
    auth_methods = (METHOD,)

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    def applies(self, check_input: CheckInput) -> bool:
        return check_input.connection.client_ip is not None

    def evaluate(self, check_input: CheckInput) -> IprevOutcome:
        client_ip = check_input.connection.client_ip
        assert client_ip is not None  # applies() said so
        return evaluate_iprev(self._resolver, client_ip)

    def auth_results(self, result: IprevOutcome, connection: Connection) -> Sequence[AuthResult]:
        return (auth_result(result),)

    def symbols(self, result: IprevOutcome) -> Sequence[Symbol]:
        return (Symbol(_SYMBOLS[result.result], result.name),)

    def metric_result(self, result: IprevOutcome) -> str:
        return result.result.value


def _build(context: BuildContext[None]) -> InboundIprev | None:
    return InboundIprev(context.resolver) if context.settings.iprev.enabled else None


SPEC: CheckSpec[None] = CheckSpec("iprev", _build)
