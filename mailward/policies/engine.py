"""The policy engine: Postfix's attribute list in, an access(5) action out.

The policy service's protocol code lives in policyd/; this module only decides.  It
validates what Postfix sent, so that a request the engine cannot make sense of is
answered `DUNNO` ("no opinion, go on with the other restrictions"): a policy service
that cannot decide must never reject mail, and never permit it either.

The policies (mailward/policies/: spf, greylist, ratelimit) are evaluated in the order
`[policyd] order` gives, each only in the protocol states it serves.  Postfix accepts
one action per answer, so their decisions are combined like this:

* the first policy that defers or rejects decides; the policies after it are not asked
  (so a rejected recipient is never greylisted, and is not counted against a limit);
* a PREPEND (SPF's Received-SPF header) is returned only if no policy after it defers
  or rejects; if several policies prepend, the first one's header is kept;
* otherwise the answer is DUNNO.  The engine never answers OK/PERMIT: whatever the
  policies think, Postfix's own restrictions still apply.

A bug in one policy is logged with its traceback, counted in mailward_errors_total and
taken as that policy's DUNNO; the others still run.  A state backend outage is the
policy's to answer (`[policyd] on_state_error`).  Temporary failures never become
rejections.

Blocking work (DNS, the state store) is yielded as steps (see mailward.policies.base):
`decide()` runs everything in the calling thread; the policy server drives `evaluate()`
and runs each step in its thread pool.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailward import metrics
from mailward.config import Settings
from mailward.dns import Resolver
from mailward.policies.base import (
    PROTOCOL_STATES,
    AccessRequest,
    Decision,
    Policy,
    PolicyDecision,
    Steps,
    dunno,
    run_inline,
)
from mailward.state import StateStore, StateUnavailable, open_store

log = logging.getLogger("mailward.policyd")

__all__ = ["DUNNO", "PROTOCOL_STATES", "PolicyAnswer", "PolicyEngine", "build_policies"]


@dataclass(frozen=True)
class PolicyAnswer:
    """An access(5) action, e.g. `DUNNO`, `DEFER_IF_PERMIT ...`, `550 5.7.23 ...`."""

    action: str
    reason: str = ""  # for the log, not for the client

    @property
    def label(self) -> str:
        """The action's first word, a bounded value for metrics."""
        word = self.action.split(None, 1)[0].upper()
        if word[:1] in "45" and word.isdigit():
            return f"{word[0]}xx"
        return word


DUNNO = PolicyAnswer("DUNNO")


def build_policies(
    settings: Settings,
    resolver: Resolver | None,
    store: StateStore | None,
    clock: Callable[[], float] = time.time,
) -> tuple[Policy, ...]:
    """The enabled policies, in `[policyd] order`.

    `resolver` is needed when SPF is enabled (or greylisting skips large senders by
    SPF), `store` when greylisting or rate limits are.
    """
    from mailward.policies.greylist import GreylistPolicy
    from mailward.policies.ratelimit import RateLimitPolicy
    from mailward.policies.spf import SpfEvaluator, SpfPolicy

    spf, greylist, ratelimit = (
        settings.policyd_spf, settings.policyd_greylist, settings.policyd_ratelimit,
    )
    trusted = settings.general.is_trusted
    on_state_error = settings.policyd.on_state_error
    evaluator: SpfEvaluator | None = None
    if spf.enabled or (greylist.enabled and greylist.spf_pass_domains):
        if resolver is None:
            raise ValueError("the SPF policy needs a resolver")
        evaluator = SpfEvaluator(resolver, settings.general.authserv_id)
    if (greylist.enabled or ratelimit.enabled) and store is None:
        raise ValueError("greylisting and rate limits need a state store")
    built: dict[str, Policy] = {}
    if spf.enabled:
        assert evaluator is not None
        built["spf"] = SpfPolicy(spf, evaluator, trusted)
    if greylist.enabled:
        assert store is not None
        built["greylist"] = GreylistPolicy(
            greylist, store, trusted, on_state_error,
            spf=evaluator if greylist.spf_pass_domains else None, clock=clock,
        )
    if ratelimit.enabled:
        assert store is not None
        built["ratelimit"] = RateLimitPolicy(
            ratelimit, store, trusted, on_state_error, clock=clock
        )
    return tuple(built[name] for name in settings.policyd.order if name in built)


