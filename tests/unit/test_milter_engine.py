"""milters.engine and milters.connections: a MilterSession driven over a real socket by
Mailward's own engine.

The MTA side is bench/milter_client.py's codec (an independent implementation of the
wire format), the engine's connection loop serves the other end of a socketpair from its
own thread, and the pipeline is the real one with an in-memory resolver.  What matters:
the replies a Verdict turns into, that malformed input ends one session with a log line
and nothing else, and that one slow or stuck connection holds up no other.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Collection, Iterator

import pytest
from prometheus_client import REGISTRY

from bench import milter_client as mta
from mailward.config import GeneralSettings, MilterSettings, Settings
from mailward.dns import InMemoryResolver
from mailward.model import Connection, Transaction, Verdict
from mailward.pipeline import Pipeline
from milters.connections import (
    ConnectionLoop,
    MessageThreads,
    SessionCounter,
    serve_forever,
)
from milters.engine import EngineContext
from milters.session import MilterSession


class FixedSource:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def current(self) -> Pipeline:
        return self.pipeline


class RecordingPipeline(Pipeline):
    """The real pipeline, remembering what each message looked like to the checks."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[tuple[Connection, Transaction]] = []

    def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
        self.seen.append((connection, transaction))
        return super().evaluate(connection, transaction)


class ExplodingPipeline(Pipeline):
    def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
        raise RuntimeError("engine bug")


def make_settings() -> Settings:
    return Settings(general=GeneralSettings(authserv_id="mx.example.net"),
                    milter=MilterSettings(max_body_size=1 << 20))


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


_LISTENER_NUMBERS = itertools.count()


class Engine:
    """A connection loop on its own thread, as a worker runs it, with a listener nobody
    connects to: the tests hand it one end of a socketpair each.

    The listener's abstract name is numbered, not derived from id(self): the loop's
    thread outlives this object and keeps the name bound, and CPython reuses ids.
    """

    def __init__(self, pipeline: Pipeline, timeout: float = 5.0) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(
            f"\0mailward-test-loop-{os.getpid()}-{next(_LISTENER_NUMBERS)}")
        self.listener.listen(1)
        self.sessions = SessionCounter()
        self.loop = ConnectionLoop(self.listener, lambda: MilterSession(FixedSource(pipeline)),
                                   timeout, self.sessions)
        threading.Thread(target=self.loop.run, daemon=True).start()


class Mta:
    """The MTA end of a socketpair whose other end the engine's loop serves."""

    def __init__(self, pipeline: Pipeline, engine: Engine | None = None) -> None:
        self.engine = engine or Engine(pipeline)
        self.sock, server = socket.socketpair()
        self.sock.settimeout(5)
        self.reader = mta.ResponseReader()
        self.engine.loop.adopt(server)

    def negotiate(self) -> mta.Negotiated:
        self.sock.sendall(mta.encode_optneg())
        while (pkt := self.reader.next_packet()) is None:
            self.reader.feed(self._recv())
        return mta.parse_optneg(pkt.data)

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        assert data, "the engine closed the connection"
        return data

    def response(self) -> mta.Response:
        while (response := self.reader.next_response()) is None:
            self.reader.feed(self._recv())
        return response

    def closed_by_engine(self) -> bool:
        try:
            closed = self.sock.recv(65536) == b""
        except ConnectionResetError:
            closed = True
        return closed and self.engine.sessions.wait_idle(5) == 0

    def message(self, queue_id: str = "QID1", extra_macros: bytes = b"",
                subject: str = " hello") -> mta.Response:
        self.sock.sendall(
            mta.encode_macros(mta.SMFIC_MAIL, [("i", queue_id)]) + extra_macros
            + mta.encode_mail("sender@example.org", ["SIZE=100"])
            + mta.encode_rcpt("rcpt@example.net")
            + mta.encode_header("Subject", subject)
            + mta.encode_header("From", " sender@example.org")
            + mta.encode_body(b"hello\r\n")
            + mta.ENCODED_EOM)
        return self.response()

    def connect(self) -> None:
        self.sock.sendall(
            mta.encode_macros(mta.SMFIC_CONNECT, [("j", "mx.example.net")])
            + mta.encode_connect("client.example.org", mta.SMFIA_INET, 40000, "192.0.2.10")
            + mta.encode_helo("client.example.org"))


