"""The Redis backend against a private, real redis-server: the shared contract (the same
tests SQLite passes), state shared by separate processes, key TTLs and prefixes, and
outages: Redis down, hung, restarted.

Needs only `redis-server` (no Postfix/Dovecot stack): the servers here come from
tests.harness.redis.RedisInstance, on free loopback ports, without persistence.
"""

from __future__ import annotations

import functools
import itertools
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from mailward.state import GreylistParams, RateWindow, StateStore, StateUnavailable, open_store
from mailward.state.redis import RedisStore
from tests.harness import RedisInstance
from tests.unit.state_contract import (
    MINUTE,
    PARAMS,
    RATE_T0,
    T0,
    StoreContract,
    call_in_child,
    hammer_greylist,
    hammer_rate,
)

pytestmark = pytest.mark.integration

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisInstance]:
    """One private redis-server for this module (tests keep apart by key prefix)."""
    instance = RedisInstance(tmp_path_factory.mktemp("redis"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def prefix() -> str:
    return f"test{next(_prefixes)}:"


@pytest.fixture
def raw(redis_server: RedisInstance) -> Iterator[redis_py.Redis]:
    """A plain client, to look at what the store wrote."""
    client = redis_py.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()


class TestRedisStore(StoreContract):
    @pytest.fixture
    def store(self, redis_server: RedisInstance, prefix: str) -> Iterator[StateStore]:
        with RedisStore(redis_server.url, prefix=prefix) as redis_store:
            yield redis_store


# --------------------------------------------------------------------------- keys


def test_every_key_has_the_prefix_and_a_ttl(
    redis_server: RedisInstance, raw: redis_py.Redis, prefix: str
) -> None:
    auto = GreylistParams(delay=300, retry_window=3600, expiry=86400, auto_allow_after=1)
    with RedisStore(redis_server.url, prefix=prefix, ttl_grace=10) as store:
        store.greylist("pending", "net", T0, auto)
        store.greylist("passed", "net", T0, auto)
        store.greylist("passed", "net", T0 + 300, auto)
        store.rate_limit("k", [MINUTE, RateWindow(86400, 9)], 1, RATE_T0 + 15)
    ttls = {key.decode(): raw.pttl(key) for key in raw.scan_iter(match=f"{prefix}*")}
    assert ttls.keys() == {
        f"{prefix}gl:t:pending",
        f"{prefix}gl:t:passed",
        f"{prefix}gl:c:net",
        f"{prefix}rl:60:{int(RATE_T0) // 60}:k",
        f"{prefix}rl:86400:{int(RATE_T0) // 86400}:k",
    }
    # Logical lifetime + 10 s grace, less what elapsed since (well under a second here).
    second = 1000
    expected = {
        f"{prefix}gl:t:pending": 3610 * second,
        f"{prefix}gl:t:passed": 86410 * second,
        f"{prefix}gl:c:net": 86410 * second,
        f"{prefix}rl:60:{int(RATE_T0) // 60}:k": 55 * second,
        f"{prefix}rl:86400:{int(RATE_T0) // 86400}:k": (
            (int(RATE_T0) // 86400 + 1) * 86400 - int(RATE_T0 + 15) + 10
        ) * second,
    }
    for key, ttl in ttls.items():
        assert expected[key] - 2 * second < ttl <= expected[key], key


def test_a_flushed_script_cache_is_refilled(
    redis_server: RedisInstance, raw: redis_py.Redis, prefix: str
) -> None:
    with RedisStore(redis_server.url, prefix=prefix) as store:
        store.greylist("t", "c", T0, PARAMS)
        raw.script_flush()  # what a restarted or failed-over Redis looks like: NOSCRIPT
        assert store.greylist("t", "c", T0 + 300, PARAMS).newly_passed
        raw.script_flush()
        assert store.rate_limit("k", [MINUTE], 1, RATE_T0).counts == (1,)


# --------------------------------------------------------------------------- processes


def test_two_processes_share_greylist_state(redis_server: RedisInstance, prefix: str) -> None:
    factory = functools.partial(RedisStore, redis_server.url, prefix=prefix)
    triplet = "192.0.2.0/24|a@example.org|b@example.net"
    first = call_in_child(factory, "greylist", triplet, "192.0.2.0/24", T0, PARAMS)
    assert (first.decision, first.remaining) == ("defer", 300.0)
    early = call_in_child(factory, "greylist", triplet, "192.0.2.0/24", T0 + 100, PARAMS)
    assert (early.decision, early.remaining) == ("defer", 200.0)
    later = call_in_child(factory, "greylist", triplet, "192.0.2.0/24", T0 + 300, PARAMS)
    assert (later.decision, later.newly_passed, later.first_seen) == ("pass", True, T0)
    with factory() as store:  # and this process sees it passed too
        again = store.greylist(triplet, "192.0.2.0/24", T0 + 301, PARAMS)
        assert (again.decision, again.newly_passed) == ("pass", False)


def test_two_processes_count_exactly(redis_server: RedisInstance, prefix: str) -> None:
    factory = functools.partial(RedisStore, redis_server.url, prefix=prefix)
    runs = hammer_rate(factory, "user:alice", RateWindow(60, 1000), processes=2, times=200)
    assert sorted(c for run in runs for c in run.allowed_counts) == list(range(1, 401))

    runs = hammer_rate(factory, "user:bob", RateWindow(60, 300), processes=2, times=200)
    assert sorted(c for run in runs for c in run.allowed_counts) == list(range(1, 301))
    assert sum(run.refused for run in runs) == 100

    counting = GreylistParams(delay=300, retry_window=3600, expiry=86400, auto_allow_after=10**6)
    results = hammer_greylist(factory, "net", counting, processes=2, per_process=100)
    assert all(outcome.newly_passed for _, passed in results for outcome in passed)
    with factory() as store:
        at = GreylistParams(delay=300, retry_window=3600, expiry=86400, auto_allow_after=200)
        above = GreylistParams(delay=300, retry_window=3600, expiry=86400, auto_allow_after=201)
        assert not store.greylist("probe1", "net", T0 + 400, above).auto_allowed
        assert store.greylist("probe2", "net", T0 + 400, at).auto_allowed


# --------------------------------------------------------------------------- outages


def test_redis_down_then_back_on_the_same_store(tmp_path: Path) -> None:
    server = RedisInstance(tmp_path / "redis")
    timeout = 0.5
    store = open_store("redis", tmp_path / "unused.db", server.url, timeout=timeout)
    try:
        # Not started yet: the constructor did not care, operations fail cleanly.
        with pytest.raises(StateUnavailable, match="redis") as raised:
            store.greylist("t", "c", T0, PARAMS)
        assert isinstance(raised.value.__cause__, redis_py.ConnectionError)
        with pytest.raises(StateUnavailable):
            store.ping()

        server.start()
        store.ping()
        assert store.greylist("t", "c", T0, PARAMS).remaining == 300.0

        server.stop()
        for operation in (
            lambda: store.greylist("t", "c", T0 + 300, PARAMS),
            lambda: store.rate_limit("k", [MINUTE], 1, RATE_T0),
        ):
            began = time.monotonic()
            with pytest.raises(StateUnavailable):
                operation()
            assert time.monotonic() - began < timeout

        # Back on the same port (empty: no persistence): the same object works again.
        server.start()
        assert store.rate_limit("k", [MINUTE], 1, RATE_T0).counts == (1,)
        # A restart between two operations (pooled connection now dead) is no error.
        server.stop()
        server.start()
        assert store.rate_limit("k", [MINUTE], 1, RATE_T0).counts == (1,)
    finally:
        store.close()
        server.stop()


def test_a_hung_redis_costs_one_timeout(tmp_path: Path) -> None:
    """A server that accepts connections and never answers (a stopped or overloaded
    Redis): each operation gives up after the socket timeout, without retrying."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        host, port = hole.getsockname()
        timeout = 0.3
        with RedisStore(f"redis://{host}:{port}/0", timeout=timeout) as store:
            for operation in (
                lambda: store.greylist("t", "c", T0, PARAMS),
                lambda: store.rate_limit("k", [MINUTE], 1, RATE_T0),
                store.ping,
            ):
                began = time.monotonic()
                with pytest.raises(StateUnavailable) as raised:
                    operation()
                elapsed = time.monotonic() - began
                assert isinstance(raised.value.__cause__, redis_py.TimeoutError)
                assert timeout * 0.9 <= elapsed < timeout * 1.8  # a retry would double it
