"""A bounded, thread-safe cache whose entries expire: one implementation for every
cache Mailward keeps (DNS answers, parsed DKIM keys, per-transaction policy results).

Least recently used entries go first when the cache is full, so memory stays flat on a
busy server; expired entries are dropped when they are next looked at.  The clock is
injected so that expiry is exact in tests.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most `max_entries` values, each until its own time-to-live runs out."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        found = self.get_with_remaining(key)
        return found[0] if found is not None else None

    def get_with_remaining(self, key: K) -> tuple[V, float] | None:
        """The value and the seconds it has left, or None if absent or expired."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            remaining = entry[0] - self._clock()
            if remaining <= 0:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1], remaining

    def put(self, key: K, value: V, ttl: float) -> None:
        """Keep `value` for `ttl` seconds; a TTL of zero (or a zero-size cache) keeps nothing."""
        if ttl <= 0 or self._max <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
