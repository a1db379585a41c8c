"""Postfix policy-delegation protocol (SMTPD_POLICY_README) as a pure codec.

Bytes in, requests out; answers in, bytes out.  No sockets, no clocks, so that it can be
fed one byte at a time or a megabyte at a time in tests and behave the same.

A request is `name=value` lines ended by an empty line.  Postfix never sends anything
else, so anything else is either a bug or someone who should not be talking to us.  The
decoder says which with `ProtocolError.fatal`:
- recoverable (a line without `=`, an empty request): the request is answered with a
  safe `DUNNO` and the connection goes on, because the line boundaries are intact;
- fatal (an over-long line or request, binary data): the stream cannot be trusted to
  resynchronise, so the server closes the connection after logging it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_MAX_REQUEST = 64 * 1024

# Control characters other than TAB never occur in Postfix attribute values.
_BINARY = re.compile(rb"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")
_NAME = re.compile(r"[A-Za-z0-9_]+")


class ErrorKind(StrEnum):
    NO_EQUALS = "no_equals"
    BAD_NAME = "bad_name"
    EMPTY_REQUEST = "empty_request"
    LINE_TOO_LONG = "line_too_long"
    REQUEST_TOO_LARGE = "request_too_large"
    BINARY = "binary"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class ProtocolError:
    kind: ErrorKind
    detail: str
    fatal: bool


@dataclass(frozen=True)
class PolicyRequest:
    """One complete request.  Every attribute is kept, known to us or not."""

    attributes: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return self.attributes.get(name, default)

    @property
    def request_type(self) -> str:
        return self.get("request")

    @property
    def protocol_state(self) -> str:
        return self.get("protocol_state").upper()


Event = PolicyRequest | ProtocolError


class PolicyDecoder:
    """Incremental decoder: `feed()` whatever arrived, get back the complete events."""

    def __init__(self, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        self._max_request = max_request
        self._buffer = bytearray()
        self._attributes: dict[str, str] = {}
        self._request_size = 0
        self._problem: ProtocolError | None = None
        self._dead = False
        # True while the unconsumed buffer may hold control characters: lines are then
        # checked one by one.  Usually it holds none, and no line needs the check.
        self._dirty = False

    @property
    def pending(self) -> bool:
        """True while a request has started but not ended."""
        return bool(self._buffer) or bool(self._attributes) or self._problem is not None

    def feed(self, data: bytes) -> list[Event]:
        if self._dead:
            return []
        events: list[Event] = []
        buffer = self._buffer
        buffer += data
        dirty = self._dirty or _BINARY.search(data) is not None
        start = 0  # lines before this offset are consumed (deleted once, at the end)
        if not dirty:
            start = self._complete_lines(buffer, events)
        while True:
            newline = buffer.find(b"\n", start)
            if newline < 0:
                del buffer[:start]
                # A control character in a consumed line was fatal: what is left of
                # `dirty` can only be in the unconsumed rest.
                self._dirty = dirty and bool(buffer)
                if len(buffer) + self._request_size > self._max_request:
                    events.append(self._overflow())
                break
            line = bytes(buffer[start:newline])
            start = newline + 1
            event = self._line(line, dirty)
            if event is not None:
                events.append(event)
                if isinstance(event, ProtocolError) and event.fatal:
                    break  # _fatal() emptied the buffer
        return events

    def _complete_lines(self, buffer: bytearray, events: list[Event]) -> int:
        """The fast path for what Postfix sends: decode every complete line of a buffer
        without control characters in one pass, when no request in it can outgrow
        max_request.  Returns the offset of the first unconsumed byte (0: not taken,
        the line-by-line loop does it all)."""
        end = buffer.rfind(b"\n") + 1
        if end == 0 or self._request_size + end > self._max_request:
            return 0
        attributes, size = self._attributes, self._request_size
        for raw in bytes(buffer[: end - 1]).split(b"\n"):
            size += len(raw) + 1
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                self._attributes = attributes
                events.append(self._end_of_request())
                attributes, size = self._attributes, 0
                continue
            name, sep, value = line.decode("utf-8", "surrogateescape").partition("=")
            if sep and (name in _GOOD_NAMES or _good_name(name)):
                attributes[name] = value
            elif not sep:
                self._note(ErrorKind.NO_EQUALS, f"line without '=': {name[:60]!r}")
            else:
                self._note(ErrorKind.BAD_NAME, f"bad attribute name {name[:60]!r}")
        self._attributes, self._request_size = attributes, size
        return end

    def eof(self) -> ProtocolError | None:
        """The peer closed: complain if it left a request half-sent."""
        if self._dead or not self.pending:
            return None
        self._dead = True
        return ProtocolError(ErrorKind.TRUNCATED, "connection closed inside a request", True)

    def _line(self, line: bytes, dirty: bool = True) -> Event | None:
        size = self._request_size + len(line) + 1
        if size > self._max_request:
            return self._overflow()
        self._request_size = size
        if line.endswith(b"\r"):
            line = line[:-1]
        if dirty and _BINARY.search(line):
            return self._fatal(ErrorKind.BINARY, "control characters in a request")
        if not line:
            return self._end_of_request()
        name, sep, value = line.decode("utf-8", "surrogateescape").partition("=")
        if not sep:
            self._note(ErrorKind.NO_EQUALS, f"line without '=': {name[:60]!r}")
        elif name not in _GOOD_NAMES and not _good_name(name):
            self._note(ErrorKind.BAD_NAME, f"bad attribute name {name[:60]!r}")
        else:
            self._attributes[name] = value
        return None

    def _end_of_request(self) -> Event:
        attributes, problem = self._attributes, self._problem
        self._attributes, self._problem, self._request_size = {}, None, 0
        if problem is not None:
            return problem
        if not attributes:
            return ProtocolError(ErrorKind.EMPTY_REQUEST, "empty request", False)
        return PolicyRequest(attributes)

    def _overflow(self) -> ProtocolError:
        """The request outgrew max_request.  Which error it is depends on the stream only,
        never on where a read happened to end: an over-long first line, or a request of
        several lines that is too large."""
        if self._request_size == 0:
            return self._fatal(ErrorKind.LINE_TOO_LONG,
                               f"line longer than {self._max_request} bytes")
        return self._fatal(ErrorKind.REQUEST_TOO_LARGE,
                           f"request larger than {self._max_request} bytes")

    def _note(self, kind: ErrorKind, detail: str) -> None:
        if self._problem is None:  # report the first problem of a request
            self._problem = ProtocolError(kind, detail, False)

    def _fatal(self, kind: ErrorKind, detail: str) -> ProtocolError:
        self._dead = True
        self._dirty = False
        self._buffer.clear()
        return ProtocolError(kind, detail, True)


#: Attribute names seen to be valid (a set lookup is cheaper than the regex); Postfix
#: sends some thirty, bounded so that a client inventing names cannot grow it.
_GOOD_NAMES: set[str] = set()


def _good_name(name: str) -> bool:
    if not _NAME.fullmatch(name):
        return False
    if len(_GOOD_NAMES) < 256:
        _GOOD_NAMES.add(name)
    return True


def encode_response(action: str) -> bytes:
    """`action=...` and the empty line; the action must be one line (access(5) syntax)."""
    if "\n" in action or "\r" in action or not action.strip():
        raise ValueError(f"a policy action must be one non-empty line, got {action!r}")
    return f"action={action}\n\n".encode("utf-8", "surrogateescape")


def encode_request(attributes: Mapping[str, str]) -> bytes:
    """A request as Postfix sends it; for tests, benchmarks and the load client."""
    lines = []
    for name, value in attributes.items():
        if not _NAME.fullmatch(name) or "\n" in value:
            raise ValueError(f"cannot encode attribute {name!r}={value!r}")
        lines.append(f"{name}={value}\n")
    return ("".join(lines) + "\n").encode("utf-8", "surrogateescape")
