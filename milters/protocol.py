"""The Sendmail 8 milter protocol, milter side: bytes in, typed commands out; replies to bytes.

A pure protocol core in the manner of h11: no sockets, no threads, no callbacks.
`CommandReader` takes whatever bytes arrived and yields the complete commands in them;
the encoders build the packets a milter sends back.  `milters.engine` does the I/O.

Why Mailward speaks the protocol itself instead of through libmilter: libmilter trusts
the MTA's framing.  A macro packet with an odd number of strings (a name without its
value) makes `smfi_getsymval` walk past the end of its array and the whole worker dies
with SIGSEGV, taking every other session of that process along (issue 9).  Here such a
packet is a defined, logged outcome for one session.  Every length and string is checked
before it is used; anything malformed raises `ProtocolError`, which costs exactly the
session that sent it.

Wire format (libmilter's mfdef.h): each packet is a 4-byte big-endian length, then one
command byte, then length-1 bytes of data.  Strings are NUL-terminated.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass

#: The protocol version this implementation speaks (Sendmail 8.14+ / Postfix).
VERSION = 6

#: Largest packet accepted.  Postfix sends body chunks of at most 64 KiB and one header
#: of at most `header_size_limit` (100 KiB by default) per packet; libmilter itself
#: refuses more than 1 MiB unless SMFIP_MDS_1M was negotiated.  Something longer is not
#: a mail packet but a broken or hostile client, and is refused before it is buffered.
MAX_PACKET = 2 * 1024 * 1024


class ProtocolError(Exception):
    """The MTA side sent something that is not the milter protocol; the session ends."""


class Command(bytes, enum.Enum):
    """SMFIC_*: what the MTA sends."""

    ABORT = b"A"
    BODY = b"B"
    CONNECT = b"C"
    MACRO = b"D"
    BODYEOB = b"E"
    HELO = b"H"
    QUIT_NC = b"K"
    HEADER = b"L"
    MAIL = b"M"
    EOH = b"N"
    OPTNEG = b"O"
    QUIT = b"Q"
    RCPT = b"R"
    DATA = b"T"
    UNKNOWN = b"U"


class Reply(bytes, enum.Enum):
    """SMFIR_*: what a milter answers (those Mailward uses)."""

    ACCEPT = b"a"
    CONTINUE = b"c"
    DISCARD = b"d"
    ADDHEADER = b"h"
    INSHEADER = b"i"
    CHGHEADER = b"m"
    QUARANTINE = b"q"
    REJECT = b"r"
    SKIP = b"s"
    TEMPFAIL = b"t"
    REPLYCODE = b"y"


class Action(enum.IntFlag):
    """SMFIF_*: what a milter may do at end of message."""

    ADDHDRS = 0x001
    CHGBODY = 0x002
    ADDRCPT = 0x004
    DELRCPT = 0x008
    CHGHDRS = 0x010
    QUARANTINE = 0x020
    CHGFROM = 0x040
    ADDRCPT_PAR = 0x080
    SETSYMLIST = 0x100


class Step(enum.IntFlag):
    """SMFIP_*: steps the milter does not want (NO*) or will not answer (NR_*)."""

    NOCONNECT = 0x00000001
    NOHELO = 0x00000002
    NOMAIL = 0x00000004
    NORCPT = 0x00000008
    NOBODY = 0x00000010
    NOHDRS = 0x00000020
    NOEOH = 0x00000040
    NR_HDR = 0x00000080
    NOUNKNOWN = 0x00000100
    NODATA = 0x00000200
    SKIP = 0x00000400
    RCPT_REJ = 0x00000800
    NR_CONN = 0x00001000
    NR_HELO = 0x00002000
    NR_MAIL = 0x00004000
    NR_RCPT = 0x00008000
    NR_DATA = 0x00010000
    NR_UNKN = 0x00020000
    NR_EOH = 0x00040000
    NR_BODY = 0x00080000
    HDR_LEADSPC = 0x00100000
    MDS_256K = 0x10000000
    MDS_1M = 0x20000000


#: Address families in SMFIC_CONNECT.
FAMILY_UNKNOWN = b"U"
FAMILY_UNIX = b"L"
FAMILY_INET = b"4"
FAMILY_INET6 = b"6"


# ---------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Negotiate:
    """SMFIC_OPTNEG: the MTA's protocol version, the actions and steps it offers."""

    version: int
    actions: int
    steps: int


@dataclass(frozen=True, slots=True)
class Macros:
    """SMFIC_MACRO: name/value pairs for the command named by `stage` (e.g. b"C")."""

    stage: bytes
    #: Read-only: `CommandReader` hands the same event out again for a repeated packet.
    values: Mapping[str, str]
    #: A name arrived without its value (the packet libmilter crashes on); the pairs
    #: before it are kept, the stray name is dropped.
    malformed: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """SMFIC_CONNECT: the client's host name, address family, port and address."""

    hostname: str
    family: bytes
    port: int
    address: str


