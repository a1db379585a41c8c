"""DKIM signing: canonicalization vectors, RFC 8463 vectors, dkimpy verifies what we sign,
oversigning, the signing table and every defined outcome of the signer."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from mailward.config import (
    DkimSettings,
    DkimSigningKey,
    DkimSigningRule,
    DkimSignSettings,
    Settings,
    SignFailureAction,
    SignOrigin,
    parse_settings,
)
from mailward.dkimcore.canon import (
    Canon,
    canonical_headers,
    canonicalize_body,
    relaxed_header,
    signature_header_data,
    simple_header,
)
from mailward.dns import InMemoryResolver
from mailward.model import Connection, Direction, Header, InsertHeader, Transaction
from mailward.pipeline import Pipeline
from mailward.signing.dkim import (
    DkimSigner,
    SignatureOptions,
    SigningError,
    build_signer,
    fold_tags,
    prepare,
    sign_digest,
)
from mailward.signing.keys import LoadedKey, PrivateKey
from mailward.signing.table import SigningTable

# --------------------------------------------------------------------------- keys and data

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()

# RFC 8463 Appendix A: the keys and the signed example message.
RFC8463_ED25519_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_RSA_PEM = b"""-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi
Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM
KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB
AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm
6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe
zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy
6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc
uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy
WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd
WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a
licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst
o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe
uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL
-----END RSA PRIVATE KEY-----
"""
RFC8463_HEADERS = [
    (b"From", b" Joe SixPack <joe@football.example.com>"),
    (b"To", b" Suzie Q <suzie@shopping.example.net>"),
    (b"Subject", b" Is dinner ready?"),
    (b"Date", b" Fri, 11 Jul 2003 21:00:37 -0700 (PDT)"),
    (b"Message-ID", b" <20030712040037.46341.5F8J@football.example.com>"),
]
RFC8463_BODY = b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n"
RFC8463_H = "from : to : subject : date : message-id : from : subject : date"
RFC8463_EXPECTED = {
    "ed25519-sha256": ("brisbane", "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus"
                                   "Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw=="),
    "rsa-sha256": ("test", "F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3"
                           "DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz"
                           "dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8="),
}

AUTHENTICATED = Connection(client_ip=ipaddress.ip_address("198.51.100.7"), auth_user="alice")
TRUSTED = Connection(client_ip=ipaddress.ip_address("127.0.0.1"))
LOCAL = Connection(client_ip=None)
EXTERNAL = Connection(client_ip=ipaddress.ip_address("198.51.100.7"))


def loaded(private_key: Any, domain: str = "example.com", selector: str = "sel",
           **options: Any) -> LoadedKey:
    return LoadedKey(domain, selector, Path(f"/keys/{domain}.{selector}.key"),
                     cast(PrivateKey, private_key), **options)


RSA = loaded(RSA_KEY, selector="rsa")
ED = loaded(ED_KEY, selector="ed")


def transaction(headers: list[tuple[str, str]] | None = None, body: bytes = b"Hello.\r\n",
                **fields: Any) -> Transaction:
    if headers is None:
        headers = [
            ("From", " Alice <alice@example.com>"),
            ("To", " bob@example.net"),
            ("Subject", " A test\n\twith a folded subject  "),
            ("Date", " Mon, 01 Jan 2024 10:00:00 +0000"),
            ("Message-ID", " <1@example.com>"),
        ]
    values: dict[str, Any] = {"body_size": len(body)}
    values.update(fields)
    return Transaction("Q1", "alice@example.com", ("bob@example.net",),
                       tuple(Header(n, v) for n, v in headers), body, **values)


def settings(**sign: Any) -> Settings:
    return Settings(dkim=DkimSettings(sign=replace(DkimSignSettings(), **sign)))


def signer(keys: tuple[LoadedKey, ...] = (RSA,), clock: float = 1_700_000_000.0,
           **sign: Any) -> DkimSigner:
    return DkimSigner(settings(**sign), keys=keys, clock=lambda: clock)


def dns_records(*keys: LoadedKey) -> dict[str, bytes]:
    return {f"{k.record_name}.": k.dns_record().encode() for k in keys}


def message_bytes(edits: Any, tx: Transaction, extra_top: bytes = b"") -> bytes:
    """The message as the MTA sends it on: our headers on top (leading space added as
    the milter session does in leading-space mode), folding as CRLF."""
    lines = [f"{e.name}: {e.value}".replace("\n", "\r\n").encode() + b"\r\n" for e in edits]
    header_block = b"".join(
        h.name.encode() + b":" + h.raw_value().replace(b"\n", b"\r\n") + b"\r\n"
        for h in tx.headers
    )
    return extra_top + b"".join(lines) + header_block + b"\r\n" + tx.body


def dkimpy_verify(message: bytes, records: dict[str, bytes], index: int = 0) -> bool:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode())

    return bool(dkim.DKIM(message).verify(index, dnsfunc=dnsfunc))


def tags_of(value: str) -> dict[str, str]:
    """A DKIM-Signature value as {tag: value}, folding white space removed."""
    pairs = (part.split("=", 1) for part in value.split(";") if part.strip())
    return {name.strip(): "".join(text.split()) for name, text in pairs}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- canonicalization


def simple_body(body: bytes) -> bytes:
    return canonicalize_body(body, Canon.SIMPLE)


def relaxed_body(body: bytes) -> bytes:
    return canonicalize_body(body, Canon.RELAXED)


def test_rfc6376_canonicalization_example() -> None:
    # RFC 6376 3.4.5, both algorithms, headers and body.
    headers = [(b"A", b" X "), (b"B ", b" Y \t\r\n\tZ  ")]
    body = b" C \r\nD \t E\r\n\r\n\r\n"
    assert b"".join(relaxed_header(n, v) for n, v in headers) == b"a:X\r\nb:Y Z\r\n"
    assert relaxed_body(body) == b" C\r\nD E\r\n"
    assert b"".join(simple_header(n, v) for n, v in headers) == (
        b"A: X \r\nB : Y \t\r\n\tZ  \r\n")
    assert simple_body(body) == b" C \r\nD \t E\r\n"


@pytest.mark.parametrize(("body", "simple", "relaxed"), [
    (b"", b"\r\n", b""),
    (b"\r\n\r\n", b"\r\n", b""),
    (b"no line end", b"no line end\r\n", b"no line end\r\n"),
    (b"trailing space   ", b"trailing space   \r\n", b"trailing space\r\n"),
    (b"bare\nLF\n\n", b"bare\r\nLF\r\n", b"bare\r\nLF\r\n"),
    (b"a\r\n \r\n\t\r\n", b"a\r\n \r\n\t\r\n", b"a\r\n"),
    (b"8bit \xe9t\xe9 \r\n", b"8bit \xe9t\xe9 \r\n", b"8bit \xe9t\xe9\r\n"),
])
def test_body_canonicalization_edges(body: bytes, simple: bytes, relaxed: bytes) -> None:
    assert simple_body(body) == simple
    assert relaxed_body(body) == relaxed


def _reference_relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 written the obvious way, line by line, to check the fast version."""
    lines = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").split(b"\r\n")
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in lines]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


