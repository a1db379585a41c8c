"""DMARC through the whole stack: real Postfix, nsd serving the senders' zones with
DKIM keys and DMARC records, real Dovecot with the global Sieve script.

Messages are DKIM-signed and ARC-sealed with dkimpy (an independent implementation),
with keys generated here and published in the test DNS server.
"""

from __future__ import annotations

import base64
import email.message
import re
import uuid

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import MailStack, build_message
from tests.harness.nameserver import txt
from tests.harness.process import wait_until

AUTHSERV_ID = "mx.example.net"
STRICT = "strict.example"  # p=reject
SOFT = "soft.example"  # p=quarantine
LIST = "lists.example.net"  # a mailing list that ARC-seals what it forwards
ALLOWED_CLIENT = "192.0.2.10"  # in both domains' SPF
FOREIGN_CLIENT = "203.0.113.7"  # in nobody's SPF (the list's host, a forger, ...)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def zones(stack: MailStack, key: rsa.RSAPrivateKey) -> None:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    record = txt("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())
    stack.dns.set_zones({
        # The parents, empty: the DMARC tree walk and the reverse lookups get NXDOMAIN
        # from them, as from the real DNS (nsd would refuse names outside its zones).
        "example": "",
        "net": "",
        "in-addr.arpa": "",
        STRICT: f"""
@                 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc            IN TXT "v=DMARC1; p=reject"
s1._domainkey     IN TXT {record}
""",
        SOFT: f"""
@                 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc            IN TXT "v=DMARC1; p=quarantine"
s1._domainkey     IN TXT {record}
""",
        LIST: f"""
@                 IN TXT "v=spf1 ip4:203.0.113.0/24 -all"
arc._domainkey    IN TXT {record}
""",
    })


def signed(pem: bytes, author: str, recipient: str, subject: str,
           body: str = "Hello from the DMARC tests.\r\n") -> bytes:
    message = build_message(author, recipient, subject=subject, body=body)
    domain = author.rpartition("@")[2]
    signature: bytes = dkim.sign(message, b"s1", domain.encode(), pem,
                                 include_headers=[b"from", b"to", b"subject", b"date"])
    return signature + message


def deliver(stack: MailStack, message: bytes, sender: str, recipient: str, client: str):
    return stack.send(sender, recipient, message, xclient_addr=client, helo="mail.example")


def stored(stack: MailStack, recipient: str, subject: str,
           folder: str = "INBOX") -> email.message.Message:
    return stack.dovecot.wait_for_message(
        recipient, folder, lambda m: m.get("Subject") == subject, timeout=20)


def our_header(message: email.message.Message) -> str:
    ours = [" ".join(str(v).split()) for v in message.get_all("Authentication-Results", [])
            if str(v).strip().lower().startswith(AUTHSERV_ID)]
    assert len(ours) == 1, ours
    return ours[0]


@pytest.fixture
def milter(mailward_factory):
    """Only the milter: these tests are about what it decides at end of DATA (the
    policy service would already refuse some of these senders at RCPT)."""
    def start(config=None):
        return mailward_factory(config, services=["milter"])
    return start


def test_aligned_dkim_pass_is_delivered_with_pass_results(
    stack, zones, pem, milter, recipient
):
    milter()
    subject = f"aligned {uuid.uuid4().hex}"
    result = deliver(stack, signed(pem, f"alice@{STRICT}", recipient, subject),
                     f"alice@{STRICT}", recipient, ALLOWED_CLIENT)
    assert result.accepted, result
    header = our_header(stored(stack, recipient, subject))
    assert re.search(rf"dkim=pass header\.d={STRICT} [^;]*header\.s=s1 header\.a=rsa-sha256",
                     header), header
    assert f"spf=pass smtp.mailfrom=alice@{STRICT}" in header
    assert f"dmarc=pass header.from={STRICT}" in header


def test_forged_from_of_a_reject_domain_gets_550_and_nothing_is_stored(
    stack, zones, milter, recipient
):
    services = milter()
    subject = f"forged {uuid.uuid4().hex}"
    message = build_message(f"ceo@{STRICT}", recipient, subject=subject)
    result = deliver(stack, message, "bounce@forger.example", recipient, FOREIGN_CLIENT)
    assert result.final[0] == 550, result
    assert STRICT in result.final[1]
    services.wait_for_log(rf"action=reject .*reason='DMARC reject for {STRICT}'")
    assert not [m for m in stack.dovecot.messages(recipient) if m.get("Subject") == subject]
    assert stack.postfix.queue_is_empty()


def test_quarantine_with_header_mode_is_filed_into_junk_by_sieve(
    stack, zones, milter, recipient
):
    milter({"dmarc": {"quarantine": "header"}})
    subject = f"quarantined {uuid.uuid4().hex}"
    message = build_message(f"news@{SOFT}", recipient, subject=subject)
    result = deliver(stack, message, f"news@{SOFT}", recipient, FOREIGN_CLIENT)
    assert result.accepted, result
    junk = stored(stack, recipient, subject, folder="Junk")
    assert str(junk["X-Mailward-Quarantine"]).startswith("yes")
    assert "dmarc=fail" in our_header(junk)


