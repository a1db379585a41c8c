"""ARC sealing (RFC 8617) as the inbound path uses it: typed results in, an ARC Set out
that dkimpy and our own verifier accept, chains extended or ended as they must be."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from prometheus_client import REGISTRY

from mailward.checks.arc import ArcResult, ArcVerifier
from mailward.config import ArcSettings, ConfigError, GeneralSettings, Settings, parse_settings
from mailward.dns import InMemoryResolver
from mailward.model import AuthProperty, AuthResult, Connection, Header, Transaction
from mailward.signing.arc import ArcSealer, build_sealer, consolidate_results
from mailward.signing.keys import KeyLoadError, LoadedKey, zone_record

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY = LoadedKey("forwarder.example", "arc", Path("/keys/arc.key"), RSA_KEY)
OTHER = LoadedKey("list.example", "arc2", Path("/keys/arc2.key"),
                  rsa.generate_private_key(public_exponent=65537, key_size=2048))
SETTINGS = Settings(general=GeneralSettings(authserv_id="mx.forwarder.example"),
                    arc=ArcSettings(seal=True))
RESULTS = (
    AuthResult("spf", "pass", properties=(AuthProperty("smtp", "mailfrom", "a@origin.example"),)),
    AuthResult("dkim", "pass", properties=(AuthProperty("header", "d", "origin.example"),)),
    AuthResult("dmarc", "pass", properties=(AuthProperty("header", "from", "origin.example"),)),
)
ZONES = {
    "forwarder.example": zone_record("arc._domainkey.forwarder.example", KEY.dns_record()),
    "list.example": zone_record("arc2._domainkey.list.example", OTHER.dns_record()),
}


def records() -> dict[str, bytes]:
    return {f"{k.record_name}.": k.dns_record().encode() for k in (KEY, OTHER)}


def transaction(extra: list[tuple[str, str]] | None = None, **fields: Any) -> Transaction:
    headers = [*(extra or []), ("From", " Alice <a@origin.example>"),
               ("To", " list@forwarder.example"), ("Subject", " Meeting\n\tnotes"),
               ("Date", " Mon, 01 Jan 2024 10:00:00 +0000"), ("Message-ID", " <1@origin.example>")]
    body = b"Hello   list.\r\n\r\n"
    values: dict[str, Any] = {"body_size": len(body)}
    values.update(fields)
    return Transaction("Q1", "a@origin.example", ("list@forwarder.example",),
                       tuple(Header(n, v) for n, v in headers), body, **values)


def with_edits(tx: Transaction, edits: Any) -> Transaction:
    """The transaction as the next hop receives it: our set on top (Postfix-style LF folds)."""
    added = tuple(Header(e.name, " " + e.value) for e in reversed(edits))
    return replace(tx, headers=added + tx.headers)


def raw(tx: Transaction) -> bytes:
    return b"".join(h.name.encode() + b":" + h.raw_value().replace(b"\n", b"\r\n") + b"\r\n"
                    for h in tx.headers) + b"\r\n" + tx.body


def dkimpy_cv(message: bytes) -> bytes | None:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records().get(name.decode())

    cv, _, _ = dkim.arc_verify(message, dnsfunc=dnsfunc)
    return bytes(cv) if cv is not None else None


def sealer(key: LoadedKey = KEY, **arc: Any) -> ArcSealer:
    settings = replace(SETTINGS, arc=replace(SETTINGS.arc, **arc))
    return ArcSealer(settings, key=key, clock=lambda: 1_700_000_000)


def metric(result: str) -> float:
    return REGISTRY.get_sample_value("mailward_arc_seals_total", {"result": result}) or 0.0


def test_first_set_is_cv_none_and_both_verifiers_accept_it() -> None:
    tx = transaction()
    before = metric("none")
    edits = sealer().seal(tx, RESULTS, ArcResult.NONE)
    assert [e.name for e in edits] == [
        "ARC-Authentication-Results", "ARC-Message-Signature", "ARC-Seal"]
    aar = " ".join(edits[0].value.split())
    assert aar == ("i=1; mx.forwarder.example; arc=none; spf=pass smtp.mailfrom=a@origin.example; "
                   "dkim=pass header.d=origin.example; dmarc=pass header.from=origin.example")
    assert "cv=none;" in edits[2].value and "i=1;" in edits[2].value
    assert metric("none") == before + 1
    sealed = with_edits(tx, edits)
    assert dkimpy_cv(raw(sealed)) == b"pass"
    outcome = ArcVerifier(InMemoryResolver.from_zones(ZONES)).verify(sealed)
    assert outcome.result is ArcResult.PASS, outcome
    assert outcome.sealers == ("forwarder.example",)
    assert outcome.instances[0].authentication_results.says("dkim", "pass",
                                                            {"header.d": "origin.example"})


def test_second_hop_extends_a_passing_chain() -> None:
    first = with_edits(transaction(), sealer(OTHER).seal(transaction(), RESULTS, "none"))
    edits = sealer().seal(first, (AuthResult("arc", "pass"), *RESULTS), ArcResult.PASS)
    assert "cv=pass;" in edits[2].value and edits[0].value.startswith("i=2;")
    second = with_edits(first, edits)
    assert dkimpy_cv(raw(second)) == b"pass"
    outcome = ArcVerifier(InMemoryResolver.from_zones(ZONES)).verify(second)
    assert outcome.result is ArcResult.PASS and outcome.sealers == ("list.example",
                                                                    "forwarder.example")


def test_failed_chain_is_sealed_cv_fail_covering_only_our_set() -> None:
    first = with_edits(transaction(), sealer(OTHER).seal(transaction(), RESULTS, "none"))
    tampered = replace(first, body=b"Changed in transit.\r\n")  # breaks the AMS of i=1
    assert ArcVerifier(InMemoryResolver.from_zones(ZONES)).verify(tampered).result is \
        ArcResult.FAIL
    edits = sealer().seal(tampered, RESULTS, ArcResult.FAIL)
    assert "cv=fail;" in edits[2].value and "arc=fail" in edits[0].value
    ended = with_edits(tampered, edits)
    outcome = ArcVerifier(InMemoryResolver.from_zones(ZONES)).verify(ended)
    assert outcome.result is ArcResult.FAIL
    # ...and nobody extends it after us, whatever they are told.
    before = metric("chain_failed")
    assert sealer().seal(ended, RESULTS, ArcResult.PASS) == ()
    assert metric("chain_failed") == before + 1


def test_chain_status_none_with_sets_present_is_never_sealed_as_pass() -> None:
    first = with_edits(transaction(), sealer(OTHER).seal(transaction(), RESULTS, "none"))
    edits = sealer().seal(first, RESULTS, "none")
    assert "cv=fail;" in edits[2].value


@pytest.mark.parametrize(("tx", "status", "result"), [
    (transaction(body_truncated=True, body_size=10_000_000), ArcResult.PASS, "oversized"),
    (transaction(), ArcResult.TEMPERROR, "temperror"),
])
def test_not_sealed_outcomes(tx: Transaction, status: ArcResult, result: str) -> None:
    before = metric(result)
    assert sealer().seal(tx, RESULTS, status) == ()
    assert metric(result) == before + 1


def test_instance_limit() -> None:
    headers = [("ARC-Seal", f" i={i}; cv=pass; a=rsa-sha256; d=x.example; s=s; b=AA")
               for i in range(50, 0, -1)]
    before = metric("limit")
    assert sealer().seal(transaction(headers), RESULTS, "pass") == ()
    assert metric("limit") == before + 1


def test_which_mail_is_sealed() -> None:
    tx = transaction()
    external = Connection(client_ip=ipaddress.ip_address("203.0.113.5"))
    relay = Connection(client_ip=ipaddress.ip_address("192.0.2.77"))
    assert sealer().applies(external, tx)  # no lists: everything inbound
    listed = sealer(seal_recipients=("forwarder.example",))
    assert listed.applies(external, tx)
    assert not sealer(seal_recipients=("other@forwarder.example",)).applies(external, tx)
    relays = sealer(seal_relays=(ipaddress.ip_network("192.0.2.0/24"),))
    assert relays.applies(relay, tx) and not relays.applies(external, tx)


def test_sealer_loads_its_key_and_refuses_bad_ones(tmp_path: Path) -> None:
    good = tmp_path / "arc.key"
    good.write_bytes(RSA_KEY.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    good.chmod(0o600)
    config = ('[arc]\nseal = true\nseal_domain = "forwarder.example"\n'
              f'seal_selector = "arc"\nseal_key = "{good}"\n')
    built = build_sealer(parse_settings(config))
    assert built is not None and built.key.public_key_b64() == KEY.public_key_b64()
    assert build_sealer(Settings()) is None
    good.chmod(0o644)
    with pytest.raises(KeyLoadError, match=r"arc\.seal_key: .*mode 0644"):
        build_sealer(parse_settings(config))
    ed = tmp_path / "ed.key"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ed.chmod(0o600)
    with pytest.raises(ConfigError, match="ARC seals with RSA only"):
        build_sealer(parse_settings(config.replace(str(good), str(ed))))


def test_consolidate_results_keeps_order_and_comments() -> None:
    headers = [
        (b"Authentication-Results", b" mx.example; arc=none;\r\n  spf=pass smtp.mfrom=a@b"),
        (b"Authentication-Results", b" other.example; dkim=fail"),
        (b"Authentication-Results", b" MX.example; dkim=pass (1024-bit key; \"x;y\") header.i=@b"),
    ]
    assert consolidate_results(headers, "mx.example") == [
        "arc=none", "spf=pass smtp.mfrom=a@b", 'dkim=pass (1024-bit key; "x;y") header.i=@b']
