"""mailward explain: the engine's verdict on stored messages, and the causes it names.

The Pipeline is the real one (build_inbound_checks over an in-memory zone): explain
must show what the milter would decide, not a second implementation of it.
"""

from __future__ import annotations

import base64
import ipaddress
import json

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailward.config import GeneralSettings, Settings
from mailward.dns import InMemoryResolver
from mailward.explain.headers import arc_seals, dkim_signatures, foreign_results, hops
from mailward.explain.render import as_json, as_text
from mailward.explain.trace import ExplainError, derive_inputs, explain, explain_recorded
from mailward.messagefile import transaction_from_bytes
from mailward.model import Action
from mailward.pipeline import Pipeline, build_inbound_checks

OURS = "mx.example.net"
SETTINGS = Settings(general=GeneralSettings(authserv_id=OURS))
GOOD_CLIENT = "192.0.2.10"
BAD_CLIENT = "203.0.113.9"

BASE = (
    b"Received: from mx.example.net (mx.example.net [127.0.0.1])\r\n"
    b"\tby imap.example.net (Postfix) with LMTP; Mon, 01 Jan 2024 00:00:09 +0000\r\n"
    b"Received: from mail.example.com (mail.example.com [192.0.2.10])\r\n"
    b"\tby mx.example.net (Postfix) with ESMTP id 4Xq1; Mon, 01 Jan 2024 00:00:05 +0000\r\n"
    b"Authentication-Results: relay.example.org; spf=pass smtp.mailfrom=example.com\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Quarterly report\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <r1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob,\r\nthe numbers are attached.\r\n"
)


@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(public).decode()


@pytest.fixture(scope="module")
def pipeline(key: tuple[bytes, str]) -> Pipeline:
    record = f"v=DKIM1; k=rsa; p={key[1]}"
    chunks = " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200))
    resolver = InMemoryResolver.from_zones({"example.com": f"""
@ TXT "v=spf1 ip4:{GOOD_CLIENT} -all"
sel._domainkey TXT {chunks}
_dmarc TXT "v=DMARC1; p=reject"
"""})
    return Pipeline(SETTINGS, resolver, inbound=build_inbound_checks(SETTINGS, resolver))


def signed(key: tuple[bytes, str]) -> bytes:
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    signature: bytes = dkim.sign(BASE, b"sel", b"example.com", key[0], include_headers=headers)
    return signature + BASE


def run(pipeline: Pipeline, raw: bytes, client: str | None = None, mail_from: str | None
        = "alice@example.com"):
    transaction = transaction_from_bytes(raw)
    inputs = derive_inputs(transaction, ipaddress.ip_address(client) if client else None,
                           None, mail_from)
    return explain(pipeline, SETTINGS, transaction, inputs)


def test_hops_are_oldest_first_with_delays():
    found = hops(transaction_from_bytes(BASE))
    assert [(h.from_name, str(h.client_ip), h.by) for h in found] == [
        ("mail.example.com", GOOD_CLIENT, "mx.example.net"),
        ("mx.example.net", "127.0.0.1", "imap.example.net"),
    ]
    assert found[0].delay_seconds is None
    assert found[1].delay_seconds == 4


def test_client_comes_from_the_newest_untrusted_received_or_the_options():
    transaction = transaction_from_bytes(BASE)
    inputs = derive_inputs(transaction, None, None, None)
    assert str(inputs.client_ip) == "127.0.0.1"  # nothing trusted: the newest hop
    inputs = derive_inputs(transaction, None, None, None, SETTINGS.general.is_trusted)
    # 127.0.0.1 (local delivery) is trusted: the client is the one our MX saw.
    assert (str(inputs.client_ip), inputs.helo) == (GOOD_CLIENT, "mail.example.com")
    assert inputs.source == "Received by mx.example.net from mail.example.com"
    given = derive_inputs(transaction, ipaddress.ip_address(BAD_CLIENT), "x.example", "a@b.c")
    assert (str(given.client_ip), given.helo, given.mail_from, given.source) == (
        BAD_CLIENT, "x.example", "a@b.c", "options")
    with pytest.raises(ExplainError):
        derive_inputs(transaction_from_bytes(b"From: a@b.c\r\n\r\nx"), None, None, None)


