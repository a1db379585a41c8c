"""DKIM verification: results, reasons, keys, caps and hostile input.

Signatures are made by dkimpy (an independent implementation) with keys generated here,
and the keys are served from an InMemoryResolver zone, so every test runs the whole
verification path: tag parsing, canonicalization, key lookup through our resolver,
crypto.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import dkim
import dkim.canonicalization
import dkim.crypto
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward import authresults, fromheader, message
from mailward.checks import dkim as dkim_check
from mailward.checks.base import BuildContext
from mailward.checks.dkim import (
    DkimOutcome,
    DkimProblem,
    DkimResult,
    DkimVerifier,
    auth_results,
)
from mailward.config import ConfigError, DkimVerifySettings, Settings, parse_settings
from mailward.dkimcore import canon as dkim_canon
from mailward.dkimcore import view as dkim_view
from mailward.dkimcore.canon import canonicalize_body, content_end, relaxed_header
from mailward.dkimcore.taglist import parse_tag_list
from mailward.dns import InMemoryResolver
from mailward.messagefile import transaction_from_bytes
from mailward.model import Header, Transaction
from tests.support.checks import dkim_auth_results

NOW = 1_800_000_000  # the wall clock the verifier is given

MESSAGE = (
    b"Received: from client.example.org (client.example.org [192.0.2.10])\r\n"
    b"\tby mx.example.net (Postfix) with ESMTP id 4Xq1bC2kLmz9\r\n"
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Quarterly   report,\r\n"
    b"  folded\tacross lines\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <report-1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob,  \r\n"
    b"\r\n"
    b"the numbers\t are attached.\r\n"
    b"\r\n"
    b"\r\n"
)

# dkimpy's 512-bit test key (test_dkim.py): cryptography refuses to make keys this small.
RSA512_PEM = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBOwIBAAJBANmBe10IgY+u7h3enWTukkqtUD5PR52Tb/mPfjC0QJTocVBq6Za/
PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQJAYFUKsD+uMlcFu1D3YNaR
EGYGXjJ6w32jYGJ/P072M3yWOq2S1dvDthI3nRT8MFjZ1wHDAYHrSpfDNJ3v2fvZ
cQIhAPgRPmVYn+TGd59asiqG1SZqh+p+CRYHW7B8BsicG5t3AiEA4HYNOohlgWan
8tKgqLJgUdPFbaHZO1nDyBgvV8hvWZUCIQDDdCq6hYKuKeYUy8w3j7cgJq3ih922
2qNWwdJCfCWQbwIgTY0cBvQnNe0067WQIpj2pG7pkHZR6qqZ9SE+AjNTHX0CIQCI
Mgq55Y9MCq5wqzy141rnxrJxTwK9ABo3IAFMWEov3g==
-----END RSA PRIVATE KEY-----
"""
RSA512_PUBLIC = (
    "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBANmBe10IgY+u7h3enWTukkqtUD5PR52T"
    "b/mPfjC0QJTocVBq6Za/PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQ=="
)


@dataclass(frozen=True)
class SigningKey:
    """A key pair: what dkimpy signs with and the p= value of its DNS record."""

    kind: str  # "rsa" or "ed25519"
    private: bytes
    public: str

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if self.kind == "rsa" else b"ed25519-sha256"

    def record(self, extra: str = "") -> str:
        return f"v=DKIM1; k={self.kind}; {extra}p={self.public}"


def _rsa_key(bits: int) -> SigningKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SigningKey("rsa", private, base64.b64encode(public).decode())


def _ed25519_key() -> SigningKey:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SigningKey("ed25519", base64.b64encode(seed), base64.b64encode(public).decode())


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {
        "rsa1024": _rsa_key(1024),
        "rsa2048": _rsa_key(2048),
        "ed25519": _ed25519_key(),
        "rsa512": SigningKey("rsa", RSA512_PEM, RSA512_PUBLIC),
    }


def sign(
    msg: bytes,
    key: SigningKey,
    *,
    domain: bytes = b"example.com",
    selector: bytes = b"sel",
    canon: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
    include: tuple[bytes, ...] = (b"from", b"to", b"subject", b"date", b"message-id"),
    algorithm: bytes | None = None,
    length: bool = False,
    tags: dict[bytes, bytes | None] | None = None,
) -> bytes:
    """A DKIM-Signature header line made by dkimpy, with optional tag overrides.

    dkimpy's `DKIM.sign` cannot set t= or x=; this assembles the same fields it does and
    hands them to dkimpy's own header generator.  `tags` adds or replaces tags (None
    removes one); t= defaults to NOW.
    """
    algorithm = algorithm or key.algorithm
    signer = dkim.DKIM(msg, signature_algorithm=algorithm)
    policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(b"/".join(canon))
    body = policy.canonicalize_body(signer.body)
    signer.hasher = dkim.crypto.HASH_ALGORITHMS[algorithm]
    fields: dict[bytes, bytes | None] = {
        b"v": b"1",
        b"a": algorithm,
        b"c": b"/".join(canon),
        b"d": domain,
        b"i": b"@" + domain,
        b"q": b"dns/txt",
        b"s": selector,
        b"t": str(NOW).encode(),
    }
    if length:
        fields[b"l"] = str(len(body)).encode()
    fields.update(tags or {})
    fields[b"h"] = b" : ".join(include)
    fields[b"bh"] = base64.b64encode(signer.hasher(body).digest())
    fields[b"b"] = b"0" * 60
    if key.kind == "rsa":
        private: Any = dkim.crypto.parse_pem_private_key(key.private)
    else:
        private = nacl.signing.SigningKey(key.private, encoder=nacl.encoding.Base64Encoder)
    pairs = [(name, value) for name, value in fields.items() if value is not None]
    value = signer.gen_header(pairs, include, policy, b"DKIM-Signature", private)
    return b"DKIM-Signature: " + bytes(value)