_BODY_PIECES = st.sampled_from([b" ", b"  ", b"\t", b"\r\n", b"\n", b"a", b"b c", b"\xe9"])


@given(st.lists(_BODY_PIECES, max_size=60).map(b"".join))
def test_relaxed_body_matches_the_rfc_reference(body: bytes) -> None:
    assert relaxed_body(body) == _reference_relaxed_body(body)
    assert relaxed_header(b"X", body) == b"x:" + re.sub(
        rb"[ \t]+", b" ", re.sub(rb"\r?\n", b"", body)).strip(b" ") + b"\r\n"


def test_postfix_lf_folding_canonicalizes_like_crlf() -> None:
    assert relaxed_header(b"Subject", b" a\n\tb") == relaxed_header(b"Subject", b" a\r\n\tb")
    assert simple_header(b"Subject", b" a\n\tb") == b"Subject: a\r\n\tb\r\n"


def test_headers_are_selected_bottom_up_and_oversigned_names_add_nothing() -> None:
    headers = [(b"Received", b" one"), (b"From", b" a@x"), (b"Received", b" two")]
    data = canonical_headers(Canon.RELAXED, headers, ["received", "received", "received", "from"])
    assert data == b"received:two\r\nreceived:one\r\nfrom:a@x\r\n"


# --------------------------------------------------------------------------- RFC 8463 vectors


