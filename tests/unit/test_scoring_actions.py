"""Scoring actions beyond add_header: rewrite_subject (template with the score) and the
threshold order every config must keep (reject > quarantine > rewrite_subject > required)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from mailward.config import GeneralSettings, Settings, settings_from_mapping
from mailward.configreader import ConfigError
from mailward.dns import InMemoryResolver
from mailward.model import (
    Action,
    AppendHeader,
    Connection,
    Header,
    RemoveHeader,
    Symbol,
    Transaction,
)
from mailward.pipeline import Pipeline, build_inbound_checks
from mailward.scoring import (
    DEFAULT_WEIGHTS,
    ScoreAction,
    ScoringSettings,
    score_symbols,
    subject_rewrite,
    subject_template_problem,
)

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
ADD_HEADER_GTUBE = "Y" + GTUBE[1:]


def rewriting(**overrides: object) -> ScoringSettings:
    base = ScoringSettings(required=3.0, rewrite_subject=5.0, quarantine=None, reject=15.0,
                           weights={"RBL_LISTED": 7.3})
    return replace(base, **overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- action


@pytest.mark.parametrize(("total", "action"), [
    (2.9, ScoreAction.NO_ACTION), (3.0, ScoreAction.ADD_HEADER),
    (4.9, ScoreAction.ADD_HEADER), (5.0, ScoreAction.REWRITE_SUBJECT),
    (14.9, ScoreAction.REWRITE_SUBJECT), (15.0, ScoreAction.REJECT),
])
def test_rewrite_subject_sits_between_add_header_and_reject(
        total: float, action: ScoreAction) -> None:
    settings = rewriting(weights={"RBL_LISTED": total})
    assert score_symbols([Symbol("RBL_LISTED")], settings).action is action


def test_rewrite_subject_is_off_by_default() -> None:
    settings = ScoringSettings(weights={"RBL_LISTED": 14.0})
    assert settings.rewrite_subject is None
    assert score_symbols([Symbol("RBL_LISTED")], settings).action is ScoreAction.ADD_HEADER


# --------------------------------------------------------------------------- edits


def test_subject_is_replaced_with_the_template_and_the_score() -> None:
    settings = rewriting()
    score = score_symbols([Symbol("RBL_LISTED")], settings)
    edits = subject_rewrite((Header("From", "a@x"), Header("Subject", " Cheap pills")),
                            score, settings)
    assert edits == (RemoveHeader("Subject", 1),
                     AppendHeader("Subject", "[SPAM 7.3] Cheap pills"))


def test_every_subject_goes_highest_occurrence_first_and_folding_is_undone() -> None:
    settings = rewriting(subject_template="*** SPAM *** {subject}")
    score = score_symbols([Symbol("RBL_LISTED")], settings)
    edits = subject_rewrite((Header("Subject", "first\r\n\tline"), Header("SUBJECT", "two")),
                            score, settings)
    assert edits == (RemoveHeader("SUBJECT", 2), RemoveHeader("Subject", 1),
                     AppendHeader("Subject", "*** SPAM *** first line"))


def test_braces_in_the_subject_are_data_not_template() -> None:
    settings = rewriting()
    score = score_symbols([Symbol("RBL_LISTED")], settings)
    edits = subject_rewrite((Header("Subject", "{score} {0} {subject.__class__}"),),
                            score, settings)
    assert edits[-1] == AppendHeader("Subject", "[SPAM 7.3] {score} {0} {subject.__class__}")


def test_message_without_subject_gets_one() -> None:
    settings = rewriting()
    score = score_symbols([Symbol("RBL_LISTED")], settings)
    assert subject_rewrite((Header("From", "a@x"),), score, settings) == (
        AppendHeader("Subject", "[SPAM 7.3]"),)


def test_encoded_word_subject_is_kept_verbatim_after_the_prefix() -> None:
    settings = rewriting()
    score = score_symbols([Symbol("RBL_LISTED")], settings)
    edits = subject_rewrite((Header("Subject", "=?utf-8?b?w6TDtsO8?="),), score, settings)
    assert edits[-1] == AppendHeader("Subject", "[SPAM 7.3] =?utf-8?b?w6TDtsO8?=")


# --------------------------------------------------------------------------- config


def test_config_reads_rewrite_subject_and_template() -> None:
    settings = settings_from_mapping({"scoring": {
        "required": 5, "rewrite_subject": 8, "subject_template": "[SPAM] {subject}"}})
    assert settings.scoring.rewrite_subject == 8.0
    assert settings.scoring.subject_template == "[SPAM] {subject}"


@pytest.mark.parametrize(("template", "problem"), [
    ("[SPAM]", "must contain {subject}"),
    ("{subject.__class__}", "may only contain"),
    ("{subject!r}", "may only contain"),
    ("{score:>10} {subject}", "may only contain"),
    ("{0} {subject}", "may only contain"),
    ("{subject", "not a valid template"),
    ("line\n{subject}", "printable ASCII"),
    ("", "printable ASCII"),
])
def test_bad_templates_are_refused(template: str, problem: str) -> None:
    assert problem in subject_template_problem(template)
    with pytest.raises(ConfigError, match=r"scoring\.subject_template"):
        settings_from_mapping({"scoring": {"subject_template": template}})


def test_good_templates_pass() -> None:
    assert subject_template_problem("[SPAM {score}] {subject}") == ""
    assert subject_template_problem("{subject} (spam)") == ""


@pytest.mark.parametrize(("table", "key", "names"), [
    ({"reject": 10, "quarantine": 12}, "quarantine", "reject"),
    ({"quarantine": 10, "rewrite_subject": 11}, "rewrite_subject", "quarantine"),
    ({"rewrite_subject": 7, "required": 8}, "required", "rewrite_subject"),
    ({"reject": 5, "required": 6}, "required", "reject"),
    ({"reject": 9, "rewrite_subject": 10}, "rewrite_subject", "reject"),
])
def test_thresholds_out_of_order_are_an_error_naming_them(
        table: dict[str, object], key: str, names: str) -> None:
    with pytest.raises(ConfigError, match=rf"scoring\.{key}: .*above {names}") as raised:
        settings_from_mapping({"scoring": table})
    assert "reject > quarantine > greylist > rewrite_subject > required" in str(raised.value)


def test_equal_and_ordered_thresholds_are_accepted() -> None:
    settings = settings_from_mapping({"scoring": {
        "reject": 15, "quarantine": 10, "rewrite_subject": 8, "required": 8}})
    assert settings.scoring.rewrite_subject == settings.scoring.required == 8.0


# --------------------------------------------------------------------------- pipeline

UNTRUSTED = Connection(ipaddress.ip_address("198.51.100.7"))


def pipeline_with(scoring: ScoringSettings) -> Pipeline:
    settings = Settings(general=GeneralSettings(authserv_id="mx.example.net"),
                        scoring=scoring)
    resolver = InMemoryResolver()
    return Pipeline(settings, resolver, build_inbound_checks(settings, resolver))


def message(body: str) -> Transaction:
    return Transaction(
        queue_id="Q1", mail_from="a@example.org", recipients=("b@example.net",),
        headers=(Header("From", "a@example.org"), Header("Subject", "Hello there")),
        body=body.encode(), body_size=len(body))


def test_pipeline_rewrites_the_subject_of_accepted_spam() -> None:
    weights = {**DEFAULT_WEIGHTS, "GTUBE_ADD_HEADER": 9.0}
    verdict = pipeline_with(rewriting(weights=weights)).evaluate(
        UNTRUSTED, message(ADD_HEADER_GTUBE))
    assert verdict.action is Action.ACCEPT
    assert RemoveHeader("Subject", 1) in verdict.header_edits
    subjects = [edit for edit in verdict.header_edits
                if isinstance(edit, AppendHeader) and edit.name == "Subject"]
    assert len(subjects) == 1
    assert subjects[0].value.startswith("[SPAM ")
    assert subjects[0].value.endswith("] Hello there")
    assert AppendHeader("X-Spam-Flag", "YES") in verdict.header_edits


def test_pipeline_leaves_the_subject_below_the_threshold() -> None:
    verdict = pipeline_with(rewriting()).evaluate(UNTRUSTED, message(ADD_HEADER_GTUBE))
    assert AppendHeader("X-Spam-Flag", "YES") in verdict.header_edits  # forced add_header
    assert not any(edit.name == "Subject" for edit in verdict.header_edits)
