"""The milter service through real Postfix into real Dovecot.

What an admin relies on after plugging Mailward in: every message gets exactly one
Authentication-Results header under our authserv-id, forged ones claiming our id are
gone when the client is external, nothing is lost while the milter is down, and the
metrics endpoint counts what happened.
"""

from __future__ import annotations

import email.message
import os
import re
import signal
import uuid

import pytest

from tests.harness import CHECKS_OFF, MailStack, build_message, send_with_swaks, toml
from tests.harness.process import wait_until

AUTHSERV_ID = "mx.example.net"
EXTERNAL_CLIENT = "192.0.2.10"

# These tests are about the foundation: our header, forged-header removal, the service
# lifecycle.  The authentication checks have their own tests, with their own zones.


@pytest.fixture
def mailward(mailward_factory):
    def start(config=None, **options):
        return mailward_factory(toml.deep_merge(CHECKS_OFF, config or {}), **options)
    return start


def _message_id() -> str:
    return f"<{uuid.uuid4().hex}@client.example.org>"


def _auth_results(message: email.message.Message) -> list[str]:
    return [" ".join(str(value).split()) for value in message.get_all("Authentication-Results", [])]


def _ours(message: email.message.Message) -> list[str]:
    return [value for value in _auth_results(message) if value.lower().startswith(AUTHSERV_ID)]


def _stored(stack: MailStack, recipient: str, message_id: str) -> email.message.Message:
    return stack.dovecot.wait_for_message(
        recipient, "INBOX", lambda m: m.get("Message-ID") == message_id, timeout=20
    )


@pytest.mark.parametrize("transport", ["unix", "inet"])
def test_swaks_message_is_stored_with_our_authentication_results(
    stack, mailward, recipient, transport
):
    services = mailward(milter_transport=transport)
    subject = f"swaks test {uuid.uuid4().hex}"
    mark = stack.postfix.log_mark()
    result = send_with_swaks(
        stack.postfix.smtp_port, "sender@client.example.org", recipient,
        headers={"Subject": subject}, xclient_addr=EXTERNAL_CLIENT,
    )
    assert result.exit_code == 0, result.transcript

    stored = stack.dovecot.wait_for_message(
        recipient, "INBOX", lambda m: m.get("Subject") == subject, timeout=20
    )
    assert _ours(stored) == [f"{AUTHSERV_ID}; none"]
    # Added at the top, above the Received header Postfix wrote, as RFC 8601 asks.
    names = [(name, " ".join(str(value).split())) for name, value in stored.items()]
    ours_at = names.index(("Authentication-Results", f"{AUTHSERV_ID}; none"))
    postfix_at = next(i for i, (name, value) in enumerate(names)
                      if name == "Received" and "(Postfix)" in value)
    assert ours_at < postfix_at
    # One log line per message, with the queue id Postfix gave it.
    queue_id = stack.postfix.wait_for_log(
        rf"(\w+): client=\S+\[{re.escape(EXTERNAL_CLIENT)}\]", since=mark).group(1)
    services.wait_for_log(
        rf"{queue_id}: client=\S+\[{re.escape(EXTERNAL_CLIENT)}\] .*action=accept")


def test_forged_authentication_results_from_external_client_are_removed(
    stack, mailward, recipient
):
    services = mailward()
    message_id = _message_id()
    forged = [
        ("Authentication-Results", f"{AUTHSERV_ID}; dmarc=pass header.from=bank.example"),
        ("Authentication-Results", "MX.Example.NET;\r\n\tspf=pass smtp.mailfrom=bank.example"),
        ("Authentication-Results", f"(comment) {AUTHSERV_ID}; dkim=pass header.d=bank.example"),
        ("Authentication-Results", "relay.example.org; spf=pass smtp.mailfrom=x.example"),
        ("Authentication-Results", f"evil-{AUTHSERV_ID}; dkim=pass header.d=y.example"),
    ]
    message = build_message("sender@client.example.org", recipient, headers=forged,
                            message_id=message_id)
    result = stack.send("sender@client.example.org", recipient, message,
                        xclient_addr=EXTERNAL_CLIENT)
    assert result.accepted, result

    stored = _stored(stack, recipient, message_id)
    assert _ours(stored) == [f"{AUTHSERV_ID}; none"]
    others = [value for value in _auth_results(stored) if value not in _ours(stored)]
    assert others == [
        "relay.example.org; spf=pass smtp.mailfrom=x.example",
        f"evil-{AUTHSERV_ID}; dkim=pass header.d=y.example",
    ]
    assert services.metric_value(
        "mailward_milter_forged_authentication_results_removed_total") == 3.0


