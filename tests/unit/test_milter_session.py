"""MilterSession without an MTA: callbacks in, recorded milter calls out.

A recording context stands in for libmilter's, so these tests see exactly which
milter commands (change header, insert header, reply codes) a Verdict turns into, and
what happens when the engine or a callback fails.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

import Milter
import pytest
from prometheus_client import REGISTRY

from mailward.config import GeneralSettings, InternalErrorAction, MilterSettings, Settings
from mailward.dns import InMemoryResolver
from mailward.model import Connection, Transaction, Verdict
from mailward.pipeline import Pipeline
from milters.session import MilterSession


@dataclass
class RecordingContext:
    """What libmilter's context would have been asked to do."""

    macros: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    reply: tuple[Any, ...] | None = None
    priv: Any = None

    def getpriv(self) -> Any:
        return self.priv

    def setpriv(self, priv: Any) -> None:
        self.priv = priv

    def getsymval(self, name: str) -> str | None:
        return self.macros.get(name)

    def setreply(self, code: str, xcode: str | None, *lines: str) -> None:
        self.reply = (code, xcode, *lines)

    def addheader(self, name: str, value: str, index: int = -1) -> None:
        self.calls.append(("addheader", name, value, index))

    def chgheader(self, name: str, index: int, value: str | None) -> None:
        self.calls.append(("chgheader", name, index, value))

    def quarantine(self, reason: str) -> None:
        self.calls.append(("quarantine", reason))


@dataclass
class FixedSource:
    pipeline: Pipeline

    def current(self) -> Pipeline:
        return self.pipeline


class ExplodingPipeline(Pipeline):
    def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
        raise RuntimeError("engine bug")


def settings(on_error: str = "tempfail", max_body: int = 1024) -> Settings:
    return Settings(
        general=GeneralSettings(
            authserv_id="mx.example.net",
            on_internal_error=InternalErrorAction(on_error),
        ),
        milter=MilterSettings(max_body_size=max_body),
    )


def open_session(pipeline: Pipeline, leading_space: bool = True,
                 macros: dict[str, str] | None = None) -> tuple[MilterSession, RecordingContext]:
    ctx = RecordingContext(macros={"i": "ABC123", **(macros or {})})
    session = MilterSession(FixedSource(pipeline))
    session._setctx(ctx)
    session._protocol = Milter.P_HDR_LEADSPC if leading_space else 0
    return session, ctx


def deliver(session: MilterSession, headers: list[tuple[str, bytes]], body: bytes = b"hi\r\n",
            ip: str = "192.0.2.10") -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    session.connect("client.example.org", family, (ip, 25000))
    session.hello("client.example.org")
    session.envfrom_bytes(b"<sender@example.org>", b"SIZE=100")
    session.envrcpt_bytes(b"<rcpt@example.net>")
    for name, value in headers:
        session.header_bytes(name, value)
    session.body(body)
    status: int = session.eom()
    return status


