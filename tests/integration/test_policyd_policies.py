"""The policy service's policies through real Postfix, and its state shared through Redis.

- SPF at RCPT: a client the sender's domain does not allow is rejected (550 5.7.23) and an
  allowed one gets exactly one Received-SPF header, over a unix and an inet socket.
- Greylisting: a second, private Postfix (tests/harness/relay.py) sends to the stack's
  Postfix; the first attempt is deferred, and the sender's own retry gets through.
- Rate limits: a SASL user over the limit is deferred with the limit named.
- Two policyd processes on one real Redis share greylisting and rate-limit state.
- A state backend that cannot be reached is answered as on_state_error says.
- `[policyd] workers`: processes sharing one socket, their metrics summed, reloaded,
  replaced when they die.
"""

from __future__ import annotations

import email.message
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from tests.harness import MailStack, MailwardServices, RedisInstance, build_message
from tests.harness.process import free_port, wait_for_children, wait_until
from tests.harness.relay import sending_postfix

SENDER_DOMAIN = "policy-test.example"
ALLOWED = "192.0.2.10"
STRANGER = "203.0.113.5"

SENDER_ZONE = [
    ("@", "TXT", "v=spf1 ip4:192.0.2.10 ip4:127.0.0.1 -all"),
    ("relay", "A", "127.0.0.1"),
    ("relay", "TXT", "v=spf1 a -all"),
]


@pytest.fixture(scope="module")
def zones(stack: MailStack) -> None:
    stack.dns.set_zone(SENDER_DOMAIN, SENDER_ZONE)


def _stored(stack: MailStack, recipient: str, message_id: str) -> email.message.Message:
    return stack.dovecot.wait_for_message(
        recipient, "INBOX", lambda m: m.get("Message-ID") == message_id, timeout=30
    )


def _socket_config(stack: MailStack, transport: str) -> dict[str, Any]:
    if transport == "unix":
        path = stack.base_dir / f"policyd-{uuid.uuid4().hex[:8]}.sock"
        return {"socket": f"unix:{path}", "socket_group": "postfix"}
    return {"socket": f"inet:127.0.0.1:{free_port()}"}


def policy_query(services: MailwardServices, attributes: Mapping[str, str]) -> str:
    """One request straight to a policy service (no Postfix); returns the action."""
    spec = services.policyd_socket
    kind, _, address = spec.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(address)
    else:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
    with sock:
        data = "".join(f"{name}={value}\n" for name, value in attributes.items()) + "\n"
        sock.sendall(data.encode())
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"policy service closed the connection after {reply!r}")
            reply += chunk
    text = reply.decode()
    assert text.startswith("action="), text
    return text[len("action="):].strip()


def request(**values: str) -> dict[str, str]:
    attributes = {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "helo_name": "mail.client.example", "sender": f"alice@{SENDER_DOMAIN}",
        "recipient": "bob@example.net", "client_address": STRANGER,
        "client_name": "unknown", "instance": uuid.uuid4().hex,
    }
    attributes.update(values)
    return attributes


# --------------------------------------------------------------------------- SPF


@pytest.mark.parametrize("transport", ["unix", "inet"])
def test_spf_fail_is_rejected_at_rcpt_and_pass_gets_one_header(
    stack, zones, mailward_factory, transport
):
    services = mailward_factory({"policyd": _socket_config(stack, transport)},
                                services=["policyd"])
    assert stack.postfix.policy_service == services.policyd_socket
    refused_to = stack.unique_address()
    refused = stack.send(f"alice@{SENDER_DOMAIN}", refused_to, xclient_addr=STRANGER,
                         helo="mail.client.example")
    code, text = refused.rcpt[refused_to]
    assert code == 550, refused
    assert text.startswith("5.7.23 ") and f"does not designate {STRANGER}" in text
    assert not refused.accepted

    recipients = [stack.unique_address(), stack.unique_address()]
    message_id = f"<{uuid.uuid4().hex}@{SENDER_DOMAIN}>"
    message = build_message(f"alice@{SENDER_DOMAIN}", recipients, message_id=message_id)
    accepted = stack.send(f"alice@{SENDER_DOMAIN}", recipients, message,
                          xclient_addr=ALLOWED, helo="mail.client.example")
    assert accepted.accepted, accepted
    stored = _stored(stack, recipients[0], message_id)
    headers = stored.get_all("Received-SPF", [])
    assert len(headers) == 1, headers  # two recipients, one header
    value = " ".join(str(headers[0]).split())
    assert value.startswith(f"pass (mx.example.net: domain of alice@{SENDER_DOMAIN} "
                            f"designates {ALLOWED} as permitted sender)")
    assert services.metric_value("mailward_policyd_policy_decisions_total",
                                 {"policy": "spf", "decision": "reject"},
                                 service="policyd") == 1.0