def txt(record: str, chunk: int = 255) -> str:
    """A TXT record's presentation form, split into character-strings of `chunk` bytes."""
    return " ".join(f'"{record[i:i + chunk]}"' for i in range(0, len(record), chunk))


def resolver_with(*records: tuple[str, str], ttl: int = 300) -> InMemoryResolver:
    """A resolver serving example.com with `(name, record)` TXT entries (relative names)."""
    lines = [f"{name} {ttl} IN TXT {txt(record)}" for name, record in records]
    return InMemoryResolver.from_zones({"example.com": "\n".join(lines) + "\n"})


def verifier(
    resolver: InMemoryResolver, now: float = NOW, **settings: Any
) -> DkimVerifier:
    clock_settings = DkimVerifySettings(**settings)
    return DkimVerifier(resolver, clock_settings, clock=lambda: now)


def transaction(raw: bytes, truncated: bool = False) -> Transaction:
    return replace(transaction_from_bytes(raw), body_truncated=truncated)


def verify_one(raw: bytes, resolver: InMemoryResolver, **kwargs: Any) -> DkimOutcome:
    outcomes = verifier(resolver, **kwargs).verify(transaction(raw))
    assert len(outcomes) == 1
    return outcomes[0]


# --------------------------------------------------------------------------- message.py


def test_raw_message_normalises_folding_to_crlf():
    headers = (Header("Subject", " one\n two"), Header("From", " a@example.com"))
    txn = Transaction(None, "", (), headers, body=b"line\r\n")
    assert message.raw_message(txn) == (
        b"Subject: one\r\n two\r\nFrom: a@example.com\r\n\r\nline\r\n"
    )


def test_transaction_from_bytes_keeps_what_postfix_keeps():
    txn = transaction_from_bytes(
        b"From mbox-line\nSubject:  spaced \n\tfolded\nX-Empty:\n\nbody\nmore\n"
    )
    assert [(h.name, h.value) for h in txn.headers] == [
        ("Subject", "  spaced \n\tfolded"), ("X-Empty", "")
    ]
    assert txn.body == b"body\r\nmore\r\n"
    assert message.raw_message(txn) == (
        b"Subject:  spaced \r\n\tfolded\r\nX-Empty:\r\n\r\nbody\r\nmore\r\n"
    )


def test_transaction_from_bytes_without_headers():
    txn = transaction_from_bytes(b"\nonly a body\n")
    assert txn.headers == ()
    assert txn.body == b"only a body\r\n"
    not_a_header = transaction_from_bytes(b"no colon here\nsecond\n")
    assert not_a_header.headers == ()
    assert not_a_header.body == b"no colon here\r\nsecond\r\n"


def test_header_helpers():
    txn = transaction_from_bytes(
        b'From: "Doe, Jane" <jane@Example.COM>\nTo: a@x.example, (c) b@y.example\n'
        b"to: c@z.example\n\n"
    )
    assert message.header_values(txn, "TO") == ("a@x.example, (c) b@y.example", "c@z.example")
    first = message.first_header(txn, "to")
    assert first is not None and first.value == " a@x.example, (c) b@y.example"
    assert message.first_header(txn, "Cc") is None
    assert fromheader.author_domain(txn) == "example.com"
    addresses = fromheader.parse_from("a@x.example, (c) b@y.example")
    assert not isinstance(addresses, str)
    assert tuple(address.domain for address in addresses) == ("x.example", "y.example")
    assert message.unfold("a\r\n b\n\tc") == "a b\tc"
    two_from = transaction_from_bytes(b"From: a@a.example\nFrom: b@b.example\n\n")
    assert fromheader.author_domain(two_from) is None
    assert message.to_crlf(b"a\nb\r\nc\r") == b"a\r\nb\r\nc\r"
    crlf = b"a\r\nb\r\n"
    assert message.to_crlf(crlf) is crlf


# --------------------------------------------------------------------------- canonicalization


def _naive_content_end(data: bytes) -> int:
    end = len(data)
    while data[:end].endswith(b"\r\n"):
        end -= 2
    return end


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b" "]), max_size=30))
def test_content_end_matches_the_definition(parts: list[bytes]):
    data = b"".join(parts)
    assert content_end(data) == _naive_content_end(data)
    long = b"x" * 70 + data  # past the 64-byte window content_end looks at first
    assert content_end(long) == _naive_content_end(long)


def test_content_end_on_long_runs():
    assert content_end(b"x" + b"\r\n" * 100) == 1
    assert content_end(b"x\r" + b"\r\n" * 100) == 2
    assert content_end(b"\r\n" * 100) == 0
    assert content_end(b"x" * 100 + b"\n" + b"\r\n" * 40) == 101


_BODY_PIECES = st.sampled_from([b"a", b"bc", b" ", b"\t", b"  \t ", b"\r\n", b"\r"])


