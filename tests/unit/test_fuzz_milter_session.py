"""Fuzzing the pymilter adapter (issue 9): whatever the MTA hands the callbacks -- macro
values that are not UTF-8 or hold control characters, client addresses of any shape,
envelope and header bytes with NULs, bare CRs and 8-bit data, bodies of any bytes, in
any order of messages on one connection -- every callback answers a milter status,
and the engine judges the message: no callback error, no internal-error 451.

The recording context of test_milter_session stands in for libmilter; the engine is a
real Pipeline with its default checks over an empty in-memory DNS.
"""

from __future__ import annotations

import socket
from typing import Any

import Milter
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from mailward.dns import InMemoryResolver
from mailward.pipeline import Pipeline
from milters.session import MilterSession
from tests.unit.test_milter_session import open_session
from tests.unit.test_milter_session import settings as session_settings

FUZZ = settings(max_examples=300, deadline=None)
STATUSES = {Milter.CONTINUE, Milter.REJECT, Milter.TEMPFAIL, Milter.DISCARD}
PIPELINE = Pipeline(session_settings(max_body=4096), InMemoryResolver())

_NASTY_BYTES = st.sampled_from(
    [b"\x00", b"\r", b"\n", b"\r\n", b"\r\n\t", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b":",
     b"<", b">", b"@", b"=?utf-8?b?", b"?=", b"\"", b"(", b")", b";", b" ", b"example.org",
     b"From", b"DKIM-Signature", b"v=1; a=rsa-sha256; d=", b"Authentication-Results"]
)
_BYTES = st.one_of(st.binary(max_size=200), st.lists(_NASTY_BYTES, max_size=40).map(b"".join))
_TEXT = st.one_of(st.text(max_size=80), _BYTES.map(lambda raw: raw.decode("latin-1")))
_MACROS = st.dictionaries(
    st.sampled_from(["i", "j", "{auth_authen}", "{auth_type}", "{client_addr}",
                     "{daemon_name}", "{tls_version}", "{mail_addr}", "_"]),
    _TEXT, max_size=6,
)
_HOSTADDR = st.one_of(
    st.tuples(st.sampled_from([socket.AF_INET]),
              st.tuples(st.one_of(st.ip_addresses(v=4).map(str), _TEXT), st.integers(0, 65535))),
    st.tuples(st.sampled_from([socket.AF_INET6]),
              st.tuples(st.one_of(st.ip_addresses(v=6).map(str), _TEXT), st.integers(0, 65535),
                        st.integers(0, 3), st.integers(0, 3))),
    st.tuples(st.sampled_from([socket.AF_UNIX, 0]), st.one_of(st.none(), _TEXT)),
)
_HEADER_NAME = st.one_of(
    st.sampled_from(["From", "To", "Subject", "Date", "Message-ID", "DKIM-Signature",
                     "ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results",
                     "Authentication-Results", "Received-SPF", "Received", "Content-Type",
                     "X-Spam-Flag", "Reply-To", "MIME-Version"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"),
            min_size=1, max_size=20),
)
_MESSAGE = st.fixed_dictionaries({
    "mail_from": _BYTES,
    "params": st.lists(_BYTES, max_size=3),
    "recipients": st.lists(_BYTES, min_size=1, max_size=3),
    "headers": st.lists(st.tuples(_HEADER_NAME, _BYTES), max_size=12),
    "body": st.lists(st.binary(max_size=3000), max_size=3),
    "aborted": st.booleans(),
})


def errors() -> float:
    return REGISTRY.get_sample_value("mailward_errors_total", {"component": "milter"}) or 0.0


def deliver(session: MilterSession, message: dict[str, Any]) -> list[int]:
    statuses = [session.envfrom_bytes(message["mail_from"], *message["params"])]
    statuses += [session.envrcpt_bytes(rcpt) for rcpt in message["recipients"]]
    statuses += [session.header_bytes(name, value) for name, value in message["headers"]]
    statuses += [session.body(chunk) for chunk in message["body"]]
    statuses.append(session.abort() if message["aborted"] else session.eom())
    return statuses


@FUZZ
@given(_MACROS, _HOSTADDR, _TEXT, _TEXT, st.lists(_MESSAGE, min_size=1, max_size=3),
       st.booleans())
def test_any_session_gets_milter_statuses_and_a_judged_verdict(
    macros: dict[str, str], hostaddr: tuple[int, Any], hostname: str, helo: str,
    messages: list[dict[str, Any]], leading_space: bool,
) -> None:
    session, ctx = open_session(PIPELINE, leading_space=leading_space, macros=macros)
    before = errors()
    family, address = hostaddr
    statuses = [session.connect(hostname, family, address), session.hello(helo)]
    for message in messages:
        statuses += deliver(session, message)
    statuses.append(session.close())
    assert set(statuses) <= STATUSES
    assert errors() == before, "a callback or the engine raised on this input"
    if ctx.reply is not None:
        code, _, *lines = ctx.reply
        assert code != "451" or "Temporary local problem" not in " ".join(lines)
        assert all("\r" not in line and "\n" not in line for line in lines)
