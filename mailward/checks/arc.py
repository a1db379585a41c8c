"""ARC verification (RFC 8617 section 5.2): is the Authenticated Received Chain intact?

An intermediary (a mailing list, a forwarder) that changes a message breaks its DKIM
signatures; if it adds an ARC Set first (ARC-Authentication-Results with what it saw,
an ARC-Message-Signature over the message, an ARC-Seal over the chain so far), a later
receiver can verify the chain and, if it trusts the sealer, believe the results it
recorded.  This module validates the chain and hands back everything a policy needs to
decide that: per instance the sealer, its selector, its cv= and its
ARC-Authentication-Results, raw and parsed.

The validator follows RFC 8617 5.2 step by step:

1. no ARC header fields: `none`; more than 50 sets (`MAX_INSTANCES`): `fail`;
2. the newest ARC-Seal says `cv=fail`: `fail`;
3. structure: exactly one AAR, AMS and AS per instance, instances 1..N without gaps,
   `cv=none` at i=1 and `cv=pass` above; every tag list well formed;
4. the newest ARC-Message-Signature must verify;
5-6. `oldest_pass`: walking down from N-1, the oldest instance whose AMS still verifies;
7. every ARC-Seal, newest first, must verify;
8. otherwise `pass`.

**What dkimpy does and what we do.**  dkimpy's `ARC.verify()` passes the ARC test suite,
but its behaviour around it makes it unfit to call as a whole here, so this module does
the chain logic itself and uses dkimpy only for field validation
(`dkim.validate_signature_fields`); tag lists are read by `mailward.dkimcore.taglist`:

* a DNS timeout is logged and turned into "signature invalid", so a broken resolver
  would make a chain `fail`.  Here a signature whose key lookup failed temporarily is
  told apart from one that does not verify;
* it finds the raw ARC-Message-Signature by searching for the bytes `" i=N;"`, which
  raises IndexError for a legitimately folded field (`...;\r\n\ti=1; ...`) or one
  ending in `i=1` without a semicolon.  We use the field we parsed;
* it picks the header fields an ARC-Seal covers by their position in the message
  (bottom-up per name), so a chain whose sets were reordered in transit fails (it
  raises, in fact).  RFC 8617 5.1.1 defines the seal's input by instance number, and
  so do we;
* it canonicalizes every header of the message for every signature, hashes the body
  again for every AMS, does RSA in pure Python and fetches and parses the key record
  for every signature.  We share DKIM verification's fast path
  (`mailward.dkimcore`): one canonicalized body per canonicalization, the header
  canonicalization and bottom-up selection of `signed_data`; and from
  `mailward.checks.dkim` RSA through `cryptography` (`signature_valid`) and keys
  parsed once and cached for their DNS TTL across messages (`KeyFetcher`).

**Temporary failures.**  RFC 8617 defines only `pass`, `fail` and `none`, and the IANA
"Email Authentication Result Names" registry lists no other result for `arc`.  A key
lookup that timed out (or a time budget that ran out, or a body we only hold a prefix
of) proves nothing about the chain, so it must not become `fail`: the outcome is then
`ArcResult.TEMPERROR` ("could not tell"), unless a definitive failure was found
elsewhere in the chain, which wins.  `auth_result` writes TEMPERROR as `arc=none` with
a reason starting with "temperror": `none` is the only registered result that claims
nothing, and it also keeps an ARC sealer downstream of our A-R (which copies `arc=` into
its `cv=`) from sealing the chain as `cv=fail` for good over a transient error.

Bad input never raises: malformed, duplicated, missing or oversized ARC fields, and any
number of them, end in `fail` with a reason.  An exception that escapes is a bug and is
deliberately not caught, so the pipeline logs and counts it.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

import dkim

from mailward import message
from mailward.authresults import ParsedResults, parse_results
from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.checks.dkim import (
    KEY_CACHE_ENTRIES,
    DkimKey,
    DkimResult,
    KeyFailure,
    KeyFetcher,
    shared_key_fetcher,
    signature_valid,
)
from mailward.dkimcore.arcset import (
    AAR,
    AMS,
    AS,
    DISPLAY,
    KINDS,
    MAX_INSTANCES,
    aar_payload,
    instance_number,
    kind_of,
    split_aar,
)
from mailward.dkimcore.canon import (
    Canon,
    parse_canonicalization,
    relaxed_header,
    signature_header_data,
)
from mailward.dkimcore.taglist import TagListError, colon_list, parse_tag_list
from mailward.dkimcore.view import MessageView, signed_data, view_of
from mailward.dns import Resolver
from mailward.model import (
    AuthProperty,
    AuthResult,
    Connection,
    Header,
    IPAddress,
    Transaction,
)

METHOD = "arc"


class ArcResult(StrEnum):
    """The chain validation status (RFC 8617 4.4), plus our "could not tell".

    TEMPERROR is internal: the chain could not be validated for a reason that says
    nothing about the sender (DNS timeout, time budget, truncated body).  In A-R it is
    written as `arc=none` (see the module docstring).
    """

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"


@dataclass(frozen=True)
class ArcLimits:
    """Resource bounds for one verification.  Not configuration: defaults are sane.

    `max_seconds` bounds the time spent on key lookups and signature checks (a chain of
    50 sets can need 100 lookups); past it, unchecked signatures count as "could not
    tell".  `max_field_bytes` rejects absurd ARC header fields before parsing them.
    """

    max_seconds: float = 15.0
    max_field_bytes: int = 65536

    def __post_init__(self) -> None:
        if self.max_seconds < 0 or self.max_field_bytes < 1:
            raise ValueError("ARC limits must be positive")


DEFAULT_LIMITS = ArcLimits()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ArcInstance:
    """One ARC Set, i.e. what one intermediary added.

    `sealer` and `selector` come from the ARC-Seal (d=, s=), `ams_domain` and
    `ams_selector` from the ARC-Message-Signature.  `aar` is the raw
    ARC-Authentication-Results value as received (after the colon, folding kept),
    `authentication_results` its parsed payload (parsed on first use: a policy usually
    asks only about trusted sealers).  `ams_valid` / `seal_valid` are True
    or False once checked, None when not checked or not decidable (a temporary DNS
    failure); older AMSes are only checked on a passing chain, for `oldest_pass`.
    """

    instance: int
    sealer: str
    selector: str
    cv: str
    ams_domain: str
    ams_selector: str
    aar: str
    ams_valid: bool | None = None
    seal_valid: bool | None = None

    @cached_property
    def authentication_results(self) -> ParsedResults:
        return parse_results(aar_payload(self.aar))


@dataclass(frozen=True)
class ArcOutcome:
    """The chain validation status and the chain it is about.

    `instances` are ordered by i= (1 first) and present whenever the chain was
    structurally sound (so also for a `fail` because a signature did not verify); a
    structural failure leaves them empty.  `oldest_pass` is set for `pass` only: the
    i= of the oldest instance from which every newer AMS still verifies (1: all of them;
    RFC 8617 5.2 steps 5-6, written in A-R as `header.oldest-pass`, with 0 for "all").
    """

    result: ArcResult
    reason: str = ""
    instances: tuple[ArcInstance, ...] = ()
    oldest_pass: int | None = None

    @property
    def sealers(self) -> tuple[str, ...]:
        """The ARC-Seal d= of every instance, i=1 first."""
        return tuple(instance.sealer for instance in self.instances)

    @property
    def latest(self) -> ArcInstance | None:
        return self.instances[-1] if self.instances else None

    def instance(self, number: int) -> ArcInstance | None:
        for candidate in self.instances:
            if candidate.instance == number:
                return candidate
        return None


def auth_result(outcome: ArcOutcome, client_ip: IPAddress | None = None) -> AuthResult:
    """The A-R result for an outcome (RFC 8617 section 6, IANA email-auth registry).

    `arc=pass|fail|none` with, for pass, `header.oldest-pass` (registered: the oldest
    validating AMS, 0 if all validate) and `arc.chain`, the sealer domains newest first
    joined by ":" as OpenARC writes it (not a registered ptype: consumers that only
    know the registry, authres among them, skip it; quoted when it has a ":", so it
    never breaks their parse).  `smtp.remote-ip` (registered) comes last, when the
    caller passes the client address.  TEMPERROR is written as `none` with a reason
    that starts with "temperror" (no other result is registered for arc).
    """
    result = outcome.result
    reason: str | None = None
    written = result.value
    if result is ArcResult.TEMPERROR:
        written = ArcResult.NONE.value
        reason = f"temperror: {outcome.reason}" if outcome.reason else "temperror"
    elif result is ArcResult.FAIL:
        reason = outcome.reason or None
    properties: list[AuthProperty] = []
    if result is ArcResult.PASS:
        oldest = outcome.oldest_pass or 1
        properties.append(AuthProperty("header", "oldest-pass", str(0 if oldest <= 1 else oldest)))
        chain = ":".join(reversed(outcome.sealers))
        if chain:
            properties.append(AuthProperty("arc", "chain", _header_text(chain)))
    if client_ip is not None:
        # Last: authres only accepts a quoted value (an IPv6 address) at the end of a
        # resinfo, and drops one that is followed by more properties.
        properties.append(AuthProperty("smtp", "remote-ip", str(client_ip)))
    return AuthResult(
        METHOD, written, _header_text(reason) if reason else None, tuple(properties)
    )


def _header_text(text: str) -> str:
    """Text that came from the message, fit for our header: printable ASCII, bounded."""
    cleaned = _printable(text).encode("ascii", "backslashreplace").decode("ascii")
    return cleaned if len(cleaned) <= 300 else cleaned[:297] + "..."


# --------------------------------------------------------------------------- parsing


class _Structure(Exception):
    """The chain is structurally invalid (RFC 8617 5.2 steps 1-3): the result is fail."""


@dataclass(frozen=True)
class _Field:
    kind: str  # AAR, AMS or AS
    instance: int
    header: Header
    tags: Mapping[str, bytes] = field(default_factory=dict)  # AMS and AS only


_WSP = re.compile(r"[ \t\r\n]+")


def _unfold(value: str) -> str:
    """The value as relaxed canonicalization sees it: unfolded, WSP runs as one space.

    No separate unfolding step: a fold's CRLF and the white space after it are one run
    of `_WSP`, so squeezing the runs unfolds too (with the same result).
    """
    return _WSP.sub(" ", value).strip()


# White space inside a base64 value (b=, bh=), which the decoder must not see.
_BASE64_FWS = re.compile(rb"\s+")


def _arc_fields(headers: Iterable[Header]) -> list[Header]:
    return [header for header in headers if kind_of(header.name) is not None]


def _parse_field(header: Header, limits: ArcLimits) -> _Field:
    kind = kind_of(header.name)
    assert kind is not None  # _arc_fields chose it
    name = DISPLAY[kind]
    if len(header.value) > limits.max_field_bytes:
        raise _Structure(f"{name} field longer than {limits.max_field_bytes} bytes")
    if kind == AAR:
        split = split_aar(header.value)
        if split is None:
            raise _Structure(f"{name} does not start with i=<instance>;")
        instance = _instance_value(split[0], name)
        return _Field(kind, instance, header)
    try:
        tags = parse_tag_list(_unfold(header.value).encode("utf-8", "surrogateescape"))
    except TagListError as exc:
        raise _Structure(f"{name} has a malformed tag list: {_short(exc)}") from None
    if "i" not in tags:
        raise _Structure(f"{name} has no i= tag")
    instance = _instance_value(tags["i"].decode("ascii", "replace"), name)
    return _Field(kind, instance, header, tags=tags)


def _instance_value(text: str, name: str) -> int:
    """RFC 8617 4.2.1: instance-val = 1*2DIGIT, 1..50."""
    value = instance_number(text)
    if value is None:
        raise _Structure(f"{name} has an invalid instance i={_printable(text)[:20]}")
    if value > MAX_INSTANCES:
        raise _Structure(f"more than {MAX_INSTANCES} ARC sets (i={value})")
    return value


def _group(fields: Sequence[_Field]) -> dict[int, dict[str, _Field]]:
    """Fields by instance and kind; duplicates, gaps and missing fields are failures."""
    sets: dict[int, dict[str, _Field]] = {}
    for item in fields:
        kinds = sets.setdefault(item.instance, {})
        if item.kind in kinds:
            raise _Structure(f"duplicate {DISPLAY[item.kind]} for i={item.instance}")
        kinds[item.kind] = item
    return sets


def _check_structure(sets: Mapping[int, Mapping[str, _Field]]) -> int:
    """RFC 8617 5.2 steps 2 and 3; returns N, the newest instance."""
    newest = max(sets)
    seal = sets[newest].get(AS)
    if seal is not None and seal.tags.get("cv") == b"fail":
        raise _Structure(f"ARC-Seal i={newest} reports cv=fail: the chain was already broken")
    for number in range(1, newest + 1):
        kinds = sets.get(number)
        if kinds is None:
            raise _Structure(f"ARC set i={number} is missing (instances must be 1..{newest})")
        for kind in KINDS:
            if kind not in kinds:
                raise _Structure(f"missing {DISPLAY[kind]} for i={number}")
        cv = kinds[AS].tags.get("cv")
        expected = b"none" if number == 1 else b"pass"
        if cv != expected:
            shown = "no cv=" if cv is None else f"cv={_printable(cv.decode('ascii', 'replace'))}"
            wanted = expected.decode()
            raise _Structure(f"ARC-Seal i={number} has {shown[:40]}, expected cv={wanted}")
    for number in range(1, newest + 1):
        _validate_signature_tags(sets[number][AMS], number)
        _validate_signature_tags(sets[number][AS], number)
    return newest


_AMS_REQUIRED = [b"i", b"a", b"b", b"bh", b"d", b"h", b"s"]
_AS_REQUIRED = [b"i", b"a", b"b", b"cv", b"d", b"s"]


def _validate_signature_tags(item: _Field, number: int) -> None:
    """Tag checks dkimpy makes before verifying (RFC 8617 4.1.2, 4.1.3)."""
    name = f"{DISPLAY[item.kind]} i={number}"
    required = _AMS_REQUIRED if item.kind == AMS else _AS_REQUIRED
    try:
        fields = {name.encode("ascii"): value for name, value in item.tags.items()}
        dkim.validate_signature_fields(fields, list(required), True)
    except (dkim.DKIMException, ValueError) as exc:
        # ValueError: a t= or x= of more digits than int() accepts.
        raise _Structure(f"{name}: {_short(exc)}") from None
    if item.kind == AMS:
        if AS.encode() in colon_list(item.tags["h"]):
            raise _Structure(f"{name} signs ARC-Seal, which RFC 8617 4.1.2 forbids")
    elif "h" in item.tags:
        raise _Structure(f"{name} has an h= tag, which RFC 8617 4.1.3 forbids")


# --------------------------------------------------------------------------- crypto


class _Sig(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"  # not decidable now: temporary DNS failure, time budget, body


# RFC 8301 3.2: verifiers MUST NOT consider signatures with RSA keys under 1024 bits
# valid.  ARC's only algorithm is rsa-sha256 (RFC 8617 4.1.2, 4.1.3).
MIN_KEY_BITS = 1024


class _Checker:
    """Signature checks for one message, with one time budget."""

    def __init__(
        self,
        keys: KeyFetcher,
        sets: Mapping[int, Mapping[str, _Field]],
        newest: int,
        transaction: Transaction,
        limits: ArcLimits,
        clock: Callable[[], float],
    ) -> None:
        self._sets = sets
        self._keys = keys
        self._limits = limits
        self._clock = clock
        self._started = clock()
        self._body_complete = not transaction.body_truncated
        self._transaction = transaction
        self._view: MessageView | None = None
        self.notes: dict[tuple[str, int], str] = {}

    def ams(self, number: int) -> _Sig:
        item = self._sets[number][AMS]
        if not self._body_complete:
            self.notes[(AMS, number)] = "message body was truncated, cannot check it"
            return _Sig.UNKNOWN
        if self._out_of_time(AMS, number):
            return _Sig.UNKNOWN
        sig = dict(item.tags)
        sig.setdefault("c", b"relaxed/relaxed")
        problem = self._body_problem(sig)
        if problem:
            self.notes[(AMS, number)] = problem
            return _Sig.INVALID
        include = colon_list(sig["h"])
        if b"from" in include:
            # As dkimpy (its bug#644046): a From added above the signed one breaks the
            # signature, as an unsigned From breaks a DKIM signature here.
            include.append(b"from")
        if self._out_of_time(AMS, number):
            return _Sig.UNKNOWN
        algorithms = parse_canonicalization(sig["c"])
        assert algorithms is not None  # _body_problem checked it
        own = (message.header_name_bytes(item.header), message.header_value_bytes(item.header))
        data = signed_data(self._message(), include, algorithms[0], own)
        return self._verify(data, AMS, number, sig)

    def _message(self) -> MessageView:
        if self._view is None:
            self._view = view_of(self._transaction)  # DKIM's, inside the pipeline's scope
        return self._view

    def _body_problem(self, sig: Mapping[str, bytes]) -> str:
        """Why the AMS body hash (bh=, over l= bytes if given) does not match, or ""."""
        algorithms = parse_canonicalization(sig["c"])
        if algorithms is None:
            return f"invalid c= value: {_printable(sig['c'].decode('ascii', 'replace'))[:40]}"
        length: int | None = None
        if "l" in sig:
            if not sig["l"].isdigit():
                return "l= value is not a decimal integer"
            length = int(sig["l"])
        try:
            expected = base64.b64decode(_BASE64_FWS.sub(b"", sig["bh"]), validate=True)
        except binascii.Error:
            return "bh= value is not valid base64"
        view = self._message()
        if length is not None and length >= len(view.canonical_body(algorithms[1])):
            length = None  # an l= past the end covers the whole body (no "too short" here)
        # a=rsa-sha256 is ARC's only algorithm; the digest is DKIM's when it hashed the same.
        if view.body_digest(algorithms[1], "sha256", length) != expected:
            return "body hash did not verify"
        return ""

    def seal(self, number: int) -> _Sig:
        item = self._sets[number][AS]
        if self._out_of_time(AS, number):
            return _Sig.UNKNOWN
        # RFC 8617 4.1.3, 5.1.1: relaxed header canonicalization only, no body; the input
        # is the AAR, AMS and AS of sets 1..i by instance number (not by field position),
        # the AS of set i last with b= emptied and without a final CRLF.
        sealed = [self._sets[n][kind].header for n in range(1, number + 1) for kind in KINDS]
        parts = [_relaxed(header) for header in sealed[:-1]]
        own = item.header
        parts.append(signature_header_data(
            Canon.RELAXED, message.header_name_bytes(own), message.header_value_bytes(own)))
        return self._verify(b"".join(parts), AS, number, item.tags)

    def _verify(
        self, data: bytes, kind: str, number: int, sig: Mapping[str, bytes]
    ) -> _Sig:
        """Check b= over the canonical `data` with the key at s=._domainkey.d=."""
        selector = sig["s"].decode("utf-8", "replace").lower()
        domain = sig["d"].decode("utf-8", "replace").lower()
        key = self._keys.get(selector, domain)
        if isinstance(key, KeyFailure):
            if key.result is DkimResult.TEMPERROR:
                self.notes[(kind, number)] = f"key lookup failed temporarily: {key.reason}"
                return _Sig.UNKNOWN
            self.notes[(kind, number)] = key.reason
            return _Sig.INVALID
        problem = _key_problem(key)
        if problem:
            self.notes[(kind, number)] = problem
            return _Sig.INVALID
        try:
            signature = base64.b64decode(_BASE64_FWS.sub(b"", sig["b"]))
        except binascii.Error:
            self.notes[(kind, number)] = "b= value is not valid base64"
            return _Sig.INVALID
        if signature_valid(key, "sha256", signature, data):
            return _Sig.VALID
        self.notes.setdefault((kind, number), "signature did not verify")
        return _Sig.INVALID

    def _out_of_time(self, kind: str, number: int) -> bool:
        if self._clock() - self._started <= self._limits.max_seconds:
            return False
        self.notes[(kind, number)] = f"time budget of {self._limits.max_seconds:g}s spent"
        return True

    def note(self, kind: str, number: int) -> str:
        return self.notes.get((kind, number), "")


def _relaxed(header: Header) -> bytes:
    return relaxed_header(message.header_name_bytes(header), message.header_value_bytes(header))


def _key_problem(key: DkimKey) -> str:
    """Why a key cannot check an ARC signature (a=rsa-sha256), or ""."""
    if key.key_type != "rsa":
        return f"key type {key.key_type} does not match a=rsa-sha256"
    if key.hashes is not None and "sha256" not in key.hashes:
        return "key h= does not allow sha256"
    if not key.services & {"*", "email"}:
        return "key s= does not include email"
    if key.bits < MIN_KEY_BITS:
        return f"key too small ({key.bits} bits, minimum {MIN_KEY_BITS})"
    return ""


# --------------------------------------------------------------------------- verifier


class ArcVerifier:
    """ARC chain validation against our resolver.

    The only state kept between messages is the cache of parsed keys (per selector and
    domain, for the TTL of their DNS answer); pass `keys` to share one `KeyFetcher`
    with other verifiers that use the same resolver.  Thread-safe.
    """

    method = METHOD

    def __init__(
        self,
        resolver: Resolver,
        *,
        limits: ArcLimits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
        keys: KeyFetcher | None = None,
        key_cache_entries: int = KEY_CACHE_ENTRIES,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._keys = (
            keys
            if keys is not None
            else KeyFetcher(resolver, monotonic=clock, entries=key_cache_entries)
        )

    def verify(self, transaction: Transaction) -> ArcOutcome:
        """Validate the message's chain (RFC 8617 5.2).  Never raises for bad input."""
        raw_fields = _arc_fields(transaction.headers)
        if not raw_fields:
            return ArcOutcome(ArcResult.NONE, "no ARC sets")
        try:
            if len(raw_fields) > 3 * MAX_INSTANCES:
                raise _Structure(
                    f"more than {MAX_INSTANCES} ARC sets ({len(raw_fields)} ARC header fields)"
                )
            sets = _group([_parse_field(header, self._limits) for header in raw_fields])
            newest = _check_structure(sets)
        except _Structure as exc:
            return ArcOutcome(ArcResult.FAIL, str(exc))
        checker = _Checker(self._keys, sets, newest, transaction, self._limits, self._clock)
        return _validate(checker, sets, newest)


