"""Tests of the integration harness itself: each daemon does what the Mailward tests
will rely on, without Mailward (the milter and policy checks use the harness's fake).

If one of these fails, every Mailward integration test that depends on it would fail
for a reason that has nothing to do with Mailward; they pin down the ground first.
"""

from __future__ import annotations

import re
import tomllib

import dns.exception
import dns.rcode
import dns.resolver
import pytest

from tests.harness import (
    AuthoritativeDns,
    MailStack,
    PostfixInstance,
    RedisInstance,
    build_message,
    fake_service_command,
    send_with_swaks,
    txt,
)
from tests.harness import toml as harness_toml
from tests.harness.process import process_group_members
from tests.integration.conftest import MailwardFactory

pytestmark = pytest.mark.integration

CLIENT = "192.0.2.10"  # TEST-NET-1: the "internet" client every message claims to be


# --------------------------------------------------------------------------- DNS


def test_dns_answers_txt_and_nxdomain(nameserver: AuthoritativeDns) -> None:
    long_key = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A" * 12
    nameserver.set_zone("txt-test.example", [
        ("@", "TXT", "v=spf1 ip4:192.0.2.10 -all"),
        ("sel._domainkey", "TXT", long_key),
        ("mx", "A", "192.0.2.25"),
    ])
    resolver = nameserver.resolver()

    spf = resolver.resolve("txt-test.example", "TXT")
    assert [b"".join(r.strings) for r in spf] == [b"v=spf1 ip4:192.0.2.10 -all"]
    # Longer than 255 bytes: served as several strings, which join to the original.
    dkim = resolver.resolve("sel._domainkey.txt-test.example", "TXT")
    (record,) = list(dkim)
    assert len(record.strings) > 1
    assert b"".join(record.strings) == long_key.encode()
    assert [r.to_text() for r in resolver.resolve("mx.txt-test.example", "A")] == ["192.0.2.25"]

    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("missing.txt-test.example", "TXT")
    # NODATA is not NXDOMAIN: the name exists, the type does not.
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("mx.txt-test.example", "TXT")
    # A zone this server does not serve is refused, not answered ...
    assert nameserver.query("not-served.invalid", "TXT").rcode() == dns.rcode.REFUSED
    # ... but the stack serves the test TLDs empty, so other names are NXDOMAIN there.
    assert nameserver.query("not-served.example", "TXT").rcode() == dns.rcode.NXDOMAIN


def test_dns_changes_are_visible_immediately(nameserver: AuthoritativeDns) -> None:
    first = nameserver.set_zone("change.example", [("@", "TXT", "version one")])
    assert _txt(nameserver, "change.example") == ["version one"]

    second = nameserver.set_zone("change.example", "@ 60 IN TXT " + txt("version two") + "\n")
    assert second > first
    assert _txt(nameserver, "change.example") == ["version two"]

    nameserver.set_zone("other.invalid", [("@", "A", "192.0.2.1")])  # adding: restart path
    assert _txt(nameserver, "change.example") == ["version two"]

    nameserver.remove_zone("other.invalid")
    assert nameserver.query("other.invalid", "A").rcode() == dns.rcode.REFUSED
    assert "other.invalid" not in nameserver.zones


def test_dns_outage_times_out_then_recovers(nameserver: AuthoritativeDns) -> None:
    nameserver.set_zone("outage.example", [("@", "TXT", "still here")])
    port = nameserver.port
    with nameserver.outage():
        assert not nameserver.running
        with pytest.raises(dns.exception.Timeout):
            nameserver.query("outage.example", "TXT", timeout=0.5)
        with pytest.raises(dns.exception.Timeout):
            nameserver.query("outage.example", "TXT", tcp=True, timeout=0.5)
    assert nameserver.running
    assert nameserver.port == port
    assert _txt(nameserver, "outage.example") == ["still here"]


def _txt(server: AuthoritativeDns, name: str) -> list[str]:
    answer = server.resolver().resolve(name, "TXT")
    return [b"".join(r.strings).decode() for r in answer]


# --------------------------------------------------------------------------- mail flow


def test_message_is_delivered_and_readable_over_imap(stack: MailStack, recipient: str) -> None:
    mark = stack.postfix.log_mark()
    message = build_message("alice@example.org", recipient, subject="harness delivery",
                            body="line one\r\n.leading dot survives\r\n")
    result = stack.send("alice@example.org", recipient, message, xclient_addr=CLIENT,
                        xclient_name="mail.example.org")

    assert result.xclient[0] == 220
    assert result.rcpt[recipient][0] == 250
    assert result.accepted, result
    assert result.queue_id

    stored = stack.dovecot.wait_for_message(recipient)
    assert stored["Subject"] == "harness delivery"
    assert stored["Delivered-To"] == recipient
    assert stored["Return-Path"] == "<alice@example.org>"
    received = " ".join(stored.get_all("Received", []))
    assert f"mail.example.org [{CLIENT}]" in received  # XCLIENT made Postfix see the client
    payload = stored.get_payload()
    assert isinstance(payload, str)
    assert ".leading dot survives" in payload
    assert stack.dovecot.messages(recipient, "Junk") == []

    log = stack.postfix.wait_for_log(
        rf"{result.queue_id}: to=<{re.escape(recipient)}>, relay=127\.0\.0\.1.*status=sent",
        since=mark,
    )
    assert "dsn=2.0.0" in log.group(0)
    assert f"{result.queue_id}: client=mail.example.org[{CLIENT}]" in stack.postfix.log_text(mark)
    stack.postfix.wait_for_empty_queue()


