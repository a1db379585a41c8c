"""An in-memory BayesStore for unit tests and the benchmark (one process, no persistence)."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

from mailward.bayes.classifier import TokenCounts
from mailward.bayes.store import (
    DEFAULT_LIMITS,
    BayesStore,
    LearnResult,
    MessageClass,
    StoreLimits,
    Totals,
    hash_tokens,
    plan_learning,
)
from mailward.state.base import StateUnavailable


class MemoryBayesStore(BayesStore):
    backend = "memory"

    def __init__(self, limits: StoreLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._tokens: dict[int, list[float]] = {}  # hash -> [spam, ham, last_seen]
        self._messages: dict[str, MessageClass] = {}
        self._nspam = 0
        self._nham = 0
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise StateUnavailable(self.backend, "store is closed")

    def totals(self) -> Totals:
        with self._lock:
            self._check()
            return Totals(self._nspam, self._nham)

    def token_rows(self) -> int:
        with self._lock:
            self._check()
            return len(self._tokens)

    def token_counts(self, tokens: Collection[str]) -> Mapping[str, TokenCounts]:
        with self._lock:
            self._check()
            found = {}
            for key, token in hash_tokens(tokens).items():
                row = self._tokens.get(key)
                if row is not None:
                    found[token] = TokenCounts(int(row[0]), int(row[1]))
            return found

    def _step(self, digest: str, wanted: MessageClass | None, tokens: Collection[str],
              now: float) -> LearnResult:
        with self._lock:
            self._check()
            plan = plan_learning(self._messages.get(digest), wanted)
            keys = list(hash_tokens(tokens))
            if plan.undo is not None:
                self._count(keys, plan.undo, -1, now)
                del self._messages[digest]
            if plan.add is not None:
                self._count(keys, plan.add, +1, now)
                self._messages[digest] = plan.add
            return plan.result

    def _count(self, keys: list[int], message_class: MessageClass, delta: int,
               now: float) -> None:
        column = 0 if message_class is MessageClass.SPAM else 1
        if message_class is MessageClass.SPAM:
            self._nspam = max(0, self._nspam + delta)
        else:
            self._nham = max(0, self._nham + delta)
        for key in keys:
            row = self._tokens.setdefault(key, [0, 0, now])
            row[column] = max(0, row[column] + delta)
            if delta > 0:
                row[2] = now
            if row[0] == 0 and row[1] == 0:
                del self._tokens[key]

    def expire(self, now: float) -> int:
        with self._lock:
            self._check()
            cutoff = now - self.limits.token_expiry
            old = [key for key, row in self._tokens.items() if row[2] < cutoff]
            for key in old:
                del self._tokens[key]
            excess = len(self._tokens) - self.limits.max_tokens
            if excess > 0:
                oldest = sorted(self._tokens, key=lambda key: self._tokens[key][2])[:excess]
                for key in oldest:
                    del self._tokens[key]
                return len(old) + excess
            return len(old)

    def ping(self) -> None:
        with self._lock:
            self._check()

    def close(self) -> None:
        with self._lock:
            self._closed = True
