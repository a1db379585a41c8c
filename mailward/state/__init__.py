"""Shared state for greylisting and rate limits: one interface, two backends.

`open_store(settings.state.backend, settings.state.path, settings.state.url)` gives the
configured store: SQLite (default; one host, several processes) or Redis (several MX
hosts).  Both are thread-safe and carry the same atomic operations; every backend
failure raises `StateUnavailable`.  The calls block: from asyncio code, run them in a
thread (`asyncio.to_thread`).
"""

from __future__ import annotations

from pathlib import Path

from mailward.state.base import (
    GreylistDecision,
    GreylistOutcome,
    GreylistParams,
    RateExceeded,
    RateOutcome,
    RateWindow,
    StateStore,
    StateUnavailable,
)
from mailward.state.memory import MemoryStore
from mailward.state.sqlite import SqliteStore

__all__ = [
    "GreylistDecision",
    "GreylistOutcome",
    "GreylistParams",
    "MemoryStore",
    "RateExceeded",
    "RateOutcome",
    "RateWindow",
    "SqliteStore",
    "StateStore",
    "StateUnavailable",
    "open_store",
]


def open_store(
    backend: str,
    path: Path,
    url: str,
    *,
    timeout: float = 1.0,
    busy_timeout: float = 5.0,
    key_prefix: str = "mailward:",
) -> StateStore:
    """The store for `[state] backend` ("sqlite" uses `path`, "redis" uses `url`).

    `timeout`: Redis connect and reply timeout; `busy_timeout`: how long SQLite waits for
    another process's lock; `key_prefix`: prepended to every Redis key.  No I/O happens
    here (so a Redis that is down at startup is not an error); call `ping()` to check.
    A `StateBackend` from mailward.config is a str and can be passed as is.
    """
    if backend == "sqlite":
        return SqliteStore(path, busy_timeout=busy_timeout)
    if backend == "redis":
        # redis-py is loaded only by the processes configured to use it.
        from mailward.state.redis import RedisStore

        return RedisStore(url, prefix=key_prefix, timeout=timeout)
    raise ValueError(f"unknown state backend {backend!r} (expected 'sqlite' or 'redis')")
