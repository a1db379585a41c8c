"""Mailward's own milter engine: one thread per MTA connection, the protocol in Python.

This is what libmilter did for us, minus its trust in the MTA side: `milters.protocol`
decodes and checks every packet, and this module drives a `MilterSession` with the
result.  The session keeps the pymilter `Milter.Base` interface (its action methods call
`self._ctx`), so the same session runs under either engine; here `_ctx` is an
`EngineContext`, which answers `getsymval` from the macros the MTA sent and collects
the end-of-message modifications as packets.

Why threads: a session's end of message waits on DNS and the state store through
blocking calls, exactly as under libmilter (which also ran one thread per connection).
What changes is the cost around the callbacks: no C-to-Python transition per packet,
no macro lookups through libmilter's array, one `recv` for every packet the MTA wrote
back to back (with the NR_* steps negotiated, a whole header block arrives at once) and
one `sendall` per batch of replies.  And a malformed packet ends one session with a log
line, where libmilter ended the process.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import Milter

from mailward import metrics
from milters import protocol
from milters.protocol import Arguments, Bare, Body, Command, HeaderField, Macros, ProtocolError
from milters.session import MilterSession

log = logging.getLogger("mailward.milter")

SessionFactory = Callable[[], MilterSession]

#: The actions Mailward's session may use (the rest are never asked for).
WANTED_ACTIONS = int(protocol.Action.ADDHDRS | protocol.Action.CHGHDRS
                     | protocol.Action.QUARANTINE)

# Below glibc's mmap threshold (128 KiB): a larger recv buffer is mmap'ed and unmapped on
# every call.  Postfix writes at most one body chunk (64 KiB) per packet anyway.
_RECV_SIZE = 64 * 1024
_CONNECTION_STAGES = (b"C", b"H")  # macros that belong to the SMTP connection, not a message

_STATUS_PACKETS: dict[int, bytes] = {
    Milter.CONTINUE: protocol.CONTINUE_PACKET,
    Milter.ACCEPT: protocol.ACCEPT_PACKET,
    Milter.REJECT: protocol.REJECT_PACKET,
    Milter.TEMPFAIL: protocol.TEMPFAIL_PACKET,
    Milter.DISCARD: protocol.DISCARD_PACKET,
    Milter.SKIP: protocol.SKIP_PACKET,
}
_NOREPLY: int = Milter.NOREPLY
_FAMILIES = {
    protocol.FAMILY_INET: socket.AF_INET,
    protocol.FAMILY_INET6: socket.AF_INET6,
    protocol.FAMILY_UNIX: socket.AF_UNIX,
}


class EngineContext:
    """The `_ctx` of a session under this engine: macros in, modifications out.

    libmilter keeps macros per protocol stage; a session only ever asks "the current
    value of X", so two scopes suffice: the connection's (sent with CONNECT and HELO)
    and the message's (MAIL to end of message, cleared after each message).
    """

    def __init__(self) -> None:
        self.connection_macros: dict[str, str] = {}
        self.message_macros: dict[str, str] = {}
        self.modifications: list[bytes] = []
        self.reply: tuple[str, bytes] | None = None  # (the reply code's class, packet)

    def setpriv(self, session: object) -> None:
        """pymilter's `_setctx` hands the session to its context; the engine holds it."""

    def getsymval(self, name: str) -> str | None:
        value = self.message_macros.get(name)
        if value is None:
            value = self.connection_macros.get(name)
        return value

    def setreply(self, code: str, enhanced: str | None, text: str | None,
                 *more_lines: str) -> None:
        # Multi-line replies are not used by Mailward; the first line is the reply.
        self.reply = (code[:1], protocol.encode_reply_code(code, enhanced, text or ""))

    def addheader(self, name: str, value: str, index: int = -1) -> None:
        if index < 0:
            self.modifications.append(protocol.encode_add_header(name, value))
        else:
            self.modifications.append(protocol.encode_insert_header(index, name, value))

    def chgheader(self, name: str, index: int, value: str | None) -> None:
        self.modifications.append(protocol.encode_change_header(index, name, value))

    def quarantine(self, reason: str) -> None:
        self.modifications.append(protocol.encode_quarantine(reason))

    def end_message(self) -> None:
        self.message_macros.clear()
        self.modifications.clear()
        self.reply = None


