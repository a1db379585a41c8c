"""DKIM signing (RFC 6376, RFC 8463) of outbound mail, with OpenSSL doing the crypto.

The work per message is split so that nothing is done twice:

1. `prepare()` canonicalizes and hashes once per message: the body (one hash per body
   canonicalization) and the header fields the h= list names (a SHA-256 state that
   has consumed them).
2. `sign_prepared()` runs per key: it copies that hash state, feeds it the key's own
   DKIM-Signature field (b= empty), and has OpenSSL sign the digest: RSA PKCS#1 v1.5
   over the prehashed SHA-256 (rsa-sha256), or Ed25519 over the 32-byte digest, which
   is what RFC 8463 specifies for ed25519-sha256.

So dual signing (RSA + Ed25519) costs one canonicalization, one body hash and two
private-key operations.

`DkimSigner` is the pipeline's `OutboundSigner`: it decides whether a message is
signed (origin, From, key, body complete) and returns the DKIM-Signature header edits.
Every outcome is logged and counted; a message is never passed on as signed when it
is not.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, utils

from mailward import fromheader, metrics
from mailward.config import (
    DkimSignSettings,
    GeneralSettings,
    Settings,
    SignFailureAction,
    SignOrigin,
)
from mailward.dkimcore.canon import (
    Canon,
    canonical_headers,
    canonicalize_body,
    header_key,
    signature_header_data,
)
from mailward.message import header_name_bytes, header_value_bytes
from mailward.model import Connection, InsertHeader, Transaction
from mailward.signing.keys import LoadedKey, PrivateKey, load_keys
from mailward.signing.table import SigningTable

log = logging.getLogger(__name__)

HEADER_NAME = "DKIM-Signature"
_HEADER_NAME_BYTES = HEADER_NAME.encode("ascii")

#: Lines of the signature header are kept to this width (RFC 5322 2.1.1 recommends 78).
LINE_WIDTH = 78


class SigningError(Exception):
    """Signing failed and `on_error`/`on_oversized` say the message must not go out.

    The pipeline answers it with a 451 of its own, whatever `general.on_internal_error`
    says: the message is retried, never delivered as if it were signed.
    """


# --------------------------------------------------------------------------- core


@dataclass(frozen=True)
class SignatureOptions:
    """What a signature looks like; the same for every key of one configuration."""

    header_canon: Canon = Canon.RELAXED
    body_canon: Canon = Canon.RELAXED
    headers: tuple[str, ...] = ("from",)
    oversign: tuple[str, ...] = ()
    expire: int = 0
    body_length: bool = False

    @classmethod
    def from_settings(cls, sign: DkimSignSettings) -> SignatureOptions:
        return cls(
            header_canon=Canon(sign.header_canonicalization),
            body_canon=Canon(sign.body_canonicalization),
            headers=sign.headers,
            oversign=sign.oversign,
            expire=sign.expire,
            body_length=sign.body_length,
        )

    @property
    def c_value(self) -> str:
        return f"{self.header_canon}/{self.body_canon}"

    def h_names(self, present: Sequence[tuple[bytes, bytes]]) -> tuple[str, ...]:
        """The h= list: each signed name once per instance present, oversigned names
        once more (RFC 6376 8.15), so that no instance can be added unnoticed."""
        counts: dict[str, int] = {}
        for raw_name, _ in present:
            key = header_key(raw_name).decode("ascii", "replace")
            counts[key] = counts.get(key, 0) + 1
        oversigned = set(self.oversign)
        names: list[str] = []
        for name in dict.fromkeys(self.headers + self.oversign):
            names += [name] * (counts.get(name, 0) + (1 if name in oversigned else 0))
        return tuple(names)


@dataclass(frozen=True)
class PreparedMessage:
    """A message canonicalized and hashed once, ready to be signed by any key."""

    h_names: tuple[str, ...]
    header_hash: Any  # hashlib SHA-256 state that has consumed the signed headers
    body_hash: str  # base64, for bh=
    body_length: int  # octets of canonical body, for l=
    options: SignatureOptions


def prepare(
    headers: Sequence[tuple[bytes, bytes]], body: bytes, options: SignatureOptions
) -> PreparedMessage:
    """Canonicalize and hash `headers` (raw name, raw value) and `body` once."""
    canonical_body = canonicalize_body(body, options.body_canon)
    names = options.h_names(headers)
    state = hashlib.sha256(canonical_headers(options.header_canon, headers, names))
    return PreparedMessage(
        h_names=names,
        header_hash=state,
        body_hash=base64.b64encode(hashlib.sha256(canonical_body).digest()).decode("ascii"),
        body_length=len(canonical_body),
        options=options,
    )


def sign_digest(private_key: PrivateKey, digest: bytes) -> bytes:
    """The b= signature over a SHA-256 digest: RSA PKCS#1 v1.5, or Ed25519 (RFC 8463)."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(digest)
    return private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def sign_prepared(key: LoadedKey, prepared: PreparedMessage, timestamp: int) -> str:
    """One DKIM-Signature value (without the leading space) for `key`."""
    options = prepared.options
    tags = [
        ("v", "1"),
        ("a", str(key.algorithm)),
        ("c", options.c_value),
        ("d", key.domain),
        ("s", key.selector),
        ("t", str(timestamp)),
    ]
    if options.expire:
        tags.append(("x", str(timestamp + options.expire)))
    if options.body_length:
        tags.append(("l", str(prepared.body_length)))
    tags += [("h", ":".join(prepared.h_names)), ("bh", prepared.body_hash)]
    unsigned = fold_tags(tags, len(HEADER_NAME) + 2)
    state = prepared.header_hash.copy()
    # What the MTA will store is "DKIM-Signature: " + value: hash exactly that.
    state.update(signature_header_data(
        options.header_canon, _HEADER_NAME_BYTES, b" " + unsigned.encode("ascii")
    ))
    signature = sign_digest(key.private_key, state.digest())
    return unsigned + fold_b64(base64.b64encode(signature).decode("ascii"))