def _validate(
    checker: _Checker, sets: Mapping[int, Mapping[str, _Field]], newest: int
) -> ArcOutcome:
    """RFC 8617 5.2 steps 4-8, keeping "could not tell" apart from "does not verify"."""
    ams: dict[int, _Sig] = {newest: checker.ams(newest)}
    seals: dict[int, _Sig] = {}
    if ams[newest] is _Sig.INVALID:
        reason = f"ARC-Message-Signature i={newest} did not verify"
        return _finish(checker, sets, newest, ams, seals, ArcResult.FAIL, reason, AMS, newest)
    for number in range(newest, 0, -1):
        seals[number] = checker.seal(number)
        if seals[number] is _Sig.INVALID:
            reason = f"ARC-Seal i={number} did not verify"
            return _finish(checker, sets, newest, ams, seals, ArcResult.FAIL, reason, AS, number)
    if ams[newest] is _Sig.UNKNOWN:
        reason = f"ARC-Message-Signature i={newest} could not be checked"
        return _finish(checker, sets, newest, ams, seals, ArcResult.TEMPERROR, reason, AMS, newest)
    for number in range(newest, 0, -1):
        if seals[number] is _Sig.UNKNOWN:
            reason = f"ARC-Seal i={number} could not be checked"
            return _finish(
                checker, sets, newest, ams, seals, ArcResult.TEMPERROR, reason, AS, number
            )
    # Steps 5-6, only worth the lookups on a passing chain.
    oldest = newest
    for number in range(newest - 1, 0, -1):
        ams[number] = checker.ams(number)
        if ams[number] is not _Sig.VALID:
            break
        oldest = number
    instances = _instances(sets, newest, ams, seals)
    return ArcOutcome(ArcResult.PASS, "", instances, oldest)


