"""DKIM verification (RFC 6376), with Ed25519 (RFC 8463) and the RFC 8301 rules.

`DkimVerifier.verify(transaction)` gives one `DkimOutcome` per DKIM-Signature header
it looked at; `auth_results(outcomes)` turns them into Authentication-Results entries
(`dkim=none` when there are none).

Why not dkimpy's `DKIM.verify`?  It answers True/False per signature and logs the
rest, so it cannot tell a DNS timeout (temperror) from a bad signature (fail), a revoked
key from a missing one, or report a testing key; its time checks use the system clock
with a fixed 10-hour slop; it canonicalizes and hashes the body again for every
signature; and its relaxed body canonicalization uses a regular expression that takes
quadratic time on long runs of white space (a 20,000-space line costs a second, so a
message made of such lines could stall a worker for hours).  So the protocol is
implemented here, in linear time, with `cryptography` (OpenSSL) for RSA and Ed25519.
dkimpy stays the independent reference the tests sign with.

**Results** (RFC 8601 2.7.1), and what gives each:

* `pass`: body hash and signature verify with an acceptable key.
* `fail`: the check was carried out and failed: the body hash does not match
  ("body hash did not verify"), the body is shorter than `l=`, the signature does not
  verify ("signature did not verify"), or the message has more From fields than the
  signature covers (an unsigned From was added).
* `policy`: acceptable to the protocol's syntax, refused by our policy: `rsa-sha1`
  (RFC 8301 3.1 makes it historic; `allow_sha1` lifts that) and RSA keys smaller than
  `min_key_bits` (RFC 8301 3.2).  No crypto is done for them.
* `permerror`: the signature cannot be verified and never will be: tag syntax,
  missing or bad tags, `v` not 1, unknown algorithm or canonicalization, From not
  signed, `i=` outside `d=`, `t=` in the future or `x=` in the past (beyond
  `clock_skew`), no key record (NXDOMAIN/NODATA), a key record that does not parse,
  a revoked key (`p=` empty), an unknown or mismatched `k=`, a key whose `h=` excludes
  the hash, whose `s=` excludes email, or whose `t=s` forbids a subdomain `i=`.
* `temperror`: the key lookup failed temporarily (timeout, SERVFAIL).  Never cached.
* `neutral`: we did not get to a verdict for reasons that are not the sender's fault:
  the signature is over `max_signatures` ("not verified: over max_signatures"), or the
  body was larger than `milter.max_body_size` so we hold only a prefix ("body too large
  to verify"; the header signature is still checked, and a bad one still gives `fail`,
  but a good one never gives `pass` or a body-hash `fail`).  A signature that fails
  under a testing key (`t=y`) is also `neutral`, since RFC 6376 3.6.1 forbids treating
  it worse than an unsigned message; a passing one stays `pass`, with the reason
  "testing key (t=y)", as OpenDKIM reports it.
* `none` (from `auth_results` only): no DKIM-Signature at all.

**Caps.**  At most `max_signatures` signatures are verified, those whose `d=` matches
the From domain (or a parent or child of it) first, then in header order.  Up to
`max_signatures` more are reported `neutral` without DNS or crypto work; any beyond
that are neither verified nor reported (they are counted in the log and in
`mailward_dkim_signatures_ignored_total`), so neither the work nor the A-R header grows
with the number of signatures.

**Cost.**  The body is canonicalized once per canonicalization and hashed once per
(canonicalization, hash, `l=`) across all signatures of a message.  Parsed keys are
cached per selector and domain for the TTL of the DNS answer they came from (negative
answers too, temporary failures never).

Outcomes are values: nothing here raises on hostile input.  An exception escaping
`verify` is a bug, left to the pipeline to log and count.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from mailward import fromheader, message, metrics
from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.config import DkimVerifySettings
from mailward.dkimcore.canon import parse_canonicalization
from mailward.dkimcore.taglist import (
    TagListError,
    TagSpec,
    colon_list,
    lenient_from_specs,
    lenient_tags,
    parse_tag_list,
    strict_tags,
    strip_b_from_specs,
    tag_specs,
)
from mailward.dkimcore.text import printable as _printable
from mailward.dkimcore.view import MessageView, signed_data, view_of
from mailward.dns import Outcome, Resolver
from mailward.model import AuthProperty, AuthResult, Connection, Header, Transaction
from mailward.ttlcache import TtlCache

log = logging.getLogger(__name__)

METHOD = "dkim"
SIGNATURE_HEADER = "DKIM-Signature"

# Parsed keys kept per process (selector, domain pairs), each for its DNS TTL.
KEY_CACHE_ENTRIES = 10_000
# RFC 6376 3.6.2.2: the key record is one TXT record; an absurdly long one is not a key.
MAX_KEY_RECORD_BYTES = 16384
B_PREFIX_LENGTH = 8


class DkimResult(StrEnum):
    """DKIM results as Authentication-Results writes them (RFC 8601 2.7.1)."""

    PASS = "pass"
    FAIL = "fail"
    NEUTRAL = "neutral"
    POLICY = "policy"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    NONE = "none"


class DkimProblem(StrEnum):
    """Why a signature did not pass: a bounded set, fit for metric labels and symbols."""

    SYNTAX = "syntax"  # the tag list or a tag value is malformed, or a tag is missing
    VERSION = "version"  # v= is not 1
    ALGORITHM = "algorithm"  # unknown a= or c=, or q= without dns/txt
    FROM_NOT_SIGNED = "from_not_signed"  # h= lacks From (RFC 6376 6.1.1)
    IDENTITY = "identity"  # i= is not d= or a subdomain of it
    FUTURE = "future"  # t= later than now (+ clock_skew)
    EXPIRED = "expired"  # x= earlier than now (- clock_skew), or not after t=
    SHA1 = "sha1"  # rsa-sha1 refused (RFC 8301)
    KEY_DNS = "key_dns"  # temporary DNS failure fetching the key
    NO_KEY = "no_key"  # no key record at selector._domainkey.domain
    KEY_SYNTAX = "key_syntax"  # the key record or the key in it does not parse
    KEY_REVOKED = "key_revoked"  # p= is empty
    KEY_TYPE = "key_type"  # k= unknown, or it does not match a=
    KEY_UNUSABLE = "key_unusable"  # key h= excludes the hash, s= excludes email, t=s
    KEY_TOO_SMALL = "key_too_small"  # RSA key under min_key_bits
    BODY_HASH = "body_hash"  # bh= does not match the body
    BODY_LENGTH = "body_length"  # body shorter than l=
    SIGNATURE = "signature"  # b= does not verify
    UNSIGNED_FROM = "unsigned_from"  # more From fields than h= covers
    BODY_TOO_LARGE = "body_too_large"  # body over milter.max_body_size: not hashable
    NOT_VERIFIED = "not_verified"  # over max_signatures


@dataclass(frozen=True)
class DkimOutcome:
    """What became of one DKIM-Signature header.

    `domain`, `selector`, `algorithm` and `identity` are the signature's d=, s=, a= and
    i= as written (printable ASCII only, bounded; `domain` lower-cased; "" when absent
    or unreadable); `b_prefix` is the first 8 characters of b=.  `position` is the
    1-based occurrence among DKIM-Signature headers, top first.  `verified` is False for
    signatures over `max_signatures`, which are reported without being checked.
    `key_bits` is the size of the key used (0 if none was fetched); `testing` says the
    key record had t=y.  `problem` is None exactly when the result is pass (except for
    a testing-key pass, which carries no problem either).
    """

    result: DkimResult
    reason: str = ""
    problem: DkimProblem | None = None
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    identity: str = ""
    b_prefix: str = ""
    position: int = 0
    verified: bool = True
    key_bits: int = 0
    testing: bool = False


#: FWS inside base64 tag values (b=, bh=, p=), removed with bytes.translate.
_FWS_OCTETS = b" \t\r\n"


def _without_fws(value: bytes) -> bytes:
    """`value` without spaces, tabs, CRs and LFs (translate: one C pass, no regex)."""
    return value.translate(None, _FWS_OCTETS)


# --------------------------------------------------------------------------- signatures


class _Problem(Exception):
    """A signature's final non-pass result, raised to leave the verification early."""

    def __init__(self, result: DkimResult, problem: DkimProblem, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.problem = problem
        self.reason = reason


def _permerror(problem: DkimProblem, reason: str) -> _Problem:
    return _Problem(DkimResult.PERMERROR, problem, reason)


_ALGORITHMS = {
    "rsa-sha256": ("rsa", "sha256"),
    "rsa-sha1": ("rsa", "sha1"),
    "ed25519-sha256": ("ed25519", "sha256"),
}
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DIGITS = re.compile(rb"[0-9]{1,20}")


@dataclass(frozen=True)
class _Signature:
    """A DKIM-Signature whose tags passed the syntax checks."""

    key_type: str
    hash_name: str
    header_canon: str
    body_canon: str
    domain: str
    selector: str
    identity_domain: str
    signed_headers: tuple[bytes, ...]
    body_hash: bytes
    signature: bytes
    length: int | None


def _parse_signature(
    specs: Sequence[TagSpec[bytes]], now: float, skew: int
) -> tuple[_Signature, str]:
    """Check a DKIM-Signature value (RFC 6376 3.5, 6.1.1), split by `tag_specs`;
    returns it and its a= value."""
    try:
        tags = strict_tags(specs)
    except TagListError as exc:
        raise _permerror(DkimProblem.SYNTAX, f"signature syntax error: {exc}") from None
    for required in ("v", "a", "b", "bh", "d", "h", "s"):
        if required not in tags:
            raise _permerror(DkimProblem.SYNTAX, f"signature has no {required}= tag")
    if tags["v"] != b"1":
        raise _permerror(DkimProblem.VERSION, f"unsupported version v={_printable(tags['v'], 20)}")
    algorithm = tags["a"].decode("ascii", "replace").lower()
    if algorithm not in _ALGORITHMS:
        raise _permerror(
            DkimProblem.ALGORITHM, f"unsupported algorithm a={_printable(algorithm, 30)}"
        )
    key_type, hash_name = _ALGORITHMS[algorithm]
    header_canon, body_canon = _canonicalization(tags.get("c", b"simple/simple"))
    if "q" in tags and b"dns/txt" not in colon_list(tags["q"]):
        raise _permerror(DkimProblem.ALGORITHM, "q= does not include dns/txt")
    domain = _domain_name(tags["d"])
    if domain is None:
        raise _permerror(DkimProblem.SYNTAX, "d= is not a valid domain")
    selector = _selector_name(tags["s"])
    if selector is None:
        raise _permerror(DkimProblem.SYNTAX, "s= is not a valid selector")
    signed = tuple(colon_list(tags["h"]))
    if not all(_header_name_ok(name) for name in signed):
        raise _permerror(DkimProblem.SYNTAX, "h= is not a list of header names")
    if b"from" not in signed:
        raise _permerror(DkimProblem.FROM_NOT_SIGNED, "From field not signed")
    identity_domain = domain
    if "i" in tags:
        _, at, i_domain = tags["i"].rpartition(b"@")
        checked = _domain_name(i_domain) if at else None
        if checked is None or not (checked == domain or checked.endswith("." + domain)):
            raise _permerror(DkimProblem.IDENTITY, "i= is not in the d= domain")
        identity_domain = checked
    body_hash = _base64(tags["bh"], "bh")
    signature = _base64(tags["b"], "b")
    if not body_hash or not signature:
        raise _permerror(DkimProblem.SYNTAX, "empty b= or bh=")
    length = _number(tags, "l")
    timestamp = _number(tags, "t")
    expiry = _number(tags, "x")
    if timestamp is not None and timestamp > now + skew:
        raise _permerror(DkimProblem.FUTURE, "signature timestamp t= is in the future")
    if expiry is not None:
        if timestamp is not None and expiry <= timestamp:
            raise _permerror(DkimProblem.EXPIRED, "x= is not later than t=")
        if expiry < now - skew:
            raise _permerror(DkimProblem.EXPIRED, "signature expired (x=)")
    signature_data = _Signature(
        key_type=key_type, hash_name=hash_name, header_canon=header_canon,
        body_canon=body_canon, domain=domain, selector=selector,
        identity_domain=identity_domain, signed_headers=signed, body_hash=body_hash,
        signature=signature, length=length,
    )
    return signature_data, algorithm


def _canonicalization(value: bytes) -> tuple[str, str]:
    algorithms = parse_canonicalization(value)
    if algorithms is None:
        text = value.decode("ascii", "replace").lower()
        raise _permerror(DkimProblem.ALGORITHM, f"unsupported c={_printable(text, 30)}")
    return algorithms


def _domain_name(value: bytes) -> str | None:
    """d= (or the domain of i=) as an A-label domain of two or more labels, or None."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.rstrip(".")
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = text.split(".")
    if len(text) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        return None
    return text.lower()


def _selector_name(value: bytes) -> str | None:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    labels = text.split(".")
    if len(text) > 200 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return text.lower()


_FTEXT = bytes(range(33, 127))


def _header_name_ok(name: bytes) -> bool:
    # RFC 5322 ftext: printable US-ASCII except the colon (the separator already).
    # translate() deletes every allowed octet in C: what is left is not ftext.
    return not name.translate(None, _FTEXT)


def _base64(value: bytes, tag: str) -> bytes:
    compact = _without_fws(value)
    if not _BASE64.fullmatch(compact) or len(compact) % 4 == 1:
        raise _permerror(DkimProblem.SYNTAX, f"{tag}= is not base64")
    try:
        return base64.b64decode(compact + b"=" * (-len(compact) % 4))
    except (binascii.Error, ValueError):
        raise _permerror(DkimProblem.SYNTAX, f"{tag}= is not base64") from None


def _number(tags: dict[str, bytes], tag: str) -> int | None:
    if tag not in tags:
        return None
    value = tags[tag]
    if not _DIGITS.fullmatch(value):
        raise _permerror(DkimProblem.SYNTAX, f"{tag}= is not a decimal number")
    return int(value)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class DkimKey:
    """A parsed key record (RFC 6376 3.6.1)."""

    key_type: str  # "rsa" or "ed25519"
    public_key: RSAPublicKey | Ed25519PublicKey
    bits: int
    hashes: frozenset[str] | None  # h=: acceptable hash algorithms; None = any
    services: frozenset[str]  # s=: service types ("*", "email", ...)
    testing: bool  # t=y
    strict: bool  # t=s: i= must be exactly d=


@dataclass(frozen=True)
class KeyFailure:
    result: DkimResult
    problem: DkimProblem
    reason: str

    def error(self) -> _Problem:
        return _Problem(self.result, self.problem, self.reason)


def parse_key_record(record: bytes) -> DkimKey:
    """Parse one key record; raises _Problem (permerror) with the reason it is unusable."""
    if len(record) > MAX_KEY_RECORD_BYTES:
        raise _permerror(DkimProblem.KEY_SYNTAX, "key record too long")
    try:
        tags = parse_tag_list(record)
    except TagListError as exc:
        raise _permerror(DkimProblem.KEY_SYNTAX, f"key record syntax error: {exc}") from None
    if "v" in tags and tags["v"] != b"DKIM1":
        raise _permerror(DkimProblem.KEY_SYNTAX, "key record version is not DKIM1")
    if "p" not in tags:
        raise _permerror(DkimProblem.KEY_SYNTAX, "key record has no p=")
    data = _without_fws(tags["p"])
    if not data:
        raise _permerror(DkimProblem.KEY_REVOKED, "key revoked")
    key_type = tags.get("k", b"rsa").lower().decode("ascii", "replace")
    if key_type not in ("rsa", "ed25519"):
        raise _permerror(DkimProblem.KEY_TYPE, f"unknown key type k={_printable(key_type, 30)}")
    try:
        der = _base64(data, "p")
    except _Problem:
        raise _permerror(DkimProblem.KEY_SYNTAX, "key p= is not base64") from None
    public_key: RSAPublicKey | Ed25519PublicKey
    try:
        if key_type == "rsa":
            loaded = serialization.load_der_public_key(der)
            if not isinstance(loaded, RSAPublicKey):
                raise ValueError("not an RSA key")
            public_key, bits = loaded, loaded.key_size
        else:
            public_key, bits = Ed25519PublicKey.from_public_bytes(der), 256
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _permerror(
            DkimProblem.KEY_SYNTAX, f"key p= is not a valid {key_type} public key"
        ) from None
    flags = _colon_list(tags.get("t", b""))
    return DkimKey(
        key_type=key_type,
        public_key=public_key,
        bits=bits,
        hashes=_colon_list(tags["h"]) if "h" in tags else None,
        services=_colon_list(tags.get("s", b"*")),
        testing="y" in flags,
        strict="s" in flags,
    )


def _colon_list(value: bytes) -> frozenset[str]:
    return frozenset(part.decode("ascii", "replace") for part in colon_list(value))


class KeyFetcher:
    """Parsed key records per (selector, domain), each cached for the TTL of its DNS answer.

    Negative answers and unusable records are cached too (as `KeyFailure`), temporary
    DNS failures never.  Thread-safe; shareable between verifiers using one resolver.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        entries: int = KEY_CACHE_ENTRIES,
    ) -> None:
        self._resolver = resolver
        self._cache: TtlCache[tuple[str, str], DkimKey | KeyFailure] = TtlCache(
            entries, monotonic
        )

    def cached(self, selector: str, domain: str) -> DkimKey | KeyFailure | None:
        """The cached key (or failure) for selector._domainkey.domain, None if not cached."""
        return self._cache.get((selector, domain))

    def fetch(self, selector: str, domain: str) -> DkimKey | KeyFailure:
        """Look the key record up in DNS (no cache read) and cache what it gives."""
        name = f"{selector}._domainkey.{domain}"
        answer = self._resolver.query(name, "TXT")
        if answer.outcome is Outcome.TEMPERROR:
            # Never cached: the next message must see the recovery.
            return KeyFailure(
                DkimResult.TEMPERROR, DkimProblem.KEY_DNS,
                f"key lookup failed: {_printable(answer.error or 'temporary DNS failure', 80)}",
            )
        found: DkimKey | KeyFailure
        if answer.outcome is not Outcome.ANSWER or not answer.txt_strings:
            found = KeyFailure(DkimResult.PERMERROR, DkimProblem.NO_KEY, "no key for signature")
        else:
            found = _first_key(b"".join(strings) for strings in answer.txt_strings)
        self._cache.put((selector, domain), found, answer.ttl)
        return found

    def get(self, selector: str, domain: str) -> DkimKey | KeyFailure:
        """The key (or why there is none), from the cache or else from DNS."""
        cached = self.cached(selector, domain)
        return cached if cached is not None else self.fetch(selector, domain)


