"""Reverse DNS of every MX address: a PTR, and the PTR name resolving back (FCrDNS).

Receivers (and our own iprev check) distrust senders whose address has no PTR or one
that does not resolve back; the MX hosts usually send the domain's mail too.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailward.audit.context import AuditContext, IPAddress, reverse_name
from mailward.audit.findings import Finding, Status

FAMILY = "rdns"


def audit(context: AuditContext) -> Iterator[Finding]:
    for host in context.mx_hosts:
        for address in host.addresses:
            yield from _audit_address(context, host.name, address)


def _audit_address(context: AuditContext, host: str, address: IPAddress) -> Iterator[Finding]:
    subject = f"{host} {address}"
    answer = context.query(reverse_name(address), "PTR")
    names = tuple(name.lower() for name in answer.records)
    context.ptr_names[address] = names
    if not names:
        yield Finding(FAMILY, "rdns.no_ptr", Status.FAIL, subject,
                      f"no PTR record for {address} ({answer.outcome})",
                      f"ask whoever runs {address}'s network to set its PTR to {host}")
        return
    confirmed = [name for name in names if address in context.addresses(name)]
    if not confirmed:
        yield Finding(FAMILY, "rdns.not_confirmed", Status.FAIL, subject,
                      f"PTR {', '.join(names)} does not resolve back to {address}",
                      f"give {names[0]} an A/AAAA record {address} (forward-confirmed rDNS)")
        return
    status = Status.OK if host in confirmed else Status.INFO
    note = "" if host in confirmed else f" (not the MX name {host})"
    yield Finding(FAMILY, "rdns.confirmed", status, subject,
                  f"PTR {confirmed[0]} resolves back to {address}{note}")
