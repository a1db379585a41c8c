"""The SPAMC/1.5 protocol that spamd speaks, as a pure codec: bytes in, values out, no I/O.

Like h11, this module never touches a socket: `encode_request` makes the bytes to send,
`ResponseDecoder` is fed what arrives (and told when the stream ended) and answers with
a `SpamdResponse` once one is complete; `spam_verdict` reads the score and the rule
names out of a SYMBOLS answer.  The thin client (mailward/spamd_client.py) only moves
bytes between these and a socket, so every malformed answer a spamd (or something that
is not spamd) can send is testable here without a server.

The protocol (SpamAssassin's spamd/PROTOCOL):

    request:   COMMAND SPAMC/1.5 CRLF  headers  CRLF  message
    response:  SPAMD/1.1 0 EX_OK CRLF
               Content-length: 27 CRLF
               Spam: True ; 1000.0 / 5.0 CRLF
               CRLF
               GTUBE,NO_RECEIVED,NO_RELAYS

An error answer is only the status line with a non-zero code (`SPAMD/1.0 76 Bad header
line: ...`), and PING's answer (`SPAMD/1.5 0 PONG`) has no header section either: spamd
closes the connection after every answer, so the end of the stream also ends a response.

Why SYMBOLS: it gives the total and the rule names in a fixed machine format.  REPORT
adds per-rule points, but inside the human-readable report template, which a site may
rewrite (`report` in local.cf): parsing that would break on the first customised site.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "Command", "ResponseDecoder", "SpamVerdict", "SpamdErrorAnswer", "SpamdProtocolError",
    "SpamdResponse",
    "encode_request", "spam_verdict",
]

PROTOCOL_VERSION = "1.5"

#: Bounds on what we accept from the other end: a header section (status line and the
#: few headers spamd sends) and a body (SYMBOLS lists rule names; REPORT a page of text).
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 256 * 1024
#: More rule names than any real SpamAssassin answer has (typical: under 30).
MAX_RULES = 500
#: Scores outside this are not SpamAssassin's (GTUBE is 1000; sums of real rules are
#: rarely beyond +-100).
MAX_ABS_SCORE = 100_000.0

_STATUS_LINE = re.compile(rb"SPAMD/(\d{1,3}\.\d{1,3}) +(\d{1,3})(?: +([ -~]*))?")
_HEADER_LINE = re.compile(rb"([A-Za-z][A-Za-z0-9\-]{0,63}) *: *([ -~]*)")
_NUMBER = r"[+-]?\d{1,6}(?:\.\d{1,6})?"
_SPAM_HEADER = re.compile(
    rf"(True|False|Yes|No) *; *({_NUMBER}) */ *({_NUMBER})", re.IGNORECASE)
_RULE_NAME = re.compile(r"[A-Za-z0-9_]{1,128}")
_USER = re.compile(r"[!-~]{1,128}")


class SpamdProtocolError(ValueError):
    """The peer's bytes are not a SPAMD answer we can use (garbage, truncated, too big)."""


class SpamdErrorAnswer(SpamdProtocolError):
    """A well-formed answer in which spamd reports its own error (non-zero code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"spamd error {code}: {message[:120]}")
        self.code = code


class Command(StrEnum):
    """The spamd commands this codec speaks (PROCESS/HEADERS/TELL are not needed)."""

    CHECK = "CHECK"      # verdict and score only
    SYMBOLS = "SYMBOLS"  # verdict, score and the names of the rules that hit
    REPORT = "REPORT"    # verdict, score and the human-readable report
    PING = "PING"        # is spamd alive: answers PONG


def encode_request(command: Command, message: bytes = b"", user: str | None = None) -> bytes:
    """The complete request: request line, headers, empty line, then the message.

    PING carries no message.  `user` selects spamd's per-user preferences (`User:`); it
    must be one printable token, so no header can be smuggled through it.
    """
    lines = [f"{command.value} SPAMC/{PROTOCOL_VERSION}"]
    if command is not Command.PING:
        lines.append(f"Content-length: {len(message)}")
    elif message:
        raise ValueError("PING carries no message")
    if user is not None:
        if not _USER.fullmatch(user):
            raise ValueError(f"spamd user must be 1-128 printable characters, got {user!r}")
        lines.append(f"User: {user}")
    head = "\r\n".join(lines).encode("ascii") + b"\r\n\r\n"
    return head + message


@dataclass(frozen=True)
class SpamdResponse:
    """One answer of spamd: the status line, the headers (names lower-cased), the body."""

    version: str
    code: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def ok(self) -> bool:
        """spamd's EX_OK (code 0); anything else is spamd reporting its own error."""
        return self.code == 0


@dataclass(frozen=True)
class SpamVerdict:
    """What spamd said about a message: its verdict, score, threshold and rules."""

    is_spam: bool
    score: float
    threshold: float
    rules: tuple[str, ...] = ()


