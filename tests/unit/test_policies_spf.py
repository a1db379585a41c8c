"""The SPF policy: actions per result, identities, skips, per-transaction and DNS memos."""

from __future__ import annotations

import ipaddress

import pytest

from mailward.checks.spf import SpfResult
from mailward.dns import InMemoryResolver
from mailward.policies.base import Decision
from mailward.policies.spf import AnswerMemo, SpfEvaluator, SpfPolicy
from tests.unit.test_policies_helpers import (
    ORG_SERVER,
    OUTSIDER,
    Clock,
    drive,
    metric,
    new_instance,
    request,
    resolver,
    settings,
)


def policy(dns: InMemoryResolver | None = None, clock: Clock | None = None,
           **spf: object) -> SpfPolicy:
    config = settings(policyd_spf=spf)
    dns = dns if dns is not None else resolver()
    evaluator = SpfEvaluator(dns, "mx.example.net",
                             answers=AnswerMemo(dns, clock=clock or Clock()))
    return SpfPolicy(config.policyd_spf, evaluator, config.general.is_trusted)


def test_pass_prepends_received_spf_on_one_line():
    decision, _ = drive(policy().evaluate(request()))
    assert decision.decision is Decision.PREPEND
    assert decision.action.startswith("PREPEND Received-SPF: pass (mx.example.net: domain of "
                                      "alice@example.org designates 192.0.2.1 as permitted")
    assert "\n" not in decision.action
    assert "identity=mailfrom" in decision.action
    assert "envelope-from=\"alice@example.org\"" in decision.action


def test_fail_is_rejected_with_the_domains_explanation():
    decision, _ = drive(policy().evaluate(request(client_address=OUTSIDER, helo_name="x.test")))
    assert decision.decision is Decision.REJECT
    assert decision.action == (
        "550 5.7.23 203.0.113.9 is not one of example.org's mail servers"
    )


def test_fail_without_explanation_says_who_is_not_allowed():
    decision, _ = drive(policy().evaluate(
        request(client_address=OUTSIDER, sender="bob@plain.example.org", helo_name="x.test")
    ))
    assert decision.action == (
        "550 5.7.23 plain.example.org does not designate 203.0.113.9 as permitted sender"
    )


def test_fail_only_recorded_when_reject_fail_is_off():
    before = metric("mailward_policyd_spf_results_total",
                    {"identity": "mailfrom", "result": "fail"})
    quiet = policy(reject_fail=False, received_spf=False)
    decision, _ = drive(quiet.evaluate(request(client_address=OUTSIDER, helo_name="x.test")))
    assert decision.decision is Decision.DUNNO
    assert "mailfrom=fail" in decision.reason
    assert metric("mailward_policyd_spf_results_total",
                  {"identity": "mailfrom", "result": "fail"}) == before + 1
    header, _ = drive(policy(reject_fail=False).evaluate(
        request(client_address=OUTSIDER, helo_name="x.test")))
    assert header.action.startswith("PREPEND Received-SPF: fail ")


def test_helo_fail_is_conclusive_and_checked_first():
    dns = resolver()
    decision, _ = drive(policy(dns).evaluate(request(helo_name="badhelo.example.org")))
    assert decision.decision is Decision.REJECT
    assert decision.action.startswith("550 5.7.23 HELO badhelo.example.org: ")
    # The MAIL FROM policy was never looked up: HELO decided.
    assert ("example.org", "TXT") not in dns.queries
    # Without the HELO identity, MAIL FROM (pass) decides.
    decision, _ = drive(policy(helo=False).evaluate(request(helo_name="badhelo.example.org")))
    assert decision.decision is Decision.PREPEND


def test_null_sender_is_checked_as_helo_identity():
    decision, _ = drive(policy().evaluate(request(sender="")))
    assert decision.decision is Decision.PREPEND
    assert "identity=helo" in decision.action
    decision, _ = drive(policy().evaluate(request(sender="<>", helo_name="badhelo.example.org")))
    assert decision.decision is Decision.REJECT


@pytest.mark.parametrize("defer", [False, True])
def test_temperror_is_never_a_rejection(defer: bool):
    dns = resolver()
    dns.fail("example.org", "TXT")
    decision, _ = drive(policy(dns, defer_temperror=defer, reject_permerror=True,
                               received_spf=False).evaluate(request(helo_name="x.test")))
    if defer:
        assert decision.decision is Decision.DEFER
        assert decision.action.startswith("DEFER_IF_PERMIT 4.7.24 SPF temporary error for "
                                          "example.org")
    else:
        assert decision.decision is Decision.DUNNO
        assert "temperror" in decision.reason
    assert not decision.action.startswith("5")


@pytest.mark.parametrize(("reject", "expected"), [(False, Decision.DUNNO),
                                                  (True, Decision.REJECT)])
def test_permerror_rejected_only_when_asked(reject: bool, expected: Decision):
    decision, _ = drive(policy(reject_permerror=reject, received_spf=False).evaluate(
        request(sender="a@broken.example.org", helo_name="x.test")))
    assert decision.decision is expected
    if reject:
        assert decision.action.startswith("550 5.7.24 SPF permanent error for "
                                          "broken.example.org")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [({"sasl_username": "alice"}, "SASL-authenticated client"),
     ({"client_address": "127.0.0.1"}, "client in trusted_networks"),
     ({"client_address": "::1"}, "client in trusted_networks"),
     ({"client_address": ""}, "no client address")],
)
def test_trusted_and_authenticated_clients_are_skipped(changes: dict[str, str], reason: str):
    dns = resolver()
    decision, steps = drive(policy(dns).evaluate(request(**changes)))
    assert decision.decision is Decision.SKIP
    assert decision.reason == reason
    assert dns.queries == [] and steps == 0