def fold_tags(tags: Sequence[tuple[str, str]], used: int, width: int = LINE_WIDTH) -> str:
    """`t=v; t=v; ...; b=` folded at tag boundaries (and at the colons of h=),
    each continuation line starting with a tab; b= starts a line of its own."""
    atoms: list[tuple[str, str]] = []  # (separator before it, text)
    for name, value in tags:
        if name == "h":
            parts = value.split(":")
            atoms.append((" ", f"h={parts[0]}" + (":" if len(parts) > 1 else ";")))
            for index, part in enumerate(parts[1:], 2):
                atoms.append(("", part + (":" if index < len(parts) else ";")))
        else:
            atoms.append((" ", f"{name}={value};"))
    out = []
    column = used
    for index, (separator, text) in enumerate(atoms):
        if index == 0:
            out.append(text)
            column += len(text)
        elif column + len(separator) + len(text) > width:
            out.append("\n\t" + text)
            column = 8 + len(text)
        else:
            out.append(separator + text)
            column += len(separator) + len(text)
    out.append("\n\tb=")
    return "".join(out)


def fold_b64(value: str, first: int = LINE_WIDTH - 10, width: int = LINE_WIDTH - 8) -> str:
    """A base64 b= value cut into lines (FWS inside b= is ignored by verifiers)."""
    chunks = [value[:first]]
    chunks += [value[i : i + width] for i in range(first, len(value), width)]
    return "\n\t".join(chunk for chunk in chunks if chunk)


# --------------------------------------------------------------------------- signer


def raw_headers(transaction: Transaction) -> list[tuple[bytes, bytes]]:
    """(name, value) as bytes, values with CRLF line ends, as the MTA will send them."""
    return [(header_name_bytes(h), header_value_bytes(h)) for h in transaction.headers]


_UNSIGNED_REASONS = {
    fromheader.AddressProblem.NO_FROM: "no From header",
    fromheader.AddressProblem.MULTIPLE_FROM: "more than one From header",
    fromheader.AddressProblem.BAD_FROM: "From does not hold exactly one address",
}


