"""The MTA side of the Sendmail milter protocol, version 6, as Postfix speaks it.

Written from libmilter's ``mfdef.h`` and the protocol as Postfix's ``milter8.c`` uses
it, because a load client that goes through Postfix measures Postfix, and a client that
speaks a simplified protocol measures a milter nobody runs.  What Postfix does, this
does:

* negotiation offers version 6, every action Postfix supports, and every protocol step
  Postfix can skip (``SMFIP_NO*``) or not wait for (``SMFIP_NR_*``); the milter's answer
  decides what is sent and what is waited for;
* macros are sent before every event (``{daemon_name}``, ``j``, ``_`` at connect;
  ``i``, ``{auth_authen}`` at MAIL; ...), for connect/HELO/MAIL/RCPT/DATA even when the
  milter declined the event itself, as Postfix does; the end-of-header macros go with
  every header and the end-of-data macros with every body chunk; SMFIR_SETSYMLIST
  lists from the negotiation replace the default lists;
* header values lose one leading space unless ``SMFIP_HDR_LEADSPC`` was negotiated,
  folded header lines are joined with a bare LF, the body is sent with CRLF line ends
  in chunks of at most 65535 bytes, and the end of message is its own empty packet;
* several messages per connection, with ``SMFIC_ABORT`` after each transaction (Postfix
  calls ``milter8_abort()`` from ``mail_reset()`` after every message, even after
  end-of-message), and ``SMFIC_QUIT`` at the end; a connection-level accept or reject
  (at connect or HELO) closes the stream, as Postfix does for libmilter.

Layout: pure encode/decode functions and value types first (no I/O, usable in tests),
then the message flow as a generator that yields "send these bytes and give me the
reply" requests, then `MilterClient`, a small blocking-socket driver around both.
Commands that need no reply are coalesced into the next write, which is also what
Postfix's buffered VSTREAM does.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import re
import socket
import struct
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType

from bench.sockets import SocketSpec
from bench.sockets import connect as open_socket
from milters import protocol

# --------------------------------------------------------------------------- constants

SMFI_VERSION = 6
MILTER_CHUNK_SIZE = 65535  # largest body chunk libmilter accepts by default
MAX_PACKET = 64 * 1024 * 1024  # sanity bound for replies (Postfix: INT_MAX / 2)

# Commands, MTA -> milter.
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# Replies, milter -> MTA.
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# Address families in SMFIC_CONNECT.
SMFIA_UNKNOWN = b"U"
SMFIA_UNIX = b"L"
SMFIA_INET = b"4"
SMFIA_INET6 = b"6"


# The flag sets are the protocol's own (milters/protocol.py, the milter side); the MTA
# side names them as libmilter's mfdef.h does: SMFIF_* actions, SMFIP_* protocol steps.
Act = protocol.Action
Proto = protocol.Step


_HDR_LEADSPC = int(Proto.HDR_LEADSPC)

NOSEND_MASK = (
    Proto.NOCONNECT
    | Proto.NOHELO
    | Proto.NOMAIL
    | Proto.NORCPT
    | Proto.NOBODY
    | Proto.NOHDRS
    | Proto.NOEOH
    | Proto.NOUNKNOWN
    | Proto.NODATA
)
NOREPLY_MASK = (
    Proto.NR_CONN
    | Proto.NR_HELO
    | Proto.NR_MAIL
    | Proto.NR_RCPT
    | Proto.NR_DATA
    | Proto.NR_UNKN
    | Proto.NR_HDR
    | Proto.NR_EOH
    | Proto.NR_BODY
)
#: What Postfix offers with ``milter_protocol = 6``.
POSTFIX_V6_PROTOCOL = NOSEND_MASK | NOREPLY_MASK | Proto.SKIP | Proto.RCPT_REJ | Proto.HDR_LEADSPC
#: The actions Postfix allows a milter (everything libmilter 8.14 defines).
POSTFIX_ACTIONS = (
    Act.ADDHDRS
    | Act.CHGBODY
    | Act.ADDRCPT
    | Act.DELRCPT
    | Act.CHGHDRS
    | Act.QUARANTINE
    | Act.CHGFROM
    | Act.ADDRCPT_PAR
    | Act.SETSYMLIST
)


class Stage(enum.StrEnum):
    """The events of a milter session, named as in the final-action report."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    HEADER = "header"
    EOH = "eoh"
    BODY = "body"
    EOM = "eom"


@dataclass(frozen=True)
class _StageInfo:
    command: bytes
    no_send: int  # the SMFIP_NO* bit; 0: cannot be declined (end of message)
    no_reply: int  # the SMFIP_NR_* bit; 0: always answered
    macro_class: int  # SMFIM_* index used by SMFIR_SETSYMLIST


