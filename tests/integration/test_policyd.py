"""The policy service through real Postfix (check_policy_service)."""

from __future__ import annotations

import re
import uuid

from tests.harness import build_message

EXTERNAL_CLIENT = "192.0.2.20"


def test_policy_service_on_a_unix_socket_answers_postfix(stack, mailward_factory, recipient):
    services = mailward_factory(
        {"policyd": {"socket": "unix:" + "/run/mailward-test-" + uuid.uuid4().hex[:8] + ".sock",
                     "socket_group": "postfix",
                     "spf": {"enabled": False}}},  # no policy: the answer is DUNNO
        services=["policyd"],
    )
    stack.postfix.reconfigure({"debug_peer_list": "127.0.0.1"},
                              policy_service=services.policyd_socket)
    mark = stack.postfix.log_mark()
    result = stack.send("sender@client.example.org", recipient, xclient_addr=EXTERNAL_CLIENT)
    assert result.accepted, result
    stack.postfix.wait_for_log(
        rf"check_table_result: {re.escape(services.policyd_socket)} DUNNO policy query", since=mark)
    assert services.metric_value("mailward_policyd_requests_total",
                                 {"protocol_state": "rcpt"}, service="policyd") == 1.0


def test_policy_service_down_defers_and_never_rejects(stack, mailward_factory, recipient):
    services = mailward_factory(services=["policyd"])
    services.stop()
    message = build_message("sender@client.example.org", recipient)
    result = stack.send("sender@client.example.org", recipient, message,
                        xclient_addr=EXTERNAL_CLIENT)
    code = result.rcpt[recipient][0]
    assert 400 <= code < 500, result

    services.start()
    retried = stack.send("sender@client.example.org", recipient, message,
                         xclient_addr=EXTERNAL_CLIENT)
    assert retried.accepted, retried