@settings(max_examples=300)
@given(st.lists(_BODY_PIECES, max_size=40))
def test_body_canonicalization_agrees_with_dkimpy(parts: list[bytes]):
    body = b"".join(parts)
    if body:
        body += b"\r\n"  # as Postfix delivers it: the last line is terminated
    for name in ("simple", "relaxed"):
        reference = dkim.canonicalization.ALGORITHMS[name.encode()]
        assert canonicalize_body(body, name) == reference.canonicalize_body(body), name


@given(st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n ", b"\r\n\t", b"x:y"]), max_size=20))
def test_relaxed_header_agrees_with_dkimpy(parts: list[bytes]):
    value = b"".join(parts) + b"\r\n"
    expected = dkim.canonicalization.Relaxed.canonicalize_headers([[b"Sub-Ject ", value]])
    name, canonical = expected[0]
    assert relaxed_header(b"Sub-Ject ", value) == name + b":" + canonical


def test_empty_and_blank_bodies():
    assert canonicalize_body(b"", "simple") == b"\r\n"
    assert canonicalize_body(b"", "relaxed") == b""
    assert canonicalize_body(b"\r\n\r\n", "simple") == b"\r\n"
    assert canonicalize_body(b" \t\r\n\r\n", "relaxed") == b""
    assert canonicalize_body(b"unterminated", "simple") == b"unterminated\r\n"


def test_canonicalization_is_linear_on_hostile_white_space():
    # dkimpy's relaxed body regex needs about a second for 20,000 spaces; 2 MB here.
    body = (b" " * 1_000_000 + b"x\r\n") * 2
    started = time.perf_counter()
    assert canonicalize_body(body, "relaxed") == b" x\r\n" * 2
    assert canonicalize_body(b"\r\n" * 1_000_000 + b"x", "simple").endswith(b"x\r\n")
    assert time.perf_counter() - started < 2.0


def test_tag_list_parser():
    assert parse_tag_list(b" v=1;\r\n\ta = rsa-sha256 ; b=AB\r\n CD;") == {
        "v": b"1", "a": b"rsa-sha256", "b": b"AB\r\n CD"
    }
    for bad in (b"v=1;;a=2", b"v=1; a", b"1v=2", b"v=1; v=1", b"v=1; b h=2"):
        with pytest.raises(ValueError):
            parse_tag_list(bad)


# --------------------------------------------------------------------------- pass and fail


@pytest.mark.parametrize("name", ["rsa1024", "rsa2048", "ed25519"])
@pytest.mark.parametrize("canon", [(b"simple", b"simple"), (b"simple", b"relaxed"),
                                   (b"relaxed", b"simple"), (b"relaxed", b"relaxed")])
def test_signatures_verify(keys, name, canon):
    key = keys[name]
    signed = sign(MESSAGE, key, canon=canon) + MESSAGE
    outcome = verify_one(signed, resolver_with(("sel._domainkey", key.record())))
    assert outcome.result is DkimResult.PASS, outcome.reason
    assert outcome.problem is None
    assert (outcome.domain, outcome.selector, outcome.algorithm) == (
        "example.com", "sel", key.algorithm.decode()
    )
    assert outcome.identity == "@example.com"
    assert outcome.key_bits == {"rsa1024": 1024, "rsa2048": 2048, "ed25519": 256}[name]
    assert outcome.verified and not outcome.testing


def test_message_from_postfix_with_lf_folding_verifies(keys):
    """Header values as Postfix hands them (LF folds, leading space) verify."""
    key = keys["rsa2048"]
    signed = sign(MESSAGE, key, canon=(b"simple", b"simple")) + MESSAGE
    txn = transaction_from_bytes(signed)
    assert any("\n" in h.value and "\r" not in h.value for h in txn.headers)
    outcomes = verifier(resolver_with(("sel._domainkey", key.record()))).verify(txn)
    assert [o.result for o in outcomes] == [DkimResult.PASS]


def test_changed_body_and_changed_header_have_different_reasons(keys):
    key = keys["rsa2048"]
    resolver = resolver_with(("sel._domainkey", key.record()))
    signature = sign(MESSAGE, key)
    body_changed = verify_one(signature + MESSAGE + b"P.S. added\r\n", resolver)
    assert body_changed.result is DkimResult.FAIL
    assert body_changed.problem is DkimProblem.BODY_HASH
    assert body_changed.reason == "body hash did not verify"
    header_changed = verify_one(
        signature + MESSAGE.replace(b"Quarterly", b"Quarterlx"), resolver
    )
    assert header_changed.result is DkimResult.FAIL
    assert header_changed.problem is DkimProblem.SIGNATURE
    assert header_changed.reason == "signature did not verify"
    rendered = [authresults.format_result(r) for r in auth_results([body_changed, header_changed])]
    assert 'reason="body hash did not verify"' in rendered[0]
    assert 'reason="signature did not verify"' in rendered[1]


def test_ed25519_signature_made_with_another_key_fails(keys):
    other = _ed25519_key()
    signed = sign(MESSAGE, other) + MESSAGE
    outcome = verify_one(signed, resolver_with(("sel._domainkey", keys["ed25519"].record())))
    assert (outcome.result, outcome.problem) == (DkimResult.FAIL, DkimProblem.SIGNATURE)


def test_unsigned_additional_from_fails(keys):
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key) + b"From: Mallory <boss@example.com>\r\n" + MESSAGE
    outcome = verify_one(signed, resolver_with(("sel._domainkey", key.record())))
    assert (outcome.result, outcome.problem) == (DkimResult.FAIL, DkimProblem.UNSIGNED_FROM)


