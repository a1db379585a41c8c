"""Greylisting: triplets, networks, retry window, auto-allow, skips, state outages."""

from __future__ import annotations

import ipaddress

import pytest

from mailward.config import StateErrorAction
from mailward.dns import InMemoryResolver
from mailward.policies.base import Decision
from mailward.policies.greylist import GreylistPolicy, client_network, in_domains, triplet_key
from mailward.policies.spf import SpfEvaluator
from mailward.state import MemoryStore, StateStore
from tests.unit.test_policies_helpers import (
    BIG_SERVER,
    BrokenStore,
    Clock,
    drive,
    metric,
    request,
    resolver,
    settings,
)

CLIENT = "203.0.113.9"


def policy(store: StateStore | None = None, clock: Clock | None = None,
           dns: InMemoryResolver | None = None,
           on_state_error: StateErrorAction = StateErrorAction.DUNNO,
           **greylist: object) -> GreylistPolicy:
    config = settings(policyd_greylist={"enabled": True, "delay": 300, **greylist})
    spf = SpfEvaluator(dns if dns is not None else resolver(), "mx.example.net")
    return GreylistPolicy(
        config.policyd_greylist, store if store is not None else MemoryStore(),
        config.general.is_trusted, on_state_error,
        spf=spf if config.policyd_greylist.spf_pass_domains else None,
        clock=clock or Clock(),
    )


def test_first_attempt_is_deferred_and_a_retry_after_the_delay_passes():
    clock = Clock()
    grey = policy(clock=clock)
    first, steps = drive(grey.evaluate(request(client_address=CLIENT)))
    assert steps == 1  # the store is asked through a blocking step
    assert first.decision is Decision.DEFER
    assert first.action == "DEFER_IF_PERMIT 4.7.1 Greylisted, please try again in 300 seconds"
    clock.advance(120)
    early, _ = drive(grey.evaluate(request(client_address=CLIENT)))
    assert early.action.endswith("try again in 180 seconds")
    clock.advance(181)
    retry, _ = drive(grey.evaluate(request(client_address=CLIENT)))
    assert retry.decision is Decision.DUNNO
    assert "first pass" in retry.reason
    again, _ = drive(grey.evaluate(request(client_address=CLIENT)))
    assert again.decision is Decision.DUNNO and "first pass" not in again.reason


def test_retry_from_another_address_of_the_same_network_passes():
    clock = Clock()
    grey = policy(clock=clock)
    assert drive(grey.evaluate(request(client_address="203.0.113.9")))[0].decision \
        is Decision.DEFER
    clock.advance(301)
    same_net, _ = drive(grey.evaluate(request(client_address="203.0.113.200")))
    assert same_net.decision is Decision.DUNNO
    other_net, _ = drive(grey.evaluate(request(client_address="203.0.114.9")))
    assert other_net.decision is Decision.DEFER


def test_triplet_is_client_network_sender_and_recipient_without_case():
    clock = Clock()
    grey = policy(clock=clock)
    drive(grey.evaluate(request(client_address=CLIENT)))
    clock.advance(301)
    upper, _ = drive(grey.evaluate(request(client_address=CLIENT, sender="ALICE@Example.ORG",
                                           recipient="<Bob@EXAMPLE.net>")))
    assert upper.decision is Decision.DUNNO
    for changes in ({"sender": "carol@example.org"}, {"recipient": "dave@example.net"}):
        decision, _ = drive(grey.evaluate(request(client_address=CLIENT, **changes)))
        assert decision.decision is Decision.DEFER, changes


def test_null_sender_is_greylisted_too():
    decision, _ = drive(policy().evaluate(request(client_address=CLIENT, sender="")))
    assert decision.decision is Decision.DEFER
    assert "<>" in decision.reason


def test_ipv6_clients_are_grouped_by_their_64():
    clock = Clock()
    grey = policy(clock=clock)
    drive(grey.evaluate(request(client_address="2001:db8:5:6::1")))
    clock.advance(301)
    assert drive(grey.evaluate(request(client_address="2001:db8:5:6:ffff::2")))[0].decision \
        is Decision.DUNNO
    assert drive(grey.evaluate(request(client_address="2001:db8:5:7::1")))[0].decision \
        is Decision.DEFER


def test_network_prefixes_are_configurable():
    clock = Clock()
    grey = policy(clock=clock, ipv4_prefix=32)
    drive(grey.evaluate(request(client_address="203.0.113.9")))
    clock.advance(301)
    assert drive(grey.evaluate(request(client_address="203.0.113.10")))[0].decision \
        is Decision.DEFER