def _finish(
    checker: _Checker,
    sets: Mapping[int, Mapping[str, _Field]],
    newest: int,
    ams: Mapping[int, _Sig],
    seals: Mapping[int, _Sig],
    result: ArcResult,
    reason: str,
    kind: str,
    number: int,
) -> ArcOutcome:
    note = checker.note(kind, number)
    if note:
        reason = f"{reason}: {note}"
    return ArcOutcome(result, reason, _instances(sets, newest, ams, seals))


def _instances(
    sets: Mapping[int, Mapping[str, _Field]],
    newest: int,
    ams: Mapping[int, _Sig],
    seals: Mapping[int, _Sig],
) -> tuple[ArcInstance, ...]:
    def known(state: _Sig | None) -> bool | None:
        if state is None or state is _Sig.UNKNOWN:
            return None
        return state is _Sig.VALID

    instances = []
    for number in range(1, newest + 1):
        kinds = sets[number]
        seal, signature, aar = kinds[AS], kinds[AMS], kinds[AAR]
        instances.append(
            ArcInstance(
                instance=number,
                sealer=_tag(seal, "d").lower(),
                selector=_tag(seal, "s"),
                cv=_tag(seal, "cv"),
                ams_domain=_tag(signature, "d").lower(),
                ams_selector=_tag(signature, "s"),
                aar=aar.header.value,
                ams_valid=known(ams.get(number)),
                seal_valid=known(seals.get(number)),
            )
        )
    return tuple(instances)


