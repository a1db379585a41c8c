"""The network side of the audit: an SMTP session up to STARTTLS, an HTTPS GET.

Kept apart from the findings so that the checklist logic (smtp.py, mtasts.py) can be
tested with recorded probe results, and this part against real servers.  Every socket
has the audit's timeout; nothing is sent beyond EHLO, STARTTLS and QUIT.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MAX_REPLY = 64 * 1024
MAX_POLICY = 64 * 1024


class ProbeError(Exception):
    """The server could not be reached or broke the protocol."""


@dataclass(frozen=True)
class TlsInfo:
    verified: bool
    version: str = ""
    error: str = ""  # why verification failed
    not_after: datetime | None = None


@dataclass(frozen=True)
class SmtpProbe:
    banner: str
    ehlo_name: str  # the name in the first line of the EHLO reply
    starttls: bool
    tls: TlsInfo | None = None


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1
    return context


class _Lines:
    """SMTP replies from a socket (multi-line aware), bounded."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ProbeError("connection closed by the server")
                self.buffer += chunk
                if len(self.buffer) > MAX_REPLY:
                    raise ProbeError("reply too long")
            line, _, self.buffer = self.buffer.partition(b"\n")
            text = line.rstrip(b"\r").decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit():
                raise ProbeError(f"not an SMTP reply: {text[:80]!r}")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), lines


def probe_smtp(address: str, port: int, mx_name: str, ehlo: str, timeout: float,
               ca_file: Path | None) -> SmtpProbe:
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            return _session(sock, mx_name, ehlo, ca_file)
    except OSError as exc:
        raise ProbeError(f"{address} port {port}: {exc}") from exc


def _session(sock: socket.socket, mx_name: str, ehlo: str, ca_file: Path | None) -> SmtpProbe:
    lines = _Lines(sock)
    code, banner = lines.reply()
    if code != 220:
        raise ProbeError(f"banner {code} {' '.join(banner)}")
    sock.sendall(f"EHLO {ehlo}\r\n".encode())
    code, reply = lines.reply()
    if code != 250:
        raise ProbeError(f"EHLO answered {code} {' '.join(reply)}")
    ehlo_name = reply[0].split()[0] if reply and reply[0].split() else ""
    starttls = any(line.upper().split()[:1] == ["STARTTLS"] for line in reply[1:])
    if not starttls:
        sock.sendall(b"QUIT\r\n")
        return SmtpProbe(banner[0], ehlo_name, False)
    sock.sendall(b"STARTTLS\r\n")
    code, reply = lines.reply()
    if code != 220:
        return SmtpProbe(banner[0], ehlo_name, True,
                         TlsInfo(False, error=f"STARTTLS answered {code} {' '.join(reply)}"))
    return SmtpProbe(banner[0], ehlo_name, True, tls_handshake(sock, mx_name, ca_file))


def tls_handshake(sock: socket.socket, name: str, ca_file: Path | None) -> TlsInfo:
    """Verify the certificate for `name`; on failure, say why (and the version anyway)."""
    try:
        with tls_context(ca_file).wrap_socket(sock, server_hostname=name) as tls:
            info = TlsInfo(True, tls.version() or "", not_after=_not_after(tls.getpeercert()))
            tls.sendall(b"QUIT\r\n")  # polite: the server logs a clean disconnect
            return info
    except ssl.SSLCertVerificationError as exc:
        return TlsInfo(False, error=exc.verify_message or str(exc))
    except (ssl.SSLError, OSError) as exc:
        return TlsInfo(False, error=f"TLS handshake failed: {exc}")


def _not_after(cert: object) -> datetime | None:
    if not isinstance(cert, dict) or "notAfter" not in cert:
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC)


@dataclass(frozen=True)
class HttpsResult:
    status: int
    body: str
    tls: TlsInfo


def https_get(address: str, port: int, host: str, path: str, timeout: float,
              ca_file: Path | None) -> HttpsResult:
    """GET https://host/path from `address` (which our resolver found for `host`)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            context = tls_context(ca_file)
            try:
                tls = context.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                return HttpsResult(0, "", TlsInfo(False, error=exc.verify_message or str(exc)))
            with tls:
                info = TlsInfo(True, tls.version() or "", not_after=_not_after(tls.getpeercert()))
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mailward-audit"
                            "\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while len(data) <= MAX_POLICY:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
    except (ssl.SSLError, OSError) as exc:
        raise ProbeError(f"https://{host}{path} ({address} port {port}): {exc}") from exc
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ProbeError(f"https://{host}{path}: not an HTTP response")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return HttpsResult(int(parts[1]), body.decode("utf-8", "replace"), info)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out