def test_oversigned_from_still_verifies(keys):
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key, include=(b"from", b"from", b"subject")) + MESSAGE
    outcome = verify_one(signed, resolver_with(("sel._domainkey", key.record())))
    assert outcome.result is DkimResult.PASS


def test_from_not_signed_is_permerror_without_dns(keys):
    key = keys["rsa1024"]
    resolver = resolver_with(("sel._domainkey", key.record()))
    signed = sign(MESSAGE, key, include=(b"to", b"subject")) + MESSAGE
    outcome = verify_one(signed, resolver)
    assert (outcome.result, outcome.problem) == (DkimResult.PERMERROR, DkimProblem.FROM_NOT_SIGNED)
    assert resolver.queries == []


# --------------------------------------------------------------------------- l=, t=, x=


def test_body_length_allows_appended_content(keys):
    key = keys["rsa2048"]
    resolver = resolver_with(("sel._domainkey", key.record()))
    for canon in ((b"simple", b"simple"), (b"relaxed", b"relaxed")):
        signature = sign(MESSAGE, key, canon=canon, length=True)
        appended = verify_one(signature + MESSAGE + b"-- \r\nmailing list footer\r\n", resolver)
        assert appended.result is DkimResult.PASS, canon
        shortened = verify_one(signature + MESSAGE.replace(b"the numbers", b"numbers"), resolver)
        assert (shortened.result, shortened.problem) == (DkimResult.FAIL, DkimProblem.BODY_LENGTH)
        assert shortened.reason.startswith("body hash did not verify")


def test_expiry_and_future_timestamps(keys):
    key = keys["ed25519"]
    resolver = resolver_with(("sel._domainkey", key.record()))
    expiring = sign(MESSAGE, key, tags={b"x": str(NOW + 3600).encode()}) + MESSAGE
    assert verify_one(expiring, resolver).result is DkimResult.PASS
    within_skew = verify_one(expiring, resolver, now=NOW + 3600 + 200)
    assert within_skew.result is DkimResult.PASS
    expired = verify_one(expiring, resolver, now=NOW + 3600 + 400)
    assert (expired.result, expired.problem) == (DkimResult.PERMERROR, DkimProblem.EXPIRED)
    assert expired.reason == "signature expired (x=)"
    no_skew = verify_one(expiring, resolver, now=NOW + 3601, clock_skew=0)
    assert no_skew.problem is DkimProblem.EXPIRED
    future = verify_one(expiring, resolver, now=NOW - 1000)
    assert (future.result, future.problem) == (DkimResult.PERMERROR, DkimProblem.FUTURE)
    backwards = sign(MESSAGE, key, tags={b"x": str(NOW - 10).encode()}) + MESSAGE
    assert verify_one(backwards, resolver, now=NOW - 20).problem is DkimProblem.EXPIRED
    no_timestamp = sign(MESSAGE, key, tags={b"t": None}) + MESSAGE
    assert verify_one(no_timestamp, resolver, now=0).result is DkimResult.PASS


# --------------------------------------------------------------------------- keys


def test_split_txt_strings_are_joined(keys):
    key = keys["rsa2048"]
    record = key.record()
    signed = sign(MESSAGE, key) + MESSAGE
    for chunk in (1, 7, 100):
        lines = f"sel._domainkey 300 IN TXT {txt(record, chunk)}\n"
        resolver = InMemoryResolver.from_zones({"example.com": lines})
        assert verify_one(signed, resolver).result is DkimResult.PASS, chunk


def test_odd_but_valid_key_records(keys):
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key) + MESSAGE
    spaced = " ".join(key.public[i:i + 50] for i in range(0, len(key.public), 50))
    for record in (
        f"p={key.public}",  # no v=, no k=: RSA by default
        f"v=DKIM1;k=RSA;h=sha1:sha256;s=email:*;n=notes here;p={spaced};",
        f"v=DKIM1; k=rsa; t=; g=*; x_unknown=tag; p={key.public}",
    ):
        outcome = verify_one(signed, resolver_with(("sel._domainkey", record)))
        assert outcome.result is DkimResult.PASS, record


def test_unrelated_txt_record_next_to_the_key(keys):
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key) + MESSAGE
    resolver = resolver_with(
        ("sel._domainkey", "v=spf1 -all"), ("sel._domainkey", key.record())
    )
    assert verify_one(signed, resolver).result is DkimResult.PASS


@pytest.mark.parametrize(
    ("record", "result", "problem", "reason"),
    [
        ("v=DKIM1; k=rsa; p=", DkimResult.PERMERROR, DkimProblem.KEY_REVOKED, "key revoked"),
        ("v=DKIM1; p= ", DkimResult.PERMERROR, DkimProblem.KEY_REVOKED, "key revoked"),
        ("v=DKIM1; k=dsa; p={p}", DkimResult.PERMERROR, DkimProblem.KEY_TYPE,
         "unknown key type k=dsa"),
        ("v=DKIM1; k=ed25519-sha256; p={p}", DkimResult.PERMERROR, DkimProblem.KEY_TYPE, None),
        ("v=DKIM1; k=ed25519; p={p}", DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX, None),
        ("v=DKIM2; p={p}", DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX, None),
        ("v=DKIM1: k=rsa; p={p}", DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX, None),
        ("v=DKIM1; k=rsa", DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX,
         "key record has no p="),
        ("v=DKIM1; p=%%%%", DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX, None),
        ("v=DKIM1; p=AAAA", DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX, None),
        ("v=DKIM1; p={p}; p={p}", DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX, None),
        ("v=DKIM1; h=sha1; p={p}", DkimResult.PERMERROR, DkimProblem.KEY_UNUSABLE, None),
        ("v=DKIM1; s=tlsrpt; p={p}", DkimResult.PERMERROR, DkimProblem.KEY_UNUSABLE, None),
        ("garbage without tags", DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX, None),
    ],
)
def test_key_record_errors(keys, record, result, problem, reason):
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key) + MESSAGE
    outcome = verify_one(
        signed, resolver_with(("sel._domainkey", record.replace("{p}", key.public)))
    )
    assert (outcome.result, outcome.problem) == (result, problem), outcome.reason
    if reason is not None:
        assert outcome.reason == reason


