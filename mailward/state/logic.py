"""The rules of greylisting and rate limiting, as pure functions over records.

Stores load the records an operation needs, call these functions, and write back what
they return, inside one transaction (SQLite, memory).  The Redis backend runs the same
rules in Lua, inside the server, for one atomic round trip; the shared test suite holds
both to identical results, and the Redis backend builds its outcomes with the helpers
here, so remaining times and retry-after values are computed by one piece of code.

Rate-limit windows are **fixed windows aligned to multiples of their length since the
epoch**: a 60-second window counts from :00 to :59 of each minute, an 86400-second one
from 00:00 to 24:00 UTC.  Chosen over a sliding approximation (two weighted fixed
windows) and over a sliding log because:
- counts are exact integers, so the answer can name the exact count, `retry_after` is
  exact (the window's end), and tests are exact;
- state is one counter per key and window, updated with one increment, which both
  SQLite and Redis do atomically and cheaply;
- every process and every MX host computes the same window boundaries from the clock
  alone (alignment to the epoch, not to a key's first use), so shared counts agree.
The known cost: up to twice a window's limit can pass around a window boundary (the end
of one window plus the start of the next).  Combining windows (per minute *and* per
day) bounds such a burst by the shorter window's limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailward.state.base import (
    GreylistDecision,
    GreylistOutcome,
    GreylistParams,
    RateExceeded,
    RateOutcome,
    RateWindow,
)

# --------------------------------------------------------------------------- greylisting


@dataclass(frozen=True)
class TripletRecord:
    """A triplet as stored: pending (not passed) until `first_seen + retry_window`,
    passed until `expires_at` (last pass + expiry)."""

    first_seen: float
    passed: bool
    expires_at: float


@dataclass(frozen=True)
class ClientRecord:
    """A client key's count of passed triplets, alive until `expires_at`."""

    passes: int
    expires_at: float


@dataclass(frozen=True)
class GreylistStep:
    """The outcome and the records to write back (None: leave that record as it is)."""

    outcome: GreylistOutcome
    triplet: TripletRecord | None
    client: ClientRecord | None


def auto_allowed_outcome() -> GreylistOutcome:
    return GreylistOutcome(GreylistDecision.PASS, 0.0, False, True, None)


def deferred_outcome(first_seen: float, now: float, params: GreylistParams) -> GreylistOutcome:
    return GreylistOutcome(
        GreylistDecision.DEFER, params.delay - (now - first_seen), False, False, first_seen
    )


def passed_outcome(first_seen: float, newly_passed: bool) -> GreylistOutcome:
    return GreylistOutcome(GreylistDecision.PASS, 0.0, newly_passed, False, first_seen)


def greylist_step(
    triplet: TripletRecord | None,
    client: ClientRecord | None,
    now: float,
    params: GreylistParams,
) -> GreylistStep:
    """Decide one greylisting request.  Records may be stale: an entry whose
    `expires_at <= now` counts as absent, whatever the backend has not yet purged."""
    live_client = client if client is not None and client.expires_at > now else None
    if (
        params.auto_allow_after > 0
        and live_client is not None
        and live_client.passes >= params.auto_allow_after
    ):
        refreshed = ClientRecord(live_client.passes, now + params.expiry)
        return GreylistStep(auto_allowed_outcome(), None, refreshed)

    live = triplet if triplet is not None and triplet.expires_at > now else None
    if live is None:
        pending = TripletRecord(now, False, now + params.retry_window)
        return GreylistStep(deferred_outcome(now, now, params), pending, None)
    if not live.passed and now - live.first_seen < params.delay:
        return GreylistStep(deferred_outcome(live.first_seen, now, params), None, None)

    newly_passed = not live.passed
    counted: ClientRecord | None = None
    if newly_passed and params.auto_allow_after > 0:
        passes = live_client.passes if live_client is not None else 0
        counted = ClientRecord(passes + 1, now + params.expiry)
    kept = TripletRecord(live.first_seen, True, now + params.expiry)
    return GreylistStep(passed_outcome(live.first_seen, newly_passed), kept, counted)


# --------------------------------------------------------------------------- rate limits


def window_index(now: float, seconds: int) -> int:
    """Which fixed window `now` falls in: window i covers [i * seconds, (i+1) * seconds)."""
    return int(now // seconds)


def window_end(now: float, seconds: int) -> int:
    return (window_index(now, seconds) + 1) * seconds


def rate_outcome(
    counts: Sequence[int], windows: Sequence[RateWindow], amount: int, now: float
) -> RateOutcome:
    """Decide from the current counts (`counts[i]` in `windows[i]`'s current window).

    Allowed when `count + amount <= limit` in every window; the outcome then carries the
    counts with `amount` added, which the store must write.
    """
    for count, window in zip(counts, windows, strict=True):
        if count + amount > window.limit:
            exceeded = RateExceeded(window, count, window_end(now, window.seconds) - now)
            return RateOutcome(False, tuple(counts), exceeded)
    return RateOutcome(True, tuple(count + amount for count in counts), None)