_STAGES: dict[Stage, _StageInfo] = {
    Stage.CONNECT: _StageInfo(SMFIC_CONNECT, int(Proto.NOCONNECT), int(Proto.NR_CONN), 0),
    Stage.HELO: _StageInfo(SMFIC_HELO, int(Proto.NOHELO), int(Proto.NR_HELO), 1),
    Stage.MAIL: _StageInfo(SMFIC_MAIL, int(Proto.NOMAIL), int(Proto.NR_MAIL), 2),
    Stage.RCPT: _StageInfo(SMFIC_RCPT, int(Proto.NORCPT), int(Proto.NR_RCPT), 3),
    Stage.DATA: _StageInfo(SMFIC_DATA, int(Proto.NODATA), int(Proto.NR_DATA), 4),
    # Postfix sends the end-of-header macros with each header, the end-of-data macros
    # with each body chunk.
    Stage.HEADER: _StageInfo(SMFIC_HEADER, int(Proto.NOHDRS), int(Proto.NR_HDR), 6),
    Stage.EOH: _StageInfo(SMFIC_EOH, int(Proto.NOEOH), int(Proto.NR_EOH), 6),
    Stage.BODY: _StageInfo(SMFIC_BODY, int(Proto.NOBODY), int(Proto.NR_BODY), 5),
    Stage.EOM: _StageInfo(SMFIC_BODYEOB, 0, 0, 5),
}

#: Postfix 3.x default macro lists (milter_*_macros), by SMFIM_* class.
POSTFIX_DEFAULT_MACROS: dict[int, tuple[str, ...]] = {
    0: ("j", "{daemon_name}", "{daemon_addr}", "v", "_"),
    1: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    2: (
        "i",
        "{auth_type}",
        "{auth_authen}",
        "{auth_author}",
        "{mail_addr}",
        "{mail_host}",
        "{mail_mailer}",
    ),
    3: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    4: ("i",),
    5: ("i",),
    6: ("i",),
}


class ProtocolError(Exception):
    """The milter said something the protocol does not allow (Postfix would give up)."""


# --------------------------------------------------------------------------- encoding


def _s(text: str) -> bytes:
    """A NUL-terminated protocol string; surrogateescape keeps raw 8-bit bytes intact."""
    return text.encode("utf-8", "surrogateescape") + b"\0"


def packet(command: bytes, data: bytes = b"") -> bytes:
    """One protocol packet: 32-bit length (command byte included), command, data."""
    return struct.pack("!I", len(data) + 1) + command + data


def encode_optneg(
    version: int = SMFI_VERSION,
    actions: int = POSTFIX_ACTIONS,
    protocol: int = POSTFIX_V6_PROTOCOL,
) -> bytes:
    return packet(SMFIC_OPTNEG, struct.pack("!III", version, int(actions), int(protocol)))


def encode_macros(command: bytes, macros: Iterable[tuple[str, str]]) -> bytes:
    """SMFIC_MACRO for the event `command`: name/value pairs, all NUL-terminated."""
    data = b"".join([f"{k}\0{v}\0".encode("utf-8", "surrogateescape") for k, v in macros])
    return packet(SMFIC_MACRO, command + data)


def encode_connect(hostname: str, family: bytes, port: int = 0, address: str = "") -> bytes:
    """SMFIC_CONNECT; for SMFIA_UNKNOWN only the host name and family are sent."""
    if family == SMFIA_UNKNOWN:
        return packet(SMFIC_CONNECT, _s(hostname) + family)
    return packet(SMFIC_CONNECT, _s(hostname) + family + struct.pack("!H", port) + _s(address))


def encode_helo(name: str) -> bytes:
    return packet(SMFIC_HELO, _s(name))


def encode_mail(sender: str, args: Sequence[str] = ()) -> bytes:
    """SMFIC_MAIL: the MAIL FROM argument as the client wrote it (with <>), then ESMTP args."""
    return packet(SMFIC_MAIL, _s(f"<{sender}>") + b"".join(_s(a) for a in args))


def encode_rcpt(recipient: str, args: Sequence[str] = ()) -> bytes:
    return packet(SMFIC_RCPT, _s(f"<{recipient}>") + b"".join(_s(a) for a in args))


def encode_header(name: str, value: str) -> bytes:
    return packet(SMFIC_HEADER, _s(name) + _s(value))


def encode_body(chunk: bytes) -> bytes:
    if len(chunk) > MILTER_CHUNK_SIZE:
        raise ValueError(f"body chunk of {len(chunk)} bytes > {MILTER_CHUNK_SIZE}")
    return packet(SMFIC_BODY, chunk)


ENCODED_DATA = packet(SMFIC_DATA)
ENCODED_EOH = packet(SMFIC_EOH)
ENCODED_EOM = packet(SMFIC_BODYEOB)
ENCODED_ABORT = packet(SMFIC_ABORT)
ENCODED_QUIT = packet(SMFIC_QUIT)


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class Packet:
    command: bytes
    data: bytes


