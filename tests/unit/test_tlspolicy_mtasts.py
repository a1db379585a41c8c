"""MTA-STS logic: record and policy parsing, matching, and the RFC 8461 cache rules,
with an in-memory resolver and a fetch function the test controls."""

from __future__ import annotations

import pytest

from mailward.dns import InMemoryResolver
from mailward.tlspolicy.mtasts import (
    CachedPolicy,
    FetchError,
    MemoryPolicyCache,
    Mode,
    MtaSts,
    Policy,
    PolicyError,
    RecordError,
    Source,
    normalise_key,
    parse_policy,
    parse_sts_record,
    postfix_policy,
)

ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.mail.example.org\r\n" \
          "max_age: 86400\r\n"


def test_record_parse() -> None:
    assert parse_sts_record(("v=STSv1; id=20260101T1;",)).policy_id == "20260101T1"
    assert parse_sts_record(("other", "v=STSv1;id=a1; ext=1")).policy_id == "a1"


@pytest.mark.parametrize("texts", [
    (), ("v=spf1 -all",), ("v=STSv1; id=a", "v=STSv1; id=b"), ("v=STSv1;",),
    ("v=STSv1; id=has-dash",), ("v=STSv1; id=" + "a" * 33,), ("v=STSv10; id=a",),
])
def test_record_rejects(texts: tuple[str, ...]) -> None:
    with pytest.raises(RecordError):
        parse_sts_record(texts)


def test_policy_parse_lf_and_crlf() -> None:
    policy = parse_policy(ENFORCE)
    assert policy == Policy(Mode.ENFORCE, ("mx1.example.org", "*.mail.example.org"), 86400)
    assert parse_policy(ENFORCE.replace("\r\n", "\n")) == policy
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 5\nfuture: x\n").mode is Mode.NONE


def test_max_age_is_capped_at_a_year() -> None:
    assert parse_policy(ENFORCE.replace("86400", "99999999")).max_age == 31_557_600


