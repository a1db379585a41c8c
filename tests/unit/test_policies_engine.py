"""The engine: order, how decisions combine into one answer, states, bugs; the request."""

from __future__ import annotations

import ipaddress

import pytest

from mailward.config import Settings
from mailward.policies.base import (
    KNOWN_ATTRIBUTES,
    AccessRequest,
    Blocking,
    Decision,
    PolicyDecision,
    Steps,
    TransactionMemo,
    call,
    run_inline,
)
from mailward.policies.engine import DUNNO, PolicyAnswer, PolicyEngine, build_policies
from mailward.state import MemoryStore
from tests.unit.test_policies_helpers import (
    OUTSIDER,
    BrokenStore,
    Clock,
    attributes,
    drive,
    engine,
    metric,
    new_instance,
    resolver,
    settings,
)

GREY = {"enabled": True, "delay": 60}
INBOUND = "203.0.113.50"  # not in example.org's SPF record, not trusted


def test_default_engine_runs_spf_only():
    built = engine(settings())
    assert [p.name for p in built.policies] == ["spf"]
    assert built.store is not None  # given; from_settings opens none when not needed
    assert PolicyEngine.from_settings(settings(), resolver()).store is None


def test_policies_follow_the_configured_order():
    config = settings(policyd={"order": ["ratelimit", "greylist"]},
                      policyd_greylist=GREY, policyd_ratelimit={"enabled": True})
    assert [p.name for p in engine(config).policies] == ["ratelimit", "greylist", "spf"]


def test_spf_prepend_is_returned_when_nothing_later_objects():
    answer = engine(settings()).decide(attributes())
    assert answer.action.startswith("PREPEND Received-SPF: pass ")
    assert answer.reason.startswith("spf: spf mailfrom=pass")


def test_a_later_defer_wins_over_an_earlier_prepend():
    clock = Clock()
    engine_ = engine(settings(policyd_greylist=GREY), clock=clock)

    def decide(**values: str) -> PolicyAnswer:
        return engine_.decide(attributes(helo_name="x.test", **values))

    instance = new_instance()
    first = decide(instance=instance, client_address="192.0.2.77")
    assert first.action.startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
    clock.advance(61)
    # The header was not prepended with the deferred answer: the retry gets it.
    retried = decide(instance=instance, client_address="192.0.2.77")
    assert retried.action.startswith("PREPEND Received-SPF: pass ")
    second_rcpt = decide(instance=instance, client_address="192.0.2.77",
                         recipient="x@example.net")
    assert second_rcpt.action.startswith("DEFER_IF_PERMIT")
    clock.advance(61)
    third = decide(instance=instance, client_address="192.0.2.77", recipient="x@example.net")
    assert third == DUNNO  # passed, and the message already has its header


def test_a_rejection_stops_the_evaluation():
    store = BrokenStore()
    config = settings(policyd_greylist=GREY, policyd_ratelimit={"enabled": True,
                                                                "applies_to": "all"})
    answer = engine(config, store=store).decide(
        attributes(client_address=OUTSIDER, helo_name="x.test"))
    assert answer.action.startswith("550 5.7.23 ")
    assert store.calls == 0  # neither greylisted nor counted


def test_order_decides_who_answers():
    config = settings(policyd={"order": ["greylist", "spf"]}, policyd_greylist=GREY)
    answer = engine(config).decide(attributes(client_address=OUTSIDER, helo_name="x.test"))
    assert answer.action.startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")


def test_policy_outside_its_state_is_not_asked():
    dns = resolver()
    decide = engine(settings(policyd_spf={"protocol_state": "mail"}), dns=dns).decide
    assert decide(attributes(protocol_state="RCPT")) == DUNNO
    assert dns.queries == []
    assert decide(attributes(protocol_state="MAIL", recipient="")).action.startswith("PREPEND")
    assert decide(attributes(protocol_state="CONNECT", sender="", recipient="")) == DUNNO


