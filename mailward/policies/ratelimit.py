"""Outbound rate limits: what policyd-rate-limit does, on the shared state store.

Who is counted (`by`): the SASL user, the envelope sender or the client address; what
is counted (`count`): messages or recipients; in several windows at once (per minute
*and* per day, say), each a fixed window aligned to the epoch (mailward.state.logic
explains why).  When a window is full the answer is `DEFER 4.7.1` naming the limit and
when it frees up; nothing is counted for a deferred request.  An identity listed in
[[policyd.ratelimit.overrides]] gets its own windows instead (none: unlimited).

Where it counts (`protocol_state`):
* RCPT: a recipient per request; a message once per transaction (the first recipient;
  the transaction's `instance` is remembered, so its other recipients are not counted);
* DATA / END-OF-MESSAGE: a message per request, or its `recipient_count` recipients;
  configure check_policy_service in smtpd_data_restrictions or
  smtpd_end_of_data_restrictions for these.

By default only outbound mail is limited (`applies_to = "outbound"`: SASL-authenticated
clients and general.trusted_networks); `"all"` limits every client.  A state backend
outage is answered as [policyd] on_state_error says, and counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from mailward.config import (
    PolicydRateLimitSettings,
    RateLimitCount,
    RateLimitIdentity,
    RateLimitScope,
    RateLimitWindow,
    StateErrorAction,
)
from mailward.model import IPAddress
from mailward.policies.base import (
    AccessRequest,
    Decision,
    PolicyDecision,
    Steps,
    TransactionMemo,
    call,
    dunno,
    is_outbound,
    parse_address,
    skip,
    state_error_decision,
)
from mailward.state import RateOutcome, RateWindow, StateStore, StateUnavailable

NAME = "ratelimit"

_PERIODS = {60: "minute", 3600: "hour", 86400: "day", 7 * 86400: "week"}


def period(seconds: int) -> str:
    """"minute", "hour", "day", "week" or "N seconds"."""
    return _PERIODS.get(seconds, f"{seconds} seconds")


def normalise_identity(by: RateLimitIdentity, value: str) -> str:
    """How identities compare: senders and addresses without case, users as given."""
    value = value.strip()
    if by is RateLimitIdentity.SENDER:
        return value.lower()
    if by is RateLimitIdentity.CLIENT_ADDRESS:
        address = parse_address(value)
        return str(address) if address is not None else value.lower()
    return value


def _windows(windows: tuple[RateLimitWindow, ...]) -> tuple[RateWindow, ...]:
    # Longest first, so the answer names the window that keeps the client out longest.
    ordered = sorted(windows, key=lambda window: window.seconds, reverse=True)
    return tuple(RateWindow(window.seconds, window.limit) for window in ordered)


class RateLimitPolicy:
    """[policyd.ratelimit]."""

    name = NAME

    def __init__(
        self,
        settings: PolicydRateLimitSettings,
        store: StateStore,
        trusted: Callable[[IPAddress], bool],
        on_state_error: StateErrorAction,
        *,
        clock: Callable[[], float] = time.time,
        counted: TransactionMemo[bool] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._trusted = trusted
        self._on_state_error = on_state_error
        self._clock = clock
        self._counted: TransactionMemo[bool] = (
            counted if counted is not None else TransactionMemo()
        )
        self._windows = _windows(settings.windows)
        self._overrides = {
            normalise_identity(settings.by, override.identity): _windows(override.windows)
            for override in settings.overrides
        }
        self.states = frozenset({settings.protocol_state})

    def identity(self, request: AccessRequest) -> str:
        by = self._settings.by
        if by is RateLimitIdentity.SASL_USERNAME:
            return request.sasl_username
        if by is RateLimitIdentity.SENDER:
            return request.sender.lower()
        return str(request.client_address) if request.client_address is not None else ""

    def evaluate(self, request: AccessRequest) -> Steps[PolicyDecision]:
        settings = self._settings
        if settings.applies_to is RateLimitScope.OUTBOUND and not is_outbound(
            request, self._trusted
        ):
            return skip(NAME, "not outbound (neither authenticated nor trusted)")
        identity = self.identity(request)
        if not identity:
            return skip(NAME, f"no {settings.by.value}")
        windows = self._overrides.get(identity, self._windows)
        if not windows:
            return dunno(NAME, f"{identity} has no limit (override)")
        per_message = settings.count is RateLimitCount.MESSAGES
        once = per_message and request.protocol_state == "RCPT" and bool(request.instance)
        memo_key = (request.instance, settings.by.value, identity)
        if once and self._counted.get(memo_key):
            return dunno(NAME, "message already counted")
        if per_message or request.protocol_state == "RCPT":
            amount = 1
        else:
            amount = max(1, request.recipient_count or 0)
        key = f"{settings.count.value}:{settings.by.value}:{identity}"
        now = self._clock()
        try:
            outcome: RateOutcome = yield from call(
                lambda: self._store.rate_limit(key, windows, amount, now)
            )
        except StateUnavailable as exc:
            return state_error_decision(NAME, "rate_limit", exc, self._on_state_error)
        if outcome.allowed:
            if once:
                self._counted.put(memo_key, True)
            counts = ", ".join(
                f"{count}/{window.limit} per {period(window.seconds)}"
                for count, window in zip(outcome.counts, windows, strict=True)
            )
            return dunno(NAME, f"{identity}: {counts}")
        exceeded = outcome.exceeded
        assert exceeded is not None  # a refused outcome names its window
        window = exceeded.window
        unit = settings.count.value if window.limit != 1 else settings.count.value[:-1]
        wait = max(1, math.ceil(exceeded.retry_after))
        text = (f"Rate limit of {window.limit} {unit} per {period(window.seconds)} "
                f"reached for {identity}, please try again in {wait} seconds")
        return PolicyDecision(
            NAME, Decision.DEFER, f"DEFER 4.7.1 {text}",
            reason=f"{identity}: {exceeded.count}+{amount} > {window.limit} "
                   f"per {period(window.seconds)}",
        )
