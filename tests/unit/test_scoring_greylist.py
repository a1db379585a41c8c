"""The greylist scoring action: 451 4.7.1 on first sight of the triplet, delivered when it
returns after the delay (scored again), on the real in-memory and SQLite stores."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mailward.config import GeneralSettings, Settings, settings_from_mapping
from mailward.configreader import ConfigError
from mailward.dns import InMemoryResolver
from mailward.model import Action, AppendHeader, Connection, Header, Symbol, Transaction
from mailward.pipeline import Pipeline, build_inbound_checks
from mailward.scoring import DEFAULT_WEIGHTS, ScoreAction, ScoringSettings, score_symbols
from mailward.spam_greylist import SpamGreylister, build_greylister, triplet_key
from mailward.state import MemoryStore, SqliteStore, StateStore
from mailward.state.base import GreylistParams, StateUnavailable

ADD_HEADER_GTUBE = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CLIENT = Connection(ipaddress.ip_address("198.51.100.7"))
PARAMS = GreylistParams(delay=300.0, retry_window=3600.0, expiry=86400.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    opened: StateStore = MemoryStore() if request.param == "memory" else SqliteStore(
        tmp_path / "state.db")
    yield opened
    opened.close()


def scoring(weight: float = 9.0) -> ScoringSettings:
    return ScoringSettings(required=6.0, greylist=8.0, reject=15.0,
                           weights={**DEFAULT_WEIGHTS, "GTUBE_ADD_HEADER": weight})


def pipeline(greylister: SpamGreylister | None, weight: float = 9.0) -> Pipeline:
    settings = Settings(general=GeneralSettings(authserv_id="mx.example.net"),
                        scoring=scoring(weight))
    resolver = InMemoryResolver()
    return Pipeline(settings, resolver, build_inbound_checks(settings, resolver),
                    greylister=greylister)


def message(recipient: str = "b@example.net") -> Transaction:
    return Transaction(
        queue_id="Q1", mail_from="a@example.org", recipients=(recipient,),
        headers=(Header("From", "a@example.org"), Header("Subject", "lunch")),
        body=ADD_HEADER_GTUBE.encode(), body_size=len(ADD_HEADER_GTUBE))


def test_greylist_sits_between_rewrite_subject_and_quarantine() -> None:
    settings = ScoringSettings(required=3.0, rewrite_subject=5.0, greylist=8.0,
                               quarantine=10.0, reject=15.0, weights={"RBL_LISTED": 0.0})
    for total, action in [(4.0, ScoreAction.ADD_HEADER), (7.9, ScoreAction.REWRITE_SUBJECT),
                          (8.0, ScoreAction.GREYLIST), (9.9, ScoreAction.GREYLIST),
                          (10.0, ScoreAction.QUARANTINE)]:
        scored = score_symbols([Symbol("RBL_LISTED")], replace(
            settings, weights={"RBL_LISTED": total}))
        assert scored.action is action, total


def test_first_sight_defers_and_the_retry_after_the_delay_is_delivered(
        store: StateStore) -> None:
    clock = Clock()
    engine = pipeline(SpamGreylister(store, PARAMS, clock))
    first = engine.evaluate(CLIENT, message())
    assert first.action is Action.TEMPFAIL
    assert first.reply is not None and str(first.reply).startswith("451 4.7.1 ")
    clock.now += 10  # too early: still deferred
    assert engine.evaluate(CLIENT, message()).action is Action.TEMPFAIL
    clock.now += 300
    retry = engine.evaluate(CLIENT, message())
    assert retry.action is Action.ACCEPT
    assert AppendHeader("X-Spam-Flag", "YES") in retry.header_edits


def test_another_recipient_is_another_triplet(store: StateStore) -> None:
    clock = Clock()
    engine = pipeline(SpamGreylister(store, PARAMS, clock))
    engine.evaluate(CLIENT, message())
    clock.now += 400
    assert engine.evaluate(CLIENT, message("other@example.net")).action is Action.TEMPFAIL
    assert engine.evaluate(CLIENT, message()).action is Action.ACCEPT


def test_below_the_threshold_nothing_is_greylisted(store: StateStore) -> None:
    engine = pipeline(SpamGreylister(store, PARAMS, Clock()), weight=4.5)
    assert engine.evaluate(CLIENT, message()).action is Action.ACCEPT


def test_retry_scored_lower_is_just_delivered(store: StateStore) -> None:
    clock = Clock()
    greylister = SpamGreylister(store, PARAMS, clock)
    assert pipeline(greylister).evaluate(CLIENT, message()).action is Action.TEMPFAIL
    # Scored again on return (MISSING_DATE and MISSING_MID add 2): below greylist.
    assert pipeline(greylister, weight=1.0).evaluate(CLIENT, message()).action is Action.ACCEPT


def test_store_outage_accepts_rather_than_defers(tmp_path: Path) -> None:
    closed = SqliteStore(tmp_path / "state.db")
    closed.close()
    with pytest.raises(StateUnavailable):
        closed.greylist("t", "c", 0.0, PARAMS)
    verdict = pipeline(SpamGreylister(closed, PARAMS, Clock())).evaluate(CLIENT, message())
    assert verdict.action is Action.ACCEPT
    assert AppendHeader("X-Spam-Flag", "YES") in verdict.header_edits


def test_triplet_key_is_case_insensitive_and_order_free() -> None:
    one = Transaction(queue_id="Q", mail_from="A@Example.org", recipients=("x@n", "Y@n"),
                      headers=())
    two = Transaction(queue_id="Q", mail_from="a@example.org", recipients=("y@n", "x@n"),
                      headers=())
    assert triplet_key(CLIENT, one) == triplet_key(CLIENT, two)
    assert "198.51.100.7" in triplet_key(CLIENT, one)


# --------------------------------------------------------------------------- config


def test_config_reads_the_greylist_keys(tmp_path: Path) -> None:
    settings = settings_from_mapping({
        "state": {"backend": "sqlite", "path": str(tmp_path / "s.db")},
        "scoring": {"greylist": 9, "greylist_delay": 60, "greylist_retry_window": 7200,
                    "greylist_expiry": 3600}})
    assert settings.scoring.greylist == 9.0
    greylister = build_greylister(settings.scoring, settings.state)
    assert greylister is not None
    assert greylister.params == GreylistParams(delay=60.0, retry_window=7200.0, expiry=3600.0)
    greylister.store.close()


def test_no_greylist_threshold_builds_no_greylister() -> None:
    settings = settings_from_mapping({})
    assert build_greylister(settings.scoring, settings.state) is None


@pytest.mark.parametrize(("table", "key"), [
    ({"greylist_delay": 600, "greylist_retry_window": 300}, "greylist_retry_window"),
    ({"greylist_delay": 0}, "greylist_delay"),
    ({"greylist": "soon"}, "greylist"),
    ({"greylist_seconds": 1}, "greylist_seconds"),
])
def test_bad_greylist_config_is_refused(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"scoring\.{key}"):
        settings_from_mapping({"scoring": table})


@pytest.mark.parametrize(("table", "key", "above"), [
    ({"quarantine": 10, "greylist": 11}, "greylist", "quarantine"),
    ({"greylist": 8, "rewrite_subject": 9}, "rewrite_subject", "greylist"),
    ({"greylist": 5, "required": 6}, "required", "greylist"),
])
def test_greylist_threshold_out_of_order_is_an_error_naming_them(
        table: dict[str, object], key: str, above: str) -> None:
    with pytest.raises(ConfigError, match=rf"scoring\.{key}: .*above {above}"):
        settings_from_mapping({"scoring": table})