@pytest.mark.parametrize("algorithm", ["ed25519-sha256", "rsa-sha256"])
def test_rfc8463_signatures_are_reproduced(algorithm: str) -> None:
    if algorithm == "ed25519-sha256":
        key: PrivateKey = ed25519.Ed25519PrivateKey.from_private_bytes(
            base64.b64decode(RFC8463_ED25519_SEED))
    else:
        key = cast(PrivateKey, serialization.load_pem_private_key(RFC8463_RSA_PEM, None))
    selector, expected = RFC8463_EXPECTED[algorithm]
    options = SignatureOptions(Canon.RELAXED, Canon.RELAXED)
    prepared = prepare(RFC8463_HEADERS, RFC8463_BODY, options)
    assert prepared.body_hash == "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
    names = [name.strip() for name in RFC8463_H.split(":")]
    template = (f" v=1; a={algorithm}; c=relaxed/relaxed;\r\n d=football.example.com; "
                f"i=@football.example.com;\r\n q=dns/txt; s={selector}; t=1528637909; "
                f"h={RFC8463_H};\r\n bh={prepared.body_hash};\r\n b=")
    data = canonical_headers(Canon.RELAXED, RFC8463_HEADERS, names) + signature_header_data(
        Canon.RELAXED, b"DKIM-Signature", template.encode())
    signature = sign_digest(key, hashlib.sha256(data).digest())
    assert base64.b64encode(signature).decode() == expected


# --------------------------------------------------------------------------- dkimpy verifies


@pytest.mark.parametrize("canonicalization", [
    ("relaxed", "relaxed"), ("relaxed", "simple"), ("simple", "simple"), ("simple", "relaxed"),
])
@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa", "ed25519"])
def test_dkimpy_verifies_our_signature(key: LoadedKey, canonicalization: tuple[str, str]) -> None:
    tx = transaction(body=b"Hello  world.\r\n\r\nTrailing   \r\n\r\n")
    edits = signer((key,), header_canonicalization=canonicalization[0],
                   body_canonicalization=canonicalization[1]).sign(AUTHENTICATED, tx)
    assert len(edits) == 1
    value = edits[0].value
    assert f"a={key.algorithm};" in value and f"c={'/'.join(canonicalization)};" in value
    assert dkimpy_verify(message_bytes(edits, tx), dns_records(key))


def test_dual_signing_rsa_and_ed25519_in_one_pass() -> None:
    tx = transaction()
    edits = signer((RSA, ED)).sign(AUTHENTICATED, tx)
    assert [e.name for e in edits] == ["DKIM-Signature", "DKIM-Signature"]
    assert all(isinstance(e, InsertHeader) and e.index == 0 for e in edits)
    message = message_bytes(edits, tx)
    records = dns_records(RSA, ED)
    assert dkimpy_verify(message, records, 0) and dkimpy_verify(message, records, 1)
    # One canonicalization: both signatures carry the same body hash and h= list.
    tags = [tags_of(e.value) for e in edits]
    assert tags[0]["bh"] == tags[1]["bh"] and tags[0]["h"] == tags[1]["h"]


def test_signature_tags_timestamps_and_no_body_length_by_default() -> None:
    value = signer(clock=1_700_000_000.9).sign(AUTHENTICATED, transaction())[0].value
    assert value.startswith("v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=rsa;")
    assert "t=1700000000;" in value
    assert "x=" not in value and " l=" not in value and "\tl=" not in value
    assert all(len(line.expandtabs()) <= 78 for line in value.split("\n"))
    expiring = signer(expire=86400, body_length=True).sign(AUTHENTICATED, transaction())
    assert "x=1700086400;" in expiring[0].value and "l=8;" in expiring[0].value


def test_expired_signature_is_rejected_by_dkimpy() -> None:
    tx = transaction()
    edits = signer(clock=1_000_000_000, expire=60).sign(AUTHENTICATED, tx)
    with pytest.raises(dkim.ValidationError, match="x= value is past"):
        dkimpy_verify(message_bytes(edits, tx), dns_records(RSA))


def test_eight_bit_headers_and_existing_signatures_are_kept() -> None:
    existing = ("DKIM-Signature", " v=1; a=rsa-sha256; d=other.example; s=x; h=from; bh=AA; b=AA")
    tx = transaction([
        existing,
        ("From", " =?utf-8?q?J=C3=B6rg?= <joerg@example.com>"),
        ("Subject", " Gr\udcc3\udcbc\udcc3\udc9fe aus K\udcc3\udcb6ln"),  # raw UTF-8 bytes
        ("To", " bob@example.net"),
    ], body="Grüße\r\n".encode())
    edits = signer().sign(AUTHENTICATED, tx)
    assert len(edits) == 1 and all(isinstance(e, InsertHeader) for e in edits)
    message = message_bytes(edits, tx)
    assert b"Subject: Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln" in message
    assert dkimpy_verify(message, dns_records(RSA), 0)


