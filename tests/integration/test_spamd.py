"""The optional SpamAssassin backend against a real spamd (tests/harness/spamd.py).

The client alone: spamd's verdicts on Debian's own sample-spam.txt (GTUBE) and
sample-nonspam.txt.  Through the whole stack (real Postfix, the milter, nsd, Dovecot):
the GTUBE-free sample spam and the sample ham are scored by SpamAssassin's rules, which
show in X-Spam-Status exactly as spamd logged them for that Message-ID, and SA's score
(at its shipped weight, 1.0) takes the spam into Junk; a spamd that is stopped leaves
mail delivered as usual, and so does one that hangs (SIGSTOP) past `timeout`, each
outcome counted in mailward_spamd_requests_total.

The private spamd carries one site rule of its own (MAILWARD_TEST_OFFER, 6.0 points,
on the sample spam's "Generic Test for Unsolicited Bulk Email" text) next to the shipped
rules, so that the GTUBE-free sample's SA score is at least 6.0 (our `required`) whatever
the shipped rules add, and the sample ham's is not touched by it.
"""

from __future__ import annotations

import email.message
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.config import SocketAddress
from mailward.spamd_client import SpamdClient
from tests.harness import MailStack, free_port
from tests.harness.spamd import EXAMPLES, SpamdInstance

SENDER_DOMAIN = "bulk.example"
#: A public-looking address with matching reverse and forward DNS (in our nsd): SA
#: scores documentation ranges (RCVD_ILLEGAL_IP) and missing rDNS (RDNS_NONE), which
#: would put the sample ham next to `required`.
CLIENT = "145.100.10.9"
CLIENT_NAME = f"mail.{SENDER_DOMAIN}"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
TEST_RULE = """
body MAILWARD_TEST_OFFER /Generic\\s+Test\\s+for\\s+Unsolicited/i
describe MAILWARD_TEST_OFFER Mailward test-harness rule (sample-spam.txt's text)
score MAILWARD_TEST_OFFER 6.0
"""


@pytest.fixture(scope="module")
def spamd(stack: MailStack) -> Iterator[SpamdInstance]:
    instance = SpamdInstance(stack.base_dir / "spamd", local_rules=TEST_RULE)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def zones(stack: MailStack) -> None:
    stack.dns.set_zones({
        "example": "",
        "in-addr.arpa": f"9.10.100.145 IN PTR {CLIENT_NAME}.\n",
        SENDER_DOMAIN: ('@ IN TXT "v=spf1 ip4:145.100.10.0/24 -all"\n'
                        f"mail IN A {CLIENT}\n"),
    })


def spamd_config(socket: str, timeout: float = 30.0) -> dict[str, object]:
    """The spamd check on; SPAMASSASSIN keeps its shipped weight (1.0: SA's own score)."""
    return {"spamd": {"enabled": True, "socket": socket, "timeout": timeout}}


def sample(name: str, recipient: str, drop_gtube: bool = False) -> tuple[bytes, str, str]:
    """Debian's sample message with our envelope's From/To and a fresh Subject and
    Message-ID (so the test finds it in Dovecot and in spamd's log)."""
    raw = (EXAMPLES / name).read_bytes()
    if drop_gtube:
        raw = b"".join(line for line in raw.splitlines(keepends=True) if GTUBE not in line)
        assert GTUBE not in raw
    token = uuid.uuid4().hex
    subject, message_id = f"{name} {token}", f"<{token}@{SENDER_DOMAIN}>"
    replaced = {b"subject": subject, b"message-id": message_id,
                b"from": f"News <news@{SENDER_DOMAIN}>", b"to": recipient}
    head, _, body = raw.partition(b"\n\n")
    lines = []
    for line in head.split(b"\n"):
        name_part = line.split(b":", 1)[0].lower()
        if name_part in replaced:
            line = name_part.title() + b": " + replaced[name_part].encode()
        lines.append(line)
    message = b"\r\n".join(lines) + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")
    return message, subject, message_id


def deliver(stack: MailStack, message: bytes, recipient: str) -> None:
    result = stack.send(f"news@{SENDER_DOMAIN}", recipient, message, xclient_addr=CLIENT,
                        xclient_name=CLIENT_NAME, helo=CLIENT_NAME)
    assert result.accepted, result


def stored(stack: MailStack, recipient: str, subject: str,
           folder: str) -> email.message.Message:
    return stack.dovecot.wait_for_message(
        recipient, folder, lambda m: m.get("Subject") == subject, timeout=60)


def status_tests(message: email.message.Message) -> set[str]:
    # Folded at commas: "tests=A,B,\r\n\tC" is one list.
    status = re.sub(r",\s+", ",", " ".join(str(message["X-Spam-Status"]).split()))
    match = re.search(r"tests=(\S+)", status)
    return set(match.group(1).split(",")) if match else set()


def sa_symbol(rule: str) -> str:
    return "SA_" + rule.upper()


# ------------------------------------------------------------------ the client alone


