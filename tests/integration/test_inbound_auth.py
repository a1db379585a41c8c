"""Inbound authentication through real Postfix, a real authoritative DNS server (nsd)
and real Dovecot: what the checks find ends up in the stored Authentication-Results.
"""

from __future__ import annotations

import email.message
import uuid

import pytest

from tests.harness import MailStack, build_message

AUTHSERV_ID = "mx.example.net"
SENDER_DOMAIN = "sender.example.org"
GOOD_CLIENT = "192.0.2.10"  # allowed by the sender's SPF record, with matching rDNS
BAD_CLIENT = "203.0.113.5"  # not allowed, no reverse zone


@pytest.fixture(scope="module")
def zones(stack: MailStack) -> None:
    stack.dns.set_zones({
        SENDER_DOMAIN: f"""
@      IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
mail   IN A   {GOOD_CLIENT}
""",
        "2.0.192.in-addr.arpa": f"10 IN PTR mail.{SENDER_DOMAIN}.\n",
        "113.0.203.in-addr.arpa": "",  # exists, but no PTR for the bad client
    })


def send(stack: MailStack, recipient: str, client: str,
         sender: str = f"alice@{SENDER_DOMAIN}") -> email.message.Message:
    subject = f"auth test {uuid.uuid4().hex}"
    message = build_message(sender, recipient, subject=subject)
    result = stack.send(sender, recipient, message, xclient_addr=client,
                        helo=f"mail.{SENDER_DOMAIN}")
    assert result.accepted, result
    return stack.dovecot.wait_for_message(
        recipient, "INBOX", lambda m: m.get("Subject") == subject, timeout=20)


def our_results(message: email.message.Message) -> dict[str, str]:
    """{method: "result ..."} from our A-R header (exactly one must be ours); SPF's
    HELO result is keyed "spf-helo" so that it does not hide the MAIL FROM one."""
    ours = [" ".join(str(v).split()) for v in message.get_all("Authentication-Results", [])
            if str(v).strip().lower().startswith(AUTHSERV_ID)]
    assert len(ours) == 1, ours
    results = {}
    for entry in (part.strip() for part in ours[0].split(";")[1:]):
        method, _, rest = entry.partition("=")
        results[f"{method}-helo" if " smtp.helo=" in f" {rest}" else method] = rest
    return results


@pytest.fixture
def milter(mailward_factory):
    """Only the milter: the policy service would refuse the unlisted client at RCPT
    already (its own tests cover that)."""
    def start(config=None):
        return mailward_factory(config, services=["milter"])
    return start


def test_allowed_client_passes_spf_and_iprev(stack, zones, milter, recipient):
    milter()
    results = our_results(send(stack, recipient, GOOD_CLIENT))
    assert results["spf"].startswith(f"pass smtp.mailfrom=alice@{SENDER_DOMAIN}")
    assert results["spf-helo"] == f"none smtp.helo=mail.{SENDER_DOMAIN}"  # HELO has no SPF
    assert results["iprev"].startswith("pass")
    assert f"policy.iprev={GOOD_CLIENT}" in results["iprev"]


def test_unlisted_client_fails_spf_and_iprev(stack, zones, milter, recipient):
    services = milter({"spf": {"received_spf": True}, "dmarc": {"enabled": False}})
    stored = send(stack, recipient, BAD_CLIENT)
    results = our_results(stored)
    assert results["spf"].startswith("fail")
    assert results["iprev"].startswith("fail")
    assert str(stored["Received-SPF"]).split()[0] == "fail"
    services.wait_for_log(rf"client=\S+\[{BAD_CLIENT}\] .*results=iprev=fail, spf=fail, spf=none")


def test_dns_outage_gives_temperror_and_the_message_still_arrives(
    stack, zones, milter, recipient
):
    # Without DMARC (which would defer: see test_dmarc_enforcement), nothing here acts
    # on the results: the message is delivered with temperror recorded.
    milter({"dns": {"timeout": 0.3}, "dmarc": {"enabled": False}})
    with stack.dns.outage():
        results = our_results(send(stack, recipient, GOOD_CLIENT))
    assert results["spf"].startswith("temperror")
    assert results["iprev"].startswith("temperror")
    # Reasons are short stable words, never dnspython's text with our resolver's address.
    for value in (results["spf"], results["iprev"]):
        assert "127.0.0.1" not in value and "Do53" not in value, value
        assert "nameservers" not in value.lower(), value
    assert "DNS timeout" in results["iprev"], results["iprev"]