def test_oversigning_protects_from_to_cc_subject() -> None:
    tx = transaction()
    edits = signer().sign(AUTHENTICATED, tx)
    names = tags_of(edits[0].value)["h"].split(":")
    assert names.count("from") == 2 and names.count("subject") == 2
    assert names.count("cc") == 1 and names.count("reply-to") == 1  # absent: signed as absent
    records = dns_records(RSA)
    assert dkimpy_verify(message_bytes(edits, tx), records)
    for added in (b"From: mallory@evil.example\r\n", b"Cc: mallory@evil.example\r\n",
                  b"Subject: Urgent: wire money\r\n", b"Reply-To: mallory@evil.example\r\n"):
        tampered = message_bytes(edits, tx).replace(b"\r\n\r\n", b"\r\n" + added + b"\r\n", 1)
        assert not dkimpy_verify(tampered, records), added
    harmless = message_bytes(edits, tx).replace(b"\r\n\r\n", b"\r\nX-Loop: yes\r\n\r\n", 1)
    assert dkimpy_verify(harmless, records)


def test_oversigning_can_be_configured() -> None:
    edits = signer(oversign=()).sign(AUTHENTICATED, transaction())
    names = tags_of(edits[0].value)["h"].split(":")
    assert names.count("from") == 1 and "cc" not in names


def test_fold_tags_keeps_lines_short_and_ends_with_b() -> None:
    tags = [("v", "1"), ("h", ":".join(["content-transfer-encoding"] * 8)), ("bh", "x" * 44)]
    text = fold_tags(tags, 16)
    assert text.endswith("\n\tb=")
    assert all(len(line.expandtabs()) <= 78 for line in ("x" * 16 + text).split("\n"))
    assert text.replace("\n\t", "").replace(";bh", "; bh").startswith("v=1; h=")


# --------------------------------------------------------------------------- signing table


def test_signing_table_matching_order() -> None:
    sub = loaded(RSA_KEY, "example.com", "sub", subdomains=True)
    other = loaded(ED_KEY, "example.org", "org")
    ceo = loaded(ED_KEY, "example.com", "ceo")
    catchall = loaded(RSA_KEY, "relay.example", "all")
    inactive = loaded(RSA_KEY, "example.org", "next", active=False)
    rules = (
        DkimSigningRule("boss@example.com", (("example.com", "ceo"),)),
        DkimSigningRule("*.shop.example.org", (("example.org", "org"), ("example.org", "next"))),
        DkimSigningRule("*", (("relay.example", "all"),)),
    )
    table = SigningTable.build([sub, other, ceo, catchall, inactive], rules)
    assert table.keys_for("alice@example.com") == (sub, ceo)  # both example.com keys
    assert table.keys_for("Boss@Example.COM") == (ceo,)
    assert table.keys_for("a@mail.example.com") == (sub,)  # subdomains = true
    assert table.keys_for("a@example.org") == (other,)
    assert table.keys_for("a@eu.shop.example.org") == (other,)  # inactive key skipped
    assert table.keys_for("a@shop.example.org") == (catchall,)  # *. does not match itself
    assert table.keys_for("a@unrelated.example") == (catchall,)
    assert not SigningTable.build([inactive])


def test_without_table_only_the_exact_domain_is_signed() -> None:
    table = SigningTable.build([RSA])
    assert table.keys_for("a@example.com") == (RSA,)
    assert table.keys_for("a@sub.example.com") == ()
    assert table.keys_for("a@example.net") == ()


def test_table_from_configuration(tmp_path: Path) -> None:
    parsed = parse_settings("""
        [[dkim.sign.keys]]
        domain = "example.com"
        selector = "a"
        key = "/k/a"
        [[dkim.sign.table]]
        from = "*.example.com"
        keys = ["example.com:a"]
    """)
    key = loaded(RSA_KEY, "example.com", "a")
    table = SigningTable.build([key], parsed.dkim.sign.table)
    assert table.keys_for("x@deep.sub.example.com") == (key,)


# --------------------------------------------------------------------------- outcomes


def test_which_mail_is_signed_follows_origins() -> None:
    tx = transaction()
    every = signer()
    assert every.sign(AUTHENTICATED, tx) and every.sign(TRUSTED, tx) and every.sign(LOCAL, tx)
    only_auth = signer(origins=(SignOrigin.AUTHENTICATED,))
    before = metric("mailward_dkim_sign_messages_total", result="not_selected")
    assert only_auth.sign(AUTHENTICATED, tx)
    assert only_auth.sign(TRUSTED, tx) == () and only_auth.sign(LOCAL, tx) == ()
    assert metric("mailward_dkim_sign_messages_total", result="not_selected") == before + 2
    trusted_and_authenticated = replace(TRUSTED, auth_user="alice")
    assert only_auth.sign(trusted_and_authenticated, tx)