def test_absurdly_long_key_record(keys):
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key) + MESSAGE
    record = key.record("n=" + "x" * 20_000 + "; ")
    outcome = verify_one(signed, resolver_with(("sel._domainkey", record)))
    assert (outcome.result, outcome.problem) == (DkimResult.PERMERROR, DkimProblem.KEY_SYNTAX)
    assert outcome.reason == "key record too long"


def test_rsa_key_for_ed25519_signature_is_a_type_mismatch(keys):
    signed = sign(MESSAGE, keys["ed25519"]) + MESSAGE
    outcome = verify_one(signed, resolver_with(("sel._domainkey", keys["rsa1024"].record())))
    assert (outcome.result, outcome.problem) == (DkimResult.PERMERROR, DkimProblem.KEY_TYPE)


def test_512_bit_key_is_refused_by_policy(keys):
    key = keys["rsa512"]
    signed = sign(MESSAGE, key) + MESSAGE
    outcome = verify_one(signed, resolver_with(("sel._domainkey", key.record())))
    assert (outcome.result, outcome.problem) == (DkimResult.POLICY, DkimProblem.KEY_TOO_SMALL)
    assert outcome.reason == "key too small (512 bits, minimum 1024)"
    assert outcome.key_bits == 512
    # The same signature is cryptographically fine: only the policy refuses it.
    lenient = verify_one(
        signed, resolver_with(("sel._domainkey", key.record())), min_key_bits=512
    )
    assert lenient.result is DkimResult.PASS
    strict = verify_one(
        sign(MESSAGE, keys["rsa1024"]) + MESSAGE,
        resolver_with(("sel._domainkey", keys["rsa1024"].record())), min_key_bits=2048,
    )
    assert strict.problem is DkimProblem.KEY_TOO_SMALL


def test_testing_keys(keys):
    key = keys["rsa1024"]
    resolver = resolver_with(("sel._domainkey", key.record("t=y; ")))
    signature = sign(MESSAGE, key)
    passing = verify_one(signature + MESSAGE, resolver)
    assert (passing.result, passing.testing) == (DkimResult.PASS, True)
    assert passing.reason == "testing key (t=y)"
    failing = verify_one(signature + MESSAGE + b"changed\r\n", resolver)
    assert (failing.result, failing.problem) == (DkimResult.NEUTRAL, DkimProblem.BODY_HASH)
    assert failing.reason == "testing key (t=y): body hash did not verify"


def test_strict_key_flag_refuses_subdomain_identity(keys):
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key, tags={b"i": b"alice@mail.example.com"}) + MESSAGE
    relaxed = verify_one(signed, resolver_with(("sel._domainkey", key.record())))
    assert relaxed.result is DkimResult.PASS
    assert relaxed.identity == "alice@mail.example.com"
    strict = verify_one(signed, resolver_with(("sel._domainkey", key.record("t=y:s; "))))
    assert (strict.result, strict.problem) == (DkimResult.PERMERROR, DkimProblem.KEY_UNUSABLE)


def test_rsa_sha1_is_policy_unless_allowed(keys):
    key = keys["rsa1024"]
    resolver = resolver_with(("sel._domainkey", key.record()))
    signed = sign(MESSAGE, key, algorithm=b"rsa-sha1") + MESSAGE
    refused = verify_one(signed, resolver)
    assert (refused.result, refused.problem) == (DkimResult.POLICY, DkimProblem.SHA1)
    assert refused.reason == "rsa-sha1 is not accepted (RFC 8301)"
    assert resolver.queries == []  # refused without looking up the key
    allowed = verify_one(signed, resolver, allow_sha1=True)
    assert allowed.result is DkimResult.PASS
    assert allowed.algorithm == "rsa-sha1"


def test_missing_key_and_dns_failures(keys):
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key) + MESSAGE
    missing = verify_one(signed, resolver_with(("other._domainkey", key.record())))
    assert (missing.result, missing.problem) == (DkimResult.PERMERROR, DkimProblem.NO_KEY)
    assert missing.reason == "no key for signature"
    resolver = resolver_with(("sel._domainkey", key.record()))
    resolver.fail("sel._domainkey.example.com", "TXT")
    check = verifier(resolver)
    outcome = check.verify(transaction(signed))[0]
    assert (outcome.result, outcome.problem) == (DkimResult.TEMPERROR, DkimProblem.KEY_DNS)
    assert outcome.reason == "key lookup failed: simulated failure"
    # A temporary failure is not cached: once DNS recovers, the next message passes.
    resolver.failing.clear()
    assert check.verify(transaction(signed))[0].result is DkimResult.PASS
    assert len(resolver.queries) == 2