def test_disabled_policies_and_empty_engine_answer_dunno():
    config = settings(policyd_spf={"enabled": False})
    built = engine(config)
    assert built.policies == ()
    assert built.decide(attributes(client_address=OUTSIDER)) == DUNNO


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [({"request": "junk"}, "request='junk'"),
     ({"protocol_state": "QUIT"}, "unknown protocol_state 'QUIT'"),
     ({"client_address": "not-an-ip"}, "client_address 'not-an-ip' is not an IP address")],
)
def test_invalid_requests_get_dunno_with_the_reason(changes: dict[str, str], fragment: str):
    answer = engine(settings()).decide(attributes(**changes))
    assert answer.action == "DUNNO"
    assert answer.reason.startswith("invalid request: ") and fragment in answer.reason


class Exploding:
    name = "exploding"
    states = frozenset({"RCPT"})

    def evaluate(self, request: AccessRequest) -> Steps[PolicyDecision]:
        yield from call(lambda: None)
        raise RuntimeError("bug")


def test_a_bug_in_one_policy_is_its_dunno_and_the_others_still_run():
    config = settings()
    good = build_policies(config, resolver(), None)
    broken = PolicyEngine(config, (Exploding(), *good))
    errors = metric("mailward_errors_total", {"component": "policyd"})
    answer = broken.decide(attributes())
    assert answer.action.startswith("PREPEND Received-SPF: pass")
    assert metric("mailward_errors_total", {"component": "policyd"}) == errors + 1
    assert metric("mailward_policyd_policy_decisions_total",
                  {"policy": "exploding", "decision": "dunno"}) >= 1


def test_decisions_and_latency_are_counted_per_policy():
    labels = {"policy": "spf", "decision": "reject"}
    before = metric("mailward_policyd_policy_decisions_total", labels)
    count = metric("mailward_policyd_policy_duration_seconds_count", {"policy": "spf"})
    engine(settings()).decide(attributes(client_address=OUTSIDER, helo_name="x.test"))
    assert metric("mailward_policyd_policy_decisions_total", labels) == before + 1
    assert metric("mailward_policyd_policy_duration_seconds_count",
                  {"policy": "spf"}) == count + 1


def test_evaluate_yields_blocking_steps_and_decide_runs_them():
    built = engine(settings())
    answer, steps = drive(built.evaluate(attributes()))
    assert steps == 2  # HELO and MAIL FROM DNS, first time
    assert answer.action.startswith("PREPEND")
    answer, steps = drive(built.evaluate(attributes()))
    assert steps == 0  # the answers are remembered: no step at all


def test_state_store_lifecycle():
    store = MemoryStore()
    built = engine(settings(policyd_greylist=GREY), store=store)
    assert built.check_state() is None
    built.close()
    assert built.check_state() == "memory state backend unavailable: store is closed"
    answer = built.decide(attributes(client_address=INBOUND, helo_name="x.test",
                                     sender="a@nospf.example"))
    assert answer.action.startswith("PREPEND Received-SPF: none ")  # on_state_error: dunno
    assert PolicyEngine(Settings()).check_state() is None


def test_build_policies_needs_what_the_policies_use():
    with pytest.raises(ValueError, match="resolver"):
        build_policies(settings(), None, None)
    with pytest.raises(ValueError, match="state store"):
        build_policies(settings(policyd_greylist=GREY), resolver(), None)
    assert build_policies(settings(policyd_spf={"enabled": False},
                                   policyd_ratelimit={"enabled": True}),
                          None, MemoryStore())[0].name == "ratelimit"


# --------------------------------------------------------------------------- the request