class PacketReader:
    """Splits a byte stream into packets; feed it whatever recv() returned."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_packet(self) -> Packet | None:
        buf = self._buffer
        if len(buf) < 5:
            return None
        (length,) = struct.unpack_from("!I", buf, 0)
        if length < 1 or length > MAX_PACKET:
            raise ProtocolError(f"bad packet length {length}")
        if len(buf) < 4 + length:
            return None
        pkt = Packet(bytes(buf[4:5]), bytes(buf[5 : 4 + length]))
        del buf[: 4 + length]
        return pkt

    @property
    def buffered(self) -> int:
        return len(self._buffer)


class ResponseReader:
    """Assembles milter replies from a byte stream: modifications, then a control reply.

    SMFIR_PROGRESS only says "still working" and is skipped, as Postfix does.
    """

    def __init__(self) -> None:
        self.packets = PacketReader()
        self._mods: list[Modification] = []

    def feed(self, data: bytes) -> None:
        self.packets.feed(data)

    def next_packet(self) -> Packet | None:
        """A raw packet (for the SMFIC_OPTNEG reply, which is not a Reply)."""
        return self.packets.next_packet()

    def next_response(self) -> Response | None:
        while True:
            pkt = self.packets.next_packet()
            if pkt is None:
                return None
            item = decode_response(pkt)
            if isinstance(item, Reply):
                if item.action is Action.PROGRESS:
                    continue
                mods = tuple(self._mods)
                self._mods.clear()
                return Response(item, mods)
            self._mods.append(item)


@dataclass(frozen=True)
class Negotiated:
    """The milter's SMFIC_OPTNEG answer: what to send, what to wait for, which macros."""

    version: int
    actions: Act
    protocol: Proto
    symlists: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    # Derived once: IntFlag arithmetic costs microseconds, and the message flow asks
    # these questions ~40 times per message.
    _sent: frozenset[Stage] = field(init=False, repr=False, compare=False)
    _answered: frozenset[Stage] = field(init=False, repr=False, compare=False)
    #: Hashable identity of the negotiation result, for caches of encoded packets.
    key: tuple[object, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bits = int(self.protocol)
        sent = frozenset(s for s, info in _STAGES.items() if not bits & info.no_send)
        answered = frozenset(s for s in sent if not bits & _STAGES[s].no_reply)
        object.__setattr__(self, "_sent", sent)
        object.__setattr__(self, "_answered", answered)
        object.__setattr__(
            self,
            "key",
            (self.version, int(self.actions), bits, tuple(sorted(self.symlists.items()))),
        )

    def sends(self, stage: Stage) -> bool:
        return stage in self._sent

    def replies(self, stage: Stage) -> bool:
        """Whether the milter answers this event (meaningful only for events it gets)."""
        return stage in self._answered

    @property
    def leading_space(self) -> bool:
        return bool(int(self.protocol) & _HDR_LEADSPC)

    def macro_names(self, stage: Stage) -> tuple[str, ...]:
        cls = _STAGES[stage].macro_class
        return self.symlists.get(cls, POSTFIX_DEFAULT_MACROS[cls])

    def describe(self) -> str:
        """Human-readable negotiation result, for `--verbose` output and error messages."""
        sent = [s.value for s in Stage if self.sends(s)]
        waited = [s.value for s in Stage if self.sends(s) and self.replies(s)]
        return f"v{self.version} sends {','.join(sent)}; waits for {','.join(waited)}"


_OPTNEG_CACHE: dict[tuple[bytes, int], Negotiated] = {}


def parse_optneg(data: bytes, offered_actions: int = POSTFIX_ACTIONS) -> Negotiated:
    """Decode and check the milter's negotiation reply the way Postfix does.

    A milter answers every connection the same way, so results are memoised: the load
    client negotiates thousands of times a second.
    """
    key = (data, int(offered_actions))
    cached = _OPTNEG_CACHE.get(key)
    if cached is None:
        cached = _parse_optneg(data, offered_actions)
        if len(_OPTNEG_CACHE) > 64:
            _OPTNEG_CACHE.clear()
        _OPTNEG_CACHE[key] = cached
    return cached


def _parse_optneg(data: bytes, offered_actions: int) -> Negotiated:
    if len(data) < 12:
        raise ProtocolError(f"SMFIC_OPTNEG reply too short ({len(data)} bytes)")
    version, actions, protocol = struct.unpack_from("!III", data, 0)
    if version > SMFI_VERSION or version < 2:
        raise ProtocolError(f"milter protocol version {version} not supported")
    if actions & ~int(offered_actions):
        raise ProtocolError(f"milter requests actions 0x{actions:x} we did not offer")
    symlists: dict[int, tuple[str, ...]] = {}
    rest = data[12:]
    while rest:
        if len(rest) < 5:
            raise ProtocolError("truncated macro list in SMFIC_OPTNEG reply")
        (cls,) = struct.unpack_from("!I", rest, 0)
        names, nul, rest = rest[4:].partition(b"\0")
        if not nul:
            raise ProtocolError("macro list without NUL in SMFIC_OPTNEG reply")
        symlists[cls] = tuple(names.decode("ascii", "replace").replace(",", " ").split())
    return Negotiated(version, Act(actions), Proto(protocol), symlists)


class Action(enum.StrEnum):
    """Control replies (the ones that end a step), as names."""

    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    REPLYCODE = "replycode"
    SKIP = "skip"
    PROGRESS = "progress"
    SHUTDOWN = "shutdown"
    CONN_FAIL = "conn_fail"


_CONTROL: dict[bytes, Action] = {
    SMFIR_CONTINUE: Action.CONTINUE,
    SMFIR_ACCEPT: Action.ACCEPT,
    SMFIR_REJECT: Action.REJECT,
    SMFIR_TEMPFAIL: Action.TEMPFAIL,
    SMFIR_DISCARD: Action.DISCARD,
    SMFIR_REPLYCODE: Action.REPLYCODE,
    SMFIR_SKIP: Action.SKIP,
    SMFIR_PROGRESS: Action.PROGRESS,
    SMFIR_SHUTDOWN: Action.SHUTDOWN,
    SMFIR_CONN_FAIL: Action.CONN_FAIL,
}

_REPLYCODE = re.compile(r"^([45])\d\d[ -]")


@dataclass(frozen=True, slots=True)
class Reply:
    """A control reply; `text` is the SMTP reply of SMFIR_REPLYCODE."""

    action: Action
    text: str | None = None

    @property
    def smtp_code(self) -> str | None:
        """What Postfix would tell the SMTP client (its fixed texts for reject/tempfail)."""
        if self.action is Action.REPLYCODE:
            return self.text[:3] if self.text else None
        return {Action.REJECT: "550", Action.TEMPFAIL: "451"}.get(self.action)


@dataclass(frozen=True, slots=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    index: int  # 0 = top of the message
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    index: int  # 1 = first occurrence of `name`; empty value deletes it
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class AddRecipient:
    recipient: str
    args: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    recipient: str


@dataclass(frozen=True, slots=True)
class ChangeFrom:
    sender: str
    args: str | None = None


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    chunk: bytes


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


Modification = (
    AddHeader
    | InsertHeader
    | ChangeHeader
    | AddRecipient
    | DeleteRecipient
    | ChangeFrom
    | ReplaceBody
    | Quarantine
)


def _strings(data: bytes, count: int, what: str) -> list[str]:
    """Exactly `count` NUL-terminated strings (the last may be missing its NUL)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) != count:
        raise ProtocolError(f"{what}: expected {count} strings, got {len(parts)}")
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def _optional_second(data: bytes, what: str) -> tuple[str, str | None]:
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) not in (1, 2):
        raise ProtocolError(f"{what}: expected 1 or 2 strings, got {len(parts)}")
    first = parts[0].decode("utf-8", "surrogateescape")
    second = parts[1].decode("utf-8", "surrogateescape") if len(parts) == 2 else None
    return first, second


def decode_response(pkt: Packet) -> Reply | Modification:
    """Decode one milter -> MTA packet into a control reply or a modification."""
    cmd, data = pkt.command, pkt.data
    action = _CONTROL.get(cmd)
    if action is not None:
        if action is Action.REPLYCODE:
            text = data.rstrip(b"\0").decode("utf-8", "replace")
            if not _REPLYCODE.match(text) or text[4:5] != text[0]:
                raise ProtocolError(f"malformed SMFIR_REPLYCODE {text!r}")
            return Reply(action, text)
        if data:
            raise ProtocolError(f"reply {cmd!r} followed by {len(data)} data bytes")
        return Reply(action)
    if cmd == SMFIR_ADDHEADER:
        name, value = _strings(data, 2, "SMFIR_ADDHEADER")
        return AddHeader(name, value)
    if cmd in (SMFIR_INSHEADER, SMFIR_CHGHEADER):
        if len(data) < 4:
            raise ProtocolError(f"{cmd!r}: missing index")
        (index,) = struct.unpack_from("!I", data, 0)
        name, value = _strings(data[4:], 2, f"{cmd!r}")
        if cmd == SMFIR_INSHEADER:
            return InsertHeader(index, name, value)
        return ChangeHeader(index, name, value)
    if cmd == SMFIR_ADDRCPT:
        return AddRecipient(_strings(data, 1, "SMFIR_ADDRCPT")[0])
    if cmd == SMFIR_ADDRCPT_PAR:
        return AddRecipient(*_optional_second(data, "SMFIR_ADDRCPT_PAR"))
    if cmd == SMFIR_DELRCPT:
        return DeleteRecipient(_strings(data, 1, "SMFIR_DELRCPT")[0])
    if cmd == SMFIR_CHGFROM:
        return ChangeFrom(*_optional_second(data, "SMFIR_CHGFROM"))
    if cmd == SMFIR_REPLBODY:
        return ReplaceBody(data)
    if cmd == SMFIR_QUARANTINE:
        return Quarantine(data.rstrip(b"\0").decode("utf-8", "replace"))
    raise ProtocolError(f"unknown milter reply {cmd!r}")


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """A message split the way the MTA presents it to a milter.

    `headers` keep folded lines joined by a bare LF and the value's leading whitespace
    (the sender decides per negotiation whether to strip one space); `body` has CRLF
    line ends.
    """

    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Message:
        """Parse RFC 5322 bytes (LF or CRLF line ends; a leading mbox "From " line is
        dropped, so a message saved from a mailbox can be replayed as is)."""
        text = raw.replace(b"\r\n", b"\n")
        if text.startswith(b"From "):
            text = text.partition(b"\n")[2]
        head, sep, body = text.partition(b"\n\n")
        if not sep:
            head, body = text, b""
        headers: list[tuple[str, str]] = []
        for line in head.split(b"\n"):
            if not line:
                continue
            if line[:1] in (b" ", b"\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, value + "\n" + line.decode("utf-8", "surrogateescape"))
                continue
            name_b, colon, value_b = line.partition(b":")
            if not colon:
                raise ValueError(f"not a header line: {line[:60]!r}")
            headers.append(
                (
                    name_b.decode("ascii", "replace").rstrip(),
                    value_b.decode("utf-8", "surrogateescape"),
                )
            )
        return cls(tuple(headers), body.replace(b"\n", b"\r\n"))

    @property
    def size(self) -> int:
        """Approximate size on the wire (headers + CRLF + body)."""
        head = sum(
            len(n) + 1 + len(v.encode("utf-8", "surrogateescape")) + 2 for n, v in self.headers
        )
        return head + 2 + len(self.body)


class PreparedMessage:
    """A Message with its header and body packets encoded once.

    A load client sends the same message thousands of times a second; encoding it once
    per negotiated header style keeps the client off the critical path.
    """

    def __init__(self, message: Message) -> None:
        self.message = message
        self._headers: dict[bool, tuple[bytes, ...]] = {}
        chunks = [
            message.body[i : i + MILTER_CHUNK_SIZE]
            for i in range(0, len(message.body), MILTER_CHUNK_SIZE)
        ]
        self.body_packets: tuple[bytes, ...] = tuple(encode_body(c) for c in chunks)

    def header_packets(self, leading_space: bool) -> tuple[bytes, ...]:
        cached = self._headers.get(leading_space)
        if cached is None:
            out = []
            for name, value in self.message.headers:
                if not leading_space and value.startswith(" "):
                    value = value[1:]  # Sendmail compatibility: eat one space, not a tab
                out.append(encode_header(name, value))
            cached = self._headers[leading_space] = tuple(out)
        return cached


# --------------------------------------------------------------------------- session data


@dataclass(frozen=True)
class ClientInfo:
    """The SMTP client as the MTA saw it: what goes into SMFIC_CONNECT, HELO and macros."""

    address: str = "192.0.2.10"
    hostname: str | None = None  # PTR name; None: "[address]" as Postfix sends unknown names
    port: int = 25000
    helo: str = "mail.example.org"
    myhostname: str = "mx.example.net"  # macro j
    daemon_name: str = "smtpd"
    daemon_addr: str = "127.0.0.1"
    mail_version: str = "Postfix 3.7.11"  # macro v

    @property
    def family(self) -> bytes:
        if self.address.startswith("/"):
            return SMFIA_UNIX
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            return SMFIA_UNKNOWN
        return SMFIA_INET6 if ip.version == 6 else SMFIA_INET

    @property
    def sendmail_name(self) -> str:
        return self.hostname if self.hostname else f"[{self.address}]"


@dataclass(frozen=True)
class Envelope:
    """One SMTP transaction's envelope; `sender` and recipients without angle brackets."""

    sender: str
    recipients: tuple[str, ...]
    mail_args: tuple[str, ...] = ()
    queue_id: str = "4Xq1bC2kLmz9"
    auth_user: str | None = None  # set for an authenticated (outbound) submission
    auth_type: str = "PLAIN"


def postfix_macros(
    client: ClientInfo, envelope: Envelope | None, recipient: str | None = None
) -> dict[str, str]:
    """Every macro value this client knows, named as Postfix names them.

    Which of them are sent for an event is decided by the default lists or by the
    milter's SMFIR_SETSYMLIST; undefined ones are left out, as Postfix does.
    """
    values = {
        "j": client.myhostname,
        "{daemon_name}": client.daemon_name,
        "{daemon_addr}": client.daemon_addr,
        "v": client.mail_version,
        "_": f"{client.hostname or 'unknown'} [{client.address}]",
        "{client_addr}": client.address,
        "{client_name}": client.hostname or "unknown",
        "{client_port}": str(client.port),
    }
    if envelope is not None:
        values["i"] = envelope.queue_id
        values["{mail_addr}"] = envelope.sender
        if envelope.auth_user:
            values["{auth_type}"] = envelope.auth_type
            values["{auth_authen}"] = envelope.auth_user
        if recipient is not None:
            values["{rcpt_addr}"] = recipient
            values["{rcpt_host}"] = recipient.rpartition("@")[2]
            values["{rcpt_mailer}"] = "smtp"
    return values


def _macro_payload(names: Sequence[str], values: Mapping[str, str]) -> bytes:
    """Name/value pairs of SMFIC_MACRO for the defined names, each NUL-terminated."""
    return b"".join(
        [f"{n}\0{values[n]}\0".encode("utf-8", "surrogateescape") for n in names if n in values]
    )


def _macro_packet(neg: Negotiated, stage: Stage, values: Mapping[str, str]) -> bytes:
    payload = _macro_payload(neg.macro_names(stage), values)
    return packet(SMFIC_MACRO, _STAGES[stage].command + payload)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Response:
    """A control reply plus the modifications that preceded it."""

    reply: Reply
    modifications: tuple[Modification, ...] = ()


@dataclass(frozen=True)
class MessageResult:
    """How one message ended: the deciding reply, where, and what the milter changed."""

    action: Action
    stage: Stage
    reply: str | None = None
    modifications: tuple[Modification, ...] = ()
    rejected_recipients: tuple[tuple[str, Reply], ...] = ()

    @property
    def accepted(self) -> bool:
        return self.action in (Action.ACCEPT, Action.CONTINUE)

    @property
    def quarantined(self) -> bool:
        return any(isinstance(m, Quarantine) for m in self.modifications)

    @property
    def label(self) -> str:
        """A short, bounded name for the action distribution: ``accept``, ``reject@rcpt``,
        ``replycode 550``, ``accept+quarantine``."""
        name = "accept" if self.action is Action.CONTINUE else self.action.value
        if self.action is Action.REPLYCODE and self.reply:
            name = f"replycode {self.reply[:3]}"
        if self.stage is not Stage.EOM:
            name += f"@{self.stage.value}"
        if self.quarantined:
            name += "+quarantine"
        return name


@dataclass
class FlowState:
    """Mutable state of one connection as seen by the MTA."""

    neg: Negotiated
    client: ClientInfo
    closed_by_decision: MessageResult | None = None  # ACCEPT_CON / REJECT_CON
    skip_stage: Stage | None = None  # after SMFIR_SKIP


# A flow generator yields bytes to send (ending with a command that needs a reply), gets
# the Response back, and finally returns its result plus bytes to send later without
# waiting (ABORT), which the driver coalesces into its next write.
FlowGen = Generator[bytes, Response, tuple[MessageResult | None, bytes]]


def _is_connection_final(action: Action) -> bool:
    return action in (
        Action.ACCEPT,
        Action.REJECT,
        Action.TEMPFAIL,
        Action.REPLYCODE,
        Action.SHUTDOWN,
        Action.CONN_FAIL,
    )


_CONNECTION_CACHE: dict[tuple[object, ...], tuple[tuple[Stage, bytes, bytes], ...]] = {}


def _connection_packets(
    neg: Negotiated, client: ClientInfo
) -> tuple[tuple[Stage, bytes, bytes], ...]:
    """(stage, macros, command) for connect and HELO; memoised per negotiation and client."""
    key = (neg.key, client)
    cached = _CONNECTION_CACHE.get(key)
    if cached is None:
        values = postfix_macros(client, None)
        cached = (
            (
                Stage.CONNECT,
                _macro_packet(neg, Stage.CONNECT, values),
                encode_connect(client.sendmail_name, client.family, client.port, client.address),
            ),
            (Stage.HELO, _macro_packet(neg, Stage.HELO, values), encode_helo(client.helo)),
        )
        if len(_CONNECTION_CACHE) > 4096:
            _CONNECTION_CACHE.clear()
        _CONNECTION_CACHE[key] = cached
    return cached


def connection_flow(state: FlowState) -> FlowGen:
    """Connect and HELO events.  Returns a result only for a connection-level decision."""
    neg, client = state.neg, state.client
    out = bytearray()
    for stage, macros, cmd in _connection_packets(neg, client):
        out += macros
        if not neg.sends(stage):
            continue
        out += cmd
        if not neg.replies(stage):
            continue
        resp = yield bytes(out)
        out.clear()
        if resp.modifications:
            raise ProtocolError(f"modification request at {stage.value}")
        action = resp.reply.action
        if _is_connection_final(action):
            result = MessageResult(action, stage, resp.reply.text)
            state.closed_by_decision = result
            return result, b""
    return None, bytes(out)


def message_flow(state: FlowState, envelope: Envelope, message: PreparedMessage) -> FlowGen:
    """One transaction, MAIL to end of message, then SMFIC_ABORT as Postfix sends it."""
    neg, client = state.neg, state.client
    out = bytearray()
    state.skip_stage = None

    def step(stage: Stage, macros: bytes, command: bytes) -> Iterator[bytes]:
        """Queue macros and command; yield a flush if the milter will answer this one."""
        out.extend(macros)
        if not neg.sends(stage) or state.skip_stage is stage:
            return
        out.extend(command)
        if neg.replies(stage):
            data = bytes(out)
            out.clear()
            yield data

    def finish(result: MessageResult) -> tuple[MessageResult, bytes]:
        out.extend(ENCODED_ABORT)
        return result, bytes(out)

    def check(stage: Stage, resp: Response) -> MessageResult | None:
        """Interpret a reply before end of message; a result means the message is done."""
        if resp.modifications:
            raise ProtocolError(f"modification request at {stage.value}")
        action = resp.reply.action
        if action is Action.SKIP:
            state.skip_stage = stage
            return None
        if action is Action.CONTINUE:
            return None
        if action in (Action.SHUTDOWN, Action.CONN_FAIL):
            state.closed_by_decision = MessageResult(action, stage, resp.reply.text)
        return MessageResult(action, stage, resp.reply.text)

    base = postfix_macros(client, envelope)
    mail_macros = _macro_packet(neg, Stage.MAIL, base)
    for data in step(Stage.MAIL, mail_macros, encode_mail(envelope.sender, envelope.mail_args)):
        done = check(Stage.MAIL, (yield data))
        if done:
            return finish(done)

    rejected: list[tuple[str, Reply]] = []
    for rcpt in envelope.recipients:
        values = postfix_macros(client, envelope, rcpt)
        for data in step(Stage.RCPT, _macro_packet(neg, Stage.RCPT, values), encode_rcpt(rcpt)):
            resp = yield data
            if resp.modifications:
                raise ProtocolError("modification request at rcpt")
            action = resp.reply.action
            if action in (Action.REJECT, Action.TEMPFAIL, Action.REPLYCODE):
                rejected.append((rcpt, resp.reply))  # this recipient only; go on
            elif action is Action.SKIP:
                state.skip_stage = Stage.RCPT
            elif action is not Action.CONTINUE:
                return finish(MessageResult(action, Stage.RCPT, resp.reply.text))
    if envelope.recipients and len(rejected) == len(envelope.recipients):
        last = rejected[-1][1]
        return finish(MessageResult(last.action, Stage.RCPT, last.text, (), tuple(rejected)))
    state.skip_stage = None

    # DATA, end-of-header and end-of-data macros are usually the same list ("i"):
    # encode each distinct list once per message.
    payloads: dict[tuple[str, ...], bytes] = {}

    def stage_macros(stage: Stage) -> bytes:
        names = neg.macro_names(stage)
        payload = payloads.get(names)
        if payload is None:
            payload = payloads[names] = _macro_payload(names, base)
        return packet(SMFIC_MACRO, _STAGES[stage].command + payload)

    data_macros = stage_macros(Stage.DATA)
    for data in step(Stage.DATA, data_macros, ENCODED_DATA):
        done = check(Stage.DATA, (yield data))
        if done:
            return finish(done)

    eoh_macros = stage_macros(Stage.HEADER)
    headers = message.header_packets(neg.leading_space)
    if neg.sends(Stage.HEADER) and not neg.replies(Stage.HEADER) and headers:
        # Fast path (no reply per header): macros before each header, in one go.
        out += eoh_macros + eoh_macros.join(headers)
    elif neg.sends(Stage.HEADER):  # with NOHDRS Postfix does not even send the macros
        for header in headers:
            for data in step(Stage.HEADER, eoh_macros, header):
                done = check(Stage.HEADER, (yield data))
                if done:
                    return finish(done)
    if neg.sends(Stage.EOH):
        for data in step(Stage.EOH, eoh_macros, ENCODED_EOH):
            done = check(Stage.EOH, (yield data))
            if done:
                return finish(done)

    eom_macros = stage_macros(Stage.EOM)
    if neg.sends(Stage.BODY):
        for chunk in message.body_packets:
            if state.skip_stage is Stage.BODY:
                break
            for data in step(Stage.BODY, eom_macros, chunk):
                done = check(Stage.BODY, (yield data))
                if done:
                    return finish(done)

    out.extend(eom_macros)
    out.extend(ENCODED_EOM)
    resp = yield bytes(out)
    out.clear()
    return finish(eom_result(state, resp, tuple(rejected)))


def eom_result(
    state: FlowState, resp: Response, rejected: tuple[tuple[str, Reply], ...] = ()
) -> MessageResult:
    """Interpret the reply to end of message (where modifications are allowed)."""
    action = resp.reply.action
    if action is Action.SKIP:
        raise ProtocolError("SMFIR_SKIP at end of message")
    result = MessageResult(action, Stage.EOM, resp.reply.text, resp.modifications, rejected)
    if action in (Action.SHUTDOWN, Action.CONN_FAIL):
        state.closed_by_decision = result
    return result


QUEUE_ID_LENGTH = 12
_QUEUE_ID_PLACEHOLDER = "\x01QUEUEID\x01\x01\x01\x01"  # 12 bytes no message contains


def one_write(neg: Negotiated) -> bool:
    """Whether the milter answers nothing between MAIL and end of message.

    Then a whole transaction is a single write and a single reply, and it can be
    encoded once (`TransactionTemplate`).  Milters that care about speed negotiate
    exactly this (all SMFIP_NR_* or SMFIP_NO* steps).
    """
    return not any(
        neg.replies(s)
        for s in (Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.HEADER, Stage.EOH, Stage.BODY)
    )


class TransactionTemplate:
    """The bytes of a one-write transaction, encoded once, with the queue id spliced in.

    The only thing that differs between two messages of a load run is the queue id
    (macro ``i``).  With a fixed-length id the packet lengths do not change, so the
    transaction is encoded by `message_flow` itself with a placeholder id, and each
    message costs one join instead of a few hundred lines of Python: the load client
    must stay cheaper than the milter it measures.
    """

    def __init__(
        self, neg: Negotiated, client: ClientInfo, envelope: Envelope, message: PreparedMessage
    ) -> None:
        if not one_write(neg):
            raise ValueError("the milter replies before end of message: no single write")
        state = FlowState(neg, client)
        flow = message_flow(state, replace(envelope, queue_id=_QUEUE_ID_PLACEHOLDER), message)
        data = next(flow)
        try:
            flow.send(Response(Reply(Action.ACCEPT)))
        except StopIteration as stop:
            self.trailing: bytes = stop.value[1]  # SMFIC_ABORT
        else:
            raise AssertionError("message_flow wanted a second reply")
        self._parts = data.split(_QUEUE_ID_PLACEHOLDER.encode())

    def render(self, queue_id: str) -> bytes:
        if len(queue_id) != QUEUE_ID_LENGTH:
            raise ValueError(f"queue id must have {QUEUE_ID_LENGTH} characters")
        return queue_id.encode("ascii").join(self._parts)


# --------------------------------------------------------------------------- I/O driver


class MilterClient:
    """A blocking milter connection: negotiate, connect/HELO, messages, quit.

    Not thread-safe; use one per thread (the load client does).  Typical use::

        with MilterClient(SocketSpec.parse("unix:/run/m.sock")) as conn:
            conn.open(ClientInfo(address="192.0.2.1"))
            result = conn.send_message(envelope, PreparedMessage(Message.parse(raw)))
    """

    def __init__(
        self,
        spec: SocketSpec,
        *,
        timeout: float = 30.0,
        actions: int = POSTFIX_ACTIONS,
        protocol: int = POSTFIX_V6_PROTOCOL,
    ) -> None:
        self.spec = spec
        self.timeout = timeout
        self._offer_actions = actions
        self._offer_protocol = protocol
        self._sock: socket.socket | None = None
        self._reader = ResponseReader()
        self._pending = bytearray()
        self._flow: FlowState | None = None
        self.negotiated: Negotiated | None = None

    # -- plumbing

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        if self._pending:
            data = bytes(self._pending) + data
            self._pending.clear()
        self._sock.sendall(data)

    def _recv(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("milter closed the connection")
        self._reader.feed(chunk)

    def _read_packet(self) -> Packet:
        while (pkt := self._reader.next_packet()) is None:
            self._recv()
        return pkt

    def _read_response(self) -> Response:
        while (resp := self._reader.next_response()) is None:
            self._recv()
        return resp

    def _drive(self, gen: FlowGen) -> MessageResult | None:
        try:
            data = next(gen)
            while True:
                self._send(data)
                data = gen.send(self._read_response())
        except StopIteration as stop:
            result, trailing = stop.value
            self._pending += trailing
            return result  # type: ignore[no-any-return]

    # -- API

    def negotiate(self) -> Negotiated:
        """Open the socket and exchange SMFIC_OPTNEG."""
        self._sock = open_socket(self.spec, timeout=self.timeout)
        self._send(encode_optneg(SMFI_VERSION, self._offer_actions, self._offer_protocol))
        pkt = self._read_packet()
        if pkt.command != SMFIC_OPTNEG:
            raise ProtocolError(f"expected SMFIC_OPTNEG reply, got {pkt.command!r}")
        self.negotiated = parse_optneg(pkt.data, self._offer_actions)
        return self.negotiated

    def open(self, client: ClientInfo) -> MessageResult | None:
        """Negotiate, then send connect and HELO.

        Returns None when the session may carry mail, or the connection-level decision
        (accept/reject/tempfail at connect or HELO), after which Postfix closes the
        stream and applies that decision to every message of the SMTP session.
        """
        neg = self.negotiate()
        self._flow = FlowState(neg, client)
        result = self._drive(connection_flow(self._flow))
        if result is not None:
            self._close_socket()
        return result

    def send_message(self, envelope: Envelope, message: PreparedMessage) -> MessageResult:
        """Run one transaction; returns when the final reply for this message arrived."""
        if self._flow is None:
            raise RuntimeError("open() first")
        decided = self._flow.closed_by_decision
        if decided is not None:
            return decided  # Postfix does not talk to this milter again in this session
        result = self._drive(message_flow(self._flow, envelope, message))
        assert result is not None
        if self._flow.closed_by_decision is not None:
            self._close_socket()
        return result

    def close(self) -> None:
        """Send SMFIC_QUIT (with any queued ABORT) and close."""
        if self._sock is not None:
            # The milter may already have gone; closing is all that is left then.
            with contextlib.suppress(OSError):
                self._send(ENCODED_QUIT)
            self._close_socket()

    def _close_socket(self) -> None:
        self._pending.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
