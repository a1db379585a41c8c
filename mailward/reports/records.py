"""One row of an aggregate report, built from the milter's typed outcomes (pure).

A `ReportRow` is everything RFC 9990 puts in one `<record>` except the count: messages
with equal rows are counted together, so the store keys on `ReportRow.key()`.  The
policy as published travels with the row (`PublishedPolicy`), because the report's
`<policy_published>` must say what the domain published when we evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from mailward.checks.dkim import DkimOutcome
from mailward.checks.dmarc import DmarcOutcome, DmarcResult, PolicyOverride
from mailward.checks.spf import SpfIdentity, SpfOutcome
from mailward.dmarc_enforcement import Enforcement, EnforcementOutcome
from mailward.model import Action
from mailward.orgdomain import split_tags


class AppliedDisposition(StrEnum):
    """RFC 9990 ActionDispositionType: what we actually did."""

    NONE = "none"
    PASS = "pass"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class OverrideType(StrEnum):
    """RFC 9990 PolicyOverrideType."""

    LOCAL_POLICY = "local_policy"
    MAILING_LIST = "mailing_list"
    OTHER = "other"
    POLICY_TEST_MODE = "policy_test_mode"
    TRUSTED_FORWARDER = "trusted_forwarder"
    SAMPLED_OUT = "sampled_out"


@dataclass(frozen=True)
class OverrideReason:
    type: OverrideType
    comment: str = ""


@dataclass(frozen=True)
class DkimResultRow:
    domain: str
    selector: str
    result: str


@dataclass(frozen=True)
class SpfResultRow:
    domain: str
    scope: str  # "mfrom" or "helo"
    result: str


@dataclass(frozen=True)
class PublishedPolicy:
    """`<policy_published>`: the record as found at `domain`."""

    domain: str
    p: str
    sp: str
    np: str
    adkim: str
    aspf: str
    testing: str  # "y" / "n"
    psd: str  # "y" / "n" / "u"
    discovery_method: str  # "treewalk"
    rua: tuple[str, ...]
    ruf: tuple[str, ...]
    org_domain: str
    fo: str = ""  # the record's fo= as published ("" when absent)


@dataclass(frozen=True)
class ReportRow:
    """One `<record>` of a report, without its count."""

    source_ip: str
    header_from: str
    envelope_from: str
    disposition: AppliedDisposition
    dkim_aligned: str  # "pass" / "fail"
    spf_aligned: str
    reasons: tuple[OverrideReason, ...]
    dkim: tuple[DkimResultRow, ...]
    spf: tuple[SpfResultRow, ...]

    def key(self) -> str:
        """A canonical text form: equal rows, equal keys (the store's grouping key)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> ReportRow:
        data: dict[str, Any] = json.loads(key)
        return cls(
            source_ip=data["source_ip"], header_from=data["header_from"],
            envelope_from=data["envelope_from"],
            disposition=AppliedDisposition(data["disposition"]),
            dkim_aligned=data["dkim_aligned"], spf_aligned=data["spf_aligned"],
            reasons=tuple(OverrideReason(OverrideType(r["type"]), r["comment"])
                          for r in data["reasons"]),
            dkim=tuple(DkimResultRow(**d) for d in data["dkim"]),
            spf=tuple(SpfResultRow(**s) for s in data["spf"]),
        )


@dataclass(frozen=True)
class Observation:
    """One evaluated message: its row, and the policy it was evaluated under."""

    row: ReportRow
    policy: PublishedPolicy


def applied_disposition(dmarc: DmarcOutcome, decision: Enforcement) -> AppliedDisposition:
    if dmarc.result is DmarcResult.PASS:
        return AppliedDisposition.PASS
    if decision.action is Action.REJECT:
        return AppliedDisposition.REJECT
    if decision.action is Action.QUARANTINE or decision.outcome in (
            EnforcementOutcome.QUARANTINE_HEADER, EnforcementOutcome.QUARANTINE_HOLD):
        return AppliedDisposition.QUARANTINE
    return AppliedDisposition.NONE


_POLICY_OVERRIDES = {
    PolicyOverride.SAMPLED_OUT: OverrideType.SAMPLED_OUT,
    PolicyOverride.TESTING: OverrideType.POLICY_TEST_MODE,
    PolicyOverride.LOCAL_POLICY: OverrideType.LOCAL_POLICY,
}

_ENFORCEMENT_OVERRIDES = {
    EnforcementOutcome.ARC_OVERRIDE: OverrideType.TRUSTED_FORWARDER,
    EnforcementOutcome.REPORT_ONLY: OverrideType.LOCAL_POLICY,
    EnforcementOutcome.SIZE_EXEMPT: OverrideType.LOCAL_POLICY,
}


def override_reasons(dmarc: DmarcOutcome, decision: Enforcement) -> tuple[OverrideReason, ...]:
    """Why what we did is milder than the published policy (RFC 9990 `<reason>`)."""
    reasons: list[OverrideReason] = []
    if dmarc.override is not None:
        reasons.append(OverrideReason(_POLICY_OVERRIDES[dmarc.override]))
    kind = _ENFORCEMENT_OVERRIDES.get(decision.outcome)
    if kind is not None:
        reasons.append(OverrideReason(kind, decision.dmarc_note or decision.outcome.value))
    return tuple(reasons)


def observe(
    client_ip: str,
    dmarc: DmarcOutcome,
    spf: SpfOutcome | None,
    dkim: Sequence[DkimOutcome],
    decision: Enforcement,
) -> Observation | None:
    """The row and policy for one message; None when there is nothing to report
    (no policy record found: nobody asked for reports)."""
    record = dmarc.record
    if record is None or not dmarc.policy_domain or not dmarc.from_domain:
        return None
    spf_rows: tuple[SpfResultRow, ...] = ()
    envelope_from = ""
    if spf is not None:
        scope = "helo" if spf.identity is SpfIdentity.HELO else "mfrom"
        envelope_from = spf.domain
        spf_rows = (SpfResultRow(spf.domain, scope, spf.result.value),)
    row = ReportRow(
        source_ip=client_ip,
        header_from=dmarc.from_domain,
        envelope_from=envelope_from,
        disposition=applied_disposition(dmarc, decision),
        dkim_aligned="pass" if dmarc.dkim_aligned else "fail",
        spf_aligned="pass" if dmarc.spf_aligned else "fail",
        reasons=override_reasons(dmarc, decision),
        dkim=tuple(DkimResultRow(d.domain, d.selector, d.result.value) for d in dkim
                   if d.domain),
        spf=spf_rows,
    )
    policy = PublishedPolicy(
        domain=dmarc.policy_domain,
        p=record.p.value,
        sp=(record.sp or record.p).value,
        np=(record.np or record.sp or record.p).value,
        adkim=record.adkim.value,
        aspf=record.aspf.value,
        testing="y" if record.t else "n",
        psd=record.psd if record.psd in ("y", "n") else "u",
        discovery_method="treewalk",
        rua=record.rua,
        ruf=record.ruf,
        org_domain=dmarc.org_domain or dmarc.policy_domain,
        fo=split_tags(record.text).first("fo") or "",
    )
    return Observation(row, policy)
