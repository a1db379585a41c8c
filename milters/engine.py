"""Mailward's own milter engine: the protocol state of one MTA connection, in Python.

This is what libmilter did for us, minus its trust in the MTA side: `milters.protocol`
decodes and checks every packet, and this module drives a `MilterSession` with the
result.  The session keeps the pymilter `Milter.Base` interface (its action methods call
`self._ctx`), so the same session runs under either engine; here `_ctx` is an
`EngineContext`, which answers `getsymval` from the macros the MTA sent and collects
the end-of-message modifications as packets.

No sockets here: `MilterConnection.feed` takes bytes and returns whether an end of
message waits; milters.connections owns the I/O, runs the cheap callbacks on its loop
and the end of message (which may block on DNS and the state store) on a thread.
Compared with libmilter: no C-to-Python transition per packet, no macro lookups through
libmilter's array, every packet the MTA wrote back to back handled in one go (with the
NR_* steps negotiated, a whole header block arrives at once), one write per batch of
replies, and a malformed packet ends one session with a log line, where libmilter ended
the process.
"""

from __future__ import annotations

import collections
import logging
import socket
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


def _texts(args: tuple[bytes, ...]) -> list[str]:
    return [arg.decode("utf-8", "surrogateescape") for arg in args]


class MilterConnection:
    """One MTA connection's protocol state: bytes in, the session called, replies out.

    No I/O here (milters.connections owns the socket): `feed` takes what the MTA wrote
    and runs every command up to an end of message, which `finish_message` runs later,
    on a thread that may block on DNS, so that the loop serving every other connection
    never waits for one message's checks.
    """

    def __init__(self, new_session: SessionFactory) -> None:
        self._new_session = new_session
        self._reader = protocol.CommandReader()
        self._context = EngineContext()
        self._session: MilterSession | None = None
        self._negotiated: list[int] | None = None
        self._outgoing: list[bytes] = []
        self._backlog: collections.deque[protocol.Event] = collections.deque()
        self._warned_macros = False
        self.quit = False
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

    @property
    def log_id(self) -> str:
        if self._session is not None:
            return self._session.log_id
        return "NOQUEUE"

    def feed(self, data: bytes) -> bool:
        """Run the commands in `data` (and any left over); True: an end of message waits.

        Raises ProtocolError on a malformed packet: the caller ends this connection.
        """
        self._backlog.extend(self._reader.receive(data))
        return self._run_backlog()

    def finish_message(self) -> bool:
        """Run the waiting end of message, then what the MTA sent after it; as `feed`."""
        self._end_of_message()
        return self._run_backlog()

    def take_output(self) -> bytes:
        """The replies and modifications so far, in order, for the MTA."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def close(self) -> None:
        """The connection is gone: end the session (its close callback and log line)."""
        self._close_session()

    def _run_backlog(self) -> bool:
        backlog = self._backlog
        handlers = self._handlers
        while backlog and not self.quit:
            event = backlog.popleft()
            kind = type(event)
            if kind is Body:
                assert isinstance(event, Body)
                self._body(event)
                if event.last:
                    return True  # the chunk came with end of message
            elif kind is Bare and event.command is Command.BODYEOB:  # type: ignore[union-attr]
                return True
            else:
                handlers[kind](event)
        return False

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
                            " the name was dropped", self.log_id, event.stage)
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
        if not event.last:  # else end of message follows: its reply is the one reply
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
        if command is Command.ABORT:
            if self._session is not None:
                self._session.abort()
            self._context.end_message()
        elif command is Command.EOH:
            self._answer_unwanted(protocol.Step.NR_EOH)
        elif command is Command.DATA:
            self._answer_unwanted(protocol.Step.NR_DATA)
        elif command is Command.QUIT:
            self.quit = True
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