# --------------------------------------------------------------------------- the verifier


# Looked up once: labels() on every signature costs more than the increment.
_KEY_CACHE_HIT = metrics.DKIM_KEY_CACHE_LOOKUPS.labels("hit")
_KEY_CACHE_MISS = metrics.DKIM_KEY_CACHE_LOOKUPS.labels("miss")


@functools.cache
def _signature_counter(result: DkimResult, problem: DkimProblem | None) -> Any:
    """The DKIM_SIGNATURES child for one (result, problem): looked up once per pair
    (both enums, so the cache is bounded), not with labels() per signature."""
    return metrics.DKIM_SIGNATURES.labels(result.value, problem.value if problem else "none")


class DkimVerifier:
    """Verifies the DKIM signatures of inbound messages; one instance per configuration.

    Thread-safe: the only state kept between messages is the key cache.  `clock` gives
    the wall-clock time for t= and x=; `monotonic` times cache entries.
    """

    method = METHOD

    def __init__(
        self,
        resolver: Resolver,
        settings: DkimVerifySettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        key_cache_entries: int = KEY_CACHE_ENTRIES,
        keys: KeyFetcher | None = None,
    ) -> None:
        self._resolver = resolver
        self._settings = settings if settings is not None else DkimVerifySettings()
        self._clock = clock
        # `keys` lets the ARC verifier share the parsed-key cache (same DNS, same keys).
        self._keys = keys if keys is not None else KeyFetcher(
            resolver, monotonic=monotonic, entries=key_cache_entries)

    # -- public API

    def verify(self, transaction: Transaction) -> tuple[DkimOutcome, ...]:
        """One outcome per DKIM-Signature looked at, in header order; () if unsigned."""
        signatures = [
            (position, header)
            for position, header in transaction.headers_named(SIGNATURE_HEADER)
        ]
        if not signatures:
            log.debug("%s: no DKIM-Signature", transaction.log_id)
            return ()
        cap = self._settings.max_signatures
        chosen = signatures
        if len(signatures) > cap:
            chosen = self._choose(signatures, fromheader.author_domain(transaction), cap)
        view = view_of(transaction)  # shared with ARC inside the pipeline's scope
        now = self._clock()
        outcomes = [self._verify_one(pos, header, view, now) for pos, header in chosen]
        taken = {pos for pos, _ in chosen}
        rest = [(pos, header) for pos, header in signatures if pos not in taken]
        outcomes.extend(_unverified(pos, header) for pos, header in rest[:cap])
        ignored = len(rest) - min(len(rest), cap)
        outcomes.sort(key=lambda outcome: outcome.position)
        self._record(transaction, outcomes, ignored)
        return tuple(outcomes)

    # -- choosing

    @staticmethod
    def _choose(
        signatures: list[tuple[int, Header]], author_domain: str | None, cap: int
    ) -> list[tuple[int, Header]]:
        """The `cap` signatures to verify: those whose d= is related to From first."""
        if author_domain is None:
            return signatures[:cap]

        def related(header: Header) -> bool:
            value = lenient_tags(header.raw_value()).get("d", b"")
            domain = value.decode("utf-8", "replace").strip().rstrip(".").lower()
            return "." in domain and (  # a bare TLD is nobody's domain
                domain == author_domain
                or author_domain.endswith("." + domain)
                or domain.endswith("." + author_domain)
            )

        ranked = sorted(signatures, key=lambda item: 0 if related(item[1]) else 1)
        return sorted(ranked[:cap], key=lambda item: item[0])

    # -- one signature

    def _verify_one(
        self, position: int, header: Header, view: MessageView, now: float
    ) -> DkimOutcome:
        # Split once, read three ways: leniently for the report, strictly for the
        # verification, and with b= emptied for the hash.
        specs = tag_specs(message.header_value_bytes(header))
        reported = lenient_from_specs(specs)
        key: DkimKey | None = None
        try:
            signature, _ = _parse_signature(specs, now, self._settings.clock_skew)
            if signature.hash_name == "sha1" and not self._settings.allow_sha1:
                raise _Problem(
                    DkimResult.POLICY, DkimProblem.SHA1, "rsa-sha1 is not accepted (RFC 8301)"
                )
            key = self._key(signature.selector, signature.domain)
            self._check_key(signature, key)
            own = (message.header_name_bytes(header), strip_b_from_specs(specs))
            self._check_content(signature, key, own, view)
        except _Problem as problem:
            result, reason = problem.result, problem.reason
            testing = key is not None and key.testing
            if testing and result is DkimResult.FAIL:
                result, reason = DkimResult.NEUTRAL, f"testing key (t=y): {reason}"
            return _outcome(
                position, reported, result, reason, problem.problem,
                key_bits=key.bits if key is not None else 0, testing=testing,
            )
        return _outcome(
            position, reported, DkimResult.PASS, "testing key (t=y)" if key.testing else "",
            None, key_bits=key.bits, testing=key.testing,
        )

    def _check_key(self, signature: _Signature, key: DkimKey) -> None:
        if key.key_type != signature.key_type:
            raise _permerror(
                DkimProblem.KEY_TYPE, f"key type {key.key_type} does not match a="
            )
        if key.hashes is not None and signature.hash_name not in key.hashes:
            raise _permerror(
                DkimProblem.KEY_UNUSABLE, f"key h= does not allow {signature.hash_name}"
            )
        if not key.services & {"*", "email"}:
            raise _permerror(DkimProblem.KEY_UNUSABLE, "key s= does not include email")
        if key.strict and signature.identity_domain != signature.domain:
            raise _permerror(
                DkimProblem.KEY_UNUSABLE, "key t=s forbids an i= subdomain of d="
            )
        if key.key_type == "rsa" and key.bits < self._settings.min_key_bits:
            raise _Problem(
                DkimResult.POLICY, DkimProblem.KEY_TOO_SMALL,
                f"key too small ({key.bits} bits, minimum {self._settings.min_key_bits})",
            )

    def _check_content(
        self, signature: _Signature, key: DkimKey, own: tuple[bytes, bytes], view: MessageView
    ) -> None:
        """Body hash, From count and the signature over the headers, in that order.

        `own` is the signature field's name and its value with b= already emptied.
        """
        if not view.truncated:
            digest = view.body_digest(signature.body_canon, signature.hash_name, signature.length)
            if digest is None:
                raise _Problem(
                    DkimResult.FAIL, DkimProblem.BODY_LENGTH,
                    "body hash did not verify: body shorter than l=",
                )
            if digest != signature.body_hash:
                raise _Problem(DkimResult.FAIL, DkimProblem.BODY_HASH, "body hash did not verify")
        if view.from_count > signature.signed_headers.count(b"from"):
            raise _Problem(
                DkimResult.FAIL, DkimProblem.UNSIGNED_FROM, "message has an unsigned From field"
            )
        data = signed_data(view, signature.signed_headers, signature.header_canon, own,
                           b_emptied=True)
        if not signature_valid(key, signature.hash_name, signature.signature, data):
            raise _Problem(DkimResult.FAIL, DkimProblem.SIGNATURE, "signature did not verify")
        if view.truncated:
            raise _Problem(
                DkimResult.NEUTRAL, DkimProblem.BODY_TOO_LARGE, "body too large to verify"
            )

    # -- keys

    def _key(self, selector: str, domain: str) -> DkimKey:
        cached = self._keys.cached(selector, domain)
        if cached is not None:
            _KEY_CACHE_HIT.inc()
        else:
            _KEY_CACHE_MISS.inc()
            cached = self._keys.fetch(selector, domain)
        if isinstance(cached, KeyFailure):
            raise cached.error()
        return cached

    # -- reporting

    def _record(
        self, transaction: Transaction, outcomes: Sequence[DkimOutcome], ignored: int
    ) -> None:
        for outcome in outcomes:
            _signature_counter(outcome.result, outcome.problem).inc()
            level = logging.DEBUG if outcome.result is DkimResult.PASS else logging.INFO
            log.log(
                level, "%s: dkim=%s d=%s s=%s a=%s b=%s%s", transaction.log_id,
                outcome.result.value, outcome.domain or "-", outcome.selector or "-",
                outcome.algorithm or "-", outcome.b_prefix or "-",
                f" reason={outcome.reason!r}" if outcome.reason else "",
            )
        if ignored:
            metrics.DKIM_SIGNATURES_IGNORED.inc(ignored)
            log.info(
                "%s: %d more DKIM signatures ignored (verified and reported at most %d each)",
                transaction.log_id, ignored, self._settings.max_signatures,
            )


