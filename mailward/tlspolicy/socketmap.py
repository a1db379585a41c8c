"""Postfix's socketmap protocol (socketmap_table(5)) as a pure codec.

Postfix sends one netstring per lookup, `<len>:<name> <key>,`, and reads one netstring
back: `OK <data>`, `NOTFOUND `, `TEMP <reason>`, `TIMEOUT <reason>` or `PERM <reason>`.
The connection stays open for further lookups.  No sockets and no clocks here, so the
decoder behaves the same whether bytes arrive one at a time or all at once.

Every error is fatal to the connection: once a netstring's framing is wrong the stream
cannot resynchronise, so the server answers nothing further and closes.  Postfix then
reconnects and retries, which is a temporary failure, never a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: Postfix's own reply limit (socketmap_table(5): 100000 bytes); requests are far smaller.
DEFAULT_MAX_REQUEST = 10_000
MAX_REPLY = 100_000
_MAX_LENGTH_DIGITS = 7
_COMMA = ord(",")


class ErrorKind(StrEnum):
    BAD_LENGTH = "bad_length"
    TOO_LARGE = "too_large"
    NO_COMMA = "no_comma"
    NO_KEY = "no_key"
    BAD_ENCODING = "bad_encoding"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class SocketmapError:
    """Why the stream is unusable; the server logs it and closes the connection."""

    kind: ErrorKind
    detail: str


@dataclass(frozen=True)
class Lookup:
    """One request: the map name Postfix was configured with, and the key."""

    name: str
    key: str


Event = Lookup | SocketmapError


class ReplyStatus(StrEnum):
    OK = "OK"
    NOTFOUND = "NOTFOUND"
    TEMP = "TEMP"
    TIMEOUT = "TIMEOUT"
    PERM = "PERM"


@dataclass(frozen=True)
class Reply:
    status: ReplyStatus
    data: str = ""


class SocketmapDecoder:
    """Incremental decoder: `feed()` what arrived, get back complete lookups."""

    def __init__(self, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        self._max_request = max_request
        self._buffer = bytearray()
        self._dead = False

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[Event]:
        """The lookups completed by `data`.  Parsed in place: the common case, one whole
        request per read, copies nothing into the buffer."""
        if self._dead:
            return []
        if self._buffer:
            self._buffer += data
            view = bytes(self._buffer)
        else:
            view = data
        events: list[Event] = []
        position, size = 0, len(view)
        while position < size:
            event, position = self._next(view, position)
            if event is None:
                break
            events.append(event)
            if isinstance(event, SocketmapError):
                return events  # the buffer is already cleared; nothing more is read
        self._buffer = bytearray(view[position:]) if position < size else bytearray()
        return events

    def eof(self) -> SocketmapError | None:
        """The peer closed: an error only if it left a netstring half-sent."""
        if self._dead or not self._buffer:
            return None
        return self._fail(ErrorKind.TRUNCATED, "connection closed inside a request")

    def _next(self, view: bytes, position: int) -> tuple[Event | None, int]:
        """The event starting at `position` and where the next one starts, or
        (None, position) until more bytes arrive."""
        colon = view.find(b":", position, position + _MAX_LENGTH_DIGITS + 1)
        if colon < 0:
            rest = view[position:]
            if len(rest) > _MAX_LENGTH_DIGITS or not rest.isdigit():
                return self._fail(ErrorKind.BAD_LENGTH,
                                  f"netstring length expected, got {rest[:20]!r}"), position
            return None, position
        digits = view[position:colon]
        if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
            return self._fail(ErrorKind.BAD_LENGTH,
                              f"bad netstring length {digits[:20]!r}"), position
        length = int(digits)
        if length > self._max_request:
            return self._fail(ErrorKind.TOO_LARGE,
                              f"request of {length} bytes exceeds {self._max_request}"), position
        end = colon + 1 + length
        if len(view) <= end:
            return None, position
        if view[end] != _COMMA:
            return self._fail(ErrorKind.NO_COMMA, "netstring not terminated by ','"), position
        try:
            text = view[colon + 1:end].decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(ErrorKind.BAD_ENCODING, "request is not UTF-8"), position
        name, sep, key = text.partition(" ")
        if not sep or not name or not key:
            return self._fail(ErrorKind.NO_KEY,
                              f"request without 'name key': {text[:60]!r}"), position
        return Lookup(name, key), end + 1

    def _fail(self, kind: ErrorKind, detail: str) -> SocketmapError:
        self._dead = True
        self._buffer.clear()
        return SocketmapError(kind, detail)


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def encode_reply(reply: Reply) -> bytes:
    """One reply netstring.  `NOTFOUND ` carries its space, as Postfix expects."""
    if any(char in reply.data for char in "\r\n\x00"):
        raise ValueError(f"a socketmap reply must be one line, got {reply.data!r}")
    payload = f"{reply.status} {reply.data}".encode()
    if len(payload) > MAX_REPLY:
        raise ValueError(f"reply of {len(payload)} bytes exceeds Postfix's {MAX_REPLY}")
    return netstring(payload)


def encode_lookup(lookup: Lookup) -> bytes:
    """A request as Postfix sends it; for tests and benchmarks."""
    if " " in lookup.name or not lookup.name or not lookup.key:
        raise ValueError(f"cannot encode lookup {lookup!r}")
    return netstring(f"{lookup.name} {lookup.key}".encode())


def decode_reply(payload: bytes) -> Reply:
    """A reply netstring's payload (client side, for tests and the bench)."""
    status, _, data = payload.decode("utf-8").partition(" ")
    return Reply(ReplyStatus(status), data)
