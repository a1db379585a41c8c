"""SPF at RCPT (or MAIL) time: what policyd-spf does, through the engine's SPF check.

The identities are those of `mailward.checks.spf`: HELO first when `[policyd.spf] helo`
is on (a HELO `fail` is conclusive, RFC 7208 2.3), then MAIL FROM (HELO again for the
null sender).  Per result:

* `fail`: `550 5.7.23` with the domain's explanation (`reject_fail`), else only recorded;
* `temperror`: `DEFER_IF_PERMIT 4.7.24` (`defer_temperror`), else DUNNO.  Never a 5xx:
  a DNS problem is not the sender's fault;
* `permerror`: `550 5.7.24` (`reject_permerror`), else DUNNO;
* anything else: `PREPEND Received-SPF: ...` (`received_spf`) once per message, else DUNNO.

Trusted networks and SASL-authenticated clients are skipped.  Postfix asks once per
recipient: results are kept per transaction (`instance`), client, sender and HELO in a
bounded memo, so the second recipient costs no DNS and no evaluation at all.

DNS without blocking: an evaluation is first tried in the caller's thread against a
memo of the answers seen so far (kept no longer than their TTLs).  Only when it needs an
answer the memo does not have is the evaluation yielded as a blocking step and run again
with the real resolver, which also fills the memo.  On a busy server almost every
evaluation takes the first path and never waits for a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from mailward import metrics
from mailward.checks.spf import (
    DEFAULT_LIMITS,
    RECEIVED_SPF,
    SpfIdentity,
    SpfLimits,
    SpfOutcome,
    SpfResult,
    evaluate_helo,
    evaluate_spf,
    lookup_domain,
    received_spf,
)
from mailward.config import PolicydSpfSettings
from mailward.dns import DnsAnswer, Outcome, Resolver
from mailward.model import IPAddress
from mailward.policies.base import (
    AccessRequest,
    Blocking,
    Decision,
    PolicyDecision,
    Steps,
    TransactionMemo,
    dunno,
    not_inbound_reason,
    skip,
)
from mailward.ttlcache import TtlCache

NAME = "spf"

#: Longest explanation quoted in a reply: SMTP reply lines stay well under 512 octets.
_MAX_REPLY_TEXT = 300

# Metric children, looked up once: labels() costs more than inc().
_CACHE_HIT = metrics.POLICYD_SPF_CACHE.labels("hit")
_CACHE_MISS = metrics.POLICYD_SPF_CACHE.labels("miss")
_RESULTS = {
    (identity, result): metrics.POLICYD_SPF_RESULTS.labels(identity.value, result.value)
    for identity in SpfIdentity for result in SpfResult
}


# --------------------------------------------------------------------------- DNS memo


class _WouldBlock(Exception):
    """The memo lacks an answer: the evaluation must go to a thread."""


class AnswerMemo:
    """The resolver's answers, remembered for their TTL, readable without blocking.

    `query()` asks the resolver (may block) and remembers the answer; `cached()` only
    looks.  Temporary failures (TTL 0) are never remembered, so recovery is seen at
    once, as in the resolver's own cache.
    """

    def __init__(
        self, resolver: Resolver, max_entries: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._entries: TtlCache[tuple[str, str], DnsAnswer] = TtlCache(max_entries, clock)

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        answer = self._resolver.query(name, rdtype)
        if answer.outcome is not Outcome.TEMPERROR:
            self._entries.put((name.rstrip(".").lower(), rdtype.upper()), answer, answer.ttl)
        return answer

    def cached(self, name: str, rdtype: str) -> DnsAnswer | None:
        return self._entries.get((name.rstrip(".").lower(), rdtype.upper()))


class _CacheOnly:
    """A Resolver over the memo that refuses to wait.  pyspf swallows exceptions in a
    few places (fetching an explanation), so a miss is also remembered in `missed` and
    the result of such an evaluation is thrown away."""

    def __init__(self, memo: AnswerMemo) -> None:
        self._memo = memo
        self.missed = False

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        answer = self._memo.cached(name, rdtype)
        if answer is None:
            self.missed = True
            raise _WouldBlock(f"{name}/{rdtype}")
        return answer


# --------------------------------------------------------------------------- evaluation


class SpfEvaluator:
    """SPF results for policy requests, memoized per transaction; shared by the SPF
    policy and greylisting (which skips large senders whose SPF passes)."""

    def __init__(
        self,
        resolver: Resolver,
        receiver: str,
        *,
        limits: SpfLimits = DEFAULT_LIMITS,
        memo: TransactionMemo[SpfOutcome] | None = None,
        answers: AnswerMemo | None = None,
    ) -> None:
        self._receiver = receiver
        self._limits = limits
        self._answers = answers if answers is not None else AnswerMemo(resolver)
        self._results: TransactionMemo[SpfOutcome] = (
            memo if memo is not None else TransactionMemo()
        )

    @property
    def receiver(self) -> str:
        return self._receiver

    def mail_from(self, request: AccessRequest, client: IPAddress) -> Steps[SpfOutcome]:
        """check_host() for MAIL FROM (HELO for the null sender, RFC 7208 2.4)."""
        sender, helo = request.sender, request.helo_name

        def run(resolver: Resolver) -> SpfOutcome:
            return evaluate_spf(resolver, client, helo, sender,
                                receiver=self._receiver, limits=self._limits)

        key = (request.instance, client, SpfIdentity.MAILFROM, sender, helo)
        return (yield from self._evaluate(key, request.instance, run))

    def helo(self, request: AccessRequest, client: IPAddress) -> Steps[SpfOutcome]:
        """check_host() for the HELO identity (RFC 7208 2.3)."""
        helo = request.helo_name

        def run(resolver: Resolver) -> SpfOutcome:
            return evaluate_helo(resolver, client, helo,
                                 receiver=self._receiver, limits=self._limits)

        key = (request.instance, client, SpfIdentity.HELO, "", helo)
        return (yield from self._evaluate(key, request.instance, run))

    def _evaluate(
        self, key: Hashable, instance: str, run: Callable[[Resolver], SpfOutcome]
    ) -> Steps[SpfOutcome]:
        if instance:  # without an instance there is no transaction to remember it for
            known = self._results.get(key)
            (_CACHE_MISS if known is None else _CACHE_HIT).inc()
            if known is not None:
                return known
        outcome = self._without_waiting(run)
        if outcome is None:
            step = Blocking(lambda: run(self._answers))
            yield step
            outcome = step.result
        _RESULTS[outcome.identity, outcome.result].inc()
        if instance:
            self._results.put(key, outcome)
        return outcome

    def _without_waiting(self, run: Callable[[Resolver], SpfOutcome]) -> SpfOutcome | None:
        """The outcome from remembered answers only, or None if DNS must be asked."""
        resolver = _CacheOnly(self._answers)
        try:
            outcome = run(resolver)
        except _WouldBlock:
            return None
        return None if resolver.missed else outcome


# --------------------------------------------------------------------------- the policy


def _reply_text(text: str) -> str:
    """Text for an SMTP reply: one line (the check already replaced control characters),
    bounded."""
    text = " ".join(text.splitlines()).strip()
    return text if len(text) <= _MAX_REPLY_TEXT else text[: _MAX_REPLY_TEXT - 3] + "..."


def _one_line(header_value: str) -> str:
    """A header value on one line: a policy answer cannot contain a line break."""
    return " ".join(part.strip() for part in header_value.splitlines())


class SpfPolicy:
    """[policyd.spf]."""

    name = NAME

    def __init__(
        self,
        settings: PolicydSpfSettings,
        evaluator: SpfEvaluator,
        trusted: Callable[[IPAddress], bool],
        *,
        prepended: TransactionMemo[bool] | None = None,
    ) -> None:
        self._settings = settings
        self._evaluator = evaluator
        self._trusted = trusted
        self._prepended: TransactionMemo[bool] = (
            prepended if prepended is not None else TransactionMemo()
        )
        self.states = frozenset({settings.protocol_state})

    def evaluate(self, request: AccessRequest) -> Steps[PolicyDecision]:
        exempt = not_inbound_reason(request, self._trusted)
        if exempt:
            return skip(NAME, exempt)
        client = request.client_address
        assert client is not None  # not_inbound_reason() says so otherwise
        settings = self._settings
        checks_helo = (settings.helo and bool(request.sender)
                       and lookup_domain(request.helo_name) is not None)
        if checks_helo:
            helo = yield from self._evaluator.helo(request, client)
            if helo.result is SpfResult.FAIL and settings.reject_fail:
                return self._reject_fail(helo)
        outcome = yield from self._evaluator.mail_from(request, client)
        result = outcome.result
        if result is SpfResult.FAIL and settings.reject_fail:
            return self._reject_fail(outcome)
        if result is SpfResult.TEMPERROR and settings.defer_temperror:
            domain = outcome.domain or "the sender"
            text = f"SPF temporary error for {domain}, please try again later"
            return PolicyDecision(NAME, Decision.DEFER,
                                  f"DEFER_IF_PERMIT 4.7.24 {_reply_text(text)}",
                                  reason=_reason(outcome))
        if result is SpfResult.PERMERROR and settings.reject_permerror:
            text = f"SPF permanent error for {outcome.domain}: {outcome.problem or 'permerror'}"
            return PolicyDecision(NAME, Decision.REJECT, f"550 5.7.24 {_reply_text(text)}",
                                  reason=_reason(outcome))
        if settings.received_spf:
            return self._prepend(request, outcome)
        return dunno(NAME, _reason(outcome))

    def _reject_fail(self, outcome: SpfOutcome) -> PolicyDecision:
        domain = outcome.domain or outcome.helo
        text = outcome.explanation or (
            f"{domain} does not designate {outcome.client_ip} as permitted sender"
        )
        if outcome.identity is SpfIdentity.HELO:
            text = f"HELO {outcome.helo}: {text}"
        return PolicyDecision(NAME, Decision.REJECT, f"550 5.7.23 {_reply_text(text)}",
                              reason=_reason(outcome))

    def _prepend(self, request: AccessRequest, outcome: SpfOutcome) -> PolicyDecision:
        """Received-SPF once per message: Postfix would add one per recipient."""
        key = (request.instance, request.client_address) if request.instance else None
        if key is not None and self._prepended.get(key):
            return dunno(NAME, f"{_reason(outcome)}; Received-SPF already prepended")
        header = _one_line(received_spf(outcome, self._evaluator.receiver))

        def remember() -> None:
            if key is not None:
                self._prepended.put(key, True)

        return PolicyDecision(NAME, Decision.PREPEND, f"PREPEND {RECEIVED_SPF}: {header}",
                              reason=_reason(outcome), on_answer=remember)


def _reason(outcome: SpfOutcome) -> str:
    detail = outcome.problem or outcome.mechanism
    return (f"spf {outcome.identity.value}={outcome.result.value} "
            f"domain={outcome.domain or '-'}" + (f" ({detail})" if detail else ""))
