from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailward import metrics
from mailward.dmarc_enforcement import ACCEPT, Enforcement, EnforcementOutcome
from mailward.model import Action
from mailward.reports.recorder import DmarcRecorder
from mailward.reports.records import AppliedDisposition, OverrideType, ReportRow, observe
from mailward.reports.store import Period, ReportStore, ReportStoreError, day_of
from tests.unit.reports_helpers import dkim, dmarc, spf

NOW = 1_780_000_000.0
REJECT = Enforcement(Action.REJECT, EnforcementOutcome.REJECT)
ARC = Enforcement(Action.ACCEPT, EnforcementOutcome.ARC_OVERRIDE,
                  dmarc_note="overridden by trusted ARC sealer lists.example.net")


def test_a_passing_message_becomes_a_pass_row_with_scope_and_selector():
    observation = observe("192.0.2.10", dmarc(), spf(), [dkim()], ACCEPT)
    assert observation is not None
    row = observation.row
    assert row.disposition is AppliedDisposition.PASS
    assert (row.dkim_aligned, row.spf_aligned) == ("pass", "pass")
    assert row.envelope_from == "sender.example"
    assert [(s.scope, s.result) for s in row.spf] == [("mfrom", "pass")]
    assert [(d.domain, d.selector) for d in row.dkim] == [("sender.example", "s1")]
    assert observation.policy.p == "reject" and observation.policy.sp == "reject"
    assert ReportRow.from_key(row.key()) == row


def test_rejected_and_overridden_failures_say_what_was_done_and_why():
    rejected = observe("203.0.113.7", dmarc(passed=False), spf(passed=False), [], REJECT)
    assert rejected is not None and rejected.row.disposition is AppliedDisposition.REJECT
    assert rejected.row.reasons == ()
    overridden = observe("203.0.113.7", dmarc(passed=False), None, [dkim(passed=False)], ARC)
    assert overridden is not None
    assert overridden.row.disposition is AppliedDisposition.NONE
    assert [r.type for r in overridden.row.reasons] == [OverrideType.TRUSTED_FORWARDER]
    assert "lists.example.net" in overridden.row.reasons[0].comment


def test_no_policy_record_means_nothing_to_report():
    outcome = dmarc()
    from dataclasses import replace
    assert observe("192.0.2.10", replace(outcome, record=None), spf(), [], ACCEPT) is None


def test_equal_messages_are_counted_in_one_row(tmp_path: Path):
    store = ReportStore(tmp_path / "r.db")
    recorder = DmarcRecorder(store, clock=lambda: NOW)
    for _ in range(3):
        recorder.record("192.0.2.10", dmarc(), spf(), [dkim()], ACCEPT)
    recorder.record("203.0.113.7", dmarc(passed=False), spf(passed=False), [], REJECT)
    (period,) = store.periods()
    assert period == Period(day_of(NOW), "sender.example")
    counts = sorted(r.count for r in store.rows(period))
    assert counts == [1, 3]


def test_a_broken_store_is_counted_and_never_raises_into_the_milter(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    recorder = DmarcRecorder(ReportStore(blocker / "r.db"), clock=lambda: NOW)
    before = metrics.DMARC_REPORT_RECORDS.labels("error")._value.get()
    recorder.record("192.0.2.10", dmarc(), spf(), [dkim()], ACCEPT)
    assert metrics.DMARC_REPORT_RECORDS.labels("error")._value.get() == before + 1


def test_a_locked_database_is_a_store_error_not_a_hang(tmp_path: Path):
    path = tmp_path / "r.db"
    store = ReportStore(path)
    store.periods()  # creates the schema
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        observation = observe("192.0.2.10", dmarc(), spf(), [], ACCEPT)
        assert observation is not None
        with pytest.raises(ReportStoreError):
            store.add(observation, NOW)
    finally:
        locker.execute("ROLLBACK")
    store.add(observation, NOW)  # and recovers once the lock is gone
    assert [r.count for r in store.rows(store.periods()[0])] == [1]


def test_deferred_messages_are_not_counted_yet(tmp_path: Path):
    store = ReportStore(tmp_path / "r.db")
    recorder = DmarcRecorder(store, clock=lambda: NOW)
    tempfail = Enforcement(Action.TEMPFAIL, EnforcementOutcome.TEMPFAIL)
    recorder.record("192.0.2.10", dmarc(passed=False), spf(), [], tempfail)
    assert store.periods() == []