# --------------------------------------------------------------------------- greylisting


def test_greylisting_defers_the_first_attempt_and_the_senders_retry_gets_through(
    stack, zones, mailward_factory
):
    services = mailward_factory(
        {
            # The sending Postfix connects from 127.0.0.1: it must not count as trusted.
            "general": {"trusted_networks": ["::1/128"]},
            "policyd": {"greylist": {"enabled": True, "delay": 2, "auto_allow_after": 0}},
        },
        services=["policyd"],
    )
    sender = sending_postfix(stack.base_dir / "sender-postfix", stack.postfix.smtp_port,
                             hostname=f"relay.{SENDER_DOMAIN}")
    sender.start()
    try:
        recipient = stack.unique_address()
        message_id = f"<{uuid.uuid4().hex}@{SENDER_DOMAIN}>"
        receiver_mark = stack.postfix.log_mark()
        started = time.monotonic()
        sender.sendmail(build_message(f"alice@{SENDER_DOMAIN}", recipient,
                                      message_id=message_id),
                        [recipient], sender=f"alice@{SENDER_DOMAIN}")
        sender.wait_for_log(
            rf"to=<{re.escape(recipient)}>.*status=deferred \(host 127\.0\.0\.1"
            r"\[127\.0\.0\.1\] said: 450 4\.7\.1 .*Greylisted, please try again in \d+ "
            r"seconds", timeout=20)
        stored = _stored(stack, recipient, message_id)
        elapsed = time.monotonic() - started
        sender.wait_for_log(rf"to=<{re.escape(recipient)}>.*status=sent", timeout=20)
        sender.wait_for_empty_queue()
        assert elapsed >= 2.0  # not before the greylisting delay
        # The receiving side logged the refusal of the first attempt...
        stack.postfix.wait_for_log(
            rf"NOQUEUE: reject: RCPT from .*450 4\.7\.1 <{re.escape(recipient)}>",
            since=receiver_mark)
        # ...and the accepted retry carries the SPF result (127.0.0.1 is allowed).
        spf = [" ".join(str(v).split()) for v in stored.get_all("Received-SPF", [])]
        assert len(spf) == 1 and spf[0].startswith("pass "), spf
        decisions = {
            decision: services.metric_value(
                "mailward_policyd_policy_decisions_total",
                {"policy": "greylist", "decision": decision}, service="policyd") or 0.0
            for decision in ("defer", "dunno")
        }
        assert decisions["defer"] >= 1 and decisions["dunno"] == 1, decisions
        assert not sender.problems()
    finally:
        sender.stop()


# --------------------------------------------------------------------------- rate limits


def test_sasl_user_over_the_limit_is_deferred(stack, zones, mailward_factory):
    mailward_factory(
        {"policyd": {"ratelimit": {"enabled": True, "windows": [{"seconds": 3600, "limit": 2}]}}},
        services=["policyd"],
    )
    user = f"alice-{uuid.uuid4().hex[:8]}@example.net"
    recipients = [f"friend{number}@elsewhere.example" for number in range(3)]
    over = stack.send(user, recipients, auth=(user, stack.dovecot.password),
                      xclient_addr="198.51.100.77")
    assert over.auth[0] == 235, over
    assert [over.rcpt[r][0] for r in recipients] == [250, 250, 450], over
    assert over.rcpt[recipients[2]][1] == (
        f"4.7.1 <{recipients[2]}>: Recipient address rejected: Rate limit of 2 recipients "
        f"per hour reached for {user}, please try again in "
        + over.rcpt[recipients[2]][1].rsplit("try again in ", 1)[1]
    )
    assert over.accepted  # the two recipients within the limit got the message
    again = stack.send(user, "late@elsewhere.example", xclient={"LOGIN": user},
                       xclient_addr="198.51.100.77")
    assert again.rcpt["late@elsewhere.example"][0] == 450, again
    other = f"bob-{uuid.uuid4().hex[:8]}@example.net"
    fine = stack.send(other, "x@elsewhere.example", xclient={"LOGIN": other},
                      xclient_addr="198.51.100.77")
    assert fine.accepted, fine