def _first_key(records: Iterable[bytes]) -> DkimKey | KeyFailure:
    """The first record that is a usable key; else why the first one is not.

    RFC 6376 3.6.2.2 leaves several records at one selector undefined; taking the first
    that parses tolerates an unrelated TXT record next to the key.
    """
    first: KeyFailure | None = None
    for record in records:
        try:
            return parse_key_record(record)
        except _Problem as problem:
            if first is None:
                first = KeyFailure(problem.result, problem.problem, problem.reason)
    assert first is not None
    return first


def signature_valid(key: DkimKey, hash_name: str, signature: bytes, data: bytes) -> bool:
    """Does `signature` (b=, decoded) sign `data` with `key`?  `hash_name`: sha256 or sha1
    (RSA only; Ed25519 always signs the SHA-256 hash, RFC 8463 3)."""
    try:
        if isinstance(key.public_key, RSAPublicKey):
            algorithm = hashes.SHA256() if hash_name == "sha256" else hashes.SHA1()
            key.public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            key.public_key.verify(signature, hashlib.sha256(data).digest())
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


def _outcome(
    position: int,
    tags: dict[str, bytes],
    result: DkimResult,
    reason: str,
    problem: DkimProblem | None,
    *,
    verified: bool = True,
    key_bits: int = 0,
    testing: bool = False,
) -> DkimOutcome:
    """An outcome carrying what the signature says about itself (`tags`, its lenient
    reading): made in one go, as `dataclasses.replace` costs a field walk per call."""
    return DkimOutcome(
        result=result,
        reason=reason,
        problem=problem,
        domain=_printable(tags.get("d", b"")).lower(),
        selector=_printable(tags.get("s", b"")),
        algorithm=_printable(tags.get("a", b""), 40),
        identity=_printable(tags.get("i", b"")),
        b_prefix=_printable(_without_fws(tags.get("b", b"")[:256])[:B_PREFIX_LENGTH]),
        position=position,
        verified=verified,
        key_bits=key_bits,
        testing=testing,
    )


