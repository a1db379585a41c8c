"""Autolearn: the decision (Bayes' own symbols left out, DMARC fail excluded) and the
hand-over through the learning spool, in a real pipeline."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from mailward.bayes.autolearn import Autolearner, autolearn_class
from mailward.bayes.settings import BayesSettings
from mailward.bayes.spool import ensure_spool
from mailward.bayes.store import MessageClass
from mailward.config import settings_from_mapping
from mailward.configreader import ConfigError
from mailward.messagefile import transaction_from_bytes
from mailward.model import Symbol
from mailward.scoring import ScoringSettings

SCORING = ScoringSettings(enabled=True, weights={"GTUBE": 1000.0, "SPF_PASS": -1.0,
                                                 "DKIM_VALID": -1.0, "BAYES_SPAM_99": 5.0,
                                                 "BAYES_HAM_99": -3.0, "HTML_ONLY": 1.0})
ON = BayesSettings(enabled=True, autolearn=True, autolearn_spam=12.0, autolearn_ham=-1.0)


def decide(*names: str, dmarc_failed: bool = False, settings: BayesSettings = ON
           ) -> MessageClass | None:
    return autolearn_class([Symbol(name) for name in names], SCORING, settings, dmarc_failed)


def test_confident_scores_learn_and_bayes_does_not_count():
    assert decide("GTUBE") is MessageClass.SPAM
    assert decide("SPF_PASS", "DKIM_VALID") is MessageClass.HAM
    # Bayes alone cannot push a message over either threshold.
    assert decide("HTML_ONLY", "BAYES_SPAM_99", "BAYES_SPAM_99", "BAYES_SPAM_99") is None
    assert decide("BAYES_HAM_99") is None


def test_never_from_dmarc_failures_and_off_by_default():
    assert decide("GTUBE", dmarc_failed=True) is None
    assert decide("SPF_PASS", "DKIM_VALID", dmarc_failed=True) is None
    assert decide("GTUBE", settings=replace(ON, autolearn=False)) is None


def test_the_message_is_handed_over_through_the_spool(tmp_path: Path):
    spool = tmp_path / "spool"
    ensure_spool(spool)
    learner = Autolearner(replace(ON, spool=spool), SCORING)
    raw = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    transaction = transaction_from_bytes(raw, mail_from="a@example.org")
    assert learner.consider(transaction, [Symbol("GTUBE")], dmarc_failed=False) is (
        MessageClass.SPAM)
    (handed,) = (spool / "new").iterdir()
    assert handed.name.startswith("spam.auto.")
    assert handed.read_bytes() == raw
    # A truncated body is not learnt; an unwritable spool costs a log line, not mail.
    assert learner.consider(replace(transaction, body_truncated=True), [Symbol("GTUBE")],
                            dmarc_failed=False) is None
    broken = Autolearner(replace(ON, spool=tmp_path / "missing"), SCORING)
    assert broken.consider(transaction, [Symbol("GTUBE")], dmarc_failed=False) is None


def test_pipeline_autolearns_inbound_only(tmp_path: Path):
    from mailward.compose import build_pipeline
    from mailward.model import Connection

    spool = tmp_path / "spool"
    ensure_spool(spool)
    settings = settings_from_mapping({
        "scoring": {"enabled": True},
        "bayes": {"enabled": True, "autolearn": True, "path": str(tmp_path / "bayes.db"),
                  "spool": str(spool)},
        "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": 0.1},
    })
    pipeline = build_pipeline(settings)
    gtube = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    raw = b"From: a@example.org\r\nSubject: x\r\n\r\n" + gtube + b"\r\n"
    transaction = transaction_from_bytes(raw, mail_from="a@example.org", recipients=("b@x",))
    pipeline.evaluate(Connection(client_ip=ipaddress.ip_address("127.0.0.1")), transaction)
    assert not list((spool / "new").iterdir())  # trusted client: never learnt
    pipeline.evaluate(Connection(client_ip=ipaddress.ip_address("203.0.113.5")), transaction)
    assert [path.name.split(".")[0] for path in (spool / "new").iterdir()] == ["spam"]


def test_thresholds_must_be_ordered():
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"bayes": {"autolearn_spam": 1.0, "autolearn_ham": 2.0}})
    assert "bayes.autolearn_ham: must be below autolearn_spam" in str(info.value)
