"""MX: present, priorities, targets that are host names with addresses and not CNAMEs.

RFC 5321 5.1: without MX records, mail goes to the domain's own A/AAAA (the implicit
MX).  RFC 7505: a single `0 .` MX says the domain accepts no mail.  RFC 2181 10.3: an
MX target must not be a CNAME alias.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from mailward.audit.context import AuditContext, MxHost
from mailward.audit.findings import Finding, Status
from mailward.dns import Outcome

FAMILY = "mx"


def _finding(code: str, status: Status, subject: str, evidence: str, fix: str = "") -> Finding:
    return Finding(FAMILY, f"mx.{code}", status, subject, evidence, fix)


def parse_mx(record: str) -> tuple[int, str]:
    """(priority, target) of one MX record; the null MX's target is ""."""
    priority, _, target = record.strip().partition(" ")
    return int(priority), target.strip().rstrip(".").lower()


def audit(context: AuditContext) -> Iterator[Finding]:
    domain = context.domain
    answer = context.query(domain, "MX")
    if answer.outcome is Outcome.NXDOMAIN:
        yield _finding("nxdomain", Status.FAIL, domain, f"{domain} does not exist (NXDOMAIN)",
                       "publish the domain's zone before using it for mail")
        return
    if answer.outcome is not Outcome.ANSWER:
        addresses = context.addresses(domain)
        if addresses:
            context.mx_hosts.append(MxHost(domain, 0, addresses))
            yield _finding("implicit", Status.WARN, domain,
                           f"no MX record: mail goes to {domain}'s own address "
                           f"({', '.join(map(str, addresses))}) as the implicit MX (RFC 5321 5.1)",
                           f"publish an MX record for {domain} (or a null MX `0 .` if it "
                           "takes no mail)")
        else:
            yield _finding("missing", Status.FAIL, domain,
                           "no MX and no A/AAAA record: nobody can deliver mail to this domain",
                           "publish an MX record, or a null MX `0 .` (RFC 7505) if the "
                           "domain takes no mail")
        return
    records = sorted(parse_mx(record) for record in answer.records)
    if any(not target for _, target in records):
        if len(records) == 1 and records[0][0] == 0:
            yield _finding("null", Status.INFO, domain,
                           "null MX `0 .` (RFC 7505): the domain accepts no mail")
        else:
            yield _finding("null_mixed", Status.FAIL, domain,
                           "a null MX `.` published together with other MX records",
                           "a null MX must be the only MX record (RFC 7505 3)")
        return
    listing = ", ".join(f"{priority} {target}" for priority, target in records)
    yield _finding("present", Status.OK, domain, f"MX {listing}")
    for priority, target in records:
        yield from _audit_target(context, priority, target)


def _audit_target(context: AuditContext, priority: int, target: str) -> Iterator[Finding]:
    try:
        ipaddress.ip_address(target)
    except ValueError:
        pass
    else:
        yield _finding("target_address", Status.FAIL, target,
                       f"the MX target {target} is an address, not a host name",
                       "point the MX at a host name that has A/AAAA records")
        return
    cname = context.query(target, "CNAME")
    if cname.outcome is Outcome.ANSWER:
        yield _finding("target_cname", Status.FAIL, target,
                       f"{target} is a CNAME for {cname.records[0]} (RFC 2181 10.3 forbids it)",
                       f"point the MX at {cname.records[0]} itself")
    addresses = context.addresses(target)
    if not addresses:
        yield _finding("target_no_address", Status.FAIL, target,
                       f"{target} has no A or AAAA record",
                       f"publish the address of {target}")
        return
    context.mx_hosts.append(MxHost(target, priority, addresses))
    yield _finding("target_ok", Status.OK, target,
                   f"priority {priority}: {', '.join(map(str, addresses))}")