# --------------------------------------------------------------------------- shared state


@pytest.fixture
def clean_redis(redis: RedisInstance) -> Iterator[RedisInstance]:
    redis.flushall()
    yield redis


def _redis_policyd(stack: MailStack, mailward_factory, url: str,
                   **policyd: Any) -> MailwardServices:
    config = {
        "state": {"backend": "redis", "url": url},
        "policyd": {"spf": {"enabled": False}, **policyd},
    }
    services: MailwardServices = mailward_factory(config, services=["policyd"], attach=False)
    return services


def test_two_policyd_processes_share_greylisting_and_rates_through_redis(
    stack, mailward_factory, clean_redis
):
    shared = {
        "greylist": {"enabled": True, "delay": 1, "auto_allow_after": 0},
        "ratelimit": {"enabled": True, "by": "client_address", "applies_to": "all",
                      "windows": [{"seconds": 3600, "limit": 3}]},
        "order": ["greylist", "ratelimit"],
    }
    first = _redis_policyd(stack, mailward_factory, clean_redis.url, **shared)
    second = _redis_policyd(stack, mailward_factory, clean_redis.url, **shared)
    assert first.policyd_socket != second.policyd_socket

    # Greylisting: the first process defers a new triplet; once the delay is over and
    # it passes there, the second process, which never saw it, passes it too.
    triplet = request(client_address="203.0.113.61",
                      recipient=f"grey-{uuid.uuid4().hex[:8]}@example.net")
    assert policy_query(first, triplet).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
    wait_until(lambda: policy_query(first, triplet) == "DUNNO", 10,
               "the greylisting delay to pass at the first policyd")
    assert policy_query(second, triplet) == "DUNNO"
    # And the other way round, for a new triplet first seen by the second process.
    other = request(client_address="203.0.113.62", recipient="grey2@example.net")
    assert policy_query(second, other).startswith("DEFER_IF_PERMIT")
    assert policy_query(first, other).startswith("DEFER_IF_PERMIT")
    keys = redis_py.Redis.from_url(clean_redis.url).keys("mailward:gl:t:*")
    assert sorted(keys) == [
        f"mailward:gl:t:203.0.113.0/24 <alice@{SENDER_DOMAIN}> <{name}>".encode()
        for name in sorted([triplet["recipient"], "grey2@example.net"])
    ]

    # Rate limits: three recipients per hour for a client, whichever process counts.
    # (Authenticated, so that greylisting, which comes first, lets the requests by.)
    client = "198.51.100.99"

    def submission() -> dict[str, str]:
        return request(client_address=client, sasl_username="carol")

    counted = [policy_query(process, submission()) for process in (first, second, first)]
    assert counted == ["DUNNO", "DUNNO", "DUNNO"]
    refused = policy_query(second, submission())
    assert refused.startswith(f"DEFER 4.7.1 Rate limit of 3 recipients per hour reached "
                              f"for {client}")
    assert policy_query(first, submission()).startswith("DEFER 4.7.1")


@pytest.mark.parametrize(("action", "expected"), [
    ("dunno", "DUNNO"),
    ("defer", "DEFER_IF_PERMIT 4.3.0 Temporary policy failure, please try again later"),
])
def test_unreachable_redis_is_answered_as_on_state_error_says(
    stack, mailward_factory, action, expected
):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    services = _redis_policyd(stack, mailward_factory, dead, on_state_error=action,
                              greylist={"enabled": True})
    services.wait_for_log(r"state backend not available yet", service="policyd")
    for _ in range(2):
        assert policy_query(services, request()) == expected
    assert services.metric_value("mailward_state_errors_total",
                                 {"backend": "redis", "operation": "greylist"},
                                 service="policyd") == 2.0
    assert services.running("policyd")