def test_quarantine_with_hold_mode_puts_the_message_on_hold(
    stack, zones, milter, recipient
):
    milter({"dmarc": {"quarantine": "hold"}})
    subject = f"held {uuid.uuid4().hex}"
    message = build_message(f"news@{SOFT}", recipient, subject=subject)
    result = deliver(stack, message, f"news@{SOFT}", recipient, FOREIGN_CLIENT)
    assert result.accepted, result
    held = wait_until(lambda: [m for m in stack.postfix.queue() if m.get("queue_name") == "hold"],
                      20, "the message on hold")
    assert len(held) == 1
    stack.postfix.delete_all()


def test_dns_outage_defers_and_the_message_arrives_when_dns_is_back(
    stack, zones, pem, milter, recipient
):
    milter({"dns": {"timeout": 0.3}})
    subject = f"outage {uuid.uuid4().hex}"
    message = signed(pem, f"alice@{STRICT}", recipient, subject)
    with stack.dns.outage():
        deferred = deliver(stack, message, f"alice@{STRICT}", recipient, ALLOWED_CLIENT)
    assert deferred.final[0] == 451, deferred
    retried = deliver(stack, message, f"alice@{STRICT}", recipient, ALLOWED_CLIENT)
    assert retried.accepted, retried
    assert f"dmarc=pass header.from={STRICT}" in our_header(stored(stack, recipient, subject))


def test_mailing_list_modification_with_a_trusted_arc_seal_is_delivered_with_override(
    stack, zones, pem, milter, recipient
):
    services = milter({"arc": {"trusted_sealers": [LIST]}})
    subject = f"list post {uuid.uuid4().hex}"
    original = signed(pem, f"alice@{STRICT}", f"members@{LIST}", subject)
    # What the list received and recorded, then changed (subject tag, footer), then sealed.
    modified = original.replace(f"Subject: {subject}".encode(),
                                f"Subject: [list] {subject}".encode())
    modified += b"-- \r\nYou are subscribed to members@lists.example.net\r\n"
    received = (f"Authentication-Results: {LIST}; spf=pass smtp.mailfrom=alice@{STRICT};"
                f" dkim=pass header.d={STRICT} header.s=s1; dmarc=pass header.from={STRICT}\r\n"
                ).encode() + modified
    sealed = b"".join(dkim.arc_sign(received, b"arc", LIST.encode(), pem, LIST.encode())) + (
        received)

    result = deliver(stack, sealed, f"members-bounces@{LIST}", recipient, FOREIGN_CLIENT)
    assert result.accepted, result
    header = our_header(stored(stack, recipient, f"[list] {subject}"))
    assert "dkim=fail" in header  # the list broke the author's signature
    assert "arc=pass" in header
    assert f"overridden by trusted ARC sealer {LIST}" in header
    assert services.metric_value("mailward_dmarc_enforcement_total",
                                 {"outcome": "arc_override"}) == 1.0


def test_the_same_list_post_without_trusting_the_sealer_is_rejected(
    stack, zones, pem, milter, recipient
):
    milter()
    subject = f"untrusted list {uuid.uuid4().hex}"
    original = signed(pem, f"alice@{STRICT}", f"members@{LIST}", subject)
    modified = original + b"-- \r\nfooter\r\n"
    received = (f"Authentication-Results: {LIST}; dmarc=pass header.from={STRICT}\r\n"
                ).encode() + modified
    sealed = b"".join(dkim.arc_sign(received, b"arc", LIST.encode(), pem, LIST.encode())) + (
        received)
    result = deliver(stack, sealed, f"members-bounces@{LIST}", recipient, FOREIGN_CLIENT)
    assert result.final[0] == 550, result


def test_50_mb_signed_message_is_delivered_whole_and_never_rejected_for_our_limit(
    stack, zones, pem, milter, recipient
):
    """Over milter.max_body_size the body is not hashed: DKIM says neutral, and DMARC is
    not enforced on a failure that an aligned signature might have turned into a pass."""
    stack.postfix.reconfigure({"message_size_limit": "60000000"})
    # Scoring off: this is about DKIM and DMARC at the size limit, not about where the
    # spam filter files a message that fails DMARC from a foreign client.
    services = milter({"scoring": {"enabled": False}})
    try:
        subject = f"huge {uuid.uuid4().hex}"
        line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
        body = line * (50 * 1024 * 1024 // len(line))
        message = signed(pem, f"alice@{STRICT}", recipient, subject, body=body)
        # From a client outside STRICT's SPF: only DKIM could make DMARC pass.
        result = deliver(stack, message, f"alice@{STRICT}", recipient, FOREIGN_CLIENT)
        assert result.accepted, result
        raw = next(r for r in wait_until(
            lambda: [r for r in stack.dovecot.raw_messages(recipient) if subject.encode() in r],
            60, "the 50 MB message in INBOX"))
        assert len(raw) > 50 * 1024 * 1024
        header = our_header(email.message_from_bytes(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"))
        assert "dkim=neutral" in header and "too large" in header
        assert "not enforced: message too large to verify" in header
        assert services.metric_value("mailward_dmarc_enforcement_total",
                                     {"outcome": "size_exempt"}) == 1.0
    finally:
        stack.postfix.reconfigure({"message_size_limit": "10240000"})