def test_spam_flag_is_filed_into_junk(stack: MailStack, recipient: str) -> None:
    spam = build_message("spammer@example.org", recipient, subject="spam",
                         headers={"X-Spam-Flag": "YES", "X-Spam-Score": "12.5"})
    ham = build_message("friend@example.org", recipient, subject="ham",
                        headers={"X-Spam-Flag": "NO"})
    quarantined = build_message("dmarc@example.org", recipient, subject="quarantined",
                                headers={"X-Mailward-Quarantine": "yes"})
    for message in (spam, ham, quarantined):
        assert stack.send("x@example.org", recipient, message, xclient_addr=CLIENT).accepted

    stack.dovecot.wait_for_message(recipient, "Junk", lambda m: m["Subject"] == "spam")
    stack.dovecot.wait_for_message(recipient, "Junk", lambda m: m["Subject"] == "quarantined")
    stack.dovecot.wait_for_message(recipient, "INBOX", lambda m: m["Subject"] == "ham")
    stack.postfix.wait_for_empty_queue()

    assert sorted(m["Subject"] for m in stack.dovecot.messages(recipient, "Junk")) == [
        "quarantined", "spam"]
    assert [m["Subject"] for m in stack.dovecot.messages(recipient)] == ["ham"]
    assert "Junk" in stack.dovecot.folders(recipient)
    assert "fileinto action: stored mail into mailbox 'Junk'" in stack.dovecot.log_text()


def test_unauthorized_relay_is_refused(stack: MailStack) -> None:
    result = stack.send("alice@example.org", "bob@elsewhere.example", xclient_addr=CLIENT)
    assert result.rcpt["bob@elsewhere.example"][0] == 554
    assert "Relay access denied" in result.rcpt["bob@elsewhere.example"][1]
    assert not result.accepted


def test_authenticated_client_may_relay_and_outbound_is_captured(stack: MailStack) -> None:
    """XCLIENT LOGIN= makes the session SASL-authenticated (the outbound path); mail for
    other domains then lands in Dovecot too (capture_outbound), where a test can read it."""
    outside = stack.unique_address("bob", domain="elsewhere.example")
    result = stack.send("alice@example.net", outside, xclient_addr=CLIENT,
                        xclient={"LOGIN": "alice@example.net"})
    assert result.accepted, result
    stored = stack.dovecot.wait_for_message(outside)
    assert stored["To"] == outside
    assert "sasl_username=alice@example.net" in stack.postfix.log_text()


def test_smtp_auth_against_dovecot(stack: MailStack, recipient: str) -> None:
    password = stack.dovecot.password
    result = stack.send("alice@example.net", recipient, auth=("alice@example.net", password))
    assert result.auth[0] == 235
    assert result.accepted
    assert "sasl_method=PLAIN, sasl_username=alice@example.net" in stack.postfix.log_text()
    # (No wrong-password case: Dovecot's auth penalty would then slow down every later
    # login from 127.0.0.1 in this module by seconds.)


def test_sendmail_command_delivers(stack: MailStack, recipient: str) -> None:
    mark = stack.postfix.log_mark()
    message = build_message("robot@example.net", recipient, subject="via sendmail")
    stack.postfix.sendmail(message, [recipient], sender="robot@example.net")
    stored = stack.dovecot.wait_for_message(recipient)
    assert stored["Subject"] == "via sendmail"
    assert re.search(r"postfix/pickup\[\d+\]: \w+: uid=0 from=<robot@example.net>",
                     stack.postfix.log_text(mark))


def test_swaks_delivers(stack: MailStack, recipient: str) -> None:
    result = send_with_swaks(
        stack.postfix.smtp_port, "carol@example.org", recipient,
        headers={"Subject": "sent by swaks"}, body="swaks body", xclient_addr=CLIENT,
    )
    assert result.exit_code == 0, result.transcript
    assert "XCLIENT" in result.transcript
    stored = stack.dovecot.wait_for_message(recipient)
    assert stored["Subject"] == "sent by swaks"

    raw = build_message("carol@example.org", recipient, subject="raw data via swaks")
    result = send_with_swaks(stack.postfix.smtp_port, "carol@example.org", recipient,
                             data=raw, xclient_addr=CLIENT)
    assert result.exit_code == 0, result.transcript
    stack.dovecot.wait_for_message(recipient, predicate=lambda m: m["Subject"] ==
                                   "raw data via swaks")
    refused = send_with_swaks(stack.postfix.smtp_port, "carol@example.org",
                              "nobody@elsewhere.example", xclient_addr=CLIENT)
    assert refused.exit_code != 0
    assert "554 5.7.1" in refused.transcript


