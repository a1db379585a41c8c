"""mailward audit against the real stack: zones in nsd, the private Postfix on loopback
(without and with STARTTLS, with a mismatched and a matching EHLO name), and an HTTPS
server on loopback with a test CA serving MTA-STS policies.  One test per finding
family; each runs the real command (`python -m mailward audit`) and reads its JSON, and
checks the text output says the same.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.harness import MailStack, toml
from tests.harness.nameserver import txt

DOMAIN = "audit.example"
OTHER = "other.example"  # MX whose name the server's certificate does not cover
MX = f"mx.{DOMAIN}"
POLICIES = {
    f"mta-sts.{DOMAIN}": f"version: STSv1\r\nmode: enforce\r\nmx: {MX}\r\nmax_age: 604800\r\n",
    f"mta-sts.{OTHER}": "version: STSv1\r\nmode: testing\r\nmx: mx.elsewhere.example\r\n"
                        "max_age: 300\r\n",
}


# --------------------------------------------------------------------------- test PKI


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


class CertAuthority:
    """A CA and leaf certificates signed by it, as PEM files in `directory`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("Mailward test CA"))
            .issuer_name(_name("Mailward test CA")).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str) -> tuple[Path, Path]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=20))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path = self.directory / f"{name}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        cert_path.chmod(0o644)
        return cert_path, _write_key(self.directory / f"{name}.key", key)


@pytest.fixture(scope="module")
def ca(stack: MailStack) -> CertAuthority:
    return CertAuthority(stack.base_dir / "pki")


# --------------------------------------------------------------------------- servers