@dataclass(frozen=True)
class PolicyEngine:
    """Validates requests and runs the policies.  With no policies (the default when
    built as `PolicyEngine(settings)`) it only validates and answers DUNNO."""

    settings: Settings
    policies: tuple[Policy, ...] = ()
    store: StateStore | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        resolver: Resolver | None,
        *,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> PolicyEngine:
        """The engine the configuration describes.  The state store is opened (lazily:
        no I/O here) from `[state]` when a policy needs it and none is given."""
        needs_store = settings.policyd_greylist.enabled or settings.policyd_ratelimit.enabled
        if needs_store and store is None:
            state = settings.state
            store = open_store(state.backend, state.path, state.url)
        return cls(settings, build_policies(settings, resolver, store, clock), store)

    def decide(self, attributes: Mapping[str, str]) -> PolicyAnswer:
        """Decide one request, running any blocking step (DNS, state) in this thread."""
        return run_inline(self.evaluate(attributes))

    def evaluate(self, attributes: Mapping[str, str]) -> Steps[PolicyAnswer]:
        """Decide one request, yielding each blocking step to the caller to run."""
        if not self.policies:
            problem = self.validate(attributes)
            return PolicyAnswer("DUNNO", reason=f"invalid request: {problem}") if problem else DUNNO
        request = AccessRequest.parse(attributes)
        # validate(), with the address the request parsed (not parsed a second time).
        problem = _kind_problem(attributes)
        address = attributes.get("client_address", "")
        if not problem and address and request.client_address is None:
            problem = _address_problem(address)
        if problem:
            return PolicyAnswer("DUNNO", reason=f"invalid request: {problem}")
        prepend: PolicyDecision | None = None
        notes: list[str] = []
        for policy in self.policies:
            if request.protocol_state not in policy.states:
                continue
            started = time.perf_counter()
            try:
                decision = yield from policy.evaluate(request)
            except Exception:
                log.exception("%s: policy %s failed", request.describe(), policy.name)
                metrics.ERRORS.labels("policyd").inc()
                decision = dunno(policy.name, "internal error")
            seconds, decisions = _policy_metrics(policy.name)
            seconds.observe(time.perf_counter() - started)
            decisions[decision.decision].inc()
            if decision.decision.final:
                return _answer(decision)
            if decision.decision is Decision.PREPEND and prepend is None:
                prepend = decision
            elif decision.reason:
                notes.append(f"{decision.policy}: {decision.reason}")
        if log.isEnabledFor(logging.DEBUG) and notes:
            log.debug("%s: %s", request.describe(), "; ".join(notes))
        if prepend is not None:
            return _answer(prepend)
        return DUNNO

    def check_state(self) -> str | None:
        """None if the state store answers (or none is needed), else why not.  Blocks."""
        if self.store is None:
            return None
        try:
            self.store.ping()
        except StateUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        """Release the state store's connections."""
        if self.store is not None:
            self.store.close()

    @staticmethod
    def validate(attributes: Mapping[str, str]) -> str:
        """Why this request cannot be evaluated, or "" if it can."""
        problem = _kind_problem(attributes)
        address = attributes.get("client_address", "")
        if not problem and address:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                problem = _address_problem(address)
        return problem


def _kind_problem(attributes: Mapping[str, str]) -> str:
    """The request type and protocol state, checked."""
    request = attributes.get("request", "")
    if request != "smtpd_access_policy":
        return f"request={request!r}, expected 'smtpd_access_policy'"
    state = attributes.get("protocol_state", "").upper()
    if state not in PROTOCOL_STATES:
        return f"unknown protocol_state {state!r}"
    return ""


def _address_problem(address: str) -> str:
    return f"client_address {address!r} is not an IP address"


@functools.lru_cache(maxsize=32)
def _policy_metrics(name: str) -> tuple[Any, dict[Decision, Any]]:
    """A policy's metric children, looked up once (labels() costs more than inc())."""
    return (
        metrics.POLICYD_POLICY_SECONDS.labels(name),
        {kind: metrics.POLICYD_POLICY_DECISIONS.labels(name, kind.value) for kind in Decision},
    )


def _answer(decision: PolicyDecision) -> PolicyAnswer:
    if decision.on_answer is not None:
        decision.on_answer()
    return PolicyAnswer(decision.action, reason=f"{decision.policy}: {decision.reason}")
