"""Enforcement: from a DMARC outcome (and DKIM/ARC evidence) to the action and reply."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from mailward.checks.arc import ArcInstance, ArcOutcome, ArcResult
from mailward.checks.dkim import DkimOutcome, DkimProblem, DkimResult
from mailward.checks.dmarc import Disposition, DmarcOutcome, DmarcResult
from mailward.config import (
    ArcSettings,
    DmarcSettings,
    QuarantineMode,
    Settings,
)
from mailward.dmarc_enforcement import QUARANTINE_HEADER, EnforcementOutcome, annotate, enforce
from mailward.fromheader import FromProblem
from mailward.model import Action, AppendHeader, AuthResult

SETTINGS = Settings()


def failing(disposition: Disposition = Disposition.REJECT, **changes: object) -> DmarcOutcome:
    outcome = DmarcOutcome(result=DmarcResult.FAIL, from_domain="example.org",
                           org_domain="example.org", requested_disposition=disposition)
    return replace(outcome, **changes)  # type: ignore[arg-type]


def arc_chain(sealer: str, aar: str, result: ArcResult = ArcResult.PASS) -> ArcOutcome:
    instance = ArcInstance(instance=1, sealer=sealer, selector="s1", cv="none",
                           ams_domain=sealer, ams_selector="s1", aar=f"i=1; {aar}")
    return ArcOutcome(result=result, instances=(instance,), oldest_pass=1)


def counted(outcome: EnforcementOutcome) -> float:
    return REGISTRY.get_sample_value("mailward_dmarc_enforcement_total",
                                     {"outcome": outcome.value}) or 0.0


def test_nothing_to_do_without_dmarc_or_without_a_failure():
    assert enforce(SETTINGS, None).action is Action.ACCEPT
    passed = DmarcOutcome(result=DmarcResult.PASS, from_domain="example.org")
    assert enforce(SETTINGS, passed).outcome is EnforcementOutcome.NOTHING
    assert enforce(SETTINGS, failing(Disposition.NONE)).outcome is EnforcementOutcome.NOTHING


def test_reject_names_the_domain():
    before = counted(EnforcementOutcome.REJECT)
    decision = enforce(SETTINGS, failing())
    assert decision.action is Action.REJECT
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.enhanced) == ("550", "5.7.1")
    assert "example.org" in decision.reply.text
    assert counted(EnforcementOutcome.REJECT) == before + 1


def test_report_only_never_rejects():
    settings = replace(SETTINGS, dmarc=DmarcSettings(enforce=False))
    decision = enforce(settings, failing())
    assert (decision.action, decision.outcome) == (Action.ACCEPT, EnforcementOutcome.REPORT_ONLY)
    from_problem = failing(result=DmarcResult.PERMERROR, from_problem=FromProblem.MISSING)
    assert enforce(settings, from_problem).action is Action.ACCEPT


def test_quarantine_holds_or_marks_per_configuration():
    hold = enforce(SETTINGS, failing(Disposition.QUARANTINE))
    assert (hold.action, hold.outcome) == (Action.QUARANTINE, EnforcementOutcome.QUARANTINE_HOLD)
    settings = replace(SETTINGS, dmarc=DmarcSettings(quarantine=QuarantineMode.HEADER))
    marked = enforce(settings, failing(Disposition.QUARANTINE))
    assert marked.action is Action.ACCEPT
    assert marked.header_edits == (
        AppendHeader(QUARANTINE_HEADER, "yes (DMARC policy of example.org)"),)


@pytest.mark.parametrize("outcome", [
    failing(rests_on_temperror=True),
    failing(result=DmarcResult.TEMPERROR),
])
def test_a_failure_resting_on_a_temporary_error_is_451_never_550(outcome: DmarcOutcome):
    decision = enforce(SETTINGS, outcome)
    assert decision.action is Action.TEMPFAIL
    assert decision.reply is not None and decision.reply.code == "451"


def test_a_check_of_ours_that_crashed_makes_a_failure_451():
    assert enforce(SETTINGS, failing(), inputs_failed=True).action is Action.TEMPFAIL


def test_temperror_with_no_known_policy_is_deferred_too():
    unknown = failing(Disposition.NONE, result=DmarcResult.TEMPERROR)
    assert enforce(SETTINGS, unknown).action is Action.TEMPFAIL


def test_a_known_none_policy_is_accepted_even_if_alignment_was_uncertain():
    assert enforce(SETTINGS, failing(Disposition.NONE, rests_on_temperror=True)).action is (
        Action.ACCEPT)


def test_a_signature_too_large_for_us_to_verify_exempts_the_message():
    too_large = DkimOutcome(result=DkimResult.NEUTRAL, problem=DkimProblem.BODY_TOO_LARGE,
                            domain="mail.example.org", verified=False)
    decision = enforce(SETTINGS, failing(), dkim=[too_large])
    assert (decision.action, decision.outcome) == (Action.ACCEPT, EnforcementOutcome.SIZE_EXEMPT)
    unrelated = replace(too_large, domain="other.example")
    assert enforce(SETTINGS, failing(), dkim=[unrelated]).action is Action.REJECT


def test_trusted_arc_sealer_vouching_for_dmarc_overrides_a_failure():
    settings = replace(SETTINGS, arc=ArcSettings(trusted_sealers=("lists.example.net",)))
    chain = arc_chain("lists.example.net",
                      "lists.example.net; dmarc=pass header.from=example.org")
    decision = enforce(settings, failing(), arc=chain)
    assert (decision.action, decision.outcome) == (Action.ACCEPT, EnforcementOutcome.ARC_OVERRIDE)
    assert "lists.example.net" in decision.dmarc_note
    annotated = annotate(AuthResult("dmarc", "fail", reason="no aligned identifier"), decision)
    assert annotated.reason == (
        "no aligned identifier; overridden by trusted ARC sealer lists.example.net")


@pytest.mark.parametrize(("sealer", "aar", "result"), [
    ("other.example", "other.example; dmarc=pass header.from=example.org", ArcResult.PASS),
    ("lists.example.net", "lists.example.net; dmarc=fail header.from=example.org",
     ArcResult.PASS),
    ("lists.example.net", "lists.example.net; dmarc=pass header.from=elsewhere.example",
     ArcResult.PASS),
    ("lists.example.net", "lists.example.net; dmarc=pass header.from=example.org",
     ArcResult.FAIL),
])
def test_no_override_without_a_valid_chain_from_a_trusted_sealer_saying_pass(
    sealer: str, aar: str, result: ArcResult
):
    settings = replace(SETTINGS, arc=ArcSettings(trusted_sealers=("lists.example.net",)))
    decision = enforce(settings, failing(), arc=arc_chain(sealer, aar, result))
    assert decision.action is Action.REJECT


@pytest.mark.parametrize("problem", list(FromProblem))
def test_from_problems_are_rejected_with_a_clear_reply(problem: FromProblem):
    decision = enforce(SETTINGS, failing(result=DmarcResult.PERMERROR, from_problem=problem))
    assert decision.action is Action.REJECT
    assert decision.reply is not None
    assert decision.reply.code == "550" and "From" in decision.reply.text


def test_a_broken_record_is_no_policy_to_enforce():
    broken = failing(result=DmarcResult.PERMERROR)
    assert enforce(SETTINGS, broken).action is Action.ACCEPT


def test_annotate_leaves_results_alone_when_nothing_was_overridden():
    result = AuthResult("dmarc", "fail")
    assert annotate(result, enforce(SETTINGS, failing())) is result