class ResponseDecoder:
    """Reassembles one spamd answer from the pieces a socket hands over.

    `feed(data)` returns the response once it is complete, else None (send more);
    `feed(b"")` means the peer closed the connection: the response is then whatever
    arrived, or a SpamdProtocolError says why that is not an answer.  Bounded: a header
    section over `max_header_bytes` or a body over `max_body_bytes` is an error, so a
    peer that is not spamd cannot make us buffer without end.
    """

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._buffer = bytearray()
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._head: tuple[str, int, str, dict[str, str]] | None = None
        self._body_start = 0
        self._length: int | None = None
        self._done: SpamdResponse | None = None

    def feed(self, data: bytes) -> SpamdResponse | None:
        if self._done is not None:
            if data:
                raise SpamdProtocolError("data after the end of the response")
            return self._done
        if not data:
            self._done = self._at_end_of_stream()
            return self._done
        self._buffer += data
        if self._head is None:
            self._read_head(complete=False)
        if self._head is not None and self._length is not None:
            if len(self._buffer) - self._body_start > self._length:
                raise SpamdProtocolError("more body than Content-length announced")
            if len(self._buffer) - self._body_start == self._length:
                self._done = self._response()
        elif self._head is not None and len(self._buffer) - self._body_start > \
                self._max_body_bytes:
            raise SpamdProtocolError(f"body exceeds {self._max_body_bytes} bytes")
        return self._done

    def _at_end_of_stream(self) -> SpamdResponse:
        if self._head is None:
            if not self._buffer:
                raise SpamdProtocolError("connection closed without an answer")
            # Error answers and PONG are a status line (and maybe headers) without the
            # empty line: the close ends them.
            self._read_head(complete=True)
        assert self._head is not None
        if self._length is not None:
            received = len(self._buffer) - self._body_start
            raise SpamdProtocolError(
                f"connection closed after {received} of {self._length} body bytes")
        return self._response()

    def _read_head(self, complete: bool) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            # + 3: the buffer may end inside an empty line that starts within the limit.
            if len(self._buffer) > self._max_header_bytes + 3:
                raise SpamdProtocolError(f"no end of headers in {self._max_header_bytes} bytes")
            if not complete:
                return
            head = bytes(self._buffer).rstrip(b"\r\n")
            body_start = len(self._buffer)
        else:
            if end > self._max_header_bytes:
                raise SpamdProtocolError(f"headers exceed {self._max_header_bytes} bytes")
            head = bytes(self._buffer[:end])
            body_start = end + 4
        self._head = _parse_head(head)
        self._body_start = body_start
        length_text = self._head[3].get("content-length")
        if length_text is not None:
            if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > 9:
                raise SpamdProtocolError(f"bad Content-length {length_text!r}")
            self._length = int(length_text)
            if self._length > self._max_body_bytes:
                raise SpamdProtocolError(
                    f"Content-length {self._length} exceeds {self._max_body_bytes} bytes")

    def _response(self) -> SpamdResponse:
        assert self._head is not None
        version, code, message, headers = self._head
        body = bytes(self._buffer[self._body_start:])
        if len(body) > self._max_body_bytes:
            raise SpamdProtocolError(f"body exceeds {self._max_body_bytes} bytes")
        return SpamdResponse(version, code, message, headers, body)


def _parse_head(head: bytes) -> tuple[str, int, str, dict[str, str]]:
    lines = head.split(b"\r\n")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise SpamdProtocolError(f"not a SPAMD status line: {_preview(lines[0])}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise SpamdProtocolError(f"bad header line: {_preview(line)}")
        name = match.group(1).decode("ascii").lower()
        if name in headers:
            raise SpamdProtocolError(f"header {name!r} repeated")
        headers[name] = match.group(2).decode("ascii").strip()
    return (status.group(1).decode("ascii"), int(status.group(2)),
            (status.group(3) or b"").decode("ascii").strip(), headers)


def _preview(data: bytes, limit: int = 60) -> str:
    """A short, printable rendering of bad bytes for an error message (and the log)."""
    text = data[:limit].decode("ascii", "backslashreplace")
    text = "".join(char if char.isprintable() else "?" for char in text)
    return repr(text + ("..." if len(data) > limit else ""))


def spam_verdict(response: SpamdResponse, command: Command = Command.SYMBOLS) -> SpamVerdict:
    """The verdict of a CHECK, SYMBOLS or REPORT answer; rule names for SYMBOLS.

    Raises SpamdErrorAnswer for spamd's own error answer, SpamdProtocolError for a
    missing or malformed `Spam:` header, or a SYMBOLS body that is not a comma-separated
    list of rule names.
    """
    if not response.ok:
        raise SpamdErrorAnswer(response.code, response.message)
    value = response.headers.get("spam")
    if value is None:
        raise SpamdProtocolError("answer without a Spam: header")
    match = _SPAM_HEADER.fullmatch(value)
    if match is None:
        raise SpamdProtocolError(f"bad Spam: header {value[:80]!r}")
    score, threshold = float(match.group(2)), float(match.group(3))
    for number in (score, threshold):
        if not math.isfinite(number) or abs(number) > MAX_ABS_SCORE:
            raise SpamdProtocolError(f"score {number} out of range")
    rules: tuple[str, ...] = ()
    if command is Command.SYMBOLS:
        rules = parse_rule_names(response.body)
    return SpamVerdict(match.group(1).lower() in ("true", "yes"), score, threshold, rules)


def parse_rule_names(body: bytes) -> tuple[str, ...]:
    """`GTUBE,NO_RECEIVED,NO_RELAYS` -> the names, in spamd's order, each once."""
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SpamdProtocolError("rule list is not ASCII") from None
    if not text:
        return ()
    names = [name.strip() for name in text.split(",")]
    if len(names) > MAX_RULES:
        raise SpamdProtocolError(f"more than {MAX_RULES} rule names")
    for name in names:
        if not _RULE_NAME.fullmatch(name):
            raise SpamdProtocolError(f"bad rule name {name[:80]!r}")
    return tuple(dict.fromkeys(names))
