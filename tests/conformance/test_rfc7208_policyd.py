"""The RFC 7208 SPF test suite run through the policy service itself.

Every case of the suite becomes one policy request (client_address = the case's host,
helo_name = its helo, sender = its mailfrom, protocol_state = RCPT) sent over a real
socket to a running `PolicyServer` whose engine resolves through the case's zone data
(`InMemoryResolver`, built as tests/conformance/test_rfc7208.py builds it).  The SPF
policy is configured so that every result can be read back from the answer:

    fail       550 5.7.23 <explanation>        (reject_fail)
    permerror  550 5.7.24 ...                  (reject_permerror)
    temperror  DEFER_IF_PERMIT 4.7.24 ...      (defer_temperror)
    otherwise  PREPEND Received-SPF: <result> ...

The HELO identity is not checked on its own (`helo = false`): the suite's cases give the
result of check_host() for MAIL FROM (HELO for the null sender), which is what the
policy then answers on.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from mailward.checks.spf import normalise_client_ip
from mailward.config import (
    GeneralSettings,
    PolicydSettings,
    PolicydSpfSettings,
    Settings,
    SocketAddress,
    SocketKind,
)
from mailward.policies.engine import PolicyEngine
from policyd.codec import encode_request
from policyd.server import PolicyServer
from tests.conformance.test_rfc7208 import CASES, SuiteCase, build_resolver

_ANSWER = re.compile(
    r"action=(?:(?P<reject>550 5\.7\.2[34]) (?P<text>.*)"
    r"|(?P<defer>DEFER_IF_PERMIT 4\.7\.24) .*"
    r"|PREPEND Received-SPF: (?P<result>[a-z]+) .*)\n\n",
    re.DOTALL,
)


def settings_for(socket_path: Path) -> Settings:
    return Settings(
        general=GeneralSettings(authserv_id="mx.example.net", trusted_networks=()),
        policyd=PolicydSettings(
            socket=SocketAddress(SocketKind.UNIX, path=str(socket_path)), threads=2
        ),
        policyd_spf=PolicydSpfSettings(
            enabled=True, helo=False, reject_fail=True, reject_permerror=True,
            defer_temperror=True, received_spf=True,
        ),
    )


def ask_policy_service(case: SuiteCase, socket_path: Path) -> str:
    """Start the service with the case's DNS, send the case as a request, return the
    raw answer."""
    settings = settings_for(socket_path)
    resolver = build_resolver(case.zonedata)

    def build(config: Settings) -> PolicyEngine:
        return PolicyEngine.from_settings(config, resolver)

    request = encode_request({
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "helo_name": case.helo,
        "queue_id": "",
        "sender": case.mailfrom,
        "recipient": "postmaster@mx.example.net",
        "recipient_count": "0",
        "client_address": case.host,
        "client_name": "unknown",
        "reverse_client_name": "unknown",
        "instance": f"{abs(hash(case.id)):x}.0.0",
    })

    async def conversation() -> str:
        server = PolicyServer(None, settings, build)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readuntil(b"\n\n"), 30)
            writer.close()
            return answer.decode()
        finally:
            await server.stop(timeout=2.0)

    return asyncio.run(conversation())


def result_of(answer: str) -> tuple[str, str]:
    """(SPF result, reply text) read back from the policy answer."""
    match = _ANSWER.fullmatch(answer)
    assert match is not None, f"unexpected answer {answer!r}"
    if match["reject"] == "550 5.7.23":
        return "fail", match["text"]
    if match["reject"] == "550 5.7.24":
        return "permerror", match["text"]
    if match["defer"]:
        return "temperror", ""
    return match["result"], ""


def test_every_case_is_run():
    assert len(CASES) == 203


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_rfc7208_through_the_policy_service(case: SuiteCase, tmp_path: Path) -> None:
    answer = ask_policy_service(case, tmp_path / "policyd.sock")
    result, text = result_of(answer)
    assert result in case.allowed, (
        f"{case.id}: answered {answer!r}, allowed {case.allowed}"
    )
    if case.explanation is not None and result == "fail":
        if case.explanation == "DEFAULT":
            client = normalise_client_ip(case.host)
            assert text.endswith(f"does not designate {client} as permitted sender"), text
        else:
            assert text == case.explanation