def without_spam_headers(calls: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The milter calls without scoring's X-Spam-* headers (tests/unit/test_scoring.py)."""
    return [call for call in calls if not str(call[1]).startswith("X-Spam-")]


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_untrusted_client_gets_forgeries_removed_then_our_header_inserted():
    session, ctx = open_session(Pipeline(settings(), InMemoryResolver()))
    status = deliver(session, [
        ("Authentication-Results", b" other.example; spf=pass"),
        ("Authentication-Results", b" mx.example.net; dmarc=pass"),
        ("Subject", b" hello"),
        ("authentication-results", b" MX.EXAMPLE.NET; dkim=pass"),
    ])
    assert status == Milter.CONTINUE
    assert without_spam_headers(ctx.calls) == [
        ("chgheader", "Authentication-Results", 3, None),
        ("chgheader", "Authentication-Results", 2, None),
        # Leading-space mode: the MTA takes the value verbatim, so we supply the space.
        ("addheader", "Authentication-Results", " mx.example.net; none", 0),
    ]


def test_without_leading_space_mode_the_value_is_bare():
    session, ctx = open_session(Pipeline(settings(), InMemoryResolver()), leading_space=False)
    deliver(session, [("Subject", b"hello")])
    assert without_spam_headers(ctx.calls) == [
        ("addheader", "Authentication-Results", "mx.example.net; none", 0)]
    assert ("addheader", "X-Spam-Flag", "NO", -1) in ctx.calls


def test_trusted_client_keeps_headers_that_claim_our_id():
    session, ctx = open_session(Pipeline(settings(), InMemoryResolver()))
    deliver(session, [("Authentication-Results", b" mx.example.net; auth=pass")], ip="127.0.0.1")
    assert [call[0] for call in ctx.calls] == ["addheader"]


def test_authenticated_user_takes_the_outbound_path():
    session, ctx = open_session(Pipeline(settings(), InMemoryResolver()),
                                macros={"{auth_authen}": "alice"})
    before = sample("mailward_milter_messages_total",
                    {"action": "accept", "direction": "outbound"})
    deliver(session, [("Authentication-Results", b" mx.example.net; auth=pass")])
    assert [call[0] for call in ctx.calls] == ["addheader"]
    assert sample("mailward_milter_messages_total",
                  {"action": "accept", "direction": "outbound"}) == before + 1


def test_engine_failure_is_answered_with_on_internal_error_tempfail():
    session, ctx = open_session(ExplodingPipeline(settings(), InMemoryResolver()))
    before = sample("mailward_errors_total", {"component": "milter"})
    status = deliver(session, [("Subject", b" x")])
    assert status == Milter.TEMPFAIL
    assert ctx.reply == ("451", "4.3.0", "Temporary local problem, please try again later")
    assert ctx.calls == []  # nothing half-applied
    assert sample("mailward_errors_total", {"component": "milter"}) == before + 1


def test_engine_failure_with_on_internal_error_accept_passes_the_message_unchanged():
    session, ctx = open_session(ExplodingPipeline(settings("accept"), InMemoryResolver()))
    status = deliver(session, [("Subject", b" x")])
    assert status == Milter.CONTINUE
    assert ctx.reply is None
    assert ctx.calls == []


class BrokenHeaders(list[Any]):
    def append(self, item: Any) -> None:
        raise ValueError("broken header handling")


def test_a_failing_callback_is_remembered_and_answered_at_end_of_message():
    session, ctx = open_session(Pipeline(settings(), InMemoryResolver()))
    session.connect("client.example.org", socket.AF_INET, ("192.0.2.10", 25000))
    session.envfrom_bytes(b"<sender@example.org>")
    session._envelope.headers = BrokenHeaders()
    assert session.header_bytes("Subject", b" x") == Milter.CONTINUE  # never raises
    assert session.eom() == Milter.TEMPFAIL
    assert ctx.reply is not None and ctx.reply[0] == "451"


def test_body_beyond_the_cap_is_counted_not_kept():
    pipeline = Pipeline(settings(max_body=10), InMemoryResolver())
    seen: list[Transaction] = []

    class Spy(Pipeline):
        def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
            seen.append(transaction)
            return pipeline.evaluate(connection, transaction)

    session, _ = open_session(Spy(pipeline.settings, pipeline.resolver))
    session.connect("c", socket.AF_INET, ("192.0.2.10", 1))
    session.envfrom_bytes(b"<s@example.org>")
    session.body(b"0123456789abcdef")
    session.body(b"ghij")
    session.eom()
    (transaction,) = seen
    assert transaction.body == b"0123456789"
    assert transaction.body_size == 20
    assert transaction.body_truncated
    assert transaction.queue_id == "ABC123"


def test_second_message_on_one_connection_starts_from_a_clean_envelope():
    seen: list[tuple[Connection, Transaction]] = []
    base = Pipeline(settings(), InMemoryResolver())

    class Spy(Pipeline):
        def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
            seen.append((connection, transaction))
            return base.evaluate(connection, transaction)

    session, _ = open_session(Spy(base.settings, base.resolver))
    deliver(session, [("Subject", b" first")])
    session.envfrom_bytes(b"<other@example.org>")
    session.envrcpt_bytes(b"<two@example.net>")
    session.header_bytes("Subject", b" second")
    session.eom()
    _, second = (t for _, t in seen)
    assert [h.value for h in second.headers] == [" second"]
    assert second.recipients == ("two@example.net",)
    assert second.mail_from == "other@example.org"
    connection = seen[1][0]
    assert connection.client_ip == ipaddress.ip_address("192.0.2.10")
    assert connection.helo == "client.example.org"


@pytest.mark.parametrize("text", ["100% sure", "line\r\nbreak"])
def test_reply_text_is_made_safe_for_libmilter(text: str):
    from milters.session import _milter_text

    safe = _milter_text(text)
    assert "\n" not in safe and "\r" not in safe
    assert safe.count("%") in (0, 2)


class EightBitMacroContext(RecordingContext):
    """pymilter's getsymval decodes strictly: an 8-bit macro value raises there."""

    def getsymval(self, name: str) -> str | None:
        if name == "{auth_authen}":
            raw = "jürgen".encode("latin-1")
            raise UnicodeDecodeError("utf-8", raw, 1, 2, "invalid continuation byte")
        return super().getsymval(name)


def test_an_eight_bit_macro_value_is_decoded_tolerantly_and_mail_flows():
    session = MilterSession(FixedSource(Pipeline(settings(), InMemoryResolver())))
    ctx = EightBitMacroContext(macros={"i": "ABC123"})
    session._setctx(ctx)
    session._protocol = Milter.P_HDR_LEADSPC
    status = deliver(session, [("Subject", b" hello")])
    assert status == Milter.CONTINUE
    assert ctx.reply is None  # not the on_internal_error 451
    assert session._macros["auth_authen"] == "j\ufffdrgen"


def test_without_leading_space_mode_the_conventional_space_is_restored():
    session, _ = open_session(Pipeline(settings(), InMemoryResolver()), leading_space=False)
    session.connect("client.example.org", socket.AF_INET, ("192.0.2.10", 25000))
    session.envfrom_bytes(b"<sender@example.org>")
    session.header_bytes("Subject", b"hello")
    session.header_bytes("X-Folded", b"\tcontinued")
    session.header_bytes("X-Empty", b"")
    assert [(h.name, h.value) for h in session._envelope.headers] == [
        ("Subject", " hello"), ("X-Folded", "\tcontinued"), ("X-Empty", "")]


def test_in_leading_space_mode_header_values_are_kept_verbatim():
    session, _ = open_session(Pipeline(settings(), InMemoryResolver()))
    session.connect("client.example.org", socket.AF_INET, ("192.0.2.10", 25000))
    session.envfrom_bytes(b"<sender@example.org>")
    session.header_bytes("Subject", b"hello")
    assert [(h.name, h.value) for h in session._envelope.headers] == [("Subject", "hello")]


def header_limited_settings(max_headers: int = 1000, max_header_bytes: int = 1 << 20) -> Settings:
    return Settings(
        general=GeneralSettings(authserv_id="mx.example.net"),
        milter=MilterSettings(max_headers=max_headers, max_header_bytes=max_header_bytes),
    )


@pytest.mark.parametrize(("count", "size", "limits"), [
    (11, 10, {"max_headers": 10}),                       # one field too many
    (3, 3000, {"max_header_bytes": 4096}),               # few fields, too many bytes
])
def test_an_oversized_header_block_is_rejected_and_not_kept(count, size, limits):
    seen: list[Transaction] = []
    base = Pipeline(header_limited_settings(**limits), InMemoryResolver())

    class Spy(Pipeline):
        def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
            seen.append(transaction)
            return base.evaluate(connection, transaction)

    session, ctx = open_session(Spy(base.settings, base.resolver))
    before = sample("mailward_milter_header_overflow_total")
    status = deliver(session, [(f"X-Pad-{n}", b" " + b"p" * size) for n in range(count)])
    assert status == Milter.REJECT
    assert ctx.reply == ("552", "5.3.4", "Message header too large")
    assert seen == []  # the engine never judged a partial header block
    assert len(session._envelope.headers) == 0  # reset after the message
    assert sample("mailward_milter_header_overflow_total") == before + 1


def test_a_header_block_at_the_limit_is_judged_and_the_next_message_starts_afresh():
    session, ctx = open_session(Pipeline(header_limited_settings(max_headers=10),
                                         InMemoryResolver()))
    assert deliver(session, [(f"X-Pad-{n}", b" p") for n in range(11)]) == Milter.REJECT
    ctx.reply = None
    status = deliver(session, [(f"X-Pad-{n}", b" p") for n in range(10)])
    assert status == Milter.CONTINUE
    assert ctx.reply is None