@pytest.mark.parametrize(("headers", "result"), [
    ([("To", " bob@example.net"), ("Subject", " x")], "no_from"),
    ([("From", " a@example.com"), ("From", " b@example.com")], "multiple_from"),
    ([("From", " a@example.com, b@example.com")], "bad_from"),
    ([("From", " undisclosed")], "bad_from"),
    ([("From", " someone@elsewhere.example")], "no_key"),
])
def test_unsignable_mail_passes_unsigned_counted_and_logged(
    headers: list[tuple[str, str]], result: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = metric("mailward_dkim_sign_messages_total", result=result)
    with caplog.at_level(logging.INFO, logger="mailward.signing.dkim"):
        assert signer().sign(AUTHENTICATED, transaction(headers)) == ()
    assert metric("mailward_dkim_sign_messages_total", result=result) == before + 1
    assert "Q1: not DKIM-signed" in caplog.text


def test_truncated_body_is_never_signed() -> None:
    tx = transaction(body=b"x" * 100, body_size=5000, body_truncated=True)
    before = metric("mailward_dkim_sign_messages_total", result="oversized")
    assert signer().sign(AUTHENTICATED, tx) == ()
    assert metric("mailward_dkim_sign_messages_total", result="oversized") == before + 1
    with pytest.raises(SigningError, match=r"exceeds milter\.max_body_size"):
        signer(on_oversized=SignFailureAction.TEMPFAIL).sign(AUTHENTICATED, tx)


class _BrokenKey:
    """Stands in for a private key whose sign() fails (e.g. an HSM gone away)."""

    def sign(self, *args: Any) -> bytes:
        raise ValueError("simulated signing failure")


def test_signing_failure_follows_on_error(caplog: pytest.LogCaptureFixture) -> None:
    broken = loaded(_BrokenKey(), selector="broken")
    tx = transaction()
    with pytest.raises(SigningError):
        signer((broken,)).sign(AUTHENTICATED, tx)
    before = metric("mailward_dkim_sign_messages_total", result="error")
    assert signer((broken,), on_error=SignFailureAction.UNSIGNED).sign(AUTHENTICATED, tx) == ()
    assert metric("mailward_dkim_sign_messages_total", result="error") == before + 1
    assert "simulated signing failure" in caplog.text


def test_signed_mail_is_counted_by_algorithm() -> None:
    before = metric("mailward_dkim_signatures_added_total", algorithm="ed25519-sha256")
    signed = metric("mailward_dkim_sign_messages_total", result="signed")
    signer((RSA, ED)).sign(AUTHENTICATED, transaction())
    assert metric("mailward_dkim_signatures_added_total",
                  algorithm="ed25519-sha256") == before + 1
    assert metric("mailward_dkim_sign_messages_total", result="signed") == signed + 1


def test_idn_from_domain_matches_its_a_label_key() -> None:
    key = loaded(RSA_KEY, "xn--bcher-kva.example", "s")
    tx = transaction([("From", " kunde@bücher.example".encode().decode("utf-8"))])
    assert signer((key,)).sign(AUTHENTICATED, tx)


# --------------------------------------------------------------------------- pipeline


def test_pipeline_signs_outbound_after_its_authentication_results() -> None:
    pipeline = Pipeline(settings=settings(), resolver=InMemoryResolver(),
                        signer=signer((RSA, ED)))
    tx = transaction()
    verdict = pipeline.evaluate(AUTHENTICATED, tx)
    assert verdict.direction is Direction.OUTBOUND
    assert [e.name for e in verdict.header_edits] == [
        "Authentication-Results", "DKIM-Signature", "DKIM-Signature"]
    inbound = pipeline.evaluate(EXTERNAL, tx)
    assert "DKIM-Signature" not in [e.name for e in inbound.header_edits]


def test_build_signer_needs_keys(tmp_path: Path) -> None:
    assert build_signer(Settings()) is None
    path = tmp_path / "k.key"
    path.write_bytes(ED_KEY.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    path.chmod(0o600)
    built = build_signer(settings(keys=(DkimSigningKey("example.com", "s", path),)))
    assert built is not None and [k.algorithm for k in built.keys] == ["ed25519-sha256"]
