"""The MTA-STS policy fetch: `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.

RFC 8461 section 3.3: the certificate must be valid for `mta-sts.DOMAIN` (WebPKI, or the
CA file the admin names), redirects are not followed, the answer must be 200 with
`text/plain`, and the sender bounds size and time.  The host is resolved through
Mailward's resolver (the configured DNS servers, its cache and metrics), not the
system's, so the fetch and the `_mta-sts` TXT lookup see the same DNS.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from mailward.dns import Resolver
from mailward.tlspolicy.mtasts import FetchError

WELL_KNOWN = "/.well-known/mta-sts.txt"


@dataclass(frozen=True)
class FetchLimits:
    timeout: float = 10.0  # seconds for the whole fetch (connect, TLS, headers, body)
    max_size: int = 64 * 1024  # RFC 8461 section 3.3 suggests 64 KiB
    port: int = 443


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificate and host name verified; the system's CAs unless a CA file is named."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class HttpsPolicyFetcher:
    """A PolicyFetcher over http.client (which never follows redirects)."""

    def __init__(self, resolver: Resolver, context: ssl.SSLContext,
                 limits: FetchLimits = FetchLimits()) -> None:
        self._resolver = resolver
        self._context = context
        self._limits = limits

    def __call__(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        deadline = time.monotonic() + self._limits.timeout
        addresses = self._addresses(host)
        last: FetchError | None = None
        for address in addresses:
            try:
                return self._fetch_from(host, address, deadline)
            except _ConnectError as exc:
                last = FetchError("connect_error", f"{host} [{address}]: {exc}")
        assert last is not None
        raise last

    def _addresses(self, host: str) -> list[str]:
        found: list[str] = []
        temporary = False
        for rdtype in ("A", "AAAA"):
            answer = self._resolver.query(host, rdtype)
            found.extend(answer.records)
            temporary = temporary or answer.is_temporary_failure
        if not found:
            raise FetchError("dns_error", f"{host}: no address"
                             + (" (temporary DNS failure)" if temporary else ""))
        return found

    def _fetch_from(self, host: str, address: str, deadline: float) -> str:
        remaining = _remaining(deadline)
        try:
            sock = socket.create_connection((address, self._limits.port), timeout=remaining)
        except TimeoutError as exc:
            raise FetchError("timeout", f"{host} [{address}]: connect timed out") from exc
        except OSError as exc:
            raise _ConnectError(str(exc)) from exc
        try:
            try:
                tls = self._context.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                raise FetchError("certificate_error", f"{host}: {exc.verify_message}") from exc
            except (ssl.SSLError, OSError) as exc:
                raise FetchError("tls_error", f"{host}: TLS handshake failed: {exc}") from exc
            connection = http.client.HTTPSConnection(host, self._limits.port,
                                                     context=self._context)
            connection.sock = tls
            return self._request(connection, host, deadline)
        finally:
            sock.close()

    def _request(self, connection: http.client.HTTPSConnection, host: str,
                 deadline: float) -> str:
        try:
            connection.sock.settimeout(_remaining(deadline))
            connection.request("GET", WELL_KNOWN, headers={
                "Host": host, "User-Agent": "mailward-tlspolicy", "Connection": "close"})
            response = connection.getresponse()
            if response.status != 200:
                what = "redirect" if 300 <= response.status < 400 else "http_status"
                raise FetchError(what, f"{host}: HTTP {response.status} (only 200 is used)")
            content_type = response.getheader("Content-Type", "")
            if content_type.split(";")[0].strip().lower() != "text/plain":
                raise FetchError("content_type",
                                 f"{host}: Content-Type {content_type[:60]!r}, not text/plain")
            body = self._read_body(response, host, deadline)
        except TimeoutError as exc:
            raise FetchError("timeout", f"{host}: timed out") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise FetchError("http_error", f"{host}: {exc}") from exc
        finally:
            connection.close()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FetchError("bad_policy", f"{host}: policy is not UTF-8") from exc

    def _read_body(self, response: http.client.HTTPResponse, host: str,
                   deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = response.read1(16384)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._limits.max_size:
                raise FetchError("too_large",
                                 f"{host}: policy larger than {self._limits.max_size} bytes")
            chunks.append(chunk)


class _ConnectError(Exception):
    """This address did not accept a connection; the next one may."""


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("timeout", "policy fetch out of time")
    return remaining