@pytest.fixture
def pipeline() -> Iterator[RecordingPipeline]:
    yield RecordingPipeline(make_settings(), InMemoryResolver())


def test_negotiation_asks_for_leading_space_and_no_replies_before_end_of_message(pipeline):
    peer = Mta(pipeline)
    negotiated = peer.negotiate()
    assert negotiated.version == 6
    assert negotiated.leading_space
    assert negotiated.actions == (mta.Act.ADDHDRS | mta.Act.CHGHDRS | mta.Act.QUARANTINE)
    for stage in (mta.Stage.CONNECT, mta.Stage.HELO, mta.Stage.MAIL, mta.Stage.RCPT,
                  mta.Stage.HEADER, mta.Stage.BODY):
        assert negotiated.sends(stage) and not negotiated.replies(stage), stage
    assert not negotiated.sends(mta.Stage.DATA) and not negotiated.sends(mta.Stage.EOH)


def test_a_message_gets_our_authentication_results_and_the_checks_see_the_envelope(pipeline):
    peer = Mta(pipeline)
    peer.negotiate()
    peer.connect()
    response = peer.message()
    assert response.reply.action is mta.Action.CONTINUE
    assert mta.InsertHeader(0, "Authentication-Results", " mx.example.net; none") \
        in response.modifications
    connection, transaction = pipeline.seen[-1]
    assert str(connection.client_ip) == "192.0.2.10" and connection.helo == "client.example.org"
    assert connection.macros["j"] == "mx.example.net"
    assert transaction.queue_id == "QID1"
    assert transaction.mail_from == "sender@example.org"
    assert transaction.mail_params == {"SIZE": "100"}
    assert transaction.recipients == ("rcpt@example.net",)
    assert transaction.body == b"hello\r\n"


def test_a_macro_without_value_loses_nothing_but_that_name(pipeline):
    before = sample("mailward_milter_protocol_errors_total", {"kind": "macro_without_value"})
    peer = Mta(pipeline)
    peer.negotiate()
    peer.connect()
    odd = mta.packet(mta.SMFIC_MACRO, b"Mi\0QID7\0{auth_authen}\0")  # libmilter: SIGSEGV
    peer.sock.sendall(odd)
    response = peer.message(queue_id="QID7")
    assert response.reply.action is mta.Action.CONTINUE
    assert pipeline.seen[-1][1].queue_id == "QID7"
    assert sample("mailward_milter_protocol_errors_total",
                  {"kind": "macro_without_value"}) == before + 1
    # The session goes on: a second message on the same connection is served too.
    assert peer.message(queue_id="QID8").reply.action is mta.Action.CONTINUE


@pytest.mark.parametrize("garbage", [
    mta.packet(mta.SMFIC_HEADER, b"Subject\0no terminator"),
    mta.packet(b"Z", b"?"),
    b"\xff\xff\xff\xff" + b"L",
    mta.packet(mta.SMFIC_CONNECT, b"host\0"),
])
def test_a_malformed_packet_ends_only_its_session(pipeline, garbage):
    before = sample("mailward_milter_protocol_errors_total", {"kind": "session_closed"})
    bystander = Mta(pipeline)
    bystander.negotiate()
    bystander.connect()
    hostile = Mta(pipeline)
    hostile.negotiate()
    hostile.connect()
    hostile.sock.sendall(garbage)
    assert hostile.closed_by_engine()
    assert sample("mailward_milter_protocol_errors_total",
                  {"kind": "session_closed"}) == before + 1
    assert bystander.message().reply.action is mta.Action.CONTINUE