def test_retry_after_the_window_starts_over():
    clock = Clock()
    grey = policy(clock=clock, retry_window=3600)
    drive(grey.evaluate(request(client_address=CLIENT)))
    clock.advance(3601)
    late, _ = drive(grey.evaluate(request(client_address=CLIENT)))
    assert late.decision is Decision.DEFER
    assert late.action.endswith("300 seconds")


def test_client_is_auto_allowed_after_enough_passed_triplets():
    clock = Clock()
    grey = policy(clock=clock, auto_allow_after=2)
    for number in range(2):
        drive(grey.evaluate(request(client_address=CLIENT, recipient=f"r{number}@example.net")))
    clock.advance(301)
    for number in range(2):
        passed, _ = drive(grey.evaluate(
            request(client_address=CLIENT, recipient=f"r{number}@example.net")))
        assert passed.decision is Decision.DUNNO
    fresh, _ = drive(grey.evaluate(request(client_address="203.0.113.77",
                                           recipient="new@example.net")))
    assert fresh.decision is Decision.DUNNO
    assert fresh.reason == "203.0.113.0/24 auto-allowed"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [({"sasl_username": "alice"}, "SASL-authenticated client"),
     ({"client_address": "127.0.0.1"}, "client in trusted_networks"),
     ({"client_address": ""}, "no client address"),
     ({"client_address": CLIENT, "recipient": ""}, "no recipient")],
)
def test_trusted_authenticated_and_incomplete_requests_are_skipped(
    changes: dict[str, str], reason: str
):
    store = BrokenStore()
    decision, steps = drive(policy(store=store).evaluate(request(**changes)))
    assert decision.decision is Decision.SKIP and decision.reason == reason
    assert store.calls == 0 and steps == 0


def test_large_senders_with_spf_pass_are_not_greylisted():
    dns = resolver()
    store = BrokenStore()
    grey = policy(store=store, dns=dns, spf_pass_domains=["bigmail.example"])
    decision, _ = drive(grey.evaluate(request(client_address=BIG_SERVER,
                                              sender="news@bigmail.example")))
    assert decision.decision is Decision.SKIP
    assert decision.reason == "SPF pass for bigmail.example, a listed large sender"
    sub, _ = drive(grey.evaluate(request(client_address=BIG_SERVER,
                                         sender="x@eu.out.bigmail.example")))
    # A subdomain is covered by the list, but its SPF (none here) must pass too.
    assert sub.decision is Decision.DUNNO and "state backend unavailable" in sub.reason
    assert store.calls == 1


def test_large_sender_whose_spf_fails_is_greylisted():
    grey = policy(spf_pass_domains=["bigmail.example"])
    decision, _ = drive(grey.evaluate(request(client_address=CLIENT,
                                              sender="news@bigmail.example")))
    assert decision.decision is Decision.DEFER


def test_other_senders_do_not_cost_an_spf_lookup():
    dns = resolver()
    grey = policy(dns=dns, spf_pass_domains=["bigmail.example"])
    decision, _ = drive(grey.evaluate(request(client_address=CLIENT)))
    assert decision.decision is Decision.DEFER
    assert dns.queries == []


@pytest.mark.parametrize(("action", "expected"), [(StateErrorAction.DUNNO, Decision.DUNNO),
                                                  (StateErrorAction.DEFER, Decision.DEFER)])
def test_state_outage_follows_on_state_error_and_is_counted(
    action: StateErrorAction, expected: Decision
):
    before = metric("mailward_state_errors_total", {"backend": "memory",
                                                    "operation": "greylist"})
    decision, _ = drive(policy(store=BrokenStore(), on_state_error=action).evaluate(
        request(client_address=CLIENT)))
    assert decision.decision is expected
    if expected is Decision.DEFER:
        assert decision.action.startswith("DEFER_IF_PERMIT 4.3.0 ")
    assert "connection refused" in decision.reason
    assert metric("mailward_state_errors_total", {"backend": "memory",
                                                  "operation": "greylist"}) == before + 1


def test_helpers():
    assert client_network(ipaddress.ip_address("192.0.2.77"), 24, 64) == "192.0.2.0/24"
    assert client_network(ipaddress.ip_address("2001:db8::1"), 24, 48) == "2001:db8::/48"
    assert triplet_key("192.0.2.0/24", "A@B.example", "C@D.example") == (
        "192.0.2.0/24 <a@b.example> <c@d.example>")
    domains = frozenset({"google.com", "bigmail.example"})
    assert in_domains("google.com", domains)
    assert in_domains("mail.google.com", domains)
    assert not in_domains("notgoogle.com", domains)
    assert not in_domains("com", domains)


def test_policy_answers_at_rcpt_only():
    assert policy().states == frozenset({"RCPT"})