def _hostaddr(connect: protocol.Connect) -> Any:
    """The client address in pymilter's shapes: (ip, port), (ip, port, 0, 0), a path."""
    if connect.family == protocol.FAMILY_INET:
        return (connect.address, connect.port)
    if connect.family == protocol.FAMILY_INET6:
        return (connect.address, connect.port, 0, 0)
    if connect.family == protocol.FAMILY_UNIX:
        return connect.address
    return None


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel send/receive timeouts on a blocking socket.

    A Python socket timeout would cost a poll() before every recv and send; with
    SO_RCVTIMEO/SO_SNDTIMEO the kernel times out the call itself (BlockingIOError).
    """
    sock.setblocking(True)
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _texts(args: tuple[bytes, ...]) -> list[str]:
    return [arg.decode("utf-8", "surrogateescape") for arg in args]


class MilterConnection:
    """One MTA connection: reads commands, calls the session, writes the replies."""

    def __init__(self, sock: socket.socket, new_session: SessionFactory,
                 timeout: float) -> None:
        self._sock = sock
        self._new_session = new_session
        self._timeout = timeout
        self._reader = protocol.CommandReader()
        self._context = EngineContext()
        self._session: MilterSession | None = None
        self._negotiated: list[int] | None = None
        self._outgoing: list[bytes] = []
        self._warned_macros = False
        self._quit = False
        # One handler per command type: a dict look-up instead of an isinstance chain
        # (a message is a few dozen commands).
        self._handlers: dict[type, Callable[[Any], None]] = {
            HeaderField: self._header,
            Macros: self._macros,
            Body: self._body,
            Arguments: self._arguments,
            Bare: self._bare,
            protocol.Connect: self._connect,
            protocol.Negotiate: self._negotiate,
        }

    def serve(self) -> None:
        """Run the connection to its end; never raises (a worker's other sessions go on)."""
        sock = self._sock
        try:
            _set_timeouts(sock, self._timeout)
            self._loop()
        except ProtocolError as exc:
            metrics.MILTER_PROTOCOL_ERRORS.labels("session_closed").inc()
            log.warning("%s: milter protocol error from the MTA side, session closed: %s",
                        self._log_id, exc)
        except (BlockingIOError, TimeoutError):
            log.info("%s: the MTA sent or took nothing for %.0fs (milter.mta_timeout);"
                     " session closed", self._log_id, self._timeout)
        except OSError as exc:
            log.info("%s: MTA connection lost: %s", self._log_id, exc)
        except Exception:
            log.exception("%s: internal error in the milter engine; session closed",
                          self._log_id)
            metrics.ERRORS.labels("milter").inc()
        finally:
            self._close_session()
            with contextlib.suppress(OSError):
                sock.close()

    @property
    def _log_id(self) -> str:
        if self._session is not None:
            return self._session.log_id
        return "NOQUEUE"

    def _loop(self) -> None:
        recv = self._sock.recv
        receive = self._reader.receive
        outgoing = self._outgoing
        handlers = self._handlers
        while not self._quit:
            data = recv(_RECV_SIZE)
            if not data:
                return
            for event in receive(data):
                handlers[type(event)](event)
                if self._quit:
                    break
            if outgoing:
                self._flush()

    def _flush(self) -> None:
        if self._outgoing:
            self._sock.sendall(b"".join(self._outgoing))
            self._outgoing.clear()

    def _answer(self, status: int) -> None:
        if status != _NOREPLY:
            self._outgoing.append(_STATUS_PACKETS.get(status, protocol.CONTINUE_PACKET))

    def _require_session(self) -> MilterSession:
        if self._session is None:
            raise ProtocolError("command before option negotiation")
        return self._session

    # ------------------------------------------------------------------ dispatch

    def _header(self, event: HeaderField) -> None:
        session = self._session or self._require_session()
        self._answer(session.header_bytes(
            event.name.decode("utf-8", "surrogateescape"), event.value))

    def _connect(self, event: protocol.Connect) -> None:
        session = self._require_session()
        family = _FAMILIES.get(event.family, socket.AF_UNSPEC)
        self._answer(session.connect(event.hostname, family, _hostaddr(event)))

    def _negotiate(self, event: protocol.Negotiate) -> None:
        if self._session is not None:
            raise ProtocolError("option negotiation twice")
        if event.version < 2:
            raise ProtocolError(f"MTA speaks milter protocol version {event.version}")
        opts = [event.actions & WANTED_ACTIONS, event.steps, 0, 0]
        self._session = self._start_session(opts)
        self._negotiated = [opts[0], event.steps, 0, 0]
        self._outgoing.append(protocol.encode_negotiate(
            min(event.version, protocol.VERSION), opts[0], opts[1]))

    def _start_session(self, opts: list[int]) -> MilterSession:
        session = self._new_session()
        session._setctx(self._context)
        session.negotiate(opts)  # pymilter's: which steps to skip, which need no reply
        return session

    def _macros(self, event: Macros) -> None:
        if event.malformed:
            metrics.MILTER_PROTOCOL_ERRORS.labels("macro_without_value").inc()
            if not self._warned_macros:
                self._warned_macros = True
                log.warning("%s: macro packet for stage %r has a name without a value;"
                            " the name was dropped", self._log_id, event.stage)
        context = self._context
        if event.stage in _CONNECTION_STAGES:
            context.connection_macros.update(event.values)
        else:
            if event.stage == b"M":
                context.message_macros.clear()  # a new message: the last one's are gone
            context.message_macros.update(event.values)

    def _body(self, event: Body) -> None:
        session = self._require_session()
        status = session.body(event.chunk)
        if event.last:
            self._end_of_message()  # the chunk came with end of message: one reply
        else:
            self._answer(status)

    def _arguments(self, event: Arguments) -> None:
        session = self._require_session()
        command = event.command
        args = _texts(event.args)  # never empty: the codec refused an argument-less packet
        if command is Command.MAIL:
            self._answer(session.envfrom(*args))
        elif command is Command.RCPT:
            self._answer(session.envrcpt(*args))
        elif command is Command.HELO:
            self._answer(session.hello(args[0]))
        else:  # UNKNOWN: not negotiated; answered if the MTA sends it anyway
            self._answer_unwanted(protocol.Step.NR_UNKN)

    def _answer_unwanted(self, no_reply: protocol.Step) -> None:
        session = self._require_session()
        if not session._protocol & no_reply:
            self._outgoing.append(protocol.CONTINUE_PACKET)

    def _bare(self, event: Bare) -> None:
        command = event.command
        if command is Command.BODYEOB:
            self._end_of_message()
        elif command is Command.ABORT:
            if self._session is not None:
                self._session.abort()
            self._context.end_message()
        elif command is Command.EOH:
            self._answer_unwanted(protocol.Step.NR_EOH)
        elif command is Command.DATA:
            self._answer_unwanted(protocol.Step.NR_DATA)
        elif command is Command.QUIT:
            self._quit = True
        elif command is Command.QUIT_NC:
            self._next_connection()

    def _end_of_message(self) -> None:
        session = self._require_session()
        context = self._context
        status = session.eom()
        outgoing = self._outgoing
        if status in (Milter.CONTINUE, Milter.ACCEPT):
            outgoing.extend(context.modifications)
        reply = context.reply
        if reply is not None and ((status == Milter.REJECT and reply[0] == "5")
                                  or (status == Milter.TEMPFAIL and reply[0] == "4")):
            outgoing.append(reply[1])  # the reply code stands for the reject/tempfail
        else:
            self._answer(status)
        context.end_message()

    def _next_connection(self) -> None:
        """QUIT_NC: the MTA reuses this socket for its next SMTP connection."""
        self._close_session()
        self._context = EngineContext()
        if self._negotiated is not None:
            self._session = self._start_session(list(self._negotiated))

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            finally:
                session._setctx(None)


class SessionCounter:
    """The open sessions of a worker, so that a stopping worker can wait for them."""

    def __init__(self) -> None:
        self._open = 0
        self._idle = threading.Condition()

    def opened(self) -> None:
        with self._idle:
            self._open += 1

    def closed(self) -> None:
        with self._idle:
            self._open -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> int:
        """Wait until no session is open, at most `timeout` seconds; return those left."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._open > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(remaining)
            return self._open


class _Idle:
    """One idle connection thread's inbox (the next connection it is to serve)."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()


class ConnectionThreads:
    """Threads that serve MTA connections, kept for the next one instead of ended.

    Starting a Python thread per connection cost about a tenth of a message's CPU under
    load (the start handshake needs the GIL twice); an idle thread takes the next
    connection instead.  The most recently idle thread is picked (a stack, not a queue),
    so under steady load the same few threads do the work and those a burst added stay
    idle and end after `idle_timeout` seconds: the thread count follows the load down.
    """

    def __init__(self, new_session: SessionFactory, timeout: float,
                 sessions: SessionCounter, idle_timeout: float = 60.0) -> None:
        self._new_session = new_session
        self._timeout = timeout
        self._sessions = sessions
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []

    @property
    def idle(self) -> int:
        return len(self._idle)

    def submit(self, conn: socket.socket) -> None:
        """Serve `conn` on an idle thread, or a new one; the session counts as open now."""
        self._sessions.opened()
        with self._lock:
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            idle.inbox.put(conn)
            return
        thread = threading.Thread(target=self._run, args=(conn,), name="milter-session",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError:
            log.error("cannot start a thread for a milter session; connection refused")
            self._sessions.closed()
            conn.close()

    def _run(self, conn: socket.socket | None) -> None:
        me = _Idle()
        while conn is not None:
            try:
                MilterConnection(conn, self._new_session, self._timeout).serve()
            finally:
                self._sessions.closed()
            conn = self._next(me)

    def _next(self, me: _Idle) -> socket.socket | None:
        with self._lock:
            self._idle.append(me)
        try:
            return me.inbox.get(timeout=self._idle_timeout)
        except queue.Empty:
            with self._lock:
                if me in self._idle:
                    self._idle.remove(me)
                    return None
            # Picked by `submit` just as the wait ended: its connection is on the way.
            return me.inbox.get()


def serve_forever(listener: socket.socket, new_session: SessionFactory, timeout: float,
                  sessions: SessionCounter, stopping: Callable[[], bool]) -> None:
    """Accept MTA connections on `listener` until `stopping()`, each on its own thread.

    The listener is shared with the other workers; the kernel hands each connection to
    one of them.  Returns without closing the sessions in flight (the caller drains).
    """
    threads = ConnectionThreads(new_session, timeout, sessions)
    listener.settimeout(0.5)  # how soon a stop request is noticed
    while not stopping():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError as exc:
            if stopping():
                break
            log.warning("accept on the milter socket failed: %s", exc)
            time.sleep(0.1)  # e.g. out of descriptors: do not spin
            continue
        threads.submit(conn)