def test_parsed_keys_are_cached_for_the_record_ttl(keys):
    key = keys["ed25519"]
    resolver = resolver_with(("sel._domainkey", key.record()), ttl=60)
    ticks = [1000.0]
    check = DkimVerifier(resolver, clock=lambda: NOW, monotonic=lambda: ticks[0])
    signed = transaction(sign(MESSAGE, key) + MESSAGE)
    for _ in range(3):
        assert check.verify(signed)[0].result is DkimResult.PASS
    assert len(resolver.queries) == 1
    ticks[0] += 61
    assert check.verify(signed)[0].result is DkimResult.PASS
    assert len(resolver.queries) == 2
    # Negative answers are cached too (the zone's negative TTL).
    other = transaction(sign(MESSAGE, key, selector=b"gone") + MESSAGE)
    for _ in range(2):
        assert check.verify(other)[0].problem is DkimProblem.NO_KEY
    assert len(resolver.queries) == 3


# --------------------------------------------------------------------------- body cap


def test_truncated_body_is_neutral_never_fail(keys):
    key = keys["rsa2048"]
    resolver = resolver_with(("sel._domainkey", key.record()))
    signed = sign(MESSAGE, key) + MESSAGE
    # The milter kept only a prefix: the body hash cannot be checked.
    prefix = signed[: signed.index(b"the numbers")]
    outcome = verify_one(prefix, resolver_with(("sel._domainkey", key.record())))
    assert outcome.result is DkimResult.FAIL  # untruncated: a real body-hash failure
    truncated = verifier(resolver).verify(transaction(prefix, truncated=True))[0]
    assert (truncated.result, truncated.problem) == (
        DkimResult.NEUTRAL, DkimProblem.BODY_TOO_LARGE
    )
    assert truncated.reason == "body too large to verify"
    # A forged header is still a failure: that does not depend on the body.
    forged = prefix.replace(b"Quarterly", b"Quarterlx")
    forged_outcome = verifier(resolver).verify(transaction(forged, truncated=True))[0]
    assert forged_outcome.problem is DkimProblem.SIGNATURE


def test_large_body_is_canonicalized_once_per_algorithm(keys, monkeypatch):
    key = keys["ed25519"]
    body = b"line of text with  spaces \r\n" * 40_000  # about 1 MB
    msg = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body
    signatures = b"".join(
        sign(msg, key, canon=canon)
        for canon in ((b"relaxed", b"relaxed"), (b"simple", b"relaxed"),
                      (b"relaxed", b"simple"), (b"simple", b"simple"))
    )
    calls: list[str] = []
    real = dkim_canon.canonicalize_body

    def counting(data: bytes, algorithm: str) -> bytes:
        calls.append(algorithm)
        return real(data, algorithm)

    monkeypatch.setattr(dkim_view, "canonicalize_body", counting)
    started = time.perf_counter()
    outcomes = verifier(resolver_with(("sel._domainkey", key.record()))).verify(
        transaction(signatures + msg)
    )
    elapsed = time.perf_counter() - started
    assert [o.result for o in outcomes] == [DkimResult.PASS] * 4
    assert sorted(calls) == ["relaxed", "simple"]
    assert elapsed < 5.0


def test_fifty_megabyte_body(keys):
    key = keys["rsa2048"]
    head = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    body = (b"x" * 998 + b"\r\n") * 50_000  # 50 MB
    signature = sign(head + b"small\r\n", key)  # its body hash cannot match
    resolver = resolver_with(("sel._domainkey", key.record()))
    started = time.perf_counter()
    outcome = verify_one(signature + head + body, resolver)
    assert (outcome.result, outcome.problem) == (DkimResult.FAIL, DkimProblem.BODY_HASH)
    # What the milter hands over beyond milter.max_body_size: a prefix, flagged.
    cut = verifier(resolver).verify(transaction(signature + head + body[:1_000_000], True))
    assert cut[0].result is DkimResult.NEUTRAL
    assert time.perf_counter() - started < 10.0


# --------------------------------------------------------------------------- many signatures


def test_signatures_over_the_cap_are_reported_not_verified(keys):
    key = keys["ed25519"]
    resolver = resolver_with(
        *((f"s{n}._domainkey", key.record()) for n in range(8))
    )
    signatures = b"".join(sign(MESSAGE, key, selector=f"s{n}".encode()) for n in range(8))
    outcomes = verifier(resolver, max_signatures=3).verify(transaction(signatures + MESSAGE))
    assert [o.position for o in outcomes] == [1, 2, 3, 4, 5, 6]
    assert [o.result for o in outcomes] == [DkimResult.PASS] * 3 + [DkimResult.NEUTRAL] * 3
    assert [o.verified for o in outcomes] == [True] * 3 + [False] * 3
    assert outcomes[3].reason == "not verified: over max_signatures"
    assert outcomes[3].selector == "s3" and outcomes[3].b_prefix
    assert len(resolver.queries) == 3


