"""Scoring actions through the real stack: rewrite_subject's Subject edit applied by the
milter in real Postfix, and the message filed into Junk by Dovecot's global Sieve script."""

from __future__ import annotations

import email.message
import re
import uuid

import pytest

from tests.harness import MailStack, build_message
from tests.harness.process import wait_until
from tests.harness.relay import sending_postfix

SENDER_DOMAIN = "bulk.example"
CLIENT = "203.0.113.9"
#: GTUBE's add_header variant: forces only add_header, its weight (set below) does the rest.
ADD_HEADER_GTUBE = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def zones(stack: MailStack) -> None:
    stack.dns.set_zones({
        "example": "",
        "net": "",
        "in-addr.arpa": "",
        SENDER_DOMAIN: '@ IN TXT "v=spf1 ip4:203.0.113.0/24 -all"\n',
    })


@pytest.fixture
def milter(mailward_factory):
    return mailward_factory({"scoring": {
        "required": 6.0, "rewrite_subject": 7.0, "reject": 15.0,
        "subject_template": "[SPAM {score}] {subject}",
        "weights": {"GTUBE_ADD_HEADER": 9.0}}}, services=["milter"])


def test_subject_is_rewritten_with_the_score(stack, zones, milter, recipient):
    subject = f"offer {uuid.uuid4().hex}"
    message = build_message(f"news@{SENDER_DOMAIN}", recipient, subject=subject,
                            body=f"Buy now:\r\n{ADD_HEADER_GTUBE}\r\n")
    result = stack.send(f"news@{SENDER_DOMAIN}", recipient, message, xclient_addr=CLIENT,
                        helo=f"mail.{SENDER_DOMAIN}")
    assert result.accepted, result
    stored: email.message.Message = stack.dovecot.wait_for_message(
        recipient, "Junk", lambda m: str(m.get("Subject", "")).endswith(subject), timeout=20)
    subjects = stored.get_all("Subject") or []
    assert len(subjects) == 1
    score = stored["X-Spam-Score"]
    assert subjects[0] == f"[SPAM {score}] {subject}"
    assert stored.get_all("X-Spam-Flag") == ["YES"]
    milter.wait_for_log(r"action=rewrite_subject")


def test_greylist_defers_and_the_senders_retry_is_scored_again_and_delivered(
        stack, zones, mailward_factory):
    services = mailward_factory({
        # The sending Postfix connects from 127.0.0.1: it must not count as trusted.
        "general": {"trusted_networks": ["::1/128"]},
        "state": {"backend": "sqlite", "path": str(stack.base_dir / "spam-greylist.db")},
        "scoring": {"required": 6.0, "greylist": 8.0, "reject": 50.0,
                    "greylist_delay": 2.0, "weights": {"GTUBE_ADD_HEADER": 9.0}},
    }, services=["milter"])
    sender = sending_postfix(stack.base_dir / "spam-sender-postfix", stack.postfix.smtp_port,
                             hostname=f"relay.{SENDER_DOMAIN}")
    sender.start()
    try:
        recipient = stack.unique_address()
        subject = f"greylisted {uuid.uuid4().hex}"
        sender.sendmail(build_message(f"news@{SENDER_DOMAIN}", recipient, subject=subject,
                                      body=f"Buy now:\r\n{ADD_HEADER_GTUBE}\r\n"),
                        [recipient], sender=f"news@{SENDER_DOMAIN}")
        sender.wait_for_log(
            rf"to=<{re.escape(recipient)}>.*status=deferred .*451 4\.7\.1 .*Greylisted",
            timeout=20)
        # The sender retries on its own schedule; on a loaded machine its queue manager may
        # wait longer than the short backoff asks, so nudge it (postqueue -f) while polling.
        def retried() -> email.message.Message | None:
            sender.flush()
            found = [m for m in stack.dovecot.messages(recipient, "Junk")
                     if m.get("Subject") == subject] if "Junk" in stack.dovecot.folders(
                         recipient) else []
            return found[0] if found else None
        stored = wait_until(retried, 60, "the greylisted message's retry in Junk", interval=1.0)
        sender.wait_for_log(rf"to=<{re.escape(recipient)}>.*status=sent", timeout=20)
        assert stored.get_all("X-Spam-Flag") == ["YES"]
        services.wait_for_log(r"spam greylist deferred")
        services.wait_for_log(r"spam greylist passed")
        assert not sender.problems()
    finally:
        sender.stop()