def test_mapped_ipv4_client_is_evaluated_as_ipv4():
    decision, _ = drive(policy().evaluate(request(client_address="::ffff:192.0.2.1")))
    assert decision.decision is Decision.PREPEND
    assert "client-ip=192.0.2.1;" in decision.action


def test_received_spf_is_prepended_once_per_message():
    spf = policy()
    instance = new_instance()
    first, _ = drive(spf.evaluate(request(instance=instance, recipient="a@example.net")))
    assert first.decision is Decision.PREPEND
    # Not yet the answer (a later policy may have deferred): the next recipient gets it.
    second, _ = drive(spf.evaluate(request(instance=instance, recipient="b@example.net")))
    assert second.decision is Decision.PREPEND
    assert second.on_answer is not None
    second.on_answer()  # the engine calls this when the PREPEND is what Postfix got
    third, _ = drive(spf.evaluate(request(instance=instance, recipient="c@example.net")))
    assert third.decision is Decision.DUNNO
    assert "already prepended" in third.reason
    # Another message from the same client gets its own header.
    other, _ = drive(spf.evaluate(request(recipient="c@example.net")))
    assert other.decision is Decision.PREPEND


def test_each_recipient_of_a_transaction_reuses_the_result():
    dns = resolver()
    spf = policy(dns)
    instance = new_instance()
    hits = metric("mailward_policyd_spf_cache_lookups_total", {"result": "hit"})
    first, steps = drive(spf.evaluate(request(instance=instance, recipient="a@example.net")))
    assert steps == 2  # HELO and MAIL FROM each needed DNS once
    asked = len(dns.queries)
    assert asked > 0
    for number in range(5):
        decision, steps = drive(spf.evaluate(
            request(instance=instance, recipient=f"r{number}@example.net")))
        assert steps == 0
        assert decision.reason == first.reason
    assert len(dns.queries) == asked
    assert metric("mailward_policyd_spf_cache_lookups_total", {"result": "hit"}) == hits + 10


def test_a_new_transaction_reevaluates_from_remembered_answers_without_waiting():
    dns = resolver()
    clock = Clock()
    spf = policy(dns, clock=clock)
    results = metric("mailward_policyd_spf_results_total",
                     {"identity": "mailfrom", "result": "pass"})
    _, steps = drive(spf.evaluate(request()))
    assert steps == 2
    asked = len(dns.queries)
    _, steps = drive(spf.evaluate(request()))  # new instance: evaluated again...
    assert steps == 0  # ...from the answers the memo has, in the caller's thread
    assert len(dns.queries) == asked
    assert metric("mailward_policyd_spf_results_total",
                  {"identity": "mailfrom", "result": "pass"}) == results + 2
    clock.advance(301)  # the zone's TTL is 300
    _, steps = drive(spf.evaluate(request()))
    assert steps == 2
    assert len(dns.queries) > asked


def test_temporary_dns_failures_are_not_remembered():
    dns = resolver()
    dns.fail("example.org", "TXT")
    spf = policy(dns, received_spf=False, helo=False)
    decision, steps = drive(spf.evaluate(request(helo_name="x.test")))
    assert "temperror" in decision.reason and steps == 1
    dns.failing.clear()
    decision, steps = drive(spf.evaluate(request(helo_name="x.test")))
    assert "mailfrom=pass" in decision.reason and steps == 1


def test_answer_memo_is_bounded():
    dns = resolver()
    memo = AnswerMemo(dns, max_entries=2, clock=Clock())
    for name in ("example.org", "mail1.example.org", "soft.example.org"):
        memo.query(name, "TXT")
    assert memo.cached("example.org", "TXT") is None  # the oldest went
    assert memo.cached("soft.example.org", "txt") is not None
    assert memo.cached("SOFT.example.org.", "TXT") is not None


def test_explanation_from_dns_cannot_break_the_reply():
    dns = InMemoryResolver.from_zones({"example.org": (
        '@ TXT "v=spf1 -all exp=why.example.org"\n'
        'why TXT "first line\\010second line ' + "x" * 200 + '" "' + "y" * 200 + '"\n'
    )})
    decision, _ = drive(policy(dns).evaluate(request(helo_name="x.test")))
    assert decision.decision is Decision.REJECT
    assert "\n" not in decision.action and "\r" not in decision.action
    assert decision.action.startswith("550 5.7.23 first line second line xxx")
    assert decision.action.endswith("...")
    assert len(decision.action) <= len("550 5.7.23 ") + 300


def test_protocol_state_is_the_configured_one():
    assert policy().states == frozenset({"RCPT"})
    assert policy(protocol_state="mail").states == frozenset({"MAIL"})


def test_evaluator_results_are_data():
    dns = resolver()
    evaluator = SpfEvaluator(dns, "mx.example.net")
    client = ipaddress.ip_address(ORG_SERVER)
    outcome, _ = drive(evaluator.mail_from(request(), client))
    assert outcome.result is SpfResult.PASS and outcome.domain == "example.org"
    helo, _ = drive(evaluator.helo(request(), client))
    assert helo.result is SpfResult.PASS and helo.domain == "mail1.example.org"
