"""The milter adapter's per-callback work: macros asked once, body chunks, NOREPLY.

Complements tests/unit/test_milter_session.py (same recording context): what the hot
path saves must not change what the engine sees.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field

import Milter

from mailward.dns import InMemoryResolver
from mailward.model import Connection, Transaction, Verdict
from mailward.pipeline import Pipeline
from milters.session import MilterSession
from tests.unit.test_milter_session import FixedSource, RecordingContext, settings


@dataclass
class CountingContext(RecordingContext):
    """Counts the macro questions, by name."""

    asked: Counter[str] = field(default_factory=Counter)

    def getsymval(self, name: str) -> str | None:
        self.asked[name] += 1
        return super().getsymval(name)


class Spy(Pipeline):
    """Records what the engine is handed."""

    seen: list[tuple[Connection, Transaction]]

    def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
        self.seen.append((connection, transaction))
        return super().evaluate(connection, transaction)


def spy_session(max_body: int = 1024) -> tuple[MilterSession, CountingContext, Spy]:
    spy = Spy(settings(max_body=max_body), InMemoryResolver())
    spy.seen = []
    ctx = CountingContext(macros={"i": "Q1", "j": "mx.example.net",
                                  "{client_addr}": "192.0.2.10",
                                  "{auth_authen}": "alice"})
    session = MilterSession(FixedSource(spy))
    session._setctx(ctx)
    session._protocol = Milter.P_HDR_LEADSPC
    return session, ctx, spy


def send(session: MilterSession, *chunks: bytes) -> None:
    session.envfrom_bytes(b"<s@example.org>")
    session.envrcpt_bytes(b"<r@example.net>")
    session.header_bytes("Subject", b" hi")
    for chunk in chunks:
        session.body(chunk)
    session.eom()


def test_connection_macros_are_asked_once_message_macros_per_message() -> None:
    session, ctx, spy = spy_session()
    session.connect("c.example.org", socket.AF_INET, ("192.0.2.10", 1))
    send(session, b"one\r\n")
    ctx.macros["i"] = "Q2"
    ctx.macros["{auth_authen}"] = "bob"
    send(session, b"two\r\n")
    assert ctx.asked["j"] == 1 and ctx.asked["{client_addr}"] == 1  # seen at connect
    assert ctx.asked["{client_ptr}"] == 5  # never sent: asked again at MAIL and end
    assert ctx.asked["i"] == 5 and ctx.asked["{auth_authen}"] == 5  # connect + 2 x 2
    (first, one), (second, two) = spy.seen
    assert (one.queue_id, two.queue_id) == ("Q1", "Q2")
    assert (first.auth_user, second.auth_user) == ("alice", "bob")
    assert first.macros["j"] == second.macros["j"] == "mx.example.net"
    assert second.macros["client_addr"] == "192.0.2.10" and second.macros["i"] == "Q2"
    assert first.macros["i"] == "Q1"  # the first message's copy did not change


def test_body_chunks_are_joined_and_capped() -> None:
    session, _, spy = spy_session(max_body=8)
    session.connect("c.example.org", socket.AF_INET, ("192.0.2.10", 1))
    send(session, b"abc", b"defgh", b"ij")
    send(session, b"only\r\n")
    (_, capped), (_, whole) = spy.seen
    assert (capped.body, capped.body_size, capped.body_truncated) == (b"abcdefgh", 10, True)
    assert (whole.body, whole.body_size, whole.body_truncated) == (b"only\r\n", 6, False)


def test_callbacks_answer_noreply_when_the_mta_agreed_to_it() -> None:
    session, _, _ = spy_session()
    assert session.connect("c", socket.AF_INET, ("192.0.2.10", 1)) == Milter.CONTINUE
    session._protocol |= Milter.P_NR_HDR | Milter.P_NR_BODY
    session.envfrom_bytes(b"<s@example.org>")
    assert session.header_bytes("Subject", b" hi") == Milter.NOREPLY
    assert session.body(b"x") == Milter.NOREPLY
    assert session.envrcpt_bytes(b"<r@example.net>") == Milter.CONTINUE  # no P_NR_RCPT
    # Negotiation: the mask is what we take away from the MTA's offer.  Our callbacks
    # are wanted (their P_NO* step taken away) and need no reply (P_NR_* kept).
    mask = MilterSession.protocol_mask()
    wanted = Milter.P_NOHDRS | Milter.P_NOBODY | Milter.P_NOCONNECT | Milter.P_NOMAIL
    assert mask & wanted == wanted
    assert not mask & (Milter.P_NR_HDR | Milter.P_NR_BODY | Milter.P_NR_CONN | Milter.P_NR_MAIL)
