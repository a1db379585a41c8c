"""MTA-STS (RFC 8461): the TXT record, the policy file, the cache and the decision.

Pure logic with injected parts: a DNS `Resolver` (mailward.dns), a `PolicyFetcher`
(fetch.py does HTTPS; unit tests pass a function), a clock and a `PolicyCache`.  The
decision follows RFC 8461 section 5.1: a policy is fetched when none is cached or the
TXT `id` changed (or the cached one nears expiry); a failed fetch or DNS lookup keeps an
unexpired cached policy, so an attacker who blocks the fetch cannot downgrade an
`enforce` domain; with no usable policy at all the answer is "no policy" (Postfix's
default TLS level), never a failure of mail.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from mailward.dns import Outcome, Resolver

MAX_AGE_LIMIT = 31_557_600  # RFC 8461 section 3.2: at most one year
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")


class Mode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


# --------------------------------------------------------------------------- TXT record


@dataclass(frozen=True)
class StsRecord:
    """`_mta-sts.DOMAIN` TXT: only the id matters to a sender."""

    policy_id: str


class RecordError(ValueError):
    """The TXT records do not announce a usable policy (RFC 8461 section 3.1)."""


def parse_sts_record(texts: tuple[str, ...]) -> StsRecord:
    """The one `v=STSv1` record among `texts`; several, or a bad one, is no record."""
    candidates = [text for text in texts if text.startswith("v=STSv1")]
    if not candidates:
        raise RecordError("no v=STSv1 record")
    if len(candidates) > 1:
        raise RecordError(f"{len(candidates)} v=STSv1 records (exactly one is allowed)")
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise RecordError(f"field without '=': {part[:40]!r}")
        fields.setdefault(name.strip(), value.strip())
    if fields.get("v") != "STSv1":
        raise RecordError("v=STSv1 must come first")
    policy_id = fields.get("id", "")
    if not _ID.fullmatch(policy_id):
        raise RecordError(f"id must be 1 to 32 letters or digits, got {policy_id[:40]!r}")
    return StsRecord(policy_id)


# --------------------------------------------------------------------------- policy file


@dataclass(frozen=True)
class Policy:
    mode: Mode
    mx: tuple[str, ...]
    max_age: int

    def matches(self, hostname: str) -> bool:
        """RFC 8461 section 4.1: exact, or `*.` standing for exactly one left-most label."""
        name = hostname.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, _, rest = name.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False


class PolicyError(ValueError):
    """The policy file is unusable; the fetch counts as failed."""


def parse_policy(text: str) -> Policy:
    """RFC 8461 section 3.2: `key: value` lines, CRLF or LF; unknown keys are ignored."""
    values: dict[str, list[str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip(" \t")
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"line {number}: expected 'key: value', got {line[:60]!r}")
        values.setdefault(key.strip(), []).append(value.strip(" \t"))
    if values.get("version") != ["STSv1"]:
        raise PolicyError(f"version must be STSv1, got {values.get('version')}")
    modes = values.get("mode", [])
    if len(modes) != 1 or modes[0] not in {mode.value for mode in Mode}:
        raise PolicyError(f"mode must be one of enforce, testing, none; got {modes}")
    mode = Mode(modes[0])
    ages = values.get("max_age", [])
    if len(ages) != 1 or not ages[0].isdigit() or len(ages[0]) > 10:
        raise PolicyError(f"max_age must be one integer, got {ages}")
    max_age = min(int(ages[0]), MAX_AGE_LIMIT)
    patterns = tuple(_mx_pattern(pattern) for pattern in values.get("mx", []))
    if mode is not Mode.NONE and not patterns:
        raise PolicyError(f"mode {mode} needs at least one mx pattern")
    return Policy(mode, patterns, max_age)


def _mx_pattern(text: str) -> str:
    pattern = text.rstrip(".").lower()
    labels = pattern[2:].split(".") if pattern.startswith("*.") else pattern.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise PolicyError(f"bad mx pattern {text[:80]!r}")
    return pattern


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class CachedPolicy:
    policy: Policy
    policy_id: str
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.policy.max_age

    def fresh(self, now: float) -> bool:
        return now < self.expires_at


class PolicyCache(Protocol):
    """Where fetched policies live between lookups (memory, SQLite, Redis)."""

    def get(self, domain: str) -> CachedPolicy | None: ...

    def put(self, domain: str, entry: CachedPolicy) -> None: ...

    def delete(self, domain: str) -> None: ...


class MemoryPolicyCache:
    """A bounded dict: when full, the entry that expires first makes room.  Locked:
    the service decides in a thread pool."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: dict[str, CachedPolicy] = {}
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, domain: str) -> CachedPolicy | None:
        return self._entries.get(domain)

    def put(self, domain: str, entry: CachedPolicy) -> None:
        with self._lock:
            if domain not in self._entries and len(self._entries) >= self._max_entries:
                oldest = min(self._entries, key=lambda name: self._entries[name].expires_at)
                del self._entries[oldest]
            self._entries[domain] = entry

    def delete(self, domain: str) -> None:
        with self._lock:
            self._entries.pop(domain, None)

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------- decision


