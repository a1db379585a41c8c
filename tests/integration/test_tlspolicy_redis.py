"""`[tlspolicy] cache = "redis"` against a real redis-server: two running tlspolicy
services (two relays) share the MTA-STS policies one of them fetched, the stored row
expires with the policy, and a Redis outage neither fails lookups nor forgets what a
relay knew.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_py

from mailward.tlspolicy.mtasts import CachedPolicy, Mode, Policy
from mailward.tlspolicy.redis_cache import RedisPolicyCache
from tests.harness import AuthoritativeDns, RedisInstance, free_port, mailward_command, wait_until
from tests.harness.process import ManagedProcess, unix_accepts
from tests.harness.toml import dumps
from tests.support.mtasts import Site, TestCa, https_server

DOMAINS = ["shared.example", "outage.example"]
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.{domain}\nmax_age: 86400\n"


@dataclass
class Relay:
    service: ManagedProcess
    socket_path: Path
    metrics_port: int


@dataclass
class World:
    redis: RedisInstance
    nsd: AuthoritativeDns
    site: Site
    relays: list[Relay]
    postfix_dir: Path

    def publish(self, domain: str, policy_id: str) -> None:
        self.nsd.set_zone(domain, [("_mta-sts", 0, "TXT", f"v=STSv1; id={policy_id}"),
                                   ("mta-sts", "A", "127.0.0.1"),
                                   ("@", "MX", f"10 mx1.{domain}.")])
        self.site.policy(domain, ENFORCE.format(domain=domain))

    def postmap(self, relay: Relay, key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postmap", "-c", str(self.postfix_dir), "-q", key,
             f"socketmap:unix:{relay.socket_path}:postfix"],
            capture_output=True, text=True, timeout=30, check=False)

    def fetches(self, domain: str) -> int:
        return sum(request.startswith(f"mta-sts.{domain}/") for request in self.site.requests)


def metric(relay: Relay, name: str, labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{relay.metrics_port}/metrics",
                                  timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("tlspolicy-redis")
    ca = TestCa(base)
    site = Site()
    server = https_server(ca.issue("policy-host", [f"mta-sts.{d}" for d in DOMAINS]), site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    redis = RedisInstance(base / "redis")
    redis.start()
    nsd = AuthoritativeDns(base / "nsd")
    nsd.start()
    relays = []
    for name in ("a", "b"):
        socket_path = base / name / "tlspolicy.sock"
        metrics_port = free_port()
        config = base / f"{name}.toml"
        config.write_text(dumps({
            "dns": {"nameservers": ["127.0.0.1"], "port": nsd.port, "timeout": 2.0},
            "state": {"url": redis.url},
            "tlspolicy": {
                "socket": f"unix:{socket_path}",
                "metrics_listen": f"127.0.0.1:{metrics_port}",
                "ca_file": str(ca.ca_file),
                "policy_port": server.server_address[1],
                "fetch_timeout": 5.0,
                "cache": "redis",
            },
        }))
        service = ManagedProcess(f"mailward-tlspolicy-{name}",
                                 mailward_command("tlspolicy", config), base / f"{name}.log")
        relays.append(Relay(service, socket_path, metrics_port))
    postfix_dir = base / "postfix"
    postfix_dir.mkdir()
    (postfix_dir / "main.cf").write_text("compatibility_level = 3.6\n")
    try:
        for relay in relays:
            relay.service.start()
            wait_until(lambda r=relay: unix_accepts(r.socket_path), 20.0,  # type: ignore[misc]
                       "mailward tlspolicy socket", diagnostics=relay.service.output)
        yield World(redis, nsd, site, relays, postfix_dir)
    finally:
        for relay in relays:
            relay.service.stop()
        nsd.close()
        redis.stop()
        server.shutdown()
        server.server_close()


def test_a_policy_one_relay_fetched_protects_the_other(world: World) -> None:
    a, b = world.relays
    world.publish("shared.example", "s1")
    assert world.postmap(a, "shared.example").stdout.startswith("secure match=mx1.shared")
    assert world.fetches("shared.example") == 1
    # The policy host now fails (an attacker blocks it): relay b has never fetched this
    # domain, yet enforces the policy relay a stored in Redis, without a fetch.
    world.site.pages["mta-sts.shared.example"] = (500, "text/plain", b"blocked")
    result = world.postmap(b, "shared.example")
    assert result.stdout.startswith("secure match=mx1.shared.example"), \
        result.stderr + b.service.output()
    assert world.fetches("shared.example") == 1
    assert metric(b, "mailward_tlspolicy_cache_lookups_total", 'source="cache"') >= 1
    stored = redis_py.Redis.from_url(world.redis.url)
    key = "mailward:tlspolicy:sts:shared.example"
    assert stored.hget(key, "mode") == b"enforce"
    # Forgotten by Redis when the policy expires (max_age, rounded up to a second).
    assert 86000 < stored.ttl(key) <= 86401


def test_a_redis_outage_keeps_what_a_relay_knew_and_fails_nothing(world: World) -> None:
    a, _ = world.relays
    world.publish("outage.example", "o1")
    assert world.postmap(a, "outage.example").stdout.startswith("secure match=mx1.outage")
    world.redis.stop()
    try:
        world.publish("outage.example", "o2")  # a new id: a refresh is due
        world.site.pages["mta-sts.outage.example"] = (500, "text/plain", b"blocked")
        result = world.postmap(a, "outage.example")
        assert result.stdout.startswith("secure match=mx1.outage.example"), \
            result.stderr + a.service.output()
        assert metric(a, "mailward_tlspolicy_cache_errors_total", 'operation="get"') >= 1
        assert "tlspolicy Redis cache get failed" in a.service.output()
    finally:
        world.redis.start()


def test_the_cache_round_trip_and_unreadable_rows(world: World) -> None:
    """The cache itself, outside the service: what one instance writes another reads;
    a row it cannot read is no policy."""
    writer = RedisPolicyCache(world.redis.url, prefix="rt:")
    reader = RedisPolicyCache(world.redis.url, prefix="rt:")
    entry = CachedPolicy(Policy(Mode.TESTING, ("mx.example", ".mail.example"), 600), "id7",
                         time.time())
    writer.put("round.example", entry)
    assert reader.get("round.example") == entry
    writer.delete("round.example")
    assert reader.get("round.example") is None
    redis_py.Redis.from_url(world.redis.url).hset("rt:sts:odd.example", mapping={
        "policy_id": "x", "fetched_at": "soon", "mode": "enforce", "mx": "a.b",
        "max_age": "1"})
    assert reader.get("odd.example") is None
    writer.close()
    reader.close()
