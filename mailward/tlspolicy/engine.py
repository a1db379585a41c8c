"""From a Postfix lookup key to a socketmap reply: overrides, then DANE, then MTA-STS.

Blocking (DNS, HTTPS): the server runs `answer` in its thread pool.  Every failure inside
becomes "no policy" (`NOTFOUND`, Postfix's default TLS level) unless an unexpired cached
policy says otherwise: a TLS policy lookup must never turn a temporary problem into a
permanent failure of mail, nor let an attacker downgrade an `enforce` domain.

DANE (dane.py, with `[tlspolicy] dane = true`) comes first, as RFC 8461 section 2 asks:
a destination with validated TLSA records is answered `dane-only`/`dane` whatever its
MTA-STS policy says.  The one exception to "failure is no policy": a DANE lookup that
fails in a signed zone is answered TEMP, because there a failure may be an attack.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from mailward.dns import Resolver
from mailward.tlspolicy.dane import Dane, DaneDecision, DaneOutcome, DnssecResolver, key_port
from mailward.tlspolicy.mtasts import (
    Mode,
    MtaSts,
    PolicyCache,
    PolicyFetcher,
    StsDecision,
    normalise_key,
    postfix_policy,
)
from mailward.tlspolicy.settings import TlsPolicySettings
from mailward.tlspolicy.socketmap import Reply, ReplyStatus


class AnswerKind(StrEnum):
    """Metric label and log category of an answer."""

    SECURE = "secure"  # MTA-STS enforce
    OVERRIDE = "override"  # [tlspolicy.overrides]
    TESTING = "testing"  # MTA-STS testing: not enforced (NOTFOUND), but logged
    NOTFOUND = "notfound"
    DANE = "dane"  # DANE: `dane-only` or `dane`
    TEMP = "temp"  # a DANE lookup failed where the zone is signed: Postfix defers


@dataclass(frozen=True)
class TlsAnswer:
    key: str
    reply: Reply
    kind: AnswerKind
    reason: str
    decision: StsDecision | None = None
    dane: DaneDecision | None = None

    @property
    def changes_delivery(self) -> bool:
        """Worth one log line at INFO: it enforces something, or would in testing."""
        return self.kind is not AnswerKind.NOTFOUND


_NOTFOUND = Reply(ReplyStatus.NOTFOUND)
_DANE_TEMP = Reply(ReplyStatus.TEMP, "DANE lookup failed")
#: An answer is reused without asking DNS again for at most this long.
_MAX_KNOWN_SECONDS = 300.0


class TlsPolicyEngine:
    def __init__(self, settings: TlsPolicySettings, resolver: Resolver,
                 fetch: PolicyFetcher, cache: PolicyCache,
                 dnssec: DnssecResolver | None = None) -> None:
        """`dnssec`: the validating resolver DANE asks; None (or `dane = false`): no DANE."""
        self.settings = settings
        self.cache = cache
        self._dane = Dane(dnssec) if dnssec is not None and settings.dane else None
        self._sts = MtaSts(resolver, fetch, cache, time.time,
                           refresh_before=settings.refresh_before)
        self._answers: dict[str, tuple[TlsAnswer, float]] = {}
        self._locks = tuple(threading.Lock() for _ in range(64))  # striped: bounded

    def known_answer(self, key: str) -> TlsAnswer | None:
        """The answer already decided for `key`, while the DNS data behind it is valid;
        needs no I/O, so the server answers it on its event loop."""
        found = self._answers.get(key)
        if found is None:
            return None
        answer, valid_until = found
        if time.monotonic() >= valid_until:
            self._answers.pop(key, None)
            return None
        return answer

    def answer(self, key: str) -> TlsAnswer:
        """Decide (blocking).  Lookups of one key wait for each other, so that many smtp
        processes asking about a domain at once cause one fetch, not one each."""
        with self._locks[hash(key) % len(self._locks)]:
            known = self.known_answer(key)
            if known is not None:
                return known
            answer = self._decide(key)
            self._remember(answer)
            return answer

    def _remember(self, answer: TlsAnswer) -> None:
        """Keep an answer for as long as its TXT record's TTL (capped), so that an id
        change is seen as soon as a caching resolver would see it."""
        lifetime = _MAX_KNOWN_SECONDS
        if answer.dane is not None:
            lifetime = min(lifetime, float(answer.dane.ttl))
        decision = answer.decision
        if decision is not None:
            lifetime = min(lifetime, float(decision.record_ttl))
            if decision.policy is not None:
                lifetime = min(lifetime, decision.policy.max_age / 4)
        if (decision is None and answer.dane is None) or lifetime <= 0:
            return
        if len(self._answers) >= self.settings.cache_entries:
            self._answers.clear()  # rare: a bound, not an eviction policy worth a lock
        self._answers[answer.key] = (answer, time.monotonic() + lifetime)

    def _decide(self, key: str) -> TlsAnswer:
        domain = normalise_key(key)
        if domain is None:
            return TlsAnswer(key, _NOTFOUND, AnswerKind.NOTFOUND, "not a domain name")
        override = self.settings.overrides.get(domain)
        if override is not None:
            return TlsAnswer(key, Reply(ReplyStatus.OK, override), AnswerKind.OVERRIDE,
                             "tlspolicy.overrides")
        dane: DaneDecision | None = None
        if self._dane is not None:
            dane = self._dane.decide(domain, key_port(key))
            if dane.outcome is DaneOutcome.TEMPFAIL:
                return TlsAnswer(key, _DANE_TEMP, AnswerKind.TEMP, dane.reason, dane=dane)
            if dane.policy is not None:
                return TlsAnswer(key, Reply(ReplyStatus.OK, dane.policy), AnswerKind.DANE,
                                 dane.reason, dane=dane)
        return self._mta_sts(key, domain, dane)

    def _mta_sts(self, key: str, domain: str, dane: DaneDecision | None) -> TlsAnswer:
        decision = self._sts.decide(domain)
        if decision.policy is not None and decision.mode is Mode.ENFORCE:
            policy = postfix_policy(decision.policy, self.settings.servername)
            return TlsAnswer(key, Reply(ReplyStatus.OK, policy), AnswerKind.SECURE,
                             f"MTA-STS enforce ({decision.reason})", decision, dane)
        if decision.policy is not None and decision.mode is Mode.TESTING:
            return TlsAnswer(key, _NOTFOUND, AnswerKind.TESTING,
                             "MTA-STS testing, not enforced: would require "
                             + postfix_policy(decision.policy, False)
                             + f" ({decision.reason})", decision, dane)
        return TlsAnswer(key, _NOTFOUND, AnswerKind.NOTFOUND, decision.reason, decision, dane)


def build_engine(settings: TlsPolicySettings, resolver: Resolver,
                 cache: PolicyCache) -> TlsPolicyEngine:
    """The production engine: HTTPS fetches through `resolver`, DANE through the
    configured validating resolver."""
    from mailward.tlspolicy.dane import ValidatingResolverClient
    from mailward.tlspolicy.fetch import FetchLimits, HttpsPolicyFetcher, tls_context

    fetcher = HttpsPolicyFetcher(resolver, tls_context(settings.ca_file), FetchLimits(
        timeout=settings.fetch_timeout, max_size=settings.max_policy_size,
        port=settings.policy_port))
    dnssec = None
    if settings.dane and settings.dnssec_resolver is not None:
        dnssec = ValidatingResolverClient(settings.dnssec_resolver, settings.dnssec_timeout)
    return TlsPolicyEngine(settings, resolver, fetcher, cache, dnssec)