class FetchError(Exception):
    """The policy could not be fetched; `outcome` is a bounded metric label."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


#: Fetches `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` and returns its body text,
#: or raises FetchError.
PolicyFetcher = Callable[[str], str]


class Source(StrEnum):
    """Where the policy behind a decision came from (a metric label)."""

    NONE = "none"  # no policy published (or none usable)
    CACHE = "cache"  # cached, id unchanged
    FETCHED = "fetched"  # fetched now
    STALE_CACHE = "stale_cache"  # a refresh failed; the unexpired cached policy is used


@dataclass(frozen=True)
class StsDecision:
    """What MTA-STS says about a domain, and why (for the log line and metrics)."""

    domain: str
    policy: Policy | None
    source: Source
    reason: str
    fetch_outcome: str | None = None  # set when a fetch was attempted
    #: Seconds the `_mta-sts` TXT answer behind this decision stays valid (its TTL);
    #: 0 when the decision rests on a failure and must be made again next time.
    record_ttl: int = 0

    @property
    def mode(self) -> Mode:
        return self.policy.mode if self.policy else Mode.NONE


class MtaSts:
    """Answers `what is DOMAIN's MTA-STS policy` with the RFC 8461 caching rules."""

    def __init__(self, resolver: Resolver, fetch: PolicyFetcher, cache: PolicyCache,
                 clock: Callable[[], float], refresh_before: float = 3600.0) -> None:
        """`refresh_before`: a cached policy this close to expiry is re-fetched even
        though its id did not change, so it never lapses while the domain serves it."""
        self._resolver = resolver
        self._fetch = fetch
        self._cache = cache
        self._clock = clock
        self._refresh_before = refresh_before

    def decide(self, domain: str) -> StsDecision:
        now = self._clock()
        cached = self._cache.get(domain)
        if cached is not None and not cached.fresh(now):
            self._cache.delete(domain)
            cached = None
        answer = self._resolver.query(f"_mta-sts.{domain}", "TXT")
        if answer.outcome is not Outcome.ANSWER:
            decision = self._without_record(domain, cached, answer.outcome.value)
            settled = answer.outcome in (Outcome.NXDOMAIN, Outcome.NODATA) and cached is None
            return replace(decision, record_ttl=answer.ttl) if settled else decision
        try:
            record = parse_sts_record(answer.records)
        except RecordError as exc:
            return self._without_record(domain, cached, str(exc))
        if (cached is not None and cached.policy_id == record.policy_id
                and cached.expires_at - now > self._refresh_window(cached)):
            return StsDecision(domain, cached.policy, Source.CACHE, "cached, id unchanged",
                               record_ttl=answer.ttl)
        decision = self._refresh(domain, record, cached, now)
        return replace(decision, record_ttl=answer.ttl) if decision.fetch_outcome == "ok" \
            else decision

    def _refresh_window(self, cached: CachedPolicy) -> float:
        """How long before expiry to re-fetch: `refresh_before`, but at most a quarter of
        a short max_age (else a policy of 10 minutes would be fetched on every lookup)."""
        return min(self._refresh_before, cached.policy.max_age / 4)

    def _without_record(self, domain: str, cached: CachedPolicy | None,
                        why: str) -> StsDecision:
        """No usable TXT now: RFC 8461 section 5.1 keeps an unexpired cached policy (a
        removed record does not end it; a DNS failure must not downgrade it)."""
        if cached is not None:
            return StsDecision(domain, cached.policy, Source.STALE_CACHE,
                               f"no TXT record ({why}); cached policy still valid")
        return StsDecision(domain, None, Source.NONE, f"no MTA-STS record ({why})")

    def _refresh(self, domain: str, record: StsRecord, cached: CachedPolicy | None,
                 now: float) -> StsDecision:
        try:
            policy = parse_policy(self._fetch(domain))
        except FetchError as exc:
            return self._failed(domain, cached, exc.outcome, str(exc))
        except PolicyError as exc:
            return self._failed(domain, cached, "bad_policy", str(exc))
        entry = CachedPolicy(policy, record.policy_id, now)
        if policy.max_age > 0:
            self._cache.put(domain, entry)
        else:
            self._cache.delete(domain)
        reason = "new policy id" if cached is not None and cached.policy_id != \
            record.policy_id else "fetched"
        return StsDecision(domain, policy, Source.FETCHED, reason, fetch_outcome="ok")

    @staticmethod
    def _failed(domain: str, cached: CachedPolicy | None, outcome: str,
                detail: str) -> StsDecision:
        if cached is not None:
            return StsDecision(domain, cached.policy, Source.STALE_CACHE,
                               f"policy fetch failed ({detail}); cached policy still valid",
                               fetch_outcome=outcome)
        return StsDecision(domain, None, Source.NONE, f"policy fetch failed ({detail})",
                           fetch_outcome=outcome)


# --------------------------------------------------------------------------- Postfix answer


def postfix_policy(policy: Policy, servername: bool) -> str:
    """Postfix's smtp_tls_policy_maps value for an enforce policy.

    `secure` verifies the certificate against `match=`; a `*.example.com` pattern
    becomes `.example.com` (Postfix's "any subdomain"), the nearest Postfix can say.
    `servername=hostname` (SNI of the MX name) exists since Postfix 3.4 only, so it is
    written only when the admin says the Postfix reads it.
    """
    patterns = [f".{p[2:]}" if p.startswith("*.") else p for p in policy.mx]
    answer = "secure match=" + ":".join(dict.fromkeys(patterns))
    return f"{answer} servername=hostname" if servername else answer


def normalise_key(key: str) -> str | None:
    """The domain a Postfix lookup key names, or None for keys no policy applies to:
    `[host]:port` next hops (no MX lookup: MTA-STS does not apply), Postfix's
    parent-domain probes (`.example.org`) and anything that is not a domain name.
    A next hop `domain:port` (MX lookup, another port: a transport map) is the domain's."""
    name, colon, port = key.strip().lower().partition(":")
    if colon and not port.isdigit():
        return None
    name = name.rstrip(".")
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if len(name) > 253:
        return None
    return name