def test_author_domain_signature_is_verified_first(keys):
    key = keys["ed25519"]
    zones = {
        "example.com": f"sel._domainkey 300 IN TXT {txt(key.record())}\n",
        "list.example": "".join(
            f"s{n}._domainkey 300 IN TXT {txt(key.record())}\n" for n in range(6)
        ),
    }
    resolver = InMemoryResolver.from_zones(zones)
    stuffing = b"".join(
        sign(MESSAGE, key, domain=b"list.example", selector=f"s{n}".encode()) for n in range(6)
    )
    author = sign(MESSAGE, key)  # d=example.com, the From domain, at the bottom
    outcomes = verifier(resolver, max_signatures=2).verify(
        transaction(stuffing + author + MESSAGE)
    )
    verified = [o for o in outcomes if o.verified]
    assert [o.domain for o in verified] == ["list.example", "example.com"]
    assert all(o.result is DkimResult.PASS for o in verified)
    assert len(outcomes) == 4


def test_a_thousand_signatures_cost_bounded_time(keys, caplog):
    key = keys["rsa2048"]
    one = sign(MESSAGE, key)
    junk = b"DKIM-Signature: v=1; a=rsa-sha256; d=junk.example; s=x; h=from; bh=AAAA; b=AAAA\r\n"
    raw = junk * 999 + one + MESSAGE
    resolver = resolver_with(("sel._domainkey", key.record()))
    started = time.perf_counter()
    with caplog.at_level("INFO", logger="mailward.checks.dkim"):
        outcomes = verifier(resolver).verify(transaction(raw))
    elapsed = time.perf_counter() - started
    assert len(outcomes) == 10
    assert len([o for o in outcomes if o.verified]) == 5
    passing = [o for o in outcomes if o.result is DkimResult.PASS]
    assert [o.position for o in passing] == [1000]  # found despite being last
    # One lookup for the junk key (its NXDOMAIN is cached for the rest) and one for ours.
    assert len(resolver.queries) == 2
    assert "990 more DKIM signatures ignored" in caplog.text
    assert len(auth_results(outcomes)) == 10
    assert elapsed < 2.0


# --------------------------------------------------------------------------- hostile input


GARBAGE = [
    b"",
    b";;;",
    b"garbage",
    b"v=1",
    b"v=2; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-md5; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; c=weird/simple; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; q=dns/other; d=example.com; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AAAA; b=!!!!",
    b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=; b=",
    b"v=1; a=rsa-sha256; d=..; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=com; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; s=s el; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from\x01; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; d=example.org; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; i=@example.org; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; i=nobody; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; l=-1; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; t=soon; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=example.com; s=sel; h=from; x=99999999999999999999999; bh=AAAA; b=A",
    b"v=1; a=rsa-sha256; d=\xc3\xa9xample.\xff; s=sel; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=\"example.com\"; s=sel; h=from; bh=AAAA; b=AAAA \"quoted\\",
    b"\x00\x01\x02=\xff\xfe; \r\n\t=",
    b"v=1; a=rsa-sha256; d=" + b"a." * 200 + b"com; s=sel; h=from; bh=AAAA; b=AAAA",
]


