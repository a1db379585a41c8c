"""Redis backend: state shared by several MX hosts.

- Each operation is one Lua script, run with EVALSHA (EVAL when the server answers
  NOSCRIPT, e.g. after a restart), so it is atomic and one round trip.  The scripts
  apply the rules of `mailward.state.logic`; timestamps are computed in Python and passed
  in as exact decimal strings, and the outcome is built by the same Python helpers the
  other backends use, so all backends agree to the last bit.
- Correctness never depends on key TTLs: records carry their logical expiry and are
  compared with the `now` of the request.  TTLs (the logical lifetime plus
  `ttl_grace` seconds) only make Redis forget what nobody needs any more.
- Keys: `<prefix>gl:t:<triplet>`, `<prefix>gl:c:<client>` (hashes) and
  `<prefix>rl:<window seconds>:<window index>:<key>` (counters).
- Connections are made lazily (the constructor never touches the network), with
  `timeout` for connecting and for each reply, and without automatic retries: a retried
  script could count twice.  A connection found dead is replaced at the next
  operation, so the store works again as soon as Redis is back.
- Every redis-py error, and OSError, becomes StateUnavailable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from mailward import turns
from mailward.state.base import (
    GreylistOutcome,
    GreylistParams,
    RateOutcome,
    RateWindow,
    StateStore,
    StateUnavailable,
    check_key,
    check_rate_arguments,
)
from mailward.state.logic import (
    auto_allowed_outcome,
    deferred_outcome,
    passed_outcome,
    rate_outcome,
    window_end,
    window_index,
)


@dataclass(frozen=True)
class _Script:
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.text.encode()).hexdigest()


# KEYS: triplet hash (f = first seen, p = passed, e = expires at), client hash
# (n = passes, e = expires at).  ARGV: now, delay, auto_allow_after, pending expires at,
# passed expires at, pending TTL ms, passed TTL ms.
# Returns {kind, first seen}: kind is auto | new | wait | pass | newpass.
_GREYLIST = _Script(
    """
local now = tonumber(ARGV[1])
local delay = tonumber(ARGV[2])
local auto = tonumber(ARGV[3])
local passes = 0
if auto > 0 then
  local c = redis.call('HMGET', KEYS[2], 'n', 'e')
  if c[1] and tonumber(c[2]) > now then passes = tonumber(c[1]) end
  if passes >= auto then
    redis.call('HSET', KEYS[2], 'e', ARGV[5])
    redis.call('PEXPIRE', KEYS[2], ARGV[7])
    return {'auto', ''}
  end
end
local t = redis.call('HMGET', KEYS[1], 'f', 'p', 'e')
if not t[1] or tonumber(t[3]) <= now then
  redis.call('HSET', KEYS[1], 'f', ARGV[1], 'p', '0', 'e', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {'new', ARGV[1]}
end
local passed = t[2] == '1'
if not passed and now - tonumber(t[1]) < delay then
  return {'wait', t[1]}
end
redis.call('HSET', KEYS[1], 'p', '1', 'e', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if passed then
  return {'pass', t[1]}
end
if auto > 0 then
  redis.call('HSET', KEYS[2], 'n', passes + 1, 'e', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
return {'newpass', t[1]}
"""
)

# KEYS: one counter per window (for the current window index).  ARGV: amount, then per
# window its limit and TTL ms.  Counts only if every window has room; returns the
# counts as they were before.
_RATE = _Script(
    """
local amount = tonumber(ARGV[1])
local counts = {}
local room = true
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  counts[i] = count
  if count + amount > tonumber(ARGV[2 * i]) then room = false end
end
if room then
  for i, key in ipairs(KEYS) do
    redis.call('INCRBY', key, amount)
    redis.call('PEXPIRE', key, ARGV[2 * i + 1])
  end
end
return counts
"""
)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisStore(StateStore):
    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mailward:",
        timeout: float = 1.0,
        ttl_grace: float = 10.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.ttl_grace = ttl_grace
        # from_url parses only (ValueError for a malformed URL); it does not connect.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._closed = False

    # ------------------------------------------------------------------ operations

    def greylist(
        self, triplet: str, client: str, now: float, params: GreylistParams
    ) -> GreylistOutcome:
        check_key("triplet", triplet)
        check_key("client", client)
        keys = [f"{self.prefix}gl:t:{triplet}", f"{self.prefix}gl:c:{client}"]
        args = [
            repr(float(now)),
            repr(float(params.delay)),
            str(params.auto_allow_after),
            repr(now + params.retry_window),
            repr(now + params.expiry),
            str(_ms(params.retry_window + self.ttl_grace)),
            str(_ms(params.expiry + self.ttl_grace)),
        ]
        reply = self._run(_GREYLIST, keys, args)
        try:
            kind = bytes(reply[0]).decode()
            first_seen = float(reply[1]) if kind != "auto" else 0.0
        except (TypeError, ValueError, IndexError) as exc:
            raise StateUnavailable(self.backend, f"unexpected script reply {reply!r}") from exc
        if kind == "auto":
            return auto_allowed_outcome()
        if kind in ("new", "wait"):
            return deferred_outcome(first_seen, now, params)
        if kind in ("pass", "newpass"):
            return passed_outcome(first_seen, newly_passed=kind == "newpass")
        raise StateUnavailable(self.backend, f"unexpected script reply {reply!r}")

    def rate_limit(
        self, key: str, windows: Sequence[RateWindow], amount: int, now: float
    ) -> RateOutcome:
        check_key("rate key", key)
        check_rate_arguments(windows, amount)
        keys = [
            f"{self.prefix}rl:{w.seconds}:{window_index(now, w.seconds)}:{key}" for w in windows
        ]
        args = [str(amount)]
        for w in windows:
            args += [str(w.limit), str(_ms(window_end(now, w.seconds) - now + self.ttl_grace))]
        reply = self._run(_RATE, keys, args)
        try:
            counts = [int(count) for count in reply]
        except (TypeError, ValueError) as exc:
            raise StateUnavailable(self.backend, f"unexpected script reply {reply!r}") from exc
        if len(counts) != len(windows):
            raise StateUnavailable(self.backend, f"unexpected script reply {reply!r}")
        return rate_outcome(counts, windows, amount, now)

    def purge(self, now: float) -> int:
        """Nothing to do: Redis drops expired keys itself (TTLs)."""
        self._check_open()
        return 0

    def ping(self) -> None:
        self._check_open()
        try:
            self._client.ping()
        except (RedisError, OSError) as exc:
            raise StateUnavailable(self.backend, f"{self._where()}: {exc}") from exc

    def close(self) -> None:
        self._closed = True
        self._client.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise StateUnavailable(self.backend, "store is closed")

    def _where(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    def _run(self, script: _Script, keys: list[str], args: list[str]) -> Any:
        self._check_open()
        try:
            with turns.waiting():  # another message computes meanwhile
                try:
                    return self._client.evalsha(script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    return self._client.eval(script.text, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise StateUnavailable(self.backend, f"{self._where()}: {exc}") from exc
