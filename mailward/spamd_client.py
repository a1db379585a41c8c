"""A thin, blocking spamd client: one connection per request, one deadline for all of it.

All protocol knowledge is in mailward/spamc_protocol.py; this module only connects
(TCP or unix socket, written as Postfix writes sockets), sends the encoded request and
feeds what comes back to the decoder.  The deadline covers connect, send and receive
together, so a spamd that accepts and then stalls costs at most `timeout` seconds of
the message's time, never the milter's whole budget.

Failures are sorted into the few kinds the check counts and logs differently:
`SpamdTimeout`, `SpamdRefused` (nobody listens: spamd stopped), `SpamdConnectionError`
(reset, broken pipe, ...), and the codec's `SpamdProtocolError` for a garbage answer.
"""

from __future__ import annotations

import socket
import time

from mailward import turns
from mailward.config import SocketAddress, SocketKind
from mailward.spamc_protocol import (
    Command,
    ResponseDecoder,
    SpamdProtocolError,
    SpamdResponse,
    SpamVerdict,
    encode_request,
    spam_verdict,
)

__all__ = [
    "SpamdClient", "SpamdConnectionError", "SpamdError", "SpamdProtocolError",
    "SpamdRefused", "SpamdTimeout",
]

_RECEIVE_CHUNK = 16 * 1024


class SpamdError(Exception):
    """spamd could not be asked (the message is fine; nothing is scored)."""


class SpamdTimeout(SpamdError):
    """No complete answer before the deadline."""


class SpamdRefused(SpamdError):
    """Nothing accepts connections at the configured socket."""


class SpamdConnectionError(SpamdError):
    """The connection failed in another way (reset, unreachable, broken pipe)."""


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise SpamdTimeout("deadline passed")
        return left


class SpamdClient:
    """Asks the spamd at `address`; safe to share between threads (no state per request)."""

    def __init__(self, address: SocketAddress, timeout: float, user: str | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.user = user

    def symbols(self, message: bytes) -> SpamVerdict:
        """spamd's verdict, score and rule names for `message` (SYMBOLS)."""
        return spam_verdict(self.request(Command.SYMBOLS, message), Command.SYMBOLS)

    def ping(self) -> bool:
        """True when spamd answers PING with PONG."""
        response = self.request(Command.PING)
        return response.ok and response.message == "PONG"

    def request(self, command: Command, message: bytes = b"") -> SpamdResponse:
        data = encode_request(command, message, self.user)
        deadline = _Deadline(self.timeout)
        try:
            with turns.waiting(), self._connect(deadline) as sock:
                _send_all(sock, data, deadline)
                return _receive(sock, deadline)
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise SpamdTimeout(f"no answer within {self.timeout:g}s") from exc
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise SpamdRefused(f"{self.address}: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise SpamdConnectionError(f"{self.address}: {exc}") from exc

    def _connect(self, deadline: _Deadline) -> socket.socket:
        address = self.address
        if address.kind is SocketKind.UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(deadline.remaining())
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((address.host, address.port),
                                        timeout=deadline.remaining())
        # One request, one answer: no reason to let Nagle hold back the tail.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _send_all(sock: socket.socket, data: bytes, deadline: _Deadline) -> None:
    view = memoryview(data)
    while view:
        sock.settimeout(deadline.remaining())
        sent = sock.send(view)
        view = view[sent:]


def _receive(sock: socket.socket, deadline: _Deadline) -> SpamdResponse:
    decoder = ResponseDecoder()
    while True:
        sock.settimeout(deadline.remaining())
        chunk = sock.recv(_RECEIVE_CHUNK)
        response = decoder.feed(chunk)
        if response is not None:
            return response
        if not chunk:  # feed(b"") always answers or raises
            raise SpamdProtocolError("connection closed")