@pytest.mark.parametrize("value", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_signatures_are_permerror_without_dns(value: bytes, caplog):
    raw = b"DKIM-Signature: " + value + b"\r\n" + MESSAGE
    resolver = resolver_with()
    with caplog.at_level("INFO", logger="mailward.checks.dkim"):
        outcome = verify_one(raw, resolver)
    assert outcome.result is DkimResult.PERMERROR
    assert outcome.problem in {
        DkimProblem.SYNTAX, DkimProblem.VERSION, DkimProblem.ALGORITHM,
        DkimProblem.IDENTITY, DkimProblem.FROM_NOT_SIGNED, DkimProblem.EXPIRED,
    }
    assert resolver.queries == []
    assert "dkim=permerror" in caplog.text
    header = authresults.format_header("mx.example.net", auth_results([outcome]))
    assert header.isascii() and "\r" not in header
    assert header.count("\n") == 1  # one result, one folded line


def test_garbage_signature_keeps_a_readable_report():
    raw = (b'DKIM-Signature: v=1; a=rsa-sha256; d=ex"ample.com; s=sel; h=from; '
           b"bh=AAAA; b=QUJD REVG\r\n R0hJSktM\r\n" + MESSAGE)
    outcome = verify_one(raw, resolver_with())
    assert outcome.b_prefix == "QUJDREVG"
    result = authresults.format_result(auth_results([outcome])[0])
    assert 'header.d="ex\\"ample.com"' in result
    assert "header.b=QUJDREVG" in result


def test_message_without_headers():
    txn = Transaction(None, "", (), (), body=b"just a body\r\n")
    assert DkimVerifier(resolver_with()).verify(txn) == ()
    empty = transaction_from_bytes(b"")
    assert DkimVerifier(resolver_with()).verify(empty) == ()


def test_non_ascii_headers_verify(keys):
    key = keys["rsa2048"]
    utf8 = (
        "From: Jörg Müller <jörg@example.com>\r\nTo: Zoë <zoe@example.net>\r\n"
        "Subject: Grüße aus Köln \u2013 東京\r\n\r\nHallo Zoë!\r\n"
    ).encode()
    latin1 = b"From: J\xf6rg <j@example.com>\r\nSubject: Gr\xfc\xdfe\r\n\r\nHallo\r\n"
    resolver = resolver_with(("sel._domainkey", key.record()))
    for raw in (utf8, latin1):
        for canon in ((b"simple", b"simple"), (b"relaxed", b"relaxed")):
            signed = sign(raw, key, canon=canon, include=(b"from", b"subject")) + raw
            assert verify_one(signed, resolver).result is DkimResult.PASS, (raw[:20], canon)


def test_non_ascii_in_signature_is_reported_as_ascii():
    raw = ("DKIM-Signature: v=1; a=rsa-sha256; d=bücher.example; s=sél; h=from; "
           "bh=AAAA; b=AAAA\r\n").encode() + MESSAGE
    resolver = resolver_with()
    outcome = verify_one(raw, resolver)
    # d= with a U-label is converted for the lookup; s= with one is not a selector.
    assert (outcome.result, outcome.problem) == (DkimResult.PERMERROR, DkimProblem.SYNTAX)
    assert outcome.domain == "b?cher.example"
    assert authresults.format_result(auth_results([outcome])[0]).isascii()


def test_idn_domain_is_looked_up_as_a_label(keys):
    key = keys["ed25519"]
    raw = sign(MESSAGE, key, domain="bücher.example".encode()) + MESSAGE
    resolver = InMemoryResolver.from_zones(
        {"xn--bcher-kva.example": f"sel._domainkey 300 IN TXT {txt(key.record())}\n"}
    )
    # dkimpy hashes d= as written; the key comes from the A-label name.
    outcome = verify_one(raw, resolver)
    assert outcome.result is DkimResult.PASS
    assert resolver.queries == [("sel._domainkey.xn--bcher-kva.example", "TXT")]


# --------------------------------------------------------------------------- A-R


def test_auth_results():
    assert auth_results([]) == auth_results(())
    (none,) = auth_results([])
    assert (none.method, none.result, none.properties) == ("dkim", "none", ())
    outcome = DkimOutcome(
        DkimResult.PASS, domain="example.com", selector="sel", algorithm="ed25519-sha256",
        identity="", b_prefix="abcdefgh", position=1,
    )
    failed = replace(
        outcome, result=DkimResult.FAIL, reason="body hash did not verify",
        problem=DkimProblem.BODY_HASH, identity="@example.com",
    )
    header = authresults.format_header("mx.example.net", auth_results([outcome, failed]))
    assert header == (
        "mx.example.net;\n"
        "\tdkim=pass header.d=example.com header.s=sel header.a=ed25519-sha256"
        " header.b=abcdefgh;\n"
        '\tdkim=fail reason="body hash did not verify" header.d=example.com'
        " header.i=@example.com header.s=sel header.a=ed25519-sha256 header.b=abcdefgh"
    )


def test_check_interface(keys):
    key = keys["rsa1024"]
    signed = transaction(sign(MESSAGE, key) + MESSAGE)
    check = DkimVerifier(resolver_with(("sel._domainkey", key.record())), clock=lambda: NOW)
    assert check.method == "dkim"
    results = dkim_auth_results(check, signed)
    assert [(r.method, r.result) for r in results] == [("dkim", "pass")]
    props = {p.name: p.value for p in results[0].properties}
    assert props["d"] == "example.com" and props["s"] == "sel"
    assert props["a"] == "rsa-sha256" and len(props["b"]) == 8
    settings = Settings()
    off_settings = replace(settings, dkim=replace(
        settings.dkim, verify=DkimVerifySettings(verify=False)))
    # `[dkim] verify = false`: no DKIM check at all, so not even dkim=none is reported.
    assert dkim_check.SPEC.build(BuildContext(off_settings, None, resolver_with())) is None


def test_signature_b_value_inside_other_tags_is_not_touched(keys):
    """Only the b= tag's value is blanked, not "b=" text inside another tag's value."""
    key = keys["rsa1024"]
    signed = sign(MESSAGE, key, tags={b"z": b"From:x=20b=3Dy|Subject:b=3D1"}) + MESSAGE
    outcome = verify_one(signed, resolver_with(("sel._domainkey", key.record())))
    assert outcome.result is DkimResult.PASS


def test_body_hash_digest_helper_matches_hashlib():
    body = b"x \r\n\r\n"
    txn = Transaction(None, "", (), (Header("From", " a@example.com"),), body=body)
    view = dkim_view.MessageView(txn)
    assert view.body_digest("relaxed", "sha256", None) == hashlib.sha256(b"x\r\n").digest()
    assert view.body_digest("simple", "sha256", 2) == hashlib.sha256(b"x ").digest()
    assert view.body_digest("simple", "sha256", 100) is None


# --------------------------------------------------------------------------- config


def test_dkim_verify_settings_from_toml():
    settings = parse_settings(
        "[dkim]\nverify = false\nmax_signatures = 3\nmin_key_bits = 2048\n"
        "allow_sha1 = true\nclock_skew = 0\n"
    )
    assert settings.dkim.verify == DkimVerifySettings(
        verify=False, max_signatures=3, min_key_bits=2048, allow_sha1=True, clock_skew=0
    )
    assert parse_settings("").dkim.verify == DkimVerifySettings(
        verify=True, max_signatures=5, min_key_bits=1024, allow_sha1=False, clock_skew=300
    )


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("min_key_bits = 512", "dkim.min_key_bits"),
        ("max_signatures = 0", "dkim.max_signatures"),
        ("allow_sha1 = 1", "dkim.allow_sha1"),
        ("clock_skew = -1", "dkim.clock_skew"),
        ("unknown = 1", "dkim.unknown"),
    ],
)
def test_dkim_verify_settings_errors(line: str, path: str):
    with pytest.raises(ConfigError) as error:
        parse_settings(f"[dkim]\n{line}\n")
    assert path in str(error.value)
