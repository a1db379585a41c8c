"""Faults through the real stack: mail keeps its promise while our services and DNS fail.

A second private Postfix (tests/harness/relay.py) sends a stream of messages to the
stack's Postfix + Mailward milter.  Meanwhile the milter's workers are SIGKILLed several
times (the supervisor replaces them; Postfix's milter_default_action = tempfail defers
the sessions that were cut) and the DNS server goes dark for a while (the milter answers
451 within its DNS budget).  When the faults end: the sender's queue drains, every
message is in Dovecot exactly once (Message-ID census), and none was bounced -- a fault
on our side is only ever a delay.  The second test does the same to the policy service
and its Redis state backend: policyd workers SIGKILLed (Postfix's
smtpd_policy_service_default_action defers), Redis stopped and started again (the
rate-limit policy answers `on_state_error` meanwhile, and reconnects afterwards).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid

import pytest

from tests.harness import MailStack, build_message
from tests.harness.process import child_pids, wait_for_children, wait_until
from tests.harness.redis import RedisInstance
from tests.harness.relay import sending_postfix

SENDER_DOMAIN = "faults.example"
MESSAGES = 24
KILLS = 3

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def zones(stack: MailStack) -> None:
    # TTL 0 on what every message looks up (iprev's PTR and A, the sender's SPF): the
    # milter's DNS cache keeps nothing, so the outage reaches every message sent during
    # it.  With the default 300 s a warm worker answered from its cache right through
    # the outage, and whether any message was deferred depended on which worker took it.
    stack.dns.set_zones({
        "example": "",
        "in-addr.arpa": "1.0.0.127 0 IN PTR relay.faults.example.\n",
        SENDER_DOMAIN: 'relay 0 IN A 127.0.0.1\n@ 0 IN TXT "v=spf1 ip4:127.0.0.1 -all"\n',
    })


def test_milter_kills_and_dns_outage_lose_and_bounce_nothing(stack, zones, mailward_factory):
    services = mailward_factory(
        # The sending Postfix connects from 127.0.0.1: it must be inbound, checked mail.
        {"general": {"trusted_networks": ["::1/128"]}, "milter": {"workers": 2},
         "dns": {"timeout": 0.5, "message_budget": 1.5}},
        services=["milter"])
    supervisor = services.pids()["milter"]
    wait_for_children(supervisor, 2)
    sender = sending_postfix(stack.base_dir / "faults-sender", stack.postfix.smtp_port,
                             hostname=f"relay.{SENDER_DOMAIN}")
    sender.start()
    recipient = stack.unique_address()
    message_ids = [f"<{uuid.uuid4().hex}@{SENDER_DOMAIN}>" for _ in range(MESSAGES)]
    killed: list[int] = []

    def faults() -> None:
        for _ in range(KILLS):
            time.sleep(0.7)
            workers = child_pids(supervisor)
            if workers:
                victim = min(workers)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
        with stack.dns.outage():
            time.sleep(3)

    try:
        stream_through_faults(stack, sender, recipient, message_ids, faults)
        assert len(killed) == KILLS
        # The faults did happen: replaced workers, and deferrals the sender retried.
        services.wait_for_log(r"exited unexpectedly", service="milter")
        sender_log = sender.log_text()
        assert re.search(r"status=deferred .* said: 4\d\d ", sender_log), sender_log[-3000:]
    finally:
        sender.stop()


def stream_through_faults(stack: MailStack, sender, recipient: str, message_ids: list[str],
                          faults, recover=None) -> None:
    """Send `message_ids` as a stream while `faults` runs; assert each arrives exactly once.

    `recover` runs once the stream is sent and the faults are over (so an outage it ends
    lasts through the whole stream).  Then the sender's queue must drain, every message
    be in Dovecot exactly once, and nothing have been bounced or refused with a 5xx.
    """
    chaos = threading.Thread(target=faults)
    chaos.start()
    for message_id in message_ids:
        sender.sendmail(build_message(f"alice@{SENDER_DOMAIN}", recipient,
                                      message_id=message_id),
                        [recipient], sender=f"alice@{SENDER_DOMAIN}")
        time.sleep(0.15)  # a stream, not one burst: faults land mid-stream
    chaos.join()
    if recover is not None:
        recover()
    sender.wait_for_empty_queue(timeout=90)

    def census() -> dict[str, int]:
        counts = {message_id: 0 for message_id in message_ids}
        for message in stack.dovecot.messages(recipient):
            found = (message.get("Message-ID") or "").strip()
            if found in counts:
                counts[found] += 1
        return counts

    wait_until(lambda: all(count >= 1 for count in census().values()), 30,
               "every message in Dovecot")
    assert set(census().values()) == {1}
    sender_log = sender.log_text()
    assert not re.search(r"status=bounced", sender_log), sender_log[-3000:]
    assert not re.search(r" said: 5\d\d ", sender_log), sender_log[-3000:]


def test_policyd_kills_and_redis_outage_lose_and_bounce_nothing(
    stack, zones, mailward_factory, redis: RedisInstance
):
    redis.flushall()
    services = mailward_factory(
        {"general": {"trusted_networks": ["::1/128"]},
         "state": {"backend": "redis", "url": redis.url},
         # Every request touches Redis: a rate limit far above this stream's volume.
         "policyd": {"workers": 2, "on_state_error": "dunno",
                     "ratelimit": {"enabled": True, "by": "client_address",
                                   "applies_to": "all",
                                   "windows": [{"seconds": 3600, "limit": 10000}]}}},
        services=["milter", "policyd"])
    supervisor = services.pids()["policyd"]
    wait_for_children(supervisor, 2)
    sender = sending_postfix(stack.base_dir / "policyd-faults-sender", stack.postfix.smtp_port,
                             hostname=f"relay.{SENDER_DOMAIN}")
    sender.start()
    recipient = stack.unique_address()
    message_ids = [f"<{uuid.uuid4().hex}@{SENDER_DOMAIN}>" for _ in range(MESSAGES)]
    killed: list[int] = []

    def faults() -> None:
        for _ in range(2):
            time.sleep(0.7)
            workers = child_pids(supervisor)
            if workers:
                victim = min(workers)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
        redis.stop()  # until the stream is sent; started again by `recover`
        time.sleep(2)

    try:
        stream_through_faults(stack, sender, recipient, message_ids, faults,
                              recover=redis.start)
        assert len(killed) == 2
        services.wait_for_log(r"exited unexpectedly", service="policyd")
        # The Redis outage was answered (on_state_error = dunno) and counted ...
        errors = services.metric_value(
            "mailward_state_errors_total", {"backend": "redis", "operation": "rate_limit"},
            service="policyd")
        assert errors and errors >= 1, errors
        # ... and after it the policy counts in Redis again: one more message (the stream
        # may all have been answered during the outage), and its rate-limit key is there.
        redis.flushall()
        after = stack.send(f"alice@{SENDER_DOMAIN}", recipient,
                           build_message(f"alice@{SENDER_DOMAIN}", recipient))
        assert after.accepted, after
        wait_until(lambda: redis.command("KEYS", "mailward:rl:*").strip() not in (b"", b"*0"),
                   10, "a rate-limit key written after Redis came back")
    finally:
        sender.stop()