def test_a_command_before_negotiation_ends_the_session(pipeline):
    peer = Mta(pipeline)
    peer.sock.sendall(mta.encode_helo("client.example.org"))
    assert peer.closed_by_engine()


def test_an_internal_error_answers_the_configured_tempfail_with_its_reply_code():
    peer = Mta(ExplodingPipeline(make_settings(), InMemoryResolver()))
    peer.negotiate()
    peer.connect()
    response = peer.message()
    assert response.reply == mta.Reply(
        mta.Action.REPLYCODE, "451 4.3.0 Temporary local problem, please try again later")
    assert response.modifications == ()


def test_message_macros_last_one_message_connection_macros_the_connection():
    context = EngineContext()
    context.connection_macros.update({"j": "mx.example.net", "{daemon_name}": "smtpd"})
    context.message_macros.update({"i": "QID1", "{daemon_name}": "submission"})
    context.addheader("X-A", " 1")
    assert context.getsymval("{daemon_name}") == "submission"  # the later stage wins
    context.end_message()  # after end of message, and on ABORT
    assert context.getsymval("i") is None and context.modifications == []
    assert context.getsymval("j") == "mx.example.net"
    assert context.getsymval("{daemon_name}") == "smtpd"


def test_abort_then_a_new_message_on_the_same_connection(pipeline):
    peer = Mta(pipeline)
    peer.negotiate()
    peer.connect()
    peer.sock.sendall(
        mta.encode_macros(mta.SMFIC_MAIL, [("i", "ABORTED")])
        + mta.encode_mail("a@example.org") + mta.encode_rcpt("b@example.net")
        + mta.ENCODED_ABORT)
    assert peer.message(queue_id="NEXT").reply.action is mta.Action.CONTINUE
    _, transaction = pipeline.seen[-1]
    assert transaction.queue_id == "NEXT"
    assert transaction.recipients == ("rcpt@example.net",)  # not b@ of the aborted one
    assert len(pipeline.seen) == 1


def test_quit_nc_starts_a_new_session_on_the_same_socket(pipeline):
    peer = Mta(pipeline)
    peer.negotiate()
    peer.connect()
    peer.message(queue_id="FIRST")
    peer.sock.sendall(mta.packet(b"K"))
    peer.sock.sendall(
        mta.encode_macros(mta.SMFIC_CONNECT, [("j", "mx.example.net")])
        + mta.encode_connect("other.example.org", mta.SMFIA_INET6, 25, "2001:db8::7"))
    assert peer.message(queue_id="SECOND").reply.action is mta.Action.CONTINUE
    connection, _ = pipeline.seen[-1]
    assert str(connection.client_ip) == "2001:db8::7" and connection.helo is None


def test_quit_closes_and_the_worker_counts_the_session_closed(pipeline):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0mailward-test-engine-{id(pipeline)}")
    listener.listen(8)
    sessions = SessionCounter()
    stop = threading.Event()
    server = threading.Thread(target=serve_forever, daemon=True, args=(
        listener, lambda: MilterSession(FixedSource(pipeline)), 5.0, sessions, stop.is_set))
    server.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(listener.getsockname())
    client.sendall(mta.encode_optneg())
    assert client.recv(65536)[4:5] == b"O"
    client.sendall(mta.ENCODED_QUIT)
    assert client.recv(65536) == b""
    assert sessions.wait_idle(5) == 0
    # A session open when the stop comes is still served: the worker drains it.
    open_one = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    open_one.settimeout(5)
    open_one.connect(listener.getsockname())
    open_one.sendall(mta.encode_optneg())
    assert open_one.recv(65536)[4:5] == b"O"
    stop.set()
    server.join(5)
    assert not server.is_alive()
    open_one.sendall(mta.ENCODED_QUIT)
    assert open_one.recv(65536) == b""
    assert sessions.wait_idle(5) == 0
    listener.close()


def _message_threads(exclude: Collection[threading.Thread] = ()) -> int:
    return sum(1 for t in threading.enumerate()
               if t.name == "milter-message" and t.is_alive() and t not in exclude)