def test_forged_received_spf_and_orphan_aar_from_external_client_are_removed(
    stack, mailward, recipient
):
    services = mailward()
    message_id = _message_id()
    forged = [
        ("Received-SPF", f"pass ({AUTHSERV_ID}: domain of a@bank.example designates"
                         f" 192.0.2.10 as permitted sender)\r\n\tclient-ip=192.0.2.10;"
                         f" envelope-from=a@bank.example; receiver={AUTHSERV_ID};"),
        ("Received-SPF", "pass client-ip=192.0.2.10; receiver=relay.example.org"),
        ("ARC-Authentication-Results", f"i=1; {AUTHSERV_ID}; dmarc=pass header.from=bank.example"),
        ("ARC-Authentication-Results", "i=1; relay.example.org; spf=pass"),
    ]
    message = build_message("sender@client.example.org", recipient, headers=forged,
                            message_id=message_id)
    result = stack.send("sender@client.example.org", recipient, message,
                        xclient_addr=EXTERNAL_CLIENT)
    assert result.accepted, result

    stored = _stored(stack, recipient, message_id)
    spf_headers = [" ".join(str(v).split()) for v in stored.get_all("Received-SPF", [])]
    assert spf_headers == ["pass client-ip=192.0.2.10; receiver=relay.example.org"]
    aar = [" ".join(str(v).split()) for v in stored.get_all("ARC-Authentication-Results", [])]
    assert aar == ["i=1; relay.example.org; spf=pass"]
    assert services.metric_value("mailward_milter_forged_trace_headers_removed_total",
                                 {"header": "received_spf"}) == 1.0
    assert services.metric_value("mailward_milter_forged_trace_headers_removed_total",
                                 {"header": "arc_authentication_results"}) == 1.0


def test_trusted_client_keeps_its_authentication_results(stack, mailward, recipient):
    mailward()
    message_id = _message_id()
    internal = ("Authentication-Results", f"{AUTHSERV_ID}; auth=pass smtp.auth=alice")
    message = build_message("alice@example.net", recipient, headers=[internal],
                            message_id=message_id)
    # No XCLIENT: the client is 127.0.0.1, inside general.trusted_networks.
    result = stack.send("alice@example.net", recipient, message)
    assert result.accepted, result

    stored = _stored(stack, recipient, message_id)
    assert _ours(stored) == [f"{AUTHSERV_ID}; none", f"{AUTHSERV_ID}; auth=pass smtp.auth=alice"]


def test_policy_service_is_consulted_and_metrics_count_the_message(
    stack, mailward, recipient
):
    # Postfix logs its policy conversation only verbosely: turn that on for the
    # connecting peer (the test client on loopback, before XCLIENT).
    services = mailward()
    stack.postfix.reconfigure({"debug_peer_list": "127.0.0.1"},
                              milter=services.milter_socket,
                              policy_service=services.policyd_socket)
    mark = stack.postfix.log_mark()
    message_id = _message_id()
    result = stack.send("sender@client.example.org", recipient,
                        build_message("sender@client.example.org", recipient,
                                      message_id=message_id),
                        xclient_addr=EXTERNAL_CLIENT)
    assert result.accepted, result
    _stored(stack, recipient, message_id)

    policy = re.escape(services.policyd_socket)
    stack.postfix.wait_for_log(rf"check_table_result: {policy} DUNNO policy query", since=mark)
    assert services.metric_value(
        "mailward_policyd_requests_total", {"protocol_state": "rcpt", "action": "DUNNO"},
        service="policyd") >= 1.0
    assert services.metric_value(
        "mailward_milter_messages_total", {"action": "accept", "direction": "inbound"}) == 1.0
    assert services.metric_value("mailward_milter_message_duration_seconds_count") == 1.0
    assert services.metric_value("mailward_milter_sessions_total") >= 1.0


def test_local_submission_takes_the_outbound_path(stack, mailward, recipient):
    """Mail from the sendmail command (non_smtpd_milters) is ours: no stripping."""
    services = mailward()
    message_id = _message_id()
    internal = ("Authentication-Results", f"{AUTHSERV_ID}; auth=pass smtp.auth=root")
    stack.postfix.sendmail(
        build_message("root@example.net", recipient, headers=[internal], message_id=message_id),
        [recipient], "root@example.net",
    )
    stored = _stored(stack, recipient, message_id)
    assert len(_ours(stored)) == 2
    assert services.metric_value(
        "mailward_milter_messages_total", {"direction": "outbound"}) == 1.0


def test_body_over_the_cap_is_delivered_whole(stack, mailward, recipient):
    services = mailward({"milter": {"max_body_size": 4096}})
    message_id = _message_id()
    body = "".join(f"line {n:06d} of a long message\r\n" for n in range(2000))  # ~60 KB
    message = build_message("sender@client.example.org", recipient, body=body,
                            message_id=message_id)
    result = stack.send("sender@client.example.org", recipient, message,
                        xclient_addr=EXTERNAL_CLIENT)
    assert result.accepted, result
    stored = _stored(stack, recipient, message_id)
    payload = stored.get_payload()
    assert isinstance(payload, str)
    assert payload.replace("\r\n", "\n") == body.replace("\r\n", "\n")
    assert services.metric_value("mailward_milter_body_truncated_total") == 1.0