@pytest.mark.parametrize(("text", "message"), [
    ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mx pattern"),
    ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", "bad mx"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\ngarbage\n", "line 5"),
])
def test_policy_rejects(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_wildcard_stands_for_one_label() -> None:
    policy = parse_policy(ENFORCE)
    assert policy.matches("mx1.example.org")
    assert policy.matches("a.mail.example.org.")
    assert not policy.matches("mail.example.org")
    assert not policy.matches("b.a.mail.example.org")
    assert not policy.matches("mx2.example.org")


def test_postfix_answer() -> None:
    policy = parse_policy(ENFORCE)
    assert postfix_policy(policy, servername=False) == \
        "secure match=mx1.example.org:.mail.example.org"
    assert postfix_policy(policy, servername=True).endswith(" servername=hostname")


def test_keys() -> None:
    assert normalise_key("Example.ORG.") == "example.org"
    assert normalise_key(".example.org") is None
    assert normalise_key("[192.0.2.1]:25") is None
    assert normalise_key("localhost") is None
    assert normalise_key("example.org:2525") == "example.org"
    assert normalise_key("example.org:smtp") is None


class World:
    """DNS, the HTTPS side and the clock of a test, all in memory."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.resolver = InMemoryResolver()
        self.policies: dict[str, str] = {}
        self.failing: set[str] = set()
        self.fetches: list[str] = []
        self.cache = MemoryPolicyCache()
        self.sts = MtaSts(self.resolver, self.fetch, self.cache, lambda: self.now,
                          refresh_before=600.0)

    def publish(self, domain: str, policy_id: str, policy: str) -> None:
        self.resolver.add_zone(domain, f'_mta-sts 300 IN TXT "v=STSv1; id={policy_id}"\n')
        self.policies[domain] = policy

    def fetch(self, domain: str) -> str:
        self.fetches.append(domain)
        if domain in self.failing or domain not in self.policies:
            raise FetchError("connect_error", "refused")
        return self.policies[domain]


def test_first_lookup_fetches_then_the_cache_answers() -> None:
    world = World()
    world.publish("example.org", "a1", ENFORCE)
    first = world.sts.decide("example.org")
    assert first.source is Source.FETCHED and first.mode is Mode.ENFORCE
    assert first.fetch_outcome == "ok"
    second = world.sts.decide("example.org")
    assert second.source is Source.CACHE and second.mode is Mode.ENFORCE
    assert world.fetches == ["example.org"]


def test_changed_id_refreshes() -> None:
    world = World()
    world.publish("example.org", "a1", ENFORCE)
    world.sts.decide("example.org")
    world.publish("example.org", "a2", ENFORCE.replace("enforce", "testing"))
    decision = world.sts.decide("example.org")
    assert decision.source is Source.FETCHED and decision.mode is Mode.TESTING
    assert decision.reason == "new policy id"
    cached = world.cache.get("example.org")
    assert cached is not None and cached.policy_id == "a2"


def test_failed_refresh_keeps_an_enforce_policy() -> None:
    world = World()
    world.publish("example.org", "a1", ENFORCE)
    world.sts.decide("example.org")
    world.publish("example.org", "a2", ENFORCE)
    world.failing.add("example.org")
    decision = world.sts.decide("example.org")
    assert decision.source is Source.STALE_CACHE and decision.mode is Mode.ENFORCE
    assert decision.fetch_outcome == "connect_error"


def test_dns_failure_or_removed_record_keeps_an_unexpired_policy() -> None:
    world = World()
    world.publish("example.org", "a1", ENFORCE)
    world.sts.decide("example.org")
    world.resolver.fail("_mta-sts.example.org")
    assert world.sts.decide("example.org").mode is Mode.ENFORCE
    world.resolver.failing.clear()
    world.resolver.add_zone("example.org", "www 300 IN A 192.0.2.1\n")  # TXT removed
    assert world.sts.decide("example.org").source is Source.STALE_CACHE


def test_expired_policy_is_dropped() -> None:
    world = World()
    world.publish("example.org", "a1", ENFORCE)
    world.sts.decide("example.org")
    world.resolver.fail("_mta-sts.example.org")
    world.now += 86400
    decision = world.sts.decide("example.org")
    assert decision.source is Source.NONE and decision.policy is None
    assert world.cache.get("example.org") is None


def test_near_expiry_refetches_with_the_same_id() -> None:
    world = World()
    world.publish("example.org", "a1", ENFORCE)
    world.sts.decide("example.org")
    world.now += 86400 - 300  # inside refresh_before
    assert world.sts.decide("example.org").source is Source.FETCHED
    assert len(world.fetches) == 2
    cached = world.cache.get("example.org")
    assert cached is not None and cached.fetched_at == world.now


def test_no_policy_and_failing_fetch_is_no_enforcement() -> None:
    world = World()
    world.resolver.add_zone("example.org", '_mta-sts 300 IN TXT "v=STSv1; id=a1"\n')
    decision = world.sts.decide("example.org")
    assert decision.source is Source.NONE and decision.policy is None
    assert "fetch failed" in decision.reason


def test_bad_policy_file_is_a_failed_fetch() -> None:
    world = World()
    world.publish("example.org", "a1", "version: STSv1\nmode: enforce\n")
    decision = world.sts.decide("example.org")
    assert decision.fetch_outcome == "bad_policy" and decision.policy is None


def test_max_age_zero_is_not_cached() -> None:
    world = World()
    world.publish("example.org", "a1", ENFORCE.replace("86400", "0"))
    assert world.sts.decide("example.org").mode is Mode.ENFORCE
    assert world.cache.get("example.org") is None


def test_memory_cache_is_bounded() -> None:
    cache = MemoryPolicyCache(max_entries=2)
    policy = Policy(Mode.ENFORCE, ("mx.example",), 100)
    cache.put("a.example", CachedPolicy(policy, "1", 10.0))
    cache.put("b.example", CachedPolicy(policy, "1", 5.0))
    cache.put("c.example", CachedPolicy(policy, "1", 20.0))
    assert len(cache) == 2 and cache.get("b.example") is None


def test_short_max_age_is_not_fetched_on_every_lookup() -> None:
    world = World()  # refresh_before = 600 s
    world.publish("example.org", "a1", ENFORCE.replace("86400", "300"))
    world.sts.decide("example.org")
    world.now += 100
    assert world.sts.decide("example.org").source is Source.CACHE
    world.now += 150  # 50 s left: inside a quarter of max_age
    assert world.sts.decide("example.org").source is Source.FETCHED