class DkimSigner:
    """The pipeline's OutboundSigner: signs outbound mail with the configured keys.

    Keys are loaded (and validated) here, so building a new pipeline on reload re-reads
    them, and a broken key file makes the reload fail (KeyLoadError, a ConfigError)
    instead of the service signing with nothing.
    """

    def __init__(
        self,
        settings: Settings,
        keys: Sequence[LoadedKey] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        sign = settings.dkim.sign
        self.keys = tuple(keys) if keys is not None else load_keys(sign.keys)
        self.table = SigningTable.build(self.keys, sign.table)
        self.options = SignatureOptions.from_settings(sign)
        self._origins = frozenset(sign.origins)
        self._general: GeneralSettings = settings.general
        self._on_error = sign.on_error
        self._on_oversized = sign.on_oversized
        self._clock = clock

    def origins(self, connection: Connection) -> set[SignOrigin]:
        """Which of the outbound origins this connection is."""
        found = set()
        if connection.auth_user:
            found.add(SignOrigin.AUTHENTICATED)
        if connection.client_ip is None:
            found.add(SignOrigin.LOCAL)
        elif self._general.is_trusted(connection.client_ip):
            found.add(SignOrigin.TRUSTED_NETWORKS)
        return found

    def sign(self, connection: Connection, transaction: Transaction) -> tuple[InsertHeader, ...]:
        started = time.perf_counter()
        if not self.origins(connection) & self._origins:
            return self._unsigned(transaction, "not_selected", "origin not in dkim.sign.origins",
                                  logging.DEBUG)
        author = fromheader.author_address(transaction)
        if isinstance(author, fromheader.AddressProblem):
            return self._unsigned(transaction, author.value, _UNSIGNED_REASONS[author],
                                  logging.WARNING)
        keys = self.table.keys_for(f"{author.local_part}@{author.domain}")
        if not keys:
            return self._unsigned(
                transaction, "no_key", f"no signing key for {author.domain}", logging.INFO,
            )
        if transaction.body_truncated:
            reason = (f"body of {transaction.body_size} bytes exceeds milter.max_body_size "
                      f"({len(transaction.body)} kept): cannot be signed")
            if self._on_oversized is SignFailureAction.TEMPFAIL:
                metrics.DKIM_SIGN_MESSAGES.labels("oversized_tempfail").inc()
                log.warning("%s: %s; tempfail (dkim.sign.on_oversized)", transaction.log_id,
                            reason)
                raise SigningError(reason)
            return self._unsigned(transaction, "oversized", reason + " (dkim.sign.on_oversized)",
                                  logging.WARNING)
        try:
            values = self.sign_message(transaction, keys)
        except Exception as exc:
            log.exception("%s: DKIM signing failed", transaction.log_id)
            metrics.ERRORS.labels("dkim_sign").inc()
            if self._on_error is SignFailureAction.TEMPFAIL:
                metrics.DKIM_SIGN_MESSAGES.labels("error_tempfail").inc()
                raise SigningError(f"DKIM signing failed: {exc}") from exc
            return self._unsigned(transaction, "error", "signing failed (dkim.sign.on_error)",
                                  logging.WARNING)
        metrics.DKIM_SIGN_MESSAGES.labels("signed").inc()
        for key in keys:
            metrics.DKIM_SIGNATURES_ADDED.labels(str(key.algorithm)).inc()
        metrics.DKIM_SIGN_SECONDS.observe(time.perf_counter() - started)
        log.info("%s: DKIM-signed %s", transaction.log_id,
                 ", ".join(f"d={k.domain} s={k.selector} a={k.algorithm}" for k in keys))
        return tuple(InsertHeader(HEADER_NAME, value, 0) for value in values)

    def sign_message(self, transaction: Transaction, keys: Sequence[LoadedKey]) -> list[str]:
        """DKIM-Signature values, one per key, over one canonicalization of the message."""
        prepared = prepare(raw_headers(transaction), transaction.body, self.options)
        timestamp = int(self._clock())
        return [sign_prepared(key, prepared, timestamp) for key in keys]

    def _unsigned(
        self, transaction: Transaction, result: str, reason: str, level: int
    ) -> tuple[InsertHeader, ...]:
        metrics.DKIM_SIGN_MESSAGES.labels(result).inc()
        log.log(level, "%s: not DKIM-signed: %s", transaction.log_id, reason)
        return ()


def build_signer(settings: Settings) -> DkimSigner | None:
    """The signer for `settings`, or None when no key is configured."""
    if not settings.dkim.sign.keys:
        return None
    return DkimSigner(settings)