def test_every_attribute_of_smtpd_policy_readme_is_typed():
    values = {name: "" for name in KNOWN_ATTRIBUTES}
    values.update({
        "request": "smtpd_access_policy", "protocol_state": "rcpt",
        "protocol_name": "ESMTP", "helo_name": " mx.example.org ", "queue_id": "8045F2AB23",
        "sender": "<foo@bar.tld>", "recipient": "bar@foo.tld", "recipient_count": "2",
        "client_address": "::ffff:1.2.3.4", "client_name": "another.domain.tld",
        "reverse_client_name": "another.domain.tld", "instance": "123.456.7",
        "sasl_method": "plain", "sasl_username": "you", "sasl_sender": "x",
        "size": "12345", "ccert_subject": "solaris9.porcupine.org",
        "ccert_issuer": "Wietse Venema", "ccert_fingerprint": "C2:9D:F4",
        "ccert_pubkey_fingerprint": "68:B3:29", "encryption_protocol": "TLSv1/SSLv3",
        "encryption_cipher": "DHE-RSA-AES256-SHA", "encryption_keysize": "256",
        "etrn_domain": "", "stress": "yes", "client_port": "1234",
        "policy_context": "submission", "server_address": "10.3.2.1", "server_port": "25",
        "compatibility_level": "major.minor.patch", "mail_version": "3.5.0",
        "x_future_attribute": "kept",
    })
    parsed = AccessRequest.parse(values)
    assert parsed.protocol_state == "RCPT"
    assert parsed.helo_name == "mx.example.org"
    assert parsed.sender == "foo@bar.tld" and parsed.sender_domain == "bar.tld"
    assert parsed.recipient_count == 2 and parsed.size == 12345
    assert parsed.client_address == ipaddress.ip_address("1.2.3.4")
    assert parsed.server_address == ipaddress.ip_address("10.3.2.1")
    assert parsed.encryption_keysize == 256 and parsed.client_port == 1234
    assert parsed.server_port == 25 and parsed.stress is True
    assert parsed.authenticated and parsed.sasl_username == "you"
    assert parsed.policy_context == "submission" and parsed.mail_version == "3.5.0"
    assert parsed.ccert_pubkey_fingerprint == "68:B3:29"
    assert parsed.unknown == {"x_future_attribute": "kept"}
    assert parsed.attributes["x_future_attribute"] == "kept"
    assert "8045F2AB23: RCPT client=another.domain.tld[1.2.3.4]" in parsed.describe()


def test_absent_or_garbled_values_read_as_absent():
    parsed = AccessRequest.parse({"request": "smtpd_access_policy", "size": "big",
                                  "client_address": "unknown", "recipient_count": "-1"})
    assert parsed.size is None and parsed.client_address is None
    assert parsed.recipient_count is None and parsed.sender_domain == ""
    assert not parsed.authenticated and not parsed.stress
    assert parsed.unknown == {}


def test_decision_checks_its_action():
    with pytest.raises(ValueError, match="needs action"):
        PolicyDecision("x", Decision.DEFER)
    with pytest.raises(ValueError, match="takes no action"):
        PolicyDecision("x", Decision.DUNNO, "DUNNO")
    with pytest.raises(ValueError, match="one line"):
        PolicyDecision("x", Decision.PREPEND, "PREPEND X: a\nb")
    assert Decision.REJECT.final and Decision.DEFER.final and not Decision.PREPEND.final


def test_blocking_step_keeps_its_exception_for_the_policy():
    def fail() -> int:
        raise OSError("down")

    step = Blocking(fail)
    with pytest.raises(RuntimeError, match="before the step ran"):
        _ = step.result
    step.run()
    with pytest.raises(OSError, match="down"):
        _ = step.result

    def twice() -> Steps[int]:
        first = yield from call(lambda: 20)
        second = yield from call(lambda: 22)
        return first + second

    assert run_inline(twice()) == 42


def test_transaction_memo_is_bounded_in_size_and_time():
    clock = Clock(0.0)
    memo: TransactionMemo[int] = TransactionMemo(max_entries=2, lifetime=10, clock=clock)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # now the most recently used
    memo.put("c", 3)
    assert memo.get("b") is None and memo.get("a") == 1 and len(memo) == 2
    clock.advance(10)
    assert memo.get("a") is None
    disabled: TransactionMemo[int] = TransactionMemo(max_entries=0)
    disabled.put("a", 1)
    assert disabled.get("a") is None