def test_message_threads_are_reused_and_a_burst_ends_after_the_idle_timeout():
    from tests.harness.process import wait_until

    threads = MessageThreads(idle_timeout=0.3)
    others = set(threading.enumerate())  # e.g. an earlier test's pool, idle for a minute

    # One task after the other: one thread does all of them.
    for _ in range(10):
        done = threading.Event()
        assert threads.submit(done.set)
        assert done.wait(5)
        wait_until(lambda: threads.idle == 1, 5, "idle")
    assert _message_threads(others) == 1

    # A burst of five blocked at once needs five threads; idle past the timeout they end.
    release = threading.Event()

    def blocked() -> None:
        release.wait(5)

    for _ in range(5):
        assert threads.submit(blocked)
    wait_until(lambda: _message_threads(others) == 5, 5, "five busy threads")
    release.set()
    wait_until(lambda: _message_threads(others) == 0 and threads.idle == 0, 5,
               "idle threads to end")


class SlowPipeline(RecordingPipeline):
    """Holds the message with queue id SLOW in its checks until `release` is set: a DNS
    lookup that takes its time."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
        if transaction.queue_id == "SLOW":
            assert self.release.wait(10)
        return super().evaluate(connection, transaction)


def test_a_slow_end_of_message_holds_up_no_other_connection():
    pipeline = SlowPipeline(make_settings(), InMemoryResolver())
    engine = Engine(pipeline)
    slow, quick = Mta(pipeline, engine), Mta(pipeline, engine)
    for peer in (slow, quick):
        peer.negotiate()
        peer.connect()
    slow.sock.sendall(mta.encode_macros(mta.SMFIC_MAIL, [("i", "SLOW")])
                      + mta.encode_mail("a@example.org") + mta.encode_rcpt("b@example.net")
                      + mta.encode_body(b"x\r\n") + mta.ENCODED_EOM)
    for queue_id in ("Q1", "Q2"):
        assert quick.message(queue_id=queue_id).reply.action is mta.Action.CONTINUE
    assert [t.queue_id for _, t in pipeline.seen] == ["Q1", "Q2"]
    pipeline.release.set()
    assert slow.response().reply.action is mta.Action.CONTINUE
    assert pipeline.seen[-1][1].queue_id == "SLOW"


def test_a_peer_that_never_reads_our_replies_is_not_buffered_without_end(pipeline):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0mailward-test-unread-{id(pipeline)}")
    listener.listen(1)
    sessions = SessionCounter()
    loop = ConnectionLoop(listener, lambda: MilterSession(FixedSource(pipeline)), 5.0,
                          sessions, max_unsent=4096)
    threading.Thread(target=loop.run, daemon=True).start()
    engine = Engine.__new__(Engine)
    engine.listener, engine.sessions, engine.loop = listener, sessions, loop
    hostile, bystander = Mta(pipeline, engine), Mta(pipeline, engine)
    # Protocol flags 0: every command wants its reply.  Write HELOs and never read.
    hostile.sock.sendall(mta.encode_optneg(protocol=0))
    hostile.sock.settimeout(0.5)
    helo = mta.encode_helo("client.example.org") * 1000
    with pytest.raises(TimeoutError):
        for _ in range(300):  # 9 MB: far more than the socket buffers and 4 KiB hold
            hostile.sock.sendall(helo)
    # The engine stopped reading that peer once 4 KiB of replies waited, and serves others.
    bystander.negotiate()
    bystander.connect()
    assert bystander.message().reply.action is mta.Action.CONTINUE
    hostile.sock.close()
    bystander.sock.close()
    assert sessions.wait_idle(5) == 0


def test_a_peer_that_sends_nothing_is_closed_after_the_mta_timeout(pipeline):
    peer = Mta(pipeline, Engine(pipeline, timeout=0.3))
    peer.negotiate()
    assert peer.closed_by_engine()