def test_deferred_mail_is_retried(stack: MailStack, recipient: str) -> None:
    """With Dovecot down the message waits in the queue; it arrives once Dovecot is back."""
    mark = stack.postfix.log_mark()
    stack.dovecot.stop()
    try:
        result = stack.send("dave@example.org", recipient, xclient_addr=CLIENT)
        assert result.accepted
        stack.postfix.wait_for_log(rf"{result.queue_id}: .*status=deferred", since=mark)
        assert result.queue_id in stack.postfix.queue_ids()
    finally:
        stack.dovecot.start()
    stack.postfix.flush()
    stack.dovecot.wait_for_message(recipient)
    stack.postfix.wait_for_empty_queue()


def test_postfix_config_and_processes(stack: MailStack) -> None:
    postfix: PostfixInstance = stack.postfix
    assert postfix.postconf("smtpd_authorized_xclient_hosts") == "127.0.0.0/8"
    assert postfix.postconf("milter_default_action") == "tempfail"
    assert postfix.postconf("virtual_transport") == f"lmtp:inet:127.0.0.1:{stack.dovecot.lmtp_port}"
    assert postfix.queue_is_empty()
    assert postfix.problems() == []
    master = postfix.master_pid
    assert master is not None and len(process_group_members(master)) >= 3  # master, qmgr, ...


# --------------------------------------------------------------------------- services


def test_fake_services_through_postfix(stack: MailStack, mailward_factory: MailwardFactory,
                                       recipient: str) -> None:
    """The Mailward plumbing, checked with a fake: Postfix calls the milter for every
    message and asks the policy service for every recipient, also from mynetworks."""
    services = mailward_factory(command=fake_service_command)
    assert stack.postfix.postconf("smtpd_milters") == services.milter_socket
    assert services.policyd_socket in stack.postfix.postconf("smtpd_recipient_restrictions")

    result = stack.send("erin@example.org", recipient, xclient_addr=CLIENT)
    assert result.accepted, result
    stored = stack.dovecot.wait_for_message(recipient)
    assert stored["X-Harness-Milter"] == "seen"

    refused = "policy-reject-1@example.net"
    result = stack.send("erin@example.org", [refused, recipient])  # from 127.0.0.1
    assert result.rcpt[refused][0] == 554
    assert "harness policy says no" in result.rcpt[refused][1]
    assert result.rcpt[recipient][0] == 250
    assert "request client=127.0.0.1 rcpt=policy-reject-1@example.net" in services.log_text(
        "policyd")

    assert services.metric_value("harness_fake_requests_total", service="milter") == 2.0
    assert (services.metric_value("harness_fake_requests_total", service="policyd") or 0) >= 3

    services.reload(wait_for=r"reloaded configuration")
    assert services.metric_value("harness_fake_reloads_total", {"service": "milter"}) == 1.0

    # A milter that is down means tempfail, not unchecked mail.
    services.stop()
    result = stack.send("erin@example.org", recipient, xclient_addr=CLIENT)
    assert result.code == 451, result
    services.start()
    assert stack.send("erin@example.org", recipient, xclient_addr=CLIENT).accepted


def test_fake_milter_over_unix_socket(stack: MailStack, mailward_factory: MailwardFactory,
                                      recipient: str) -> None:
    services = mailward_factory(command=fake_service_command, services=["milter"],
                                milter_transport="unix", metrics=False)
    assert services.milter_socket.startswith("unix:/")
    assert "check_policy_service" not in stack.postfix.postconf("smtpd_recipient_restrictions")
    assert stack.send("frank@example.org", recipient, xclient_addr=CLIENT).accepted
    assert stack.dovecot.wait_for_message(recipient)["X-Harness-Milter"] == "seen"


def test_services_config_file(stack: MailStack, mailward_factory: MailwardFactory) -> None:
    services = mailward_factory(
        {"general": {"authserv_id": "mx.test.example"},
         "dkim": {"sign": {"keys": [{"domain": "example.com", "selector": "s1", "key": "/k"}]}}},
        command=fake_service_command, attach=False,
    )
    config = tomllib.loads(services.config_path.read_text())
    assert config["general"]["authserv_id"] == "mx.test.example"
    assert config["general"]["on_internal_error"] == "tempfail"  # default kept
    assert config["dns"] == {"nameservers": ["127.0.0.1"], "port": stack.dns.port, "timeout": 1.0}
    assert config["dkim"]["sign"]["keys"][0]["selector"] == "s1"
    assert stack.postfix.postconf("smtpd_milters") == ""  # attach=False


def test_toml_writer_round_trips() -> None:
    data = {
        "general": {"authserv_id": "mx", "trusted_networks": ["127.0.0.0/8"], "flag": True},
        "dns": {"timeout": 0.5, "port": 5353},
        "quoted": {"a \"b\"": "line\nbreak ✓", "weird.key": []},
        "dkim": {"sign": {"keys": [{"domain": "a.example"}, {"domain": "b.example"}]}},
    }
    assert tomllib.loads(harness_toml.dumps(data)) == data


def test_redis(redis: RedisInstance) -> None:
    assert redis.command("PING") == b"+PONG\r\n"
    assert redis.url.startswith("redis://127.0.0.1:")