class _PolicyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        policy = POLICIES.get(self.headers.get("Host", ""))
        if self.path != "/.well-known/mta-sts.txt" or policy is None:
            self.send_error(404)
            return
        body = policy.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def https_port(ca: CertAuthority) -> Iterator[int]:
    """One HTTPS server for both policy hosts, choosing the certificate by SNI."""
    contexts = {}
    for host in POLICIES:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*ca.issue(host))
        contexts[host] = context
    default = next(iter(contexts.values()))

    def choose(sock: ssl.SSLObject, server_name: str, _: ssl.SSLContext) -> None:
        sock.context = contexts.get(server_name or "", default)

    default.sni_callback = choose
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PolicyHandler)
    server.socket = default.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def dkim_key(stack: MailStack) -> tuple[Path, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = _write_key(stack.base_dir / "audit-s1.key", key)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, base64.b64encode(der).decode()


def _short_key_b64() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def zones(stack: MailStack, dkim_key: tuple[Path, str]) -> None:
    stack.dns.set_zones({
        "example": "",
        DOMAIN: f"""
@                IN MX  10 {MX}.
@                IN TXT "v=spf1 mx ip4:198.51.100.0/24 -all"
mx               IN A   127.0.0.1
mta-sts          IN A   127.0.0.1
_mta-sts         IN TXT "v=STSv1; id=20260101"
_smtp._tls       IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@{DOMAIN}"
_dmarc           IN TXT "v=DMARC1; p=quarantine; rua=mailto:d@{DOMAIN},mailto:x@reports.example"
s1._domainkey    IN TXT {txt("v=DKIM1; k=rsa; p=" + dkim_key[1])}
old._domainkey   IN TXT {txt("v=DKIM1; k=rsa; t=y; p=" + _short_key_b64())}
_25._tcp.mx      IN TLSA 3 1 1 {"ab" * 32}
""",
        OTHER: """
@                IN MX  10 mx.other.example.
mx               IN A   127.0.0.1
mta-sts          IN A   127.0.0.1
_mta-sts         IN TXT "v=STSv1; id=1"
""",
        "implicit.example": "@ IN A 127.0.0.1\n",
        "cname.example": "@ IN MX 10 alias.cname.example.\nalias IN CNAME mx.audit.example.\n",
        "spf.example": """
@        IN TXT "v=spf1 mx include:_s.spf.example a:gone.spf.example ptr ~all"
@        IN MX  10 a.spf.example.
@        IN MX  20 b.spf.example.
a        IN A   192.0.2.1
_s       IN TXT "v=spf1 ip4:192.0.2.128/25 exists:nothing.spf.example -all"
""",
        "reports.example": "",  # exists, but authorizes nobody's reports
        "bl.example": '1.0.0.127 IN A 127.0.0.2\n1.0.0.127 IN TXT "test listing"\n',
        "0.0.127.in-addr.arpa": f"1 IN PTR {MX}.\n",
    })


@pytest.fixture(scope="module")
def config(stack: MailStack, dkim_key: tuple[Path, str]) -> Path:
    path = stack.base_dir / "audit.toml"
    path.write_text(toml.dumps({
        "general": {"authserv_id": "audit-client.example.net"},
        "dns": {"nameservers": ["127.0.0.1"], "port": stack.dns.port, "timeout": 1.0},
        "dkim": {"sign": {"keys": [{"domain": DOMAIN, "selector": "s1",
                                    "key": str(dkim_key[0])}]}},
    }))
    return path


def audit(config: Path, stack: MailStack, domain: str, *options: str,
          https_port: int = 1, ca: CertAuthority | None = None) -> tuple[int, dict[str, Any], str]:
    command = [sys.executable, "-m", "mailward", "audit", "-c", str(config), domain,
               "--smtp-port", str(stack.postfix.smtp_port), "--https-port", str(https_port),
               "--timeout", "5", *options]
    if ca is not None:
        command += ["--ca-file", str(ca.path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    as_json = subprocess.run([*command, "--json"], capture_output=True, timeout=120, env=env)
    as_text = subprocess.run(command, capture_output=True, timeout=120, env=env, text=True)
    assert as_json.returncode == as_text.returncode, (as_json.stderr, as_text.stderr)
    document = json.loads(as_json.stdout)
    assert document["exit_status"] == as_json.returncode
    return as_json.returncode, document, as_text.stdout


def found(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_code: dict[str, list[dict[str, Any]]] = {}
    for finding in document["findings"]:
        by_code.setdefault(finding["code"], []).append(finding)
    return by_code


def status(document: dict[str, Any], code: str) -> str:
    findings = found(document).get(code)
    assert findings, f"no {code} among {json.dumps(document['findings'], indent=1)}"
    return str(findings[0]["status"])


# --------------------------------------------------------------------------- tests


def test_mx_and_reverse_dns(stack, zones, config):
    code, document, text = audit(config, stack, DOMAIN, "--no-connect")
    assert status(document, "mx.present") == "ok"
    assert status(document, "mx.target_ok") == "ok"
    assert status(document, "rdns.confirmed") == "ok"
    assert f"[ok  ] {DOMAIN}: MX 10 {MX}" in text
    _, implicit, _ = audit(config, stack, "implicit.example", "--no-connect")
    assert status(implicit, "mx.implicit") == "warn"
    code, cname, text = audit(config, stack, "cname.example", "--no-connect")
    assert status(cname, "mx.target_cname") == "fail"
    assert code == 1
    assert "RFC 2181" in text


def test_smtp_without_starttls_and_with_a_mismatched_ehlo_name(stack, zones, config):
    # The harness's Postfix: no TLS, myhostname mx.example.net (the PTR says mx.audit.example).
    code, document, text = audit(config, stack, DOMAIN)
    assert status(document, "smtp.banner") == "ok"
    assert status(document, "smtp.ehlo_mismatch") == "warn"
    assert status(document, "smtp.no_starttls") == "fail"
    assert code == 1
    assert "STARTTLS not offered" in text


@pytest.fixture
def tls_postfix(stack: MailStack, ca: CertAuthority) -> Iterator[None]:
    cert, key = ca.issue(MX)
    before = dict(stack.postfix.extra_params)
    stack.postfix.reconfigure({"smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key),
                               "smtpd_tls_security_level": "may", "myhostname": MX})
    try:
        yield
    finally:
        stack.postfix.reconfigure(before, replace_params=True)


def test_smtp_with_starttls_and_a_matching_ehlo_name(stack, zones, config, ca, tls_postfix):
    _, document, text = audit(config, stack, DOMAIN, ca=ca)
    assert status(document, "smtp.ehlo") == "ok"
    assert status(document, "smtp.tls") == "ok"
    assert f"STARTTLS with TLSv1.3, certificate valid for {MX}" in text
    assert "TLSv1.3" in found(document)["smtp.tls"][0]["evidence"]
    # The test certificate is valid for 20 more days: past the 14-day warning.
    assert "smtp.certificate_expiring" not in found(document)
    # The same server as MX of another name: its certificate does not cover that name.
    _, other, other_text = audit(config, stack, OTHER, ca=ca)
    assert status(other, "smtp.certificate") == "fail"
    assert "mx.other.example" in found(other)["smtp.certificate"][0]["evidence"]
    assert "[FAIL] mx.other.example: STARTTLS offered, certificate not valid" in other_text


def test_spf_limits_counted_as_rfc_7208_counts_them(stack, zones, config):
    code, document, text = audit(config, stack, "spf.example", "--no-connect",
                                 "--ip", "192.0.2.200", "--ip", "203.0.113.1")
    lookups = found(document)["spf.lookups"][0]
    # mx, include, a, ptr (top level) + exists (in the include) = 5;
    assert lookups["evidence"].startswith("5 of 10 DNS lookups")
    # b.spf.example (no address), gone.spf.example, nothing.spf.example: 3 voids > 2.
    assert status(document, "spf.too_many_void_lookups") == "fail"
    assert status(document, "spf.ptr") == "warn"
    assert status(document, "spf.all") == "info"  # ~all
    by_subject = {f["subject"]: f["code"] for f in document["findings"] if f["family"] == "spf"}
    assert by_subject["192.0.2.200"] == "spf.ip_pass"
    assert by_subject["203.0.113.1"] == "spf.ip_not_pass"
    assert code == 1
    assert "[FAIL] spf.example: 3 lookups find nothing" in text


def test_dkim_selectors_from_config_and_options(stack, zones, config):
    _, document, text = audit(config, stack, DOMAIN, "--no-connect",
                              "--selector", "old", "--selector", "missing")
    subjects = {(f["code"], f["subject"]) for f in document["findings"] if f["family"] == "dkim"}
    assert ("dkim.matches", f"s1._domainkey.{DOMAIN}") in subjects  # our configured key
    assert ("dkim.key", f"s1._domainkey.{DOMAIN}") in subjects
    assert ("dkim.key_short", f"old._domainkey.{DOMAIN}") in subjects
    assert ("dkim.testing", f"old._domainkey.{DOMAIN}") in subjects
    assert ("dkim.missing", f"missing._domainkey.{DOMAIN}") in subjects
    assert "RSA key of 1024 bits" in text


def test_dmarc_policy_and_report_authorization(stack, zones, config):
    _, document, text = audit(config, stack, DOMAIN, "--no-connect")
    assert status(document, "dmarc.policy") == "ok"
    assert status(document, "dmarc.rua") == "ok"
    assert status(document, "dmarc.rua_unauthorized") == "fail"
    assert f"{DOMAIN}._report._dmarc.reports.example" in text
    _, sub, _ = audit(config, stack, f"sub.{DOMAIN}", "--no-connect")
    assert "inherited from audit.example" in found(sub)["dmarc.record"][0]["evidence"]


def test_mta_sts_tlsrpt_and_dane(stack, zones, config, ca, https_port):
    _, document, _ = audit(config, stack, DOMAIN, https_port=https_port, ca=ca)
    assert status(document, "transport.mta_sts_mode") == "ok"
    assert status(document, "transport.mta_sts_mx") == "ok"
    assert status(document, "transport.tlsrpt") == "ok"
    # nsd serves the TLSA record unsigned: no AD bit, so senders would ignore it.
    assert status(document, "transport.dane") == "warn"
    _, other, text = audit(config, stack, OTHER, https_port=https_port, ca=ca)
    assert status(other, "transport.mta_sts_mode") == "warn"  # testing
    assert status(other, "transport.mta_sts_max_age") == "warn"
    assert status(other, "transport.mta_sts_mx_uncovered") == "fail"
    assert "not matched by the policy's mx: mx.elsewhere.example" in text
    assert status(other, "transport.no_tlsrpt") == "warn"  # MTA-STS without TLS-RPT
    # Without the test CA, the policy server's certificate is not trusted.
    _, untrusted, _ = audit(config, stack, DOMAIN, https_port=https_port)
    assert status(untrusted, "transport.mta_sts_certificate") == "fail"


def test_dns_outage_is_could_not_check_not_a_finding(stack, zones, config):
    with stack.dns.outage():
        code, document, text = audit(config, stack, DOMAIN, "--no-connect")
    assert code == 2
    assert document["findings"] == []
    assert {item["family"] for item in document["unchecked"]} >= {"mx", "spf", "dmarc"}
    assert "could not check" in text


def test_dnsbl_lists_mx_addresses_and_sending_ips(stack, zones, config):
    code, document, text = audit(config, stack, DOMAIN, "--no-connect", "--dnsbl", "bl.example",
                                 "--ip", "198.51.100.7")
    listed = found(document)["dnsbl.listed"]
    assert [f["subject"] for f in listed] == ["127.0.0.1 on bl.example"]
    assert "test listing" in listed[0]["evidence"]
    assert [f["subject"] for f in found(document)["dnsbl.not_listed"]] == [
        "198.51.100.7 on bl.example"]
    assert code == 1
    assert "[FAIL] 127.0.0.1 on bl.example: listed (127.0.0.2): test listing" in text
