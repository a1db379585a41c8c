"""From DMARC's verdict to what happens to the message: accept, quarantine, reject, defer.

DMARC says what the domain owner asks for; this module decides what we do, under our
own configuration and our own limits:

- `[dmarc] enforce = false` evaluates and reports only.
- A failure that rests on a temporary error (ours or the DNS's), and a DMARC
  temperror (the policy could not be fetched), are answered 451, never 550: the
  sender retries and nothing is lost for our failure or the DNS's.
- A failure that a DKIM signature we could not verify for our own size limit might
  have turned into a pass is not enforced (logged and counted).
- A failure is overridden when a trusted ARC sealer (`[arc] trusted_sealers`)
  recorded `dmarc=pass` for the same From domain and the ARC chain validates: the
  mailing-list case.  The override is recorded in A-R and metrics.
- `quarantine` is Postfix's hold queue (`[dmarc] quarantine = "hold"`) or a marker
  header that the global Sieve script files into Junk (`"header"`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from mailward import metrics
from mailward.checks.arc import ArcOutcome, ArcResult
from mailward.checks.dkim import DkimOutcome, DkimProblem
from mailward.checks.dmarc import Disposition, DmarcOutcome, DmarcResult
from mailward.config import Settings
from mailward.fromheader import FromProblem
from mailward.model import Action, AppendHeader, AuthResult, HeaderEdit, SmtpReply

QUARANTINE_HEADER = "X-Mailward-Quarantine"


class EnforcementOutcome(StrEnum):
    """What enforcement did, for logs and the `mailward_dmarc_enforcement_total` label."""

    NOTHING = "nothing"  # no DMARC failure to act on
    REPORT_ONLY = "report_only"  # [dmarc] enforce = false
    TEMPFAIL = "tempfail"  # failure resting on a temporary error
    SIZE_EXEMPT = "size_exempt"  # an aligned DKIM signature was too large to verify
    ARC_OVERRIDE = "arc_override"  # a trusted ARC sealer vouched for the message
    QUARANTINE_HOLD = "quarantine_hold"
    QUARANTINE_HEADER = "quarantine_header"
    REJECT = "reject"


@dataclass(frozen=True)
class Enforcement:
    """The action for one message and what to add to it."""

    action: Action
    outcome: EnforcementOutcome
    reply: SmtpReply | None = None
    header_edits: tuple[HeaderEdit, ...] = ()
    reason: str = ""
    dmarc_note: str = ""  # appended to the dmarc= A-R reason when not empty


ACCEPT = Enforcement(Action.ACCEPT, EnforcementOutcome.NOTHING)


def enforce(
    settings: Settings,
    dmarc: DmarcOutcome | None,
    dkim: Sequence[DkimOutcome] = (),
    arc: ArcOutcome | None = None,
    inputs_failed: bool = False,
) -> Enforcement:
    """Decide about one inbound message.  `inputs_failed`: a check DMARC depends on
    (SPF, DKIM) raised, so a failure may be ours."""
    decision = _decide(settings, dmarc, dkim, arc, inputs_failed)
    _enforcement_counter(decision.outcome).inc()
    return decision


@functools.cache
def _enforcement_counter(outcome: EnforcementOutcome) -> Any:
    """The DMARC_ENFORCEMENT child per outcome (an enum: bounded), looked up once."""
    return metrics.DMARC_ENFORCEMENT.labels(outcome.value)


def _decide(
    settings: Settings,
    dmarc: DmarcOutcome | None,
    dkim: Sequence[DkimOutcome],
    arc: ArcOutcome | None,
    inputs_failed: bool,
) -> Enforcement:
    if dmarc is None:
        return ACCEPT
    disposition = dmarc.requested_disposition
    if dmarc.result not in (DmarcResult.FAIL, DmarcResult.TEMPERROR, DmarcResult.PERMERROR):
        return ACCEPT
    # A temperror is answered even when the policy itself could not be fetched: the
    # domain may well publish p=reject, and deferring loses nothing.
    if disposition is Disposition.NONE and dmarc.result is not DmarcResult.TEMPERROR:
        return ACCEPT
    domain = dmarc.from_domain or "the sender's domain"
    if not settings.dmarc.enforce:
        return Enforcement(
            Action.ACCEPT, EnforcementOutcome.REPORT_ONLY,
            reason=f"DMARC {dmarc.result} ({disposition}) for {domain} not enforced "
                   "(enforce = false)",
        )
    if dmarc.result is DmarcResult.PERMERROR and dmarc.from_problem is not None:
        return _from_problem(dmarc.from_problem)
    if dmarc.result is DmarcResult.PERMERROR:
        return ACCEPT  # a broken record is no policy to enforce
    if dmarc.result is DmarcResult.TEMPERROR or dmarc.rests_on_temperror or inputs_failed:
        return Enforcement(
            Action.TEMPFAIL, EnforcementOutcome.TEMPFAIL,
            reply=SmtpReply("451", "4.7.5",
                            f"DMARC policy of {domain} could not be checked, try again later"),
            reason=f"DMARC {disposition} for {domain} rests on a temporary error",
        )
    if _aligned_signature_unverified(dmarc, dkim):
        return Enforcement(
            Action.ACCEPT, EnforcementOutcome.SIZE_EXEMPT,
            reason=f"DMARC {disposition} for {domain} not enforced: an aligned DKIM signature "
                   "was too large to verify (milter.max_body_size)",
            dmarc_note="not enforced: message too large to verify",
        )
    sealer = _vouching_sealer(settings, dmarc, arc)
    if sealer is not None:
        return Enforcement(
            Action.ACCEPT, EnforcementOutcome.ARC_OVERRIDE,
            reason=f"DMARC {disposition} for {domain} overridden: trusted ARC sealer {sealer}",
            dmarc_note=f"overridden by trusted ARC sealer {sealer}",
        )
    if disposition is Disposition.REJECT:
        return Enforcement(
            Action.REJECT, EnforcementOutcome.REJECT,
            reply=SmtpReply("550", "5.7.1",
                            f"Message rejected: it fails the DMARC policy of {domain}"),
            reason=f"DMARC reject for {domain}",
        )
    return _quarantine(settings, domain)


def _from_problem(problem: FromProblem) -> Enforcement:
    text = {
        FromProblem.MISSING: "the message has no From header",
        FromProblem.MULTIPLE: "the message must have exactly one From address",
        FromProblem.INVALID: "the From header cannot be parsed",
    }[problem]
    return Enforcement(
        Action.REJECT, EnforcementOutcome.REJECT,
        reply=SmtpReply("550", "5.7.1", f"Message rejected: {text} (RFC 5322, DMARC)"),
        reason=f"From header problem: {problem.value}",
    )


def _quarantine(settings: Settings, domain: str) -> Enforcement:
    reason = f"DMARC quarantine for {domain}"
    if settings.dmarc.quarantine.value == "hold":
        return Enforcement(Action.QUARANTINE, EnforcementOutcome.QUARANTINE_HOLD, reason=reason)
    return Enforcement(
        Action.ACCEPT, EnforcementOutcome.QUARANTINE_HEADER,
        header_edits=(AppendHeader(QUARANTINE_HEADER, f"yes (DMARC policy of {domain})"),),
        reason=reason,
    )


def _aligned_signature_unverified(dmarc: DmarcOutcome, dkim: Sequence[DkimOutcome]) -> bool:
    """Could a signature we did not hash (body over our cap) have aligned?"""
    org = dmarc.org_domain or dmarc.from_domain
    for outcome in dkim:
        if outcome.problem is not DkimProblem.BODY_TOO_LARGE or not outcome.domain:
            continue
        signer = outcome.domain.lower()
        if any(signer == d or signer.endswith("." + d) or d.endswith("." + signer)
               for d in {dmarc.from_domain, org} if d):
            return True
    return False


def _vouching_sealer(
    settings: Settings, dmarc: DmarcOutcome, arc: ArcOutcome | None
) -> str | None:
    """The newest trusted sealer whose ARC-Authentication-Results say DMARC passed."""
    trusted = {domain.lower() for domain in settings.arc.trusted_sealers}
    if not trusted or arc is None or arc.result is not ArcResult.PASS or not dmarc.from_domain:
        return None
    for instance in reversed(arc.instances):
        if instance.sealer.lower() not in trusted:
            continue
        results = instance.authentication_results
        if results.says("dmarc", "pass", {"header.from": dmarc.from_domain}):
            return instance.sealer.lower()
    return None


def annotate(result: AuthResult, decision: Enforcement) -> AuthResult:
    """The dmarc= A-R result with what enforcement did to it, when that matters."""
    note = decision.dmarc_note
    if not note:
        return result
    return replace(result, reason=f"{result.reason}; {note}" if result.reason else note)