def _unverified(position: int, header: Header) -> DkimOutcome:
    return _outcome(
        position, lenient_tags(message.header_value_bytes(header)), DkimResult.NEUTRAL,
        "not verified: over max_signatures", DkimProblem.NOT_VERIFIED, verified=False,
    )


# --------------------------------------------------------------------------- A-R


def auth_result(outcome: DkimOutcome) -> AuthResult:
    """One A-R entry: dkim=RESULT reason=... header.d header.i header.s header.a header.b.

    header.i only when the signature has an explicit i=; properties the signature did
    not give (or gave unreadably) are left out rather than written empty.
    """
    properties = tuple(
        AuthProperty("header", name, value)
        for name, value in (
            ("d", outcome.domain),
            ("i", outcome.identity),
            ("s", outcome.selector),
            ("a", outcome.algorithm),
            ("b", outcome.b_prefix),
        )
        if value
    )
    return AuthResult(METHOD, outcome.result.value, outcome.reason or None, properties)


def auth_results(outcomes: Sequence[DkimOutcome]) -> tuple[AuthResult, ...]:
    """A-R entries for a message: one per outcome, or `dkim=none` if it had no signature."""
    if not outcomes:
        return (AuthResult(METHOD, DkimResult.NONE.value),)
    return tuple(auth_result(outcome) for outcome in outcomes)