def _tag(item: _Field, name: str) -> str:
    return _printable(item.tags.get(name, b"").decode("utf-8", "replace"))


# Control characters (C0 and DEL) become spaces; one C-level translate per value
# instead of a generator step per character (this runs on every tag of every set).
_CONTROLS_TO_SPACE = {code: " " for code in (*range(32), 127)}


def _printable(text: str) -> str:
    return text.translate(_CONTROLS_TO_SPACE)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = _printable(str(exc) or type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- the inbound check

RESULT: ResultKey[ArcOutcome] = ResultKey("arc")

_SYMBOLS = {
    ArcResult.PASS: "ARC_VALID",
    ArcResult.FAIL: "ARC_INVALID",
    ArcResult.NONE: "ARC_NONE",
    ArcResult.TEMPERROR: "ARC_TEMPERROR",
}


class InboundArc(Check[ArcOutcome]):
    """ARC chain validation on the inbound path."""

    name = "arc"
    produces = RESULT
    auth_methods = (METHOD,)

    def __init__(self, verifier: ArcVerifier) -> None:
        self._verifier = verifier

    def evaluate(self, check_input: CheckInput) -> ArcOutcome:
        return self._verifier.verify(check_input.transaction)

    def auth_results(self, result: ArcOutcome, connection: Connection) -> Sequence[AuthResult]:
        return (auth_result(result, connection.client_ip),)

    def symbols(self, result: ArcOutcome) -> Sequence[Symbol]:
        return (Symbol(_SYMBOLS[result.result], ":".join(reversed(result.sealers))),)

    def metric_result(self, result: ArcOutcome) -> str:
        return result.result.value


def _build(context: BuildContext[None]) -> InboundArc | None:
    if not context.settings.arc.verify:
        return None
    return InboundArc(ArcVerifier(context.resolver, keys=shared_key_fetcher(context)))


SPEC: CheckSpec[None] = CheckSpec("arc", _build)