@dataclass(frozen=True, slots=True)
class Arguments:
    """SMFIC_HELO, SMFIC_MAIL, SMFIC_RCPT, SMFIC_UNKNOWN: NUL-separated strings."""

    command: Command
    args: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HeaderField:
    """SMFIC_HEADER: one header field, its value as the MTA sent it."""

    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Body:
    """SMFIC_BODY; or SMFIC_BODYEOB carrying a last chunk (`last`; Postfix sends none)."""

    chunk: bytes
    last: bool = False


@dataclass(frozen=True, slots=True)
class Bare:
    """A command without data: ABORT, BODYEOB, EOH, DATA, QUIT, QUIT_NC."""

    command: Command


Event = Negotiate | Macros | Connect | Arguments | HeaderField | Body | Bare


def _strings(data: bytes, what: str) -> list[bytes]:
    """The NUL-terminated strings of a packet; the last one must be terminated."""
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what}: string not NUL-terminated")
    return data[:-1].split(b"\0")


def _text(raw: bytes) -> str:
    """Protocol strings as text: UTF-8, anything else kept as surrogates (never raises)."""
    return raw.decode("utf-8", "surrogateescape")


def decode_negotiate(data: bytes) -> Negotiate:
    if len(data) < 12:
        raise ProtocolError(f"option negotiation: {len(data)} bytes, 12 expected")
    version, actions, steps = struct.unpack_from(">III", data)
    return Negotiate(version, actions, steps)


def decode_macros(data: bytes) -> Macros:
    if not data:
        raise ProtocolError("macro packet without a command code")
    stage = data[:1]
    if len(data) == 1:
        return Macros(stage, {})
    strings = _strings(data[1:], "macro packet")
    malformed = len(strings) % 2 == 1
    if malformed:
        strings.pop()
    values = {_text(strings[i]): _text(strings[i + 1]) for i in range(0, len(strings), 2)}
    return Macros(stage, values, malformed)


def decode_connect(data: bytes) -> Connect:
    end = data.find(b"\0")
    if end < 0 or end + 1 >= len(data):
        raise ProtocolError("connect: no host name or address family")
    hostname = _text(data[:end])
    family = data[end + 1:end + 2]
    rest = data[end + 2:]
    if family == FAMILY_UNKNOWN:
        return Connect(hostname, family, 0, "")
    if family not in (FAMILY_INET, FAMILY_INET6, FAMILY_UNIX):
        raise ProtocolError(f"connect: unknown address family {family!r}")
    if len(rest) < 3 or not rest.endswith(b"\0"):
        raise ProtocolError("connect: no port or address")
    (port,) = struct.unpack_from(">H", rest)
    address = _text(rest[2:-1].split(b"\0", 1)[0])
    if family == FAMILY_INET6 and address[:5].lower() == "ipv6:":
        address = address[5:]  # Sendmail's form; Postfix sends the bare address
    return Connect(hostname, family, port, address)


def decode_header(data: bytes) -> HeaderField:
    strings = _strings(data, "header")
    if len(strings) != 2:
        raise ProtocolError(f"header: {len(strings)} strings, 2 expected")
    return HeaderField(strings[0], strings[1])


_ARGUMENT_COMMANDS = {c.value[0]: c for c in (Command.HELO, Command.MAIL, Command.RCPT,
                                               Command.UNKNOWN)}
_BARE_COMMANDS = {c.value[0]: c for c in (Command.ABORT, Command.EOH, Command.DATA,
                                           Command.QUIT, Command.QUIT_NC)}
_BARE_EVENTS = {code: Bare(command) for code, command in _BARE_COMMANDS.items()}
_BODY = Command.BODY.value[0]
_BODYEOB = Command.BODYEOB.value[0]
_HEADER = Command.HEADER.value[0]
_MACRO = Command.MACRO.value[0]
_CONNECT = Command.CONNECT.value[0]
_OPTNEG = Command.OPTNEG.value[0]
_BARE_EOB = Bare(Command.BODYEOB)