def test_signed_message_passes_and_says_why(pipeline, key):
    trace = run(pipeline, signed(key), GOOD_CLIENT)
    assert trace.verdict.action is Action.ACCEPT
    assert [s.result for s in trace.signatures] == ["pass"]
    assert trace.signatures[0].signature.signed_headers == (
        "from", "to", "subject", "date", "message-id")
    assert trace.dmarc is not None and trace.dmarc.result == "pass"
    assert "aligned" in trace.dmarc_cause
    text = as_text(trace)
    assert "dkim=pass d=example.com s=sel" in text
    assert "relay.example.org [not ours: informational]" in text


def test_footer_appended_is_named_as_a_body_change(pipeline, key):
    raw = signed(key) + b"--\r\nSent through the list\r\n"
    trace = run(pipeline, raw, GOOD_CLIENT)
    (signature,) = trace.signatures
    assert signature.result == "fail"
    assert "body changed after signing" in signature.cause
    assert "footer" in signature.cause


def test_rewritten_subject_is_named_as_a_header_change(pipeline, key):
    raw = signed(key).replace(b"Subject: Quarterly report", b"Subject: [list] Quarterly report")
    (signature,) = run(pipeline, raw, GOOD_CLIENT).signatures
    assert signature.result == "fail"
    assert "a signed header changed" in signature.cause


def test_spoofed_message_is_rejected_by_dmarc_and_names_the_key(pipeline):
    trace = run(pipeline, BASE, BAD_CLIENT)
    assert trace.verdict.action is Action.REJECT
    assert trace.dmarc is not None and trace.dmarc.result == "fail"
    assert [(a.identifier, a.passed, a.aligned) for a in trace.alignments] == [
        ("spf", False, True)]
    assert trace.deciding_key == "dmarc.enforce"
    assert "not allowed to send" in trace.spf_cause
    document = json.loads(as_json(trace))
    assert document["action"] == "reject"
    assert document["decided_by"] == "dmarc.enforce"
    assert any(symbol["name"].startswith("DMARC") for symbol in document["symbols"])


def test_arc_sets_and_foreign_results_are_listed():
    raw = (b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=lists.example.org; s=arc; b=xyz\r\n"
           b"ARC-Authentication-Results: i=1; lists.example.org; dkim=pass\r\n"
           b"Authentication-Results: mx.example.net; dmarc=pass\r\n" + BASE)
    transaction = transaction_from_bytes(raw)
    seals = arc_seals(transaction, ("lists.example.org",))
    assert [(s.instance, s.domain, s.cv, s.trusted) for s in seals] == [
        (1, "lists.example.org", "none", True)]
    found = foreign_results(transaction, OURS)
    assert [(f.header, f.authserv_id, f.ours, f.instance) for f in found] == [
        ("ARC-Authentication-Results", "lists.example.org", False, 1),
        ("Authentication-Results", OURS, True, None),
        ("Authentication-Results", "relay.example.org", False, None),
    ]
    assert dkim_signatures(transaction) == ()


def test_offline_explains_our_recorded_results_without_dns():
    raw = (b"Authentication-Results: mx.example.net; spf=fail smtp.mailfrom=alice@example.com;\r\n"
           b"\tdkim=fail reason=\"body hash did not verify\" header.d=example.com header.s=sel;\r\n"
           b"\tdmarc=fail header.from=example.com policy.dmarc=reject\r\n" + BASE)
    transaction = transaction_from_bytes(raw)
    inputs = derive_inputs(transaction, None, None, None, SETTINGS.general.is_trusted,
                           required=False)
    trace = explain_recorded(SETTINGS, transaction, inputs)
    assert trace.verdict is None
    assert [r.method for r in trace.results] == ["spf", "dkim", "dmarc"]
    (signature,) = trace.signatures
    assert "body changed after signing" in signature.cause
    assert "spoofed From" in trace.dmarc_cause
    assert json.loads(as_json(trace))["offline"] is True
    with pytest.raises(ExplainError):
        explain_recorded(SETTINGS, transaction_from_bytes(BASE), inputs)
