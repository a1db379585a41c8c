"""Runs the audit families in order and collects findings and unchecked items.

Order matters: MX first (it finds the hosts), reverse DNS next (the SMTP family
compares the EHLO name with the PTR), then the records.  A family that raises
CouldNotCheck stops there; the others still run, so one dead name server does not hide
the rest of the checklist.  A family that checks many independent items (DNSBL) may
yield an Unchecked for one of them and go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

from mailward.audit import dkim, dmarc, dnsbl, mx, rdns, smtp, spf, transport
from mailward.audit.context import AuditContext
from mailward.audit.findings import AuditReport, CouldNotCheck, Finding, Unchecked

Family = Callable[[AuditContext], Iterator[Finding | Unchecked]]

FAMILIES: tuple[ModuleType, ...] = (mx, rdns, smtp, spf, dkim, dmarc, transport, dnsbl)


def run_audit(context: AuditContext) -> AuditReport:
    findings: list[Finding] = []
    unchecked: list[Unchecked] = []
    for module in FAMILIES:
        family: Family = module.audit
        try:
            for item in family(context):
                if isinstance(item, Unchecked):
                    unchecked.append(item)  # one item could not be checked, the rest go on
                else:
                    findings.append(item)
        except CouldNotCheck as exc:
            unchecked.append(Unchecked(module.FAMILY, exc.subject, exc.error))
    return AuditReport(context.domain, tuple(findings), tuple(unchecked))
