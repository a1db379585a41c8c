"""A PolicyCache in Redis (`[tlspolicy] cache = "redis"`, at `[state] url`): several
relays share the MTA-STS policies they learn.

Why shared: a relay that has never fetched a domain's `enforce` policy can be downgraded
by whoever blocks that first fetch; with a shared cache, one relay's fetch protects all.

- One hash per domain, `<prefix>sts:<domain>`, with the policy, its id and when it was
  fetched; the key expires when the policy does (EXPIREAT fetched_at + max_age), so Redis
  forgets what nobody may use any more.  Correctness never rests on that TTL: the
  caller (mtasts.MtaSts) checks freshness itself.
- Redis failures never fail a lookup: every policy this process writes or reads is also
  kept in a local MemoryPolicyCache, answered while Redis is unreachable (logged and
  counted in mailward_tlspolicy_cache_errors_total).  A Redis outage therefore never
  forgets an `enforce` policy this relay knew, and never defers mail.
- Client settings as mailward.state.redis: connect lazily, one timeout for connect and
  reply, no automatic retries (an outage is seen at once, not after several timeouts).
"""

from __future__ import annotations

import logging
import math

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from mailward import metrics
from mailward.tlspolicy.mtasts import CachedPolicy, MemoryPolicyCache, Mode, Policy

log = logging.getLogger("mailward.tlspolicy")

DEFAULT_PREFIX = "mailward:tlspolicy:"
_FIELDS = ("policy_id", "fetched_at", "mode", "mx", "max_age")


class RedisPolicyCache:
    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 1.0,
                 local_entries: int = 100_000) -> None:
        self.prefix = prefix
        # from_url parses only (ValueError for a malformed URL); it does not connect.
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._local = MemoryPolicyCache(local_entries)

    def _key(self, domain: str) -> str:
        return f"{self.prefix}sts:{domain}"

    def get(self, domain: str) -> CachedPolicy | None:
        try:
            values = self._client.hmget(self._key(domain), _FIELDS)
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return self._local.get(domain)
        entry = _decode(values)
        if entry is None:
            self._local.delete(domain)  # another relay removed it, or it expired
            return None
        self._local.put(domain, entry)
        return entry

    def put(self, domain: str, entry: CachedPolicy) -> None:
        self._local.put(domain, entry)
        key = self._key(domain)
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping={
                    "policy_id": entry.policy_id, "fetched_at": repr(entry.fetched_at),
                    "mode": entry.policy.mode.value, "mx": " ".join(entry.policy.mx),
                    "max_age": str(entry.policy.max_age)})
                pipe.expireat(key, math.ceil(entry.expires_at))
                pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("put", exc)

    def delete(self, domain: str) -> None:
        self._local.delete(domain)
        try:
            self._client.delete(self._key(domain))
        except (RedisError, OSError) as exc:
            self._failed("delete", exc)

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _failed(operation: str, exc: BaseException) -> None:
        log.warning("tlspolicy Redis cache %s failed, using this process's copy: %s",
                    operation, exc)
        metrics.TLSPOLICY_CACHE_ERRORS.labels(operation).inc()


def _decode(values: list[bytes | str | None]) -> CachedPolicy | None:
    """A stored row, or None for a missing or unreadable one (a row another version
    wrote is no policy, not a crash)."""
    if any(value is None for value in values):
        return None
    try:
        policy_id, fetched_at, mode, mx, max_age = (
            value.decode() if isinstance(value, bytes) else str(value) for value in values)
        policy = Policy(Mode(mode), tuple(mx.split()), int(max_age))
        return CachedPolicy(policy, policy_id, float(fetched_at))
    except (UnicodeDecodeError, ValueError):
        return None
