"""Each `--ip` and each MX address against DNS blocklists (RFC 5782).

A listing is an A record in 127.0.0.0/8 at the reversed address under the list's zone.
Answers in 127.255.255.0/24 are the lists' own errors (Spamhaus answers so when the
query came through a public resolver), so they are "could not check", never a listing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from mailward.audit.context import AuditContext, IPAddress
from mailward.audit.findings import CouldNotCheck, Finding, Status, Unchecked
from mailward.dns import Outcome

FAMILY = "dnsbl"
_LIST_ERRORS = ipaddress.ip_network("127.255.255.0/24")
_LISTED = ipaddress.ip_network("127.0.0.0/8")


def query_name(address: IPAddress, zone: str) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        reversed_part = ".".join(reversed(str(address).split(".")))
    else:
        reversed_part = ".".join(reversed(address.exploded.replace(":", "")))
    return f"{reversed_part}.{zone.strip('.')}"


def audit(context: AuditContext) -> Iterator[Finding | Unchecked]:
    zones = context.options.dnsbl_zones
    if not zones:
        return
    addresses = list(dict.fromkeys(
        [*context.options.sending_ips, *(a for host in context.mx_hosts for a in host.addresses)]))
    for address in addresses:
        for zone in zones:
            try:
                yield from _check(context, address, zone)
            except CouldNotCheck as exc:
                yield Unchecked(FAMILY, exc.subject, exc.error)


def _check(context: AuditContext, address: IPAddress, zone: str) -> Iterator[Finding]:
    name = query_name(address, zone)
    answer = context.query(name, "A")
    subject = f"{address} on {zone}"
    if answer.outcome is not Outcome.ANSWER:
        yield Finding(FAMILY, "dnsbl.not_listed", Status.OK, subject, "not listed")
        return
    codes = [ipaddress.ip_address(record) for record in answer.records]
    if any(code in _LIST_ERRORS for code in codes):
        raise CouldNotCheck(name, f"the list refused the query ({', '.join(map(str, codes))})")
    listed = [str(code) for code in codes if code in _LISTED]
    if not listed:
        yield Finding(FAMILY, "dnsbl.not_listed", Status.OK, subject,
                      f"answer {', '.join(map(str, codes))} is outside 127.0.0.0/8: ignored")
        return
    reason = context.query(name, "TXT")
    detail = f": {reason.records[0]}" if reason.outcome is Outcome.ANSWER and reason.records else ""
    yield Finding(FAMILY, "dnsbl.listed", Status.FAIL, subject,
                  f"listed ({', '.join(listed)}){detail}",
                  f"find out why at the list's web site and request delisting from {zone}")
