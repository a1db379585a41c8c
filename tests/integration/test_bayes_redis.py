"""The Bayes token store on a real redis-server: the same learning rules as SQLite
(idempotent, moves, forget), shared between two store instances (two MX hosts), token
TTLs, and a Redis that is down giving StateUnavailable (the check then says nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from mailward.bayes.learning import learn_message
from mailward.bayes.redis_store import RedisBayesStore
from mailward.bayes.store import LearnResult, MessageClass, StoreLimits
from mailward.state.base import StateUnavailable
from tests.harness import RedisInstance
from tests.harness.process import free_port

pytestmark = pytest.mark.integration

RAW = b"From: a@example.org\nSubject: cheap pills\n\nbuy cheap pills online today\n"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisInstance]:
    instance = RedisInstance(tmp_path_factory.mktemp("redis"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def test_learning_rules_and_sharing(redis_server: RedisInstance) -> None:
    limits = StoreLimits(token_expiry=3600.0)
    with RedisBayesStore(redis_server.url, limits, prefix="t1:") as mx1, \
            RedisBayesStore(redis_server.url, limits, prefix="t1:") as mx2:
        assert learn_message(mx1, RAW, MessageClass.SPAM, 1.0) is LearnResult.LEARNED
        assert learn_message(mx2, RAW, MessageClass.SPAM, 1.0) is LearnResult.ALREADY
        assert (mx2.totals().spam, mx2.totals().ham) == (1, 0)
        assert mx2.token_counts(["cheap", "nothing"])["cheap"].spam == 1
        assert "nothing" not in mx2.token_counts(["nothing"])
        assert learn_message(mx2, RAW, MessageClass.HAM, 2.0) is LearnResult.MOVED
        counts = mx1.token_counts(["cheap"])["cheap"]
        assert (counts.spam, counts.ham) == (0, 1)
        assert (mx1.totals().spam, mx1.totals().ham) == (0, 1)
        assert learn_message(mx1, RAW, None, 3.0) is LearnResult.FORGOTTEN
        assert learn_message(mx1, RAW, None, 3.0) is LearnResult.UNKNOWN
        assert mx1.totals().ham == 0


def test_token_keys_carry_the_expiry_as_ttl(redis_server: RedisInstance) -> None:
    with RedisBayesStore(redis_server.url, StoreLimits(token_expiry=500.0),
                         prefix="t2:") as store:
        learn_message(store, RAW, MessageClass.SPAM, 1.0)
    client = redis_py.Redis.from_url(redis_server.url)
    try:
        keys = list(client.scan_iter("t2:bayes:t:*"))
        assert keys
        ttls = {client.ttl(key) for key in keys}
        assert all(0 < ttl <= 500 for ttl in ttls)
    finally:
        client.close()


def test_redis_down_is_unavailable(tmp_path: Path) -> None:
    with RedisBayesStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5) as store:
        with pytest.raises(StateUnavailable):
            store.totals()
        with pytest.raises(StateUnavailable):
            learn_message(store, RAW, MessageClass.SPAM, 1.0)
