"""Rate limits: identities, messages vs recipients, windows, overrides, outages."""

from __future__ import annotations

import pytest

from mailward.config import StateErrorAction
from mailward.policies.base import Decision
from mailward.policies.ratelimit import RateLimitPolicy, normalise_identity, period
from mailward.state import MemoryStore, StateStore
from tests.unit.test_policies_helpers import (
    BrokenStore,
    Clock,
    drive,
    metric,
    new_instance,
    request,
    settings,
)

#: 2023-11-14 22:13:20 UTC: 20 s into a minute.
T0 = 1_700_000_000.0
USER = {"sasl_username": "alice", "client_address": "198.51.100.50"}


def policy(store: StateStore | None = None, clock: Clock | None = None,
           on_state_error: StateErrorAction = StateErrorAction.DUNNO,
           **ratelimit: object) -> RateLimitPolicy:
    values: dict[str, object] = {"enabled": True, "windows": [{"seconds": 60, "limit": 3}]}
    values.update(ratelimit)
    config = settings(policyd_ratelimit=values)
    return RateLimitPolicy(
        config.policyd_ratelimit, store if store is not None else MemoryStore(),
        config.general.is_trusted, on_state_error, clock=clock or Clock(T0),
    )


def decisions(rate: RateLimitPolicy, count: int, **changes: str) -> list[Decision]:
    return [drive(rate.evaluate(request(**{**USER, **changes})))[0].decision
            for _ in range(count)]


def test_sasl_user_over_the_limit_is_deferred_naming_the_limit():
    rate = policy()
    assert decisions(rate, 3) == [Decision.DUNNO] * 3
    over, steps = drive(rate.evaluate(request(**USER)))
    assert steps == 1
    assert over.decision is Decision.DEFER
    assert over.action == ("DEFER 4.7.1 Rate limit of 3 recipients per minute reached for "
                           "alice, please try again in 40 seconds")
    # Another user has a budget of their own.
    assert decisions(rate, 1, sasl_username="bob") == [Decision.DUNNO]


def test_window_starts_over_and_refused_requests_are_not_counted():
    clock = Clock(T0)
    rate = policy(clock=clock)
    assert decisions(rate, 5) == [Decision.DUNNO] * 3 + [Decision.DEFER] * 2
    clock.advance(40)  # the next minute
    assert decisions(rate, 4) == [Decision.DUNNO] * 3 + [Decision.DEFER]


def test_several_windows_the_refusing_one_is_named():
    clock = Clock(T0)
    rate = policy(clock=clock, windows=[{"seconds": 60, "limit": 2},
                                        {"seconds": 86400, "limit": 3}])
    assert decisions(rate, 3) == [Decision.DUNNO, Decision.DUNNO, Decision.DEFER]
    refused, _ = drive(rate.evaluate(request(**USER)))
    assert "2 recipients per minute" in refused.action
    clock.advance(60)
    assert decisions(rate, 1) == [Decision.DUNNO]
    day, _ = drive(rate.evaluate(request(**USER)))
    assert "3 recipients per day" in day.action
    assert day.action.endswith(f"try again in {86400 - int(clock.now) % 86400} seconds")


def test_messages_are_counted_once_per_transaction_at_rcpt():
    rate = policy(count="messages", windows=[{"seconds": 3600, "limit": 2}])
    for _ in range(2):
        instance = new_instance()
        for number in range(4):
            decision, _ = drive(rate.evaluate(request(**USER, instance=instance,
                                                      recipient=f"r{number}@example.com")))
            assert decision.decision is Decision.DUNNO
    third, _ = drive(rate.evaluate(request(**USER)))
    assert third.decision is Decision.DEFER
    assert "Rate limit of 2 messages per hour" in third.action


def test_a_limit_of_one_reads_well():
    rate = policy(count="messages", windows=[{"seconds": 3600, "limit": 1}])
    drive(rate.evaluate(request(**USER)))
    refused, _ = drive(rate.evaluate(request(**USER)))
    assert "Rate limit of 1 message per hour" in refused.action


def test_recipients_counted_at_data_from_recipient_count():
    rate = policy(protocol_state="data", windows=[{"seconds": 60, "limit": 10}])
    assert rate.states == frozenset({"DATA"})
    ok, _ = drive(rate.evaluate(request(**USER, protocol_state="DATA", recipient="",
                                        recipient_count="7")))
    assert ok.decision is Decision.DUNNO and "7/10 per minute" in ok.reason
    over, _ = drive(rate.evaluate(request(**USER, protocol_state="DATA", recipient="",
                                          recipient_count="4")))
    assert over.decision is Decision.DEFER


