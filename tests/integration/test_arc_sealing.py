"""ARC sealing as an intermediary, through real Postfix into real Dovecot: the stored
message carries our ARC Set, and both our verifier and dkimpy accept the chain."""

from __future__ import annotations

import base64
import email.message
import uuid
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailward.checks.arc import ArcResult, ArcVerifier
from mailward.config import DnsSettings
from mailward.dns import DnsResolver
from mailward.messagefile import transaction_from_bytes
from tests.harness import MailStack, build_message
from tests.harness.nameserver import txt
from tests.support.dkimpy import dkim_dnsfunc

AUTHSERV_ID = "mx.example.net"
SEALER = "forwarder.example"
AUTHOR = "author.example"
CLIENT = "192.0.2.10"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def seal_key_file(stack: MailStack, key: rsa.RSAPrivateKey) -> Path:
    path = stack.base_dir / "arc-seal.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def zones(stack: MailStack, key: rsa.RSAPrivateKey) -> None:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    record = txt("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())
    stack.dns.set_zones({
        SEALER: f"arc._domainkey IN TXT {record}\n",
        AUTHOR: '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n_dmarc IN TXT "v=DMARC1; p=none"\n',
    })


def stored_raw(stack: MailStack, recipient: str, subject: str) -> bytes:
    stack.dovecot.wait_for_message(recipient, "INBOX", lambda m: m.get("Subject") == subject,
                                   timeout=20)
    for raw in stack.dovecot.raw_messages(recipient):
        if f"Subject: {subject}".encode() in raw:
            return raw
    raise AssertionError("stored message not found")


def test_forwarded_message_leaves_with_a_valid_arc_set(
    stack, zones, seal_key_file, mailward_factory, recipient
):
    mailward_factory({"arc": {"seal": True, "seal_domain": SEALER, "seal_selector": "arc",
                              "seal_key": str(seal_key_file)}}, services=["milter"])
    subject = f"sealed {uuid.uuid4().hex}"
    message = build_message(f"alice@{AUTHOR}", recipient, subject=subject)
    result = stack.send(f"alice@{AUTHOR}", recipient, message, xclient_addr=CLIENT,
                        helo="mail.example")
    assert result.accepted, result
    raw = stored_raw(stack, recipient, subject)

    stored = email.message_from_bytes(raw)
    seal = " ".join(str(stored["ARC-Seal"]).split())
    assert "i=1" in seal and "cv=none" in seal and f"d={SEALER}" in seal
    aar = " ".join(str(stored["ARC-Authentication-Results"]).split())
    assert aar.startswith(f"i=1; {AUTHSERV_ID};")
    assert f"spf=pass smtp.mailfrom=alice@{AUTHOR}" in aar
    assert f"dmarc=pass header.from={AUTHOR}" in aar

    resolver = DnsResolver(DnsSettings(nameservers=("127.0.0.1",), port=stack.dns.port))
    ours = ArcVerifier(resolver).verify(transaction_from_bytes(raw))
    assert ours.result is ArcResult.PASS, ours
    assert ours.sealers == (SEALER,)
    cv, _results, reason = dkim.arc_verify(raw, dnsfunc=dkim_dnsfunc(resolver))
    assert cv == dkim.CV_Pass, reason


def test_a_rejected_message_is_not_sealed(stack, zones, seal_key_file, mailward_factory,
                                          recipient):
    services = mailward_factory({"arc": {"seal": True, "seal_domain": SEALER,
                                         "seal_selector": "arc",
                                         "seal_key": str(seal_key_file)}},
                                services=["milter"])
    stack.dns.set_zone("strict-sealing.example", '_dmarc IN TXT "v=DMARC1; p=reject"\n')
    message = build_message("ceo@strict-sealing.example", recipient)
    result = stack.send("bounce@forger.example", recipient, message,
                        xclient_addr="203.0.113.9", helo="mail.example")
    assert result.final[0] == 550, result
    assert services.metric_value("mailward_arc_seals_total") in (None, 0.0)
