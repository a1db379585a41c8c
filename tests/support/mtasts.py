"""A private CA and an HTTPS policy server on loopback, for the MTA-STS integration tests.

The CA signs server certificates for any names a test asks for (the policy host
`mta-sts.DOMAIN`, or an MX host for a receiving Postfix); the server answers
`/.well-known/mta-sts.txt` from a table the test changes while it runs.
"""

from __future__ import annotations

import datetime
import http.server
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness import free_port


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path


class TestCa:
    """A CA made for one test module; `ca_file` is what clients trust."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = (
            x509.CertificateBuilder().subject_name(_name("Mailward test CA"))
            .issuer_name(_name("Mailward test CA")).public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(hours=1))
            .not_valid_after(self._now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256()))
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, names: Sequence[str]) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(names[0]))
            .issuer_name(self._cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(hours=1))
            .not_valid_after(self._now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self._key, hashes.SHA256()))
        issued = Issued(self.directory / f"{stem}.pem", self.directory / f"{stem}.key")
        issued.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        issued.key_file.chmod(0o600)
        return issued


@dataclass
class Site:
    """What https://mta-sts.DOMAIN/.well-known/mta-sts.txt answers, by Host header:
    (status, content type, body)."""

    pages: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def policy(self, domain: str, text: str) -> None:
        self.pages[f"mta-sts.{domain}"] = (200, "text/plain", text.encode())


def https_server(issued: Issued, site: Site) -> http.server.ThreadingHTTPServer:
    """Not started: the caller runs `serve_forever` in a thread and shuts it down."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = self.headers.get("Host", "").split(":")[0]
            site.requests.append(f"{host}{self.path}")
            status, content_type, body = site.pages.get(host, (404, "text/plain", b"no"))
            if self.path != "/.well-known/mta-sts.txt":
                status, body = 404, b"no"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if 300 <= status < 400:
                self.send_header("Location", "https://elsewhere.example/.well-known/mta-sts.txt")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