def test_messages_counted_at_end_of_message():
    rate = policy(protocol_state="end-of-message", count="messages",
                  windows=[{"seconds": 60, "limit": 1}])
    instance = new_instance()
    first, _ = drive(rate.evaluate(request(**USER, protocol_state="END-OF-MESSAGE",
                                           instance=instance, recipient_count="30")))
    assert first.decision is Decision.DUNNO
    second, _ = drive(rate.evaluate(request(**USER, protocol_state="END-OF-MESSAGE",
                                            recipient_count="1")))
    assert second.decision is Decision.DEFER


def test_overrides_raise_lower_or_lift_the_limit():
    rate = policy(overrides=[
        {"identity": "newsletter", "windows": [{"seconds": 60, "limit": 5}]},
        {"identity": "mallory", "windows": [{"seconds": 60, "limit": 0}]},
        {"identity": "backup", "windows": []},
    ])
    assert decisions(rate, 6, sasl_username="newsletter") == [Decision.DUNNO] * 5 + [
        Decision.DEFER]
    assert decisions(rate, 1, sasl_username="mallory") == [Decision.DEFER]
    lifted, steps = drive(rate.evaluate(request(**{**USER, "sasl_username": "backup"})))
    assert lifted.decision is Decision.DUNNO and steps == 0
    assert "no limit" in lifted.reason


def test_by_sender_and_by_client_address():
    by_sender = policy(by="sender", applies_to="all",
                       overrides=[{"identity": "VIP@Example.ORG", "windows": []}])
    assert decisions(by_sender, 4, sender="Alice@Example.ORG", sasl_username="") == [
        Decision.DUNNO] * 3 + [Decision.DEFER]
    assert decisions(by_sender, 4, sender="vip@example.org") == [Decision.DUNNO] * 4
    by_address = policy(by="client_address",
                        overrides=[{"identity": "::ffff:127.0.0.2", "windows": []}])
    assert decisions(by_address, 4, sasl_username="", client_address="127.0.0.5") == [
        Decision.DUNNO] * 3 + [Decision.DEFER]
    assert decisions(by_address, 4, sasl_username="", client_address="127.0.0.2") == [
        Decision.DUNNO] * 4


def test_only_outbound_mail_is_limited_by_default():
    store = BrokenStore()
    rate = policy(store=store, by="client_address")
    inbound, steps = drive(rate.evaluate(request(client_address="203.0.113.9")))
    assert inbound.decision is Decision.SKIP and steps == 0 and store.calls == 0
    nobody, _ = drive(policy(store=store).evaluate(request(client_address="127.0.0.1")))
    assert nobody.decision is Decision.SKIP and nobody.reason == "no sasl_username"
    inbound_all, _ = drive(policy(by="client_address", applies_to="all").evaluate(
        request(client_address="203.0.113.9")))
    assert inbound_all.decision is Decision.DUNNO


@pytest.mark.parametrize(("action", "expected"), [(StateErrorAction.DUNNO, Decision.DUNNO),
                                                  (StateErrorAction.DEFER, Decision.DEFER)])
def test_state_outage_follows_on_state_error(action: StateErrorAction, expected: Decision):
    before = metric("mailward_state_errors_total", {"backend": "memory",
                                                    "operation": "rate_limit"})
    decision, _ = drive(policy(store=BrokenStore(), on_state_error=action).evaluate(
        request(**USER)))
    assert decision.decision is expected
    assert metric("mailward_state_errors_total", {"backend": "memory",
                                                  "operation": "rate_limit"}) == before + 1


def test_a_message_refused_by_the_store_outage_is_counted_later():
    store = BrokenStore()
    rate = policy(store=store, count="messages")
    instance = new_instance()
    drive(rate.evaluate(request(**USER, instance=instance)))
    drive(rate.evaluate(request(**USER, instance=instance)))
    assert store.calls == 2  # not remembered as counted


def test_helpers():
    assert [period(s) for s in (60, 3600, 86400, 604800, 90)] == [
        "minute", "hour", "day", "week", "90 seconds"]
    from mailward.config import RateLimitIdentity

    assert normalise_identity(RateLimitIdentity.SENDER, " A@B.Example ") == "a@b.example"
    assert normalise_identity(RateLimitIdentity.CLIENT_ADDRESS, "::ffff:192.0.2.1") == (
        "192.0.2.1")
    assert normalise_identity(RateLimitIdentity.SASL_USERNAME, "Alice") == "Alice"