# --------------------------------------------------------------------------- the inbound check

#: One outcome per DKIM-Signature looked at, in header order; () when unsigned.
RESULT: ResultKey[tuple[DkimOutcome, ...]] = ResultKey("dkim")

SHARED_KEY_FETCHER = "dkim_key_fetcher"


def shared_key_fetcher(context: BuildContext[Any]) -> KeyFetcher:
    """One parsed-key cache for DKIM and ARC: a sender's key serves both."""
    return context.shared_object(SHARED_KEY_FETCHER, lambda: KeyFetcher(context.resolver))


def _symbol(outcome: DkimOutcome) -> Symbol:
    if outcome.result is DkimResult.PASS:
        return Symbol("DKIM_VALID", outcome.domain)
    if outcome.result is DkimResult.TEMPERROR:
        return Symbol("DKIM_TEMPERROR", outcome.domain)
    return Symbol("DKIM_INVALID", outcome.domain)


class InboundDkim(Check[tuple[DkimOutcome, ...]]):
    """DKIM verification on the inbound path (per-signature metrics are the verifier's)."""

    name = "dkim"
    produces = RESULT
    auth_methods = (METHOD,)

    def __init__(self, verifier: DkimVerifier) -> None:
        self._verifier = verifier

    def evaluate(self, check_input: CheckInput) -> tuple[DkimOutcome, ...]:
        return self._verifier.verify(check_input.transaction)

    def auth_results(
        self, result: tuple[DkimOutcome, ...], connection: Connection
    ) -> Sequence[AuthResult]:
        return auth_results(result)

    def symbols(self, result: tuple[DkimOutcome, ...]) -> Sequence[Symbol]:
        if not result:
            return (Symbol("DKIM_NONE"),)
        return tuple(_symbol(outcome) for outcome in result)

    def metric_result(self, result: tuple[DkimOutcome, ...]) -> str:
        if not result:
            return DkimResult.NONE.value
        if any(outcome.result is DkimResult.PASS for outcome in result):
            return DkimResult.PASS.value
        return result[0].result.value


def _build(context: BuildContext[None]) -> InboundDkim | None:
    settings = context.settings.dkim.verify
    if not settings.verify:
        return None
    verifier = DkimVerifier(context.resolver, settings, keys=shared_key_fetcher(context))
    return InboundDkim(verifier)


SPEC: CheckSpec[None] = CheckSpec("dkim", _build)
