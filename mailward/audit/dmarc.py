"""DMARC: the record that applies to the domain (found by the RFC 9989 DNS tree walk),
its policy, alignment, and report destinations.

Report addresses outside the domain's organization only receive reports if that
destination publishes `<domain>._report._dmarc.<destination>` (RFC 7489 7.1).
"""

from __future__ import annotations

from collections.abc import Iterator

from mailward.audit.context import AuditContext
from mailward.audit.findings import CouldNotCheck, Finding, Status
from mailward.checks.dmarc import Disposition, parse_record
from mailward.orgdomain import StepOutcome, TreeWalk, find_org_domain, select_org_domain

FAMILY = "dmarc"


def _finding(code: str, status: Status, subject: str, evidence: str, fix: str = "") -> Finding:
    return Finding(FAMILY, f"dmarc.{code}", status, subject, evidence, fix)


def audit(context: AuditContext) -> Iterator[Finding]:
    domain = context.domain
    walk = TreeWalk(context.resolver, domain)
    first = walk.first()
    _raise_on_temperror(walk)
    step = first
    inherited = False
    if first.outcome is StepOutcome.MULTIPLE:
        yield _finding("multiple", Status.FAIL, f"_dmarc.{domain}",
                       "several DMARC records: receivers discard them all",
                       "keep exactly one v=DMARC1 record")
        return
    if first.outcome is not StepOutcome.RECORD:
        steps = walk.complete()
        _raise_on_temperror(walk)
        org = select_org_domain(domain, steps)
        found = next((s for s in steps if s.outcome is StepOutcome.RECORD
                      and (s.domain == org or s.psd == "y")), None)
        if found is None:
            yield _finding("missing", Status.FAIL, f"_dmarc.{domain}",
                           "no DMARC record for the domain or its organizational domain",
                           f"publish `_dmarc.{domain}. TXT \"v=DMARC1; p=none; "
                           f"rua=mailto:dmarc@{domain}\"` and tighten p= later")
            return
        step, inherited = found, True
    record = parse_record(step.record)
    subject = f"_dmarc.{step.domain}"
    where = f" (inherited from {step.domain}: sp= applies)" if inherited else ""
    if not record.usable:
        yield _finding("unusable", Status.FAIL, subject,
                       f"{step.record!r}: {'; '.join(record.problems)}",
                       "fix the record: receivers ignore it")
        return
    yield _finding("record", Status.OK, subject, f"{step.record}{where}")
    for problem in record.problems:
        yield _finding("syntax", Status.WARN, subject, problem, "fix or remove the tag")
    policy = record.sp or record.p if inherited else record.p
    if policy is Disposition.NONE:
        yield _finding("policy_none", Status.WARN, subject,
                       "p=none: receivers only report, spoofed mail is delivered",
                       "move to p=quarantine, then p=reject, once reports show all "
                       "your mail aligned")
    else:
        yield _finding("policy", Status.OK, subject, f"policy {policy}")
    if record.sp is not None or record.np is not None:
        yield _finding("subdomain_policy", Status.INFO, subject,
                       f"sp={record.sp or '(p)'} np={record.np or '(sp)'}")
    yield _finding("alignment", Status.INFO, subject,
                   f"adkim={record.adkim} aspf={record.aspf}")
    if record.pct is not None and record.pct < 100:
        yield _finding("pct", Status.WARN, subject,
                       f"pct={record.pct}: the policy applies to {record.pct}% of failing mail",
                       "raise pct to 100 (or drop it)")
    if record.t:
        yield _finding("testing", Status.WARN, subject,
                       "t=y: receivers apply one policy step less",
                       "drop t=y when the policy is meant")
    yield from _audit_reports(context, subject, record.rua)


def _raise_on_temperror(walk: TreeWalk) -> None:
    failed = walk.temperror
    if failed is not None:
        raise CouldNotCheck(f"_dmarc.{failed.domain} TXT", failed.error)


def _audit_reports(context: AuditContext, subject: str,
                   rua: tuple[str, ...]) -> Iterator[Finding]:
    if not rua:
        yield _finding("no_rua", Status.WARN, subject,
                       "no rua=: you receive no aggregate reports",
                       f"add rua=mailto:dmarc-reports@{context.domain}")
        return
    ours = find_org_domain(context.resolver, context.domain)
    for uri in rua:
        if not uri.lower().startswith("mailto:"):
            yield _finding("rua_scheme", Status.WARN, subject, f"{uri}: not a mailto: URI",
                           "use mailto: report addresses")
            continue
        address = uri[len("mailto:"):].split("!", 1)[0]
        destination = address.rpartition("@")[2].lower().rstrip(".")
        theirs = find_org_domain(context.resolver, destination)
        if ours is not None and theirs is not None and (ours.uncertain or theirs.uncertain):
            raise CouldNotCheck(f"organizational domain of {destination}",
                                ours.error or theirs.error)
        if ours is not None and theirs is not None and ours.domain == theirs.domain:
            yield _finding("rua", Status.OK, subject, f"reports go to {address}")
            continue
        name = f"{context.domain}._report._dmarc.{destination}"
        authorized = context.txt_records(name, "v=DMARC1")
        if authorized:
            yield _finding("rua_external", Status.OK, subject,
                           f"reports go to {address}, authorized by {name}")
        else:
            yield _finding("rua_unauthorized", Status.FAIL, subject,
                           f"reports go to {address} in another organization, and {name} "
                           "has no v=DMARC1 record: receivers send nothing there",
                           f"ask {destination} to publish `{name}. TXT \"v=DMARC1\"`")
