"""The Bayes database in Redis: shared by several MX hosts (`[state] backend = "redis"`).

- Keys: `<prefix>bayes:t:<hash hex>` (hash: s, h), `<prefix>bayes:m:<digest>` (the
  class a message was learned as), `<prefix>bayes:n` (hash: spam, ham).
- Learning and forgetting are one Lua script each call (atomic, one round trip), applying
  the same rule as `plan_learning`; classification reads the tokens in one pipeline.
- Size: every token key carries a TTL of `token_expiry`, renewed whenever a learned
  message contains it, so unused tokens leave by themselves.  `max_tokens` is not
  enforced here: bound the Redis instance with `maxmemory` (volatile-ttl) instead.
- Every redis-py error and OSError becomes StateUnavailable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from mailward import turns
from mailward.bayes.classifier import TokenCounts
from mailward.bayes.store import (
    DEFAULT_LIMITS,
    BayesStore,
    LearnResult,
    MessageClass,
    StoreLimits,
    Totals,
    hash_tokens,
)
from mailward.state.base import StateUnavailable

# KEYS[1] message key, KEYS[2] totals key, KEYS[3..] token keys.
# ARGV[1] wanted class ("spam", "ham", or "" to forget), ARGV[2] token TTL in ms.
_STEP = """
local previous = redis.call('GET', KEYS[1])
local wanted = ARGV[1]
local field = {spam = 's', ham = 'h'}
if previous == false then previous = '' end
if previous == wanted then
  if wanted == '' then return 'unknown' end
  return 'already'
end
if previous ~= '' then
  for i = 3, #KEYS do
    local left = redis.call('HINCRBY', KEYS[i], field[previous], -1)
    if left < 0 then redis.call('HSET', KEYS[i], field[previous], 0) end
  end
  local n = redis.call('HINCRBY', KEYS[2], previous, -1)
  if n < 0 then redis.call('HSET', KEYS[2], previous, 0) end
  redis.call('DEL', KEYS[1])
end
if wanted ~= '' then
  for i = 3, #KEYS do
    redis.call('HINCRBY', KEYS[i], field[wanted], 1)
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
  redis.call('HINCRBY', KEYS[2], wanted, 1)
  redis.call('SET', KEYS[1], wanted)
  if previous == '' then return 'learned' end
  return 'moved'
end
return 'forgotten'
"""


class RedisBayesStore(BayesStore):
    backend = "redis"

    def __init__(self, url: str, limits: StoreLimits = DEFAULT_LIMITS, *,
                 prefix: str = "mailward:", timeout: float = 1.0) -> None:
        self.limits = limits
        self._prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
        self._script = self._client.register_script(_STEP)

    def _token_key(self, key: int) -> str:
        return f"{self._prefix}bayes:t:{key & 0xFFFFFFFFFFFFFFFF:016x}"

    def _unavailable(self, exc: Exception) -> StateUnavailable:
        return StateUnavailable(self.backend, str(exc) or type(exc).__name__)

    def totals(self) -> Totals:
        try:
            with turns.waiting():  # another message computes meanwhile
                counts = self._client.hgetall(f"{self._prefix}bayes:n")
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return Totals(int(counts.get(b"spam", 0)), int(counts.get(b"ham", 0)))

    def token_counts(self, tokens: Collection[str]) -> Mapping[str, TokenCounts]:
        hashed = hash_tokens(tokens)
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in hashed:
                pipe.hmget(self._token_key(key), "s", "h")
            with turns.waiting():
                replies = pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        found = {}
        for token, (spam, ham) in zip(hashed.values(), replies, strict=True):
            if spam is not None or ham is not None:
                found[token] = TokenCounts(int(spam or 0), int(ham or 0))
        return found

    def _step(self, digest: str, message_class: MessageClass | None, tokens: Collection[str],
              now: float) -> LearnResult:
        wanted = message_class.value if message_class is not None else ""
        keys = [f"{self._prefix}bayes:m:{digest}", f"{self._prefix}bayes:n"]
        keys += [self._token_key(key) for key in hash_tokens(tokens)]
        try:
            reply = self._script(keys=keys, args=[wanted, int(self.limits.token_expiry * 1000)])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return LearnResult(reply.decode() if isinstance(reply, bytes) else str(reply))

    def expire(self, now: float) -> int:
        return 0  # key TTLs do it

    def ping(self) -> None:
        try:
            self._client.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        self._client.close()