# --------------------------------------------------------------------------- workers


def test_workers_share_the_socket_sum_their_metrics_reload_and_are_replaced(
    stack, mailward_factory
):
    socket_path = stack.base_dir / f"policyd-workers-{uuid.uuid4().hex[:8]}.sock"
    services: MailwardServices = mailward_factory(
        {"policyd": {"socket": f"unix:{socket_path}", "workers": 2,
                     "spf": {"enabled": False},
                     "ratelimit": {"enabled": True, "by": "client_address",
                                   "applies_to": "all",
                                   "windows": [{"seconds": 3600, "limit": 1000}]}}},
        services=["policyd"], attach=False,
    )
    supervisor = services.pids()["policyd"]
    workers = wait_for_children(supervisor, 2, timeout=10)
    services.wait_for_log(r"mailward policyd listening on .* with 2 workers", service="policyd")
    # Many connections, spread by the kernel over both workers; one answer each.
    for number in range(40):
        assert policy_query(services, request(client_address=f"198.51.100.{number}")) == "DUNNO"
    # Every worker serves the socket (each says so once it is listening: poll, the
    # second may still be starting when the first answers).
    def serving() -> set[int]:
        return {int(pid) for pid in re.findall(
            r"mailward-policyd\[(\d+)\] INFO mailward policyd listening on unix:",
            services.log_text("policyd"))}
    wait_until(lambda: workers <= serving(), 10, "every worker listening")
    # The supervisor's endpoint sums the workers' metrics.
    assert services.metric_value("mailward_policyd_requests_total",
                                 {"protocol_state": "rcpt"}, service="policyd") == 40.0
    assert services.metric_value("mailward_policyd_policy_decisions_total",
                                 {"policy": "ratelimit", "decision": "dunno"},
                                 service="policyd") == 40.0
    # SIGHUP: every worker reloads.
    mark = len(services.log_text("policyd"))
    services.reload()
    for pid in workers:
        services.wait_for_log(rf"policyd\[{pid}\] INFO configuration reloaded", service="policyd",
                              since=mark)
    # A worker that dies is replaced, and the service goes on answering.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    services.wait_for_log(rf"policy worker {victim} exited unexpectedly", service="policyd")
    replaced = wait_for_children(supervisor, 2, timeout=10, without={victim})
    assert len(replaced) == 2
    assert policy_query(services, request(client_address="198.51.100.200")) == "DUNNO"
    # SIGTERM stops all of them and removes the socket.
    statuses = services.stop()
    assert statuses["policyd"] == 0
    assert not socket_path.exists()
    assert not any(Path(f"/proc/{pid}").exists() for pid in replaced)


def test_our_policy_services_received_spf_survives_the_milters_forgery_removal(
    stack, zones, mailward_factory
):
    """The policy service PREPENDs Received-SPF naming our authserv-id as receiver; the
    milter removes sender-written ones that do (issue 9, item 6).  Ours must stay."""
    mailward_factory({"policyd": _socket_config(stack, "inet"), "spf": {"enabled": False},
                      "dmarc": {"enabled": False}}, services=["milter", "policyd"])
    recipient = stack.unique_address()
    message_id = f"<{uuid.uuid4().hex}@{SENDER_DOMAIN}>"
    message = build_message(f"alice@{SENDER_DOMAIN}", recipient, message_id=message_id)
    accepted = stack.send(f"alice@{SENDER_DOMAIN}", recipient, message,
                          xclient_addr=ALLOWED, helo="mail.client.example")
    assert accepted.accepted, accepted
    stored = _stored(stack, recipient, message_id)
    spf = [" ".join(str(v).split()) for v in stored.get_all("Received-SPF", [])]
    assert len(spf) == 1 and spf[0].startswith("pass (mx.example.net: "), spf
