"""The state interface: what greylisting and rate limiting ask of a store, and what they get.

Every operation is one atomic step with its policy parameters passed in and a frozen,
typed result out, so a policy never reads a record, decides, and writes it back itself
(two policyd processes, or two MX hosts, would race).  The clock is always an argument
(`now`, seconds since the epoch as a float): stores never read the time, which keeps
their results exact and their tests free of sleeps.

Every backend failure (Redis down or slow, SQLite locked beyond its busy timeout, a disk
error, a store already closed) surfaces as `StateUnavailable` with the backend's own
exception chained as `__cause__`; the caller applies its configured outage action.
Invalid *arguments* (a window of 0 seconds, an empty key) are programming or
configuration errors and raise `ValueError` before any I/O.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import ClassVar, Self


class StateUnavailable(Exception):
    """The state backend could not carry out the operation; nothing can be assumed done.

    `backend` is a bounded label ("sqlite", "redis", "memory") for metrics and logs.
    """

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(backend, message)  # both in args: the exception pickles
        self.backend = backend
        self.message = message

    def __str__(self) -> str:
        return f"{self.backend} state backend unavailable: {self.message}"


# --------------------------------------------------------------------------- greylisting


@dataclass(frozen=True)
class GreylistParams:
    """How greylisting behaves; the policy builds this from its config section.

    - `delay`: a triplet is deferred until this many seconds after it was first seen.
    - `retry_window`: a retry is accepted until this many seconds after first seen;
      a triplet that has not passed by then starts over (first seen again).
    - `expiry`: a passed triplet stays passed this long after its *last* pass; a client's
      pass count, and an auto-allowed client, expire this long after their last use.
    - `auto_allow_after`: after this many passed triplets (within `expiry` of each other)
      the client key is allowed without greylisting; 0 disables auto-allow.
    """

    delay: float
    retry_window: float
    expiry: float
    auto_allow_after: int = 0

    def __post_init__(self) -> None:
        if not self.delay > 0:
            raise ValueError(f"greylist delay must be > 0, got {self.delay!r}")
        if not self.retry_window > self.delay:
            raise ValueError(
                f"greylist retry_window ({self.retry_window!r}) must be longer than "
                f"delay ({self.delay!r})"
            )
        if not self.expiry > 0:
            raise ValueError(f"greylist expiry must be > 0, got {self.expiry!r}")
        if self.auto_allow_after < 0:
            raise ValueError(
                f"greylist auto_allow_after must be >= 0, got {self.auto_allow_after!r}"
            )


class GreylistDecision(StrEnum):
    PASS = "pass"
    DEFER = "defer"


@dataclass(frozen=True)
class GreylistOutcome:
    """What one greylist step decided.

    - `remaining`: seconds until a retry can pass (0.0 when passed).
    - `newly_passed`: this request is the triplet's first pass (the client's pass count
      went up); a policy can use it for "delayed N seconds" headers or metrics.
    - `auto_allowed`: passed because the client is auto-allowed (the triplet was not
      looked at).
    - `first_seen`: when the triplet was first seen (None when auto-allowed).
    """

    decision: GreylistDecision
    remaining: float
    newly_passed: bool
    auto_allowed: bool
    first_seen: float | None

    @property
    def passed(self) -> bool:
        return self.decision is GreylistDecision.PASS


# --------------------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class RateWindow:
    """At most `limit` units (messages or recipients) per `seconds`.

    Windows are fixed and aligned to multiples of `seconds` since the epoch (UTC): a
    86400-second window runs from 00:00 to 24:00 UTC.  See `mailward.state.logic`.
    """

    seconds: int
    limit: int

    def __post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int):
            raise ValueError(f"rate window seconds must be an int, got {self.seconds!r}")
        if self.seconds < 1:
            raise ValueError(f"rate window seconds must be >= 1, got {self.seconds!r}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise ValueError(f"rate limit must be an int >= 0, got {self.limit!r}")


@dataclass(frozen=True)
class RateExceeded:
    """The window that refused: `count` units already counted in it, `retry_after`
    seconds until it starts over (for an `amount` larger than `window.limit`, retrying
    never helps)."""

    window: RateWindow
    count: int
    retry_after: float


@dataclass(frozen=True)
class RateOutcome:
    """`counts[i]` is the count in `windows[i]` after this step (unchanged if refused);
    `exceeded` names the first window, in the order given, that refused."""

    allowed: bool
    counts: tuple[int, ...]
    exceeded: RateExceeded | None


# --------------------------------------------------------------------------- the store


def check_key(what: str, value: str) -> None:
    """Keys are opaque, but must be non-empty strings."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")


def check_rate_arguments(windows: Sequence[RateWindow], amount: int) -> None:
    if not windows:
        raise ValueError("rate_limit needs at least one window")
    seconds = [window.seconds for window in windows]
    if len(set(seconds)) != len(seconds):
        raise ValueError(f"rate windows must have distinct lengths, got {seconds}")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        raise ValueError(f"rate amount must be an int >= 1, got {amount!r}")


class StateStore(abc.ABC):
    """Shared state for greylisting and rate limits.  Thread-safe; safe across processes
    (and, for Redis, hosts).  Use as a context manager or call `close()`."""

    #: Bounded label for metrics and logs.
    backend: ClassVar[str]

    @abc.abstractmethod
    def greylist(
        self, triplet: str, client: str, now: float, params: GreylistParams
    ) -> GreylistOutcome:
        """One atomic greylisting step for `triplet` (network/sender/recipient, built by
        the policy) from `client` (the key that auto-allow counts, e.g. the network).

        In order: an auto-allowed client passes (and its allowance is refreshed); an
        unknown triplet, or one whose retry window ran out, is recorded as first seen
        now and deferred for `delay`; a triplet seen less than `delay` ago is deferred
        for the rest; otherwise it passes.  A triplet's first pass adds one to the
        client's pass count; every pass keeps the triplet for another `expiry`.
        """

    @abc.abstractmethod
    def rate_limit(
        self, key: str, windows: Sequence[RateWindow], amount: int, now: float
    ) -> RateOutcome:
        """One atomic step over several windows: if adding `amount` would exceed any
        window's limit nothing is counted and the first such window is named; otherwise
        `amount` is counted in every window."""

    @abc.abstractmethod
    def purge(self, now: float) -> int:
        """Remove entries that expired at `now`; returns how many were removed.

        Stores also purge on their own (SQLite opportunistically, Redis by key TTLs),
        so calling this is never required."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StateUnavailable unless the backend answers (for startup checks)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections.  Operations on a closed store raise StateUnavailable."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
