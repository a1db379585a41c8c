"""Scoring: weights, thresholds, forced actions, X-Spam-* headers, forged-header removal,
and how the pipeline combines the score with DMARC enforcement."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

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
    ScoreAction,
    ScoringSettings,
    forged_headers,
    log_summary,
    score_symbols,
    spam_headers,
)

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def weights(**values: float) -> ScoringSettings:
    return ScoringSettings(weights=values)


# --------------------------------------------------------------------------- scores


def test_score_is_the_sum_of_weights_each_name_once() -> None:
    score = score_symbols(
        [Symbol("RBL_SBL", "zen"), Symbol("RBL_SBL", "other"), Symbol("SPF_FAIL")],
        weights(RBL_SBL=4.0, SPF_FAIL=2.5))
    assert score.total == 6.5
    assert score.names == ("RBL_SBL", "SPF_FAIL")
    assert score.action is ScoreAction.ADD_HEADER


@pytest.mark.parametrize(("total", "action"), [
    (0.0, ScoreAction.NO_ACTION), (5.9, ScoreAction.NO_ACTION), (6.0, ScoreAction.ADD_HEADER),
    (9.9, ScoreAction.ADD_HEADER), (10.0, ScoreAction.QUARANTINE),
    (15.0, ScoreAction.REJECT), (-3.0, ScoreAction.NO_ACTION),
])
def test_thresholds_pick_the_highest_action_reached(total: float, action: ScoreAction) -> None:
    settings = ScoringSettings(required=6.0, quarantine=10.0, reject=15.0,
                               weights={"RBL_LISTED": total})
    assert score_symbols([Symbol("RBL_LISTED")], settings).action is action


def test_unknown_symbols_weigh_nothing_but_are_listed() -> None:
    score = score_symbols([Symbol("SOMETHING_NEW")], weights())
    assert score.total == 0.0
    assert score.names == ("SOMETHING_NEW",)


def test_gtube_forces_reject_even_when_its_weight_is_overridden() -> None:
    score = score_symbols([Symbol("GTUBE"), Symbol("BAYES_HAM_99")],
                          weights(GTUBE=0.0, BAYES_HAM_99=-50.0))
    assert score.action is ScoreAction.REJECT
    assert score.forced_by == "GTUBE"


def test_a_forced_weaker_action_does_not_lower_a_higher_score() -> None:
    score = score_symbols([Symbol("GTUBE_ADD_HEADER"), Symbol("RBL_SBL")],
                          weights(RBL_SBL=20.0))
    assert score.action is ScoreAction.REJECT
    assert score.forced_by == ""  # the score decided, not the test string


def test_bayes_symbols_have_default_weights() -> None:
    defaults = ScoringSettings()
    assert defaults.weight("BAYES_SPAM_99") > 0 > defaults.weight("BAYES_HAM_99")


# --------------------------------------------------------------------------- headers


def test_spam_headers_in_spamassassin_form() -> None:
    score = score_symbols([Symbol("RBL_SBL"), Symbol("SPF_FAIL")],
                          ScoringSettings(weights={"RBL_SBL": 5.3, "SPF_FAIL": 2.0}))
    flag, value, level, status = spam_headers(score)
    assert flag == AppendHeader("X-Spam-Flag", "YES")
    assert value == AppendHeader("X-Spam-Score", "7.3")
    assert level == AppendHeader("X-Spam-Level", "*******")
    assert status == AppendHeader("X-Spam-Status",
                                  "Yes, score=7.3 required=6.0 tests=RBL_SBL,SPF_FAIL")


def test_ham_headers_say_no_and_negative_scores_have_no_stars() -> None:
    score = score_symbols([Symbol("BAYES_HAM_99")], ScoringSettings())
    flag, value, level, status = spam_headers(score)
    assert flag.value == "NO"
    assert value.value == "-3.0"
    assert level.value == ""
    assert status.value.startswith("No, score=-3.0 required=6.0 tests=BAYES_HAM_99")


def test_long_status_is_folded_under_78_characters() -> None:
    symbols = [Symbol(f"RULE_NUMBER_{index}") for index in range(30)]
    status = spam_headers(score_symbols(symbols, ScoringSettings()))[3].value
    lines = status.split("\n\t")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    assert "".join(line if line.endswith(",") else line + " " for line in lines).count(
        "RULE_NUMBER_") == 30


def test_log_summary_names_the_weighted_symbols() -> None:
    score = score_symbols([Symbol("GTUBE")], ScoringSettings())
    assert log_summary(score) == (
        "spam_score=1000.0/6.0 spam_action=reject spam_forced_by=GTUBE spam_symbols=GTUBE(1000)")


def test_forged_headers_are_every_x_spam_and_x_mailward_header() -> None:
    headers = (
        Header("X-Spam-Flag", "NO"), Header("Subject", "hi"), Header("x-spam-flag", "NO"),
        Header("X-Spam-Status", "No"), Header("X-Mailward-Quarantine", "no"),
        Header("X-Spamming-Tool", "kept"),
    )
    assert forged_headers(headers) == (
        RemoveHeader("X-Mailward-Quarantine", 1),
        RemoveHeader("x-spam-flag", 2),
        RemoveHeader("X-Spam-Flag", 1),
        RemoveHeader("X-Spam-Status", 1),
    )


# --------------------------------------------------------------------------- config


def test_config_overrides_weights_and_thresholds() -> None:
    settings = settings_from_mapping({"scoring": {
        "required": 5, "reject": 12.5, "quarantine": 9,
        "weights": {"RBL_SBL": 1.5, "BAYES_SPAM_99": 3}}})
    assert settings.scoring.required == 5.0
    assert settings.scoring.reject == 12.5
    assert settings.scoring.quarantine == 9.0
    assert settings.scoring.weight("RBL_SBL") == 1.5
    assert settings.scoring.weight("SPF_FAIL") == 2.0  # defaults kept


def test_unknown_symbol_in_config_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"scoring.weights.RBL_SPL: unknown symbol 'RBL_SPL'"):
        settings_from_mapping({"scoring": {"weights": {"RBL_SPL": 1.0}}})


def test_symbols_declared_by_a_dns_list_may_be_weighted() -> None:
    settings = settings_from_mapping({
        "dnsbl": {"lists": [{"zone": "bl.example", "name": "local",
                             "codes": {"127.0.0.2": "LOCAL_BL"}}]},
        "scoring": {"weights": {"LOCAL_BL": 7.0}},
    })
    assert settings.scoring.weight("LOCAL_BL") == 7.0


@pytest.mark.parametrize("bad", [
    {"reject": "high"}, {"required": 5000}, {"weights": {"RBL_SBL": "x"}}, {"colour": 1},
    {"reject_message": "line\nbreak"},
])
def test_bad_scoring_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="scoring"):
        settings_from_mapping({"scoring": bad})


# --------------------------------------------------------------------------- pipeline

SETTINGS = Settings(general=GeneralSettings(
    authserv_id="mx.example.net", trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),)))


def pipeline(settings: Settings = SETTINGS) -> Pipeline:
    resolver = InMemoryResolver()
    return Pipeline(settings, resolver, build_inbound_checks(settings, resolver))


def message(body: str, headers: tuple[Header, ...] = ()) -> Transaction:
    return Transaction(
        queue_id="Q1", mail_from="a@example.org", recipients=("b@example.net",),
        headers=(Header("From", "a@example.org"), Header("Subject", "test"), *headers),
        body=body.encode(), body_size=len(body))


UNTRUSTED = Connection(ipaddress.ip_address("198.51.100.7"))


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_gtube_is_rejected_with_a_short_reason() -> None:
    before = sample("mailward_spam_actions_total", {"action": "reject"})
    verdict = pipeline().evaluate(UNTRUSTED, message(f"Hello\r\n{GTUBE}\r\n"))
    assert verdict.action is Action.REJECT
    assert verdict.reply is not None
    assert str(verdict.reply) == "550 5.7.1 Message rejected as spam"
    assert "GTUBE" in verdict.reason
    assert sample("mailward_spam_actions_total", {"action": "reject"}) == before + 1


def test_ham_gets_flag_no_and_forged_flags_are_removed() -> None:
    before = sample("mailward_milter_forged_spam_headers_removed_total")
    verdict = pipeline().evaluate(UNTRUSTED, message(
        "Hello", (Header("X-Spam-Flag", "YES"), Header("X-Mailward-Quarantine", "yes"))))
    assert verdict.action is Action.ACCEPT
    assert RemoveHeader("X-Spam-Flag", 1) in verdict.header_edits
    assert RemoveHeader("X-Mailward-Quarantine", 1) in verdict.header_edits
    assert AppendHeader("X-Spam-Flag", "NO") in verdict.header_edits
    assert sample("mailward_milter_forged_spam_headers_removed_total") == before + 2
    # removals come before anything we add, so their indexes address the received message
    kinds = [type(edit) for edit in verdict.header_edits]
    assert kinds.index(RemoveHeader) < kinds.index(AppendHeader)


def test_spam_flag_no_written_by_a_spammer_is_replaced_by_ours() -> None:
    variant = "Z" + GTUBE[1:]  # quarantine variant
    settings = replace(settings_from_mapping({"dmarc": {"quarantine": "header"}}),
                       general=SETTINGS.general)
    verdict = pipeline(settings).evaluate(
        UNTRUSTED, message(variant, (Header("X-Spam-Flag", "NO"),)))
    assert RemoveHeader("X-Spam-Flag", 1) in verdict.header_edits
    assert AppendHeader("X-Spam-Flag", "YES") in verdict.header_edits
    # the Sieve marker, as DMARC's header quarantine uses
    assert any(isinstance(edit, AppendHeader) and edit.name == "X-Mailward-Quarantine"
               for edit in verdict.header_edits)
    assert verdict.action is Action.ACCEPT


def test_quarantine_holds_when_dmarc_quarantine_is_hold() -> None:
    verdict = pipeline().evaluate(UNTRUSTED, message("Z" + GTUBE[1:]))  # hold: the default
    assert verdict.action is Action.QUARANTINE


def test_add_header_variant_only_flags() -> None:
    verdict = pipeline().evaluate(UNTRUSTED, message("Y" + GTUBE[1:]))
    assert verdict.action is Action.ACCEPT
    assert AppendHeader("X-Spam-Flag", "YES") in verdict.header_edits


def test_trusted_clients_are_not_scored_and_keep_their_headers() -> None:
    verdict = pipeline().evaluate(Connection(ipaddress.ip_address("192.0.2.5")),
                                  message(GTUBE, (Header("X-Spam-Flag", "NO"),)))
    assert verdict.action is Action.ACCEPT
    assert not any(edit.name.startswith("X-Spam-") for edit in verdict.header_edits)


def test_scoring_disabled_adds_and_removes_nothing() -> None:
    settings = replace(SETTINGS, scoring=ScoringSettings(enabled=False))
    verdict = pipeline(settings).evaluate(UNTRUSTED, message(GTUBE, (Header("X-Spam-Flag", "NO"),)))
    assert verdict.action is Action.ACCEPT
    assert not any(edit.name.startswith("X-Spam-") for edit in verdict.header_edits)
