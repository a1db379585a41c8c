"""mailward explain on messages that went through the real stack (nsd, Postfix, the
milter, Dovecot): the re-evaluation names the same results and decision the milter
made, and the right cause for each failure.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import MailStack, build_message
from tests.harness.nameserver import txt

AUTHOR = "explain.example"
ALLOWED_CLIENT = "192.0.2.10"
FOREIGN_CLIENT = "203.0.113.7"
LIST = "list.example"  # a mailing list that ARC-seals what it forwards


@pytest.fixture(scope="module")
def pem(stack: MailStack) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    stack.dns.set_zones({
        "example": "",
        AUTHOR: f"""
@              IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc         IN TXT "v=DMARC1; p=reject"
s1._domainkey  IN TXT {txt("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())}
""",
        LIST: f"""
@              IN TXT "v=spf1 ip4:203.0.113.0/24 -all"
arc._domainkey IN TXT {txt("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())}
""",
    })
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


@pytest.fixture
def milter(mailward_factory):
    return mailward_factory(None, services=["milter"])


def signed(pem: bytes, recipient: str, subject: str, body: str = "Hello.\r\n") -> bytes:
    message = build_message(f"alice@{AUTHOR}", recipient, subject=subject, body=body)
    signature: bytes = dkim.sign(message, b"s1", AUTHOR.encode(), pem,
                                 include_headers=[b"from", b"to", b"subject", b"date"])
    return signature + message


def explain(config: Path, message: Path, *options: str) -> tuple[int, dict[str, Any], str]:
    command = [sys.executable, "-m", "mailward", "explain", "-c", str(config), str(message)]
    as_json = subprocess.run([*command, *options, "--json"], capture_output=True, timeout=60)
    as_text = subprocess.run([*command, *options], capture_output=True, timeout=60, text=True)
    assert as_json.returncode == as_text.returncode, (as_json.stderr, as_text.stderr)
    assert as_json.returncode in (0, 1), as_json.stderr
    return as_json.returncode, json.loads(as_json.stdout), as_text.stdout


def deliver_and_store(stack: MailStack, message: bytes, recipient: str, subject: str,
                      directory: Path, sender: str = f"alice@{AUTHOR}",
                      client: str = ALLOWED_CLIENT) -> Path:
    result = stack.send(sender, recipient, message, xclient_addr=client,
                        helo=f"mail.{sender.rpartition('@')[2]}")
    assert result.accepted, result
    stack.dovecot.wait_for_message(recipient, "INBOX", lambda m: m.get("Subject") == subject,
                                   timeout=20)
    (raw,) = [r for r in stack.dovecot.raw_messages(recipient) if subject.encode() in r]
    path = directory / f"{uuid.uuid4().hex}.eml"
    path.write_bytes(raw)
    return path


def our_stored_results(path: Path) -> str:
    import email

    message = email.message_from_bytes(path.read_bytes())
    (ours,) = [" ".join(str(v).split()) for v in message.get_all("Authentication-Results", [])
               if str(v).strip().startswith("mx.example.net")]
    return ours


def test_stored_signed_message_is_explained_as_the_milter_decided(
        stack, pem, milter, recipient, tmp_path):
    subject = f"explain signed {uuid.uuid4().hex}"
    path = deliver_and_store(stack, signed(pem, recipient, subject), recipient, subject,
                             tmp_path)
    status, document, text = explain(milter.config_path, path)
    assert status == 0
    # The client comes from the Received header Postfix wrote, past the trusted LMTP hop.
    assert document["inputs"]["client_ip"] == ALLOWED_CLIENT
    assert document["inputs"]["helo"] == f"mail.{AUTHOR}"
    assert document["action"] == "accept"
    assert [d["result"] for d in document["dkim"]] == ["pass"]
    assert document["dmarc"]["result"] == "pass"
    stored = our_stored_results(path)
    for result in document["results"]:  # the same results the milter stored
        if result.startswith(("dkim=", "dmarc=", "spf=pass")):
            assert result.split(" header.b=")[0] in stored, (result, stored)
    assert any(f["ours"] for f in document["found_results"])
    assert "dkim=pass d=explain.example s=s1" in text
    assert "decision: accept" in text


def test_footer_added_after_delivery_is_named_as_a_body_change(
        stack, pem, milter, recipient, tmp_path):
    subject = f"explain footer {uuid.uuid4().hex}"
    path = deliver_and_store(stack, signed(pem, recipient, subject), recipient, subject,
                             tmp_path)
    path.write_bytes(path.read_bytes() + b"-- \r\nList footer\r\n")
    status, document, text = explain(milter.config_path, path)
    (signature,) = document["dkim"]
    assert signature["result"] == "fail"
    assert "body hash" in signature["reason"]
    assert "footer" in signature["cause"]
    assert "the body changed after signing" in text
    # DMARC still passes, through SPF (the Return-Path is aligned): accepted.
    assert status == 0
    assert document["dmarc"]["result"] == "pass"
    assert document["dmarc"]["cause"].startswith("SPF passed")
    # Offline, from the results the milter recorded at delivery: the signature passed then,
    # so the footer came later (after our MX).
    status, recorded, text = explain(milter.config_path, path, "--offline")
    assert status == 0
    assert recorded["offline"] is True and recorded["action"] is None
    assert [d["result"] for d in recorded["dkim"]] == ["pass"]
    assert next(r for r in recorded["results"] if r.startswith("dkim=")).startswith(
        "dkim=pass header.d=explain.example")
    assert "not re-evaluated (--offline)" in text


def test_spoofed_message_explains_the_reply_the_milter_really_gave(
        stack, pem, milter, recipient, tmp_path):
    subject = f"explain spoof {uuid.uuid4().hex}"
    message = build_message(f"ceo@{AUTHOR}", recipient, subject=subject)
    result = stack.send("bounce@forger.example", recipient, message,
                        xclient_addr=FOREIGN_CLIENT, helo="forger.example")
    assert result.final[0] == 550, result
    path = tmp_path / "spoof.eml"
    path.write_bytes(message)
    status, document, _ = explain(milter.config_path, path, "--client-ip", FOREIGN_CLIENT,
                                  "--helo", "forger.example", "--mail-from",
                                  "bounce@forger.example")
    assert status == 1
    assert document["action"] == "reject"
    assert document["reply"].startswith("550 5.7.1")
    assert document["reply"].split(" ", 2)[2] in result.final[1]
    assert document["dmarc"]["result"] == "fail"
    assert "spoofed From" in document["dmarc"]["cause"]


def test_list_post_with_a_trusted_arc_seal_names_the_override(
        stack, pem, mailward_factory, recipient, tmp_path):
    services = mailward_factory({"arc": {"trusted_sealers": [LIST]}}, services=["milter"])
    subject = f"explain list {uuid.uuid4().hex}"
    original = signed(pem, f"members@{LIST}", subject)
    # What the list received and recorded, then changed (subject tag, footer), then sealed.
    modified = original.replace(f"Subject: {subject}".encode(),
                                f"Subject: [list] {subject}".encode())
    modified += b"-- \r\nYou are subscribed to members@list.example\r\n"
    received = (f"Authentication-Results: {LIST}; spf=pass smtp.mailfrom=alice@{AUTHOR};"
                f" dkim=pass header.d={AUTHOR} header.s=s1; dmarc=pass header.from={AUTHOR}\r\n"
                ).encode() + modified
    sealed = b"".join(dkim.arc_sign(received, b"arc", LIST.encode(), pem, LIST.encode())) + (
        received)
    path = deliver_and_store(stack, sealed, recipient, f"[list] {subject}", tmp_path,
                             sender=f"members-bounces@{LIST}", client=FOREIGN_CLIENT)
    status, document, text = explain(services.config_path, path)
    assert status == 0
    assert document["inputs"]["client_ip"] == FOREIGN_CLIENT
    (signature,) = document["dkim"]
    assert signature["result"] == "fail"
    assert "body changed" in signature["cause"]  # the footer: the body hash fails first
    assert document["arc"].startswith("arc=pass")
    assert document["arc_seals"] == [
        {"instance": 1, "domain": LIST, "cv": "none", "trusted": True}]
    assert document["dmarc"]["result"] == "fail"
    assert f"trusted ARC sealer {LIST}" in document["reason"]
    assert document["decided_by"] == "arc.trusted_sealers"
    assert f"ARC set i=1 sealed by {LIST} cv=none [trusted sealer" in text
    assert f"by {LIST} [not ours: informational]" in text
