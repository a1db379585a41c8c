"""DNS lists through the whole stack: real Postfix, the milter, nsd serving private lists.

A client listed in a private DNSBL zone, an envelope sender listed in a private RHSBL
zone and a link to a domain listed in a private URI list each score their symbol, seen
in the X-Spam-Status that reaches Dovecot; a message from an unlisted client, sender and
link scores none of them.
"""

from __future__ import annotations

import email.message
import uuid

import pytest

from tests.harness import MailStack, build_message

LISTED_CLIENT = "203.0.113.9"
CLEAN_CLIENT = "203.0.113.10"
LISTS = {
    "dnsbl": {"enabled": True, "lists": [
        {"zone": "bl.lists.test", "name": "testbl", "codes": {"127.0.0.2": "RBL_SBL"}}]},
    "rhsbl": {"enabled": True, "sources": ["mail_from"], "lists": [
        {"zone": "dbl.lists.test", "name": "testdbl", "codes": {"127.0.1.2": "DBL_SPAM"}}]},
    "urilist": {"enabled": True, "lists": [{"zone": "uri.lists.test", "name": "testuri"}]},
}


@pytest.fixture(scope="module")
def zones(stack: MailStack) -> None:
    stack.dns.set_zones({
        "example": "",
        "in-addr.arpa": "",
        "listed-sender.example": '@ IN TXT "v=spf1 ip4:203.0.113.0/24 -all"\n',
        "clean-sender.example": '@ IN TXT "v=spf1 ip4:203.0.113.0/24 -all"\n',
        "bl.lists.test": "9.113.0.203 IN A 127.0.0.2\n",
        "dbl.lists.test": "listed-sender.example IN A 127.0.1.2\n",
        "uri.lists.test": "spam-shop.example IN A 127.0.0.2\n",
    })


@pytest.fixture
def milter(mailward_factory):
    return mailward_factory(LISTS, services=["milter"])


def send(stack: MailStack, client: str, sender: str, recipient: str, link: str,
         folder: str) -> email.message.Message:
    subject = f"lists {uuid.uuid4().hex}"
    message = build_message(sender, recipient, subject=subject,
                            body=f"Our offers: {link}\r\n")
    result = stack.send(sender, recipient, message, xclient_addr=client,
                        helo="mail.example")
    assert result.accepted, result
    return stack.dovecot.wait_for_message(
        recipient, folder, lambda m: m.get("Subject") == subject, timeout=20)


def spam_tests(message: email.message.Message) -> str:
    status = " ".join(str(message["X-Spam-Status"]).split())
    return status.split("tests=", 1)[1] if "tests=" in status else ""


def test_listed_client_sender_and_link_each_score(stack, zones, milter, recipient):
    message = send(stack, LISTED_CLIENT, "news@listed-sender.example", recipient,
                   "https://www.spam-shop.example/buy", folder="Junk")
    tests = spam_tests(message)
    for symbol in ("RBL_SBL", "DBL_SPAM", "URIBL_LISTED"):
        assert symbol in tests, (symbol, message["X-Spam-Status"])
    milter.wait_for_log(r"symbols=.*RBL_SBL\(testbl\)")
    milter.wait_for_log(r"symbols=.*DBL_SPAM\(testdbl:listed-sender\.example\)")
    milter.wait_for_log(r"symbols=.*URIBL_LISTED\(testuri:spam-shop\.example\)")


def test_unlisted_client_sender_and_link_score_none(stack, zones, milter, recipient):
    message = send(stack, CLEAN_CLIENT, "news@clean-sender.example", recipient,
                   "https://www.fine-shop.example/buy", folder="INBOX")
    tests = spam_tests(message)
    assert message["X-Spam-Status"], message
    for symbol in ("RBL_SBL", "DBL_SPAM", "URIBL_LISTED"):
        assert symbol not in tests, (symbol, message["X-Spam-Status"])
