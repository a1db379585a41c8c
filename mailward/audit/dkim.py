"""DKIM: the key record of each selector, its type and size, testing flag, and whether it
publishes the private key we sign with.

Selectors cannot be discovered from DNS: they come from `--selector` and from the
configuration's `[[dkim.sign.keys]]` for this domain.  RFC 8301: RSA keys under 1024
bits must not be accepted; 2048 is what everyone should publish.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator

from mailward.audit.context import AuditContext
from mailward.audit.findings import Finding, Status
from mailward.commands.keys import KeyStatus, compare_record, parse_tag_list

FAMILY = "dkim"


def _finding(code: str, status: Status, subject: str, evidence: str, fix: str = "") -> Finding:
    return Finding(FAMILY, f"dkim.{code}", status, subject, evidence, fix)


def configured_selectors(context: AuditContext) -> tuple[str, ...]:
    return tuple(key.selector for key in context.settings.dkim.sign.keys
                 if key.domain == context.domain)


def audit(context: AuditContext) -> Iterator[Finding]:
    selectors = list(dict.fromkeys((*context.options.selectors, *configured_selectors(context))))
    if not selectors:
        yield _finding("no_selector", Status.INFO, context.domain,
                       "no selector given or configured: DKIM keys cannot be found in DNS "
                       "without one", "pass --selector S for each selector you sign with")
        return
    for selector in selectors:
        yield from _audit_selector(context, selector)


def _audit_selector(context: AuditContext, selector: str) -> Iterator[Finding]:
    name = f"{selector}._domainkey.{context.domain}"
    answer = context.query(name, "TXT")
    records = [tags for tags in (parse_tag_list(r) for r in answer.records)
               if tags is not None and tags.get("v", "DKIM1") == "DKIM1" and "p" in tags]
    if not records:
        yield _finding("missing", Status.FAIL, name, f"no DKIM key record ({answer.outcome})",
                       "publish the record `mailward keys show-dns` prints")
        return
    if len(records) > 1:
        yield _finding("multiple", Status.FAIL, name, f"{len(records)} key records published",
                       "keep exactly one: verifiers pick one at random")
        return
    tags = records[0]
    if not tags["p"]:
        yield _finding("revoked", Status.WARN, name, "empty p=: the key is revoked",
                       "remove the selector from signing, or publish a new key")
        return
    key_type = tags.get("k", "rsa").lower()
    yield from _audit_key(name, key_type, tags["p"])
    if "y" in tags.get("t", "").lower().split(":"):
        yield _finding("testing", Status.WARN, name,
                       "t=y: verifiers treat failures as if unsigned",
                       "drop t=y once signing works")
    yield from _audit_ours(context, selector, name, tags)


def _audit_key(name: str, key_type: str, published: str) -> Iterator[Finding]:
    try:
        data = base64.b64decode(published, validate=True)
    except (binascii.Error, ValueError):
        yield _finding("malformed", Status.FAIL, name, "p= is not base64",
                       "republish the key record")
        return
    if key_type == "ed25519":
        if len(data) != 32:
            yield _finding("malformed", Status.FAIL, name, "p= is not an Ed25519 key",
                           "republish the key record")
            return
        yield _finding("key", Status.OK, name, "Ed25519 key (RFC 8463)",
                       "")
        yield _finding("ed25519_only", Status.INFO, name,
                       "many verifiers do not support Ed25519 yet",
                       "also sign with an RSA-2048 key (dual signing)")
        return
    if key_type != "rsa":
        yield _finding("key_type", Status.FAIL, name, f"unknown key type k={key_type}",
                       "use k=rsa or k=ed25519")
        return
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        public = load_der_public_key(data)
    except (ValueError, TypeError):
        public = None
    if not isinstance(public, rsa.RSAPublicKey):
        yield _finding("malformed", Status.FAIL, name, "p= is not an RSA public key",
                       "republish the key record")
        return
    bits = public.key_size
    if bits < 1024:
        yield _finding("key_too_short", Status.FAIL, name,
                       f"RSA key of {bits} bits: verifiers must reject it (RFC 8301)",
                       "generate an RSA-2048 key: mailward keys generate")
    elif bits < 2048:
        yield _finding("key_short", Status.WARN, name, f"RSA key of {bits} bits",
                       "rotate to an RSA-2048 key (mailward keys generate)")
    else:
        yield _finding("key", Status.OK, name, f"RSA key of {bits} bits")


def _audit_ours(context: AuditContext, selector: str, name: str,
                tags: dict[str, str]) -> Iterator[Finding]:
    configured = [key for key in context.settings.dkim.sign.keys
                  if key.domain == context.domain and key.selector == selector]
    if not configured:
        return
    from mailward.signing.keys import KeyLoadError, load_keys

    try:
        (loaded,) = load_keys(configured)
    except KeyLoadError as exc:
        yield _finding("key_file", Status.FAIL, name, f"cannot load our key: {exc}",
                       "fix dkim.sign.keys' key file")
        return
    check = compare_record(loaded, tags)
    if check.status is KeyStatus.MATCHES:
        yield _finding("matches", Status.OK, name, f"publishes our key {loaded.path}")
    else:
        yield _finding("mismatch", Status.FAIL, name,
                       f"{check.status}: {check.detail}",
                       "publish the record `mailward keys show-dns` prints for this key")