def decode(code: int, data: bytes) -> Event:
    """One packet (its command byte and data) as a typed command; raises ProtocolError."""
    if code == _HEADER:  # the most frequent command: its common case inline
        if data[-1:] == b"\0":
            parts = data[:-1].split(b"\0")
            if len(parts) == 2:
                return HeaderField(parts[0], parts[1])
        return decode_header(data)  # raises, naming the problem
    if code == _MACRO:
        return decode_macros(data)
    if code == _BODY:
        return Body(data)
    command = _ARGUMENT_COMMANDS.get(code)
    if command is not None:
        args = tuple(_strings(data, command.name.lower()))
        return Arguments(command, args)
    bare = _BARE_EVENTS.get(code)
    if bare is not None:
        return bare
    if code == _BODYEOB:
        return Body(data, last=True) if data else _BARE_EOB
    if code == _CONNECT:
        return decode_connect(data)
    if code == _OPTNEG:
        return decode_negotiate(data)
    raise ProtocolError(f"unknown command {bytes([code])!r}")


#: How many distinct macro packets a connection keeps decoded, and up to what length
#: (Postfix's default macro lists make packets of a few dozen bytes).
_MAX_CACHED_MACRO_PACKETS = 32
_MAX_CACHED_MACRO_LENGTH = 1024


class CommandReader:
    """Splits the byte stream from the MTA into commands, whatever the read boundaries.

    Postfix writes header packets back to back when it need not wait for replies, so one
    read often holds many; `receive` decodes all that are complete and keeps the rest
    for the next read.  A length over `max_packet` is refused before its data is read.
    """

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._pending = b""
        self._max_packet = max_packet
        # Postfix repeats one macro packet before every header of a message (the
        # end-of-header macros, usually just the queue id): decoded once, not per
        # header.  Bounded, per connection, small packets only.
        self._macros: dict[bytes, Macros] = {}

    def receive(self, data: bytes) -> list[Event]:
        """The commands that `data` completes, in order (raises ProtocolError)."""
        if self._pending:
            data = self._pending + data
        events: list[Event] = []
        start = 0
        size = len(data)
        unpack = _LENGTH.unpack_from
        while size - start >= 4:
            (length,) = unpack(data, start)
            if length == 0 or length > self._max_packet:
                raise ProtocolError(f"packet length {length} outside 1..{self._max_packet}")
            end = start + 4 + length
            if end > size:
                break
            code = data[start + 4]
            if code == _MACRO and length <= _MAX_CACHED_MACRO_LENGTH:
                events.append(self._decode_macros(data[start + 5:end]))
            else:
                events.append(decode(code, data[start + 5:end]))
            start = end
        self._pending = data[start:] if start < size else b""
        return events

    def _decode_macros(self, data: bytes) -> Macros:
        """`decode_macros`, answered from the packets seen before when it repeats one."""
        event = self._macros.get(data)
        if event is None:
            event = decode_macros(data)
            if len(self._macros) >= _MAX_CACHED_MACRO_PACKETS:
                # Full of past messages' queue ids (a connection Postfix reuses with
                # QUIT_NC): start again rather than stop caching for good.
                self._macros.clear()
            self._macros[data] = event
        return event

    @property
    def buffered(self) -> int:
        return len(self._pending)


# ---------------------------------------------------------------------- replies


_LENGTH = struct.Struct(">I")


def packet(code: Reply | Command, data: bytes = b"") -> bytes:
    code_byte: bytes = code.value
    return struct.pack(">I", len(data) + 1) + code_byte + data


def _z(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\0"


def encode_negotiate(version: int, actions: int, steps: int) -> bytes:
    return packet(Command.OPTNEG, struct.pack(">III", version, actions, steps))


def encode_add_header(name: str, value: str) -> bytes:
    return packet(Reply.ADDHEADER, _z(name) + _z(value))


def encode_insert_header(index: int, name: str, value: str) -> bytes:
    return packet(Reply.INSHEADER, struct.pack(">I", index) + _z(name) + _z(value))


def encode_change_header(index: int, name: str, value: str | None) -> bytes:
    """Index is 1-based (the first field of that name); no value deletes the field."""
    return packet(Reply.CHGHEADER, struct.pack(">I", index) + _z(name) + _z(value or ""))


def encode_quarantine(reason: str) -> bytes:
    return packet(Reply.QUARANTINE, _z(reason))


def encode_reply_code(code: str, enhanced: str | None, text: str) -> bytes:
    """SMFIR_REPLYCODE: "550 5.7.1 text".  Without an enhanced code, libmilter's default
    (x.0.0 of the reply's class) is used, as Postfix then expects one."""
    if enhanced is None:
        enhanced = f"{code[0]}.0.0"
    return packet(Reply.REPLYCODE, _z(f"{code} {enhanced} {text}"))


#: The one-byte replies, encoded once.
CONTINUE_PACKET = packet(Reply.CONTINUE)
ACCEPT_PACKET = packet(Reply.ACCEPT)
REJECT_PACKET = packet(Reply.REJECT)
TEMPFAIL_PACKET = packet(Reply.TEMPFAIL)
DISCARD_PACKET = packet(Reply.DISCARD)
SKIP_PACKET = packet(Reply.SKIP)