def test_client_gets_spamd_verdicts_on_debian_samples(spamd: SpamdInstance) -> None:
    client = SpamdClient(SocketAddress.parse(spamd.socket), 30.0)
    assert client.ping()
    spam = client.symbols((EXAMPLES / "sample-spam.txt").read_bytes())
    assert spam.is_spam and spam.score >= 1000 and spam.threshold == 5.0
    assert "GTUBE" in spam.rules
    ham = client.symbols((EXAMPLES / "sample-nonspam.txt").read_bytes())
    assert not ham.is_spam and ham.score < 5.0
    assert "GTUBE" not in ham.rules


# ------------------------------------------------------------------ the whole stack


def test_sample_spam_without_gtube_is_scored_by_spamassassin_rules(
        stack, zones, spamd, mailward_factory, recipient):
    milter = mailward_factory(spamd_config(spamd.socket), services=["milter"])
    message, subject, message_id = sample("sample-spam.txt", recipient, drop_gtube=True)
    deliver(stack, message, recipient)
    scan = spamd.result_for(message_id)
    assert "MAILWARD_TEST_OFFER" in scan.rules and "GTUBE" not in scan.rules
    assert scan.score >= 6
    stored_message = stored(stack, recipient, subject, "Junk")
    assert stored_message["X-Spam-Flag"] == "YES"
    tests = status_tests(stored_message)
    assert "SPAMASSASSIN" in tests
    assert {sa_symbol(rule) for rule in scan.rules} <= tests, (scan, tests)
    assert {name for name in tests if name.startswith("SA_")} == {
        sa_symbol(rule) for rule in scan.rules}
    # The log line's SPAMASSASSIN(score/required)(weight): SA's score, as spamd logged it
    # (spamd's log rounds it to an integer), counted at weight 1.
    logged = milter.wait_for_log(r"symbols=.*SPAMASSASSIN\((-?[\d.]+)/5\)\((-?[\d.]+)\)")
    sa_score, counted = float(logged.group(1)), float(logged.group(2))
    assert abs(sa_score - scan.score) < 1 and counted == sa_score
    assert sa_score >= 6.0  # our site rule alone gives 6.0
    assert (milter.metric_value("mailward_spamd_requests_total", {"outcome": "scored"})
            or 0) >= 1


def test_sample_nonspam_is_delivered_with_its_spamassassin_rules(
        stack, zones, spamd, mailward_factory, recipient):
    mailward_factory(spamd_config(spamd.socket), services=["milter"])
    message, subject, message_id = sample("sample-nonspam.txt", recipient)
    deliver(stack, message, recipient)
    scan = spamd.result_for(message_id)
    assert not scan.is_spam
    stored_message = stored(stack, recipient, subject, "INBOX")
    assert stored_message["X-Spam-Flag"] == "NO"
    tests = status_tests(stored_message)
    assert "SPAMASSASSIN" in tests
    assert {name for name in tests if name.startswith("SA_")} == {
        sa_symbol(rule) for rule in scan.rules}


def test_stopped_spamd_leaves_mail_delivered_and_is_counted(
        stack, zones, mailward_factory, recipient, tmp_path: Path):
    own = SpamdInstance(stack.base_dir / f"spamd-{uuid.uuid4().hex[:6]}", port=free_port())
    own.start()
    try:
        milter = mailward_factory(spamd_config(own.socket), services=["milter"])
        message, subject, message_id = sample("sample-nonspam.txt", recipient)
        deliver(stack, message, recipient)
        own.result_for(message_id)  # it was asked while it ran
        assert "SPAMASSASSIN" in status_tests(stored(stack, recipient, subject, "INBOX"))
    finally:
        own.stop()
    message, subject, _ = sample("sample-nonspam.txt", recipient)
    deliver(stack, message, recipient)
    stored_message = stored(stack, recipient, subject, "INBOX")
    assert stored_message["X-Spam-Flag"] == "NO"
    assert "SPAMASSASSIN" not in status_tests(stored_message)
    milter.wait_for_log(r"spamd: refused .*not scored")
    # This test's own milter asked twice: scored while spamd ran, refused after.
    assert milter.metric_value("mailward_spamd_requests_total", {"outcome": "scored"}) == 1
    assert milter.metric_value("mailward_spamd_requests_total",
                               {"outcome": "refused"}) == 1


def test_hung_spamd_times_out_and_mail_is_delivered(
        stack, zones, spamd, mailward_factory, recipient):
    milter = mailward_factory(spamd_config(spamd.socket, timeout=1.0), services=["milter"])
    message, subject, _ = sample("sample-nonspam.txt", recipient)
    spamd.pause()
    try:
        deliver(stack, message, recipient)
    finally:
        spamd.resume()
    stored_message = stored(stack, recipient, subject, "INBOX")
    assert stored_message["X-Spam-Flag"] == "NO"
    assert "SPAMASSASSIN" not in status_tests(stored_message)
    milter.wait_for_log(r"spamd: timeout \(no answer within 1s\): not scored")
    # A fresh milter (this test's own): its only request is this one.
    assert milter.metric_value("mailward_spamd_requests_total",
                               {"outcome": "timeout"}) == 1