def test_a_header_block_over_the_limit_is_refused_with_552_and_nothing_queued(
    stack, mailward, recipient
):
    services = mailward({"milter": {"max_headers": 50}})
    padding = [(f"X-Pad-{n}", "p") for n in range(60)]
    message = build_message("sender@client.example.org", recipient, headers=padding,
                            message_id=_message_id())
    result = stack.send("sender@client.example.org", recipient, message,
                        xclient_addr=EXTERNAL_CLIENT)
    assert result.code == 552, result
    assert "5.3.4" in result.final[1], result
    assert stack.postfix.queue_is_empty()
    assert services.metric_value("mailward_milter_header_overflow_total") == 1.0

    # Under the limit the same sender is served normally.
    message_id = _message_id()
    message = build_message("sender@client.example.org", recipient, headers=padding[:40],
                            message_id=message_id)
    assert stack.send("sender@client.example.org", recipient, message,
                      xclient_addr=EXTERNAL_CLIENT).accepted
    assert _ours(_stored(stack, recipient, message_id)) == [f"{AUTHSERV_ID}; none"]


def test_milter_down_means_4xx_and_the_retry_is_delivered_exactly_once(
    stack, mailward, recipient
):
    services = mailward()
    services.stop()
    message_id = _message_id()
    message = build_message("sender@client.example.org", recipient, message_id=message_id)

    deferred = stack.send("sender@client.example.org", recipient, message,
                          xclient_addr=EXTERNAL_CLIENT)
    assert deferred.code is not None and 400 <= deferred.code < 500, deferred
    assert stack.postfix.queue_is_empty()

    services.start()
    retried = stack.send("sender@client.example.org", recipient, message,
                         xclient_addr=EXTERNAL_CLIENT)
    assert retried.accepted, retried
    _stored(stack, recipient, message_id)
    stack.postfix.wait_for_empty_queue()
    copies = [m for m in stack.dovecot.messages(recipient) if m.get("Message-ID") == message_id]
    assert len(copies) == 1
    assert _ours(copies[0]) == [f"{AUTHSERV_ID}; none"]


def test_workers_share_the_socket_and_sighup_reloads(stack, mailward, recipient):
    services = mailward({"milter": {"workers": 2}})
    supervisor = services.pids()["milter"]
    worker_pids = {
        int(pid) for pid in os.listdir("/proc") if pid.isdigit()
        and _parent_of(int(pid)) == supervisor
    }
    assert len(worker_pids) == 2

    services.update_config({"general": {"authserv_id": "mx2.example.net"}})
    services.reload(wait_for=r"configuration reloaded")
    ids = []
    for _ in range(4):  # several connections, so that both workers see the new generation
        message_id = _message_id()
        result = stack.send("sender@client.example.org", recipient,
                            build_message("sender@client.example.org", recipient,
                                          message_id=message_id),
                            xclient_addr=EXTERNAL_CLIENT)
        assert result.accepted, result
        ids.append(message_id)
    for message_id in ids:
        stored = _stored(stack, recipient, message_id)
        assert [v for v in _auth_results(stored) if v.startswith("mx2.")] == [
            "mx2.example.net; none"]
    # Same supervisor, same workers: a reload restarts nothing.
    assert services.pids()["milter"] == supervisor
    assert all(_parent_of(pid) == supervisor for pid in worker_pids)


def test_reload_with_a_broken_config_keeps_the_running_one(stack, mailward, recipient):
    services = mailward()
    services.config_path.write_text(services.config_path.read_text() + "\n[milter]\nbogus = 1\n")
    services.reload(wait_for=r"reload refused")
    message_id = _message_id()
    result = stack.send("sender@client.example.org", recipient,
                        build_message("sender@client.example.org", recipient,
                                      message_id=message_id),
                        xclient_addr=EXTERNAL_CLIENT)
    assert result.accepted, result
    assert _ours(_stored(stack, recipient, message_id)) == [f"{AUTHSERV_ID}; none"]
    assert services.metric_value("mailward_config_reloads_total", {"result": "error"}) == 1.0


def test_sigterm_stops_the_service_and_removes_its_socket(stack, mailward):
    services = mailward(milter_transport="unix")
    socket_path = services.milter_socket.partition(":")[2]
    assert os.path.exists(socket_path)
    os.kill(services.pids()["milter"], signal.SIGTERM)
    wait_until(lambda: "milter" not in services.pids(), 10, "milter to exit")
    assert not os.path.exists(socket_path)
    assert "mailward milter stopped" in services.log_text("milter")


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
