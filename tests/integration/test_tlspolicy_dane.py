"""DANE decides before MTA-STS, for real: zones signed with `ldns-signzone`, served by nsd,
validated by a private unbound that holds their trust anchors; `mailward tlspolicy` asks
that unbound (`dnssec_resolver`), and a sending Postfix with
`smtp_dns_support_level = dnssec` (whose resolv.conf names the same unbound, in its own
mount namespace) delivers over DANE-verified TLS to the stack's Postfix, or defers when
the TLSA record does not match the receiver's key.

The destination also publishes an MTA-STS `enforce` policy whose `mx` pattern the
receiver's certificate does not match and which no CA in the sender vouches for: only
DANE can make that delivery succeed, so a delivery proves that DANE decided.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness import (
    MailStack,
    PostfixInstance,
    build_message,
    free_port,
    mailward_command,
    wait_until,
)
from tests.harness.dnssec import SigningDns
from tests.harness.process import ManagedProcess, unix_accepts
from tests.harness.relay import sending_postfix
from tests.harness.toml import dumps
from tests.harness.unbound import ValidatingResolver, free_loopback_address
from tests.support.mtasts import Issued, Site, TestCa, https_server

DOMAIN = "dane.example"
STACK_OPTIONS = {"domains": [DOMAIN]}
SIGNED = [DOMAIN, "partial.example", "notlsa.example"]
BOGUS = "bogus.example"  # signed, but every signature has expired
ENFORCE = "version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: 86400\n"
WRONG_TLSA = "3 1 1 " + "00" * 32


def tlsa_for(issued: Issued) -> str:
    """`3 1 1`: DANE-EE, SHA-256 of the certificate's public key (what Postfix checks)."""
    certificate = x509.load_pem_x509_certificate(issued.cert_file.read_bytes())
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "3 1 1 " + hashlib.sha256(spki).hexdigest()


@dataclass
class World:
    stack: MailStack
    nsd: SigningDns
    unbound: ValidatingResolver
    site: Site
    sender: PostfixInstance
    service: ManagedProcess
    socket_path: Path
    metrics_port: int
    postmap_dir: Path
    receiver_tlsa: str

    def publish_dane(self, tlsa: str) -> None:
        """dane.example: signed MX, host and TLSA records at the port Postfix connects
        to, plus an MTA-STS enforce policy; then unbound forgets what it had cached.
        The TLSA record has TTL 0: Postfix's smtp processes cache TLSA answers for
        their TTL, and a test that changes the record must not meet the old one."""
        port = self.stack.postfix.smtp_port
        self.nsd.set_signed_zone(DOMAIN, [
            ("@", "MX", f"10 mx1.{DOMAIN}."),
            ("mx1", "A", "127.0.0.1"),
            (f"_{port}._tcp.mx1", 0, "TLSA", tlsa),
            ("_mta-sts", 0, "TXT", "v=STSv1; id=d1"),
            ("mta-sts", "A", "127.0.0.1"),
        ])
        self.site.policy(DOMAIN, ENFORCE.format(mx=f"mx1.{DOMAIN}"))
        self.unbound.flush()

    def send(self) -> tuple[str, str]:
        recipient = self.stack.unique_address()
        message_id = f"<{uuid.uuid4().hex}@sender.example>"
        self.sender.sendmail(build_message("alice@sender.example", recipient,
                                           message_id=message_id),
                             [recipient], sender="alice@sender.example")
        return recipient, message_id

    def stored(self, recipient: str, message_id: str) -> None:
        self.stack.dovecot.wait_for_message(
            recipient, "INBOX", lambda m: m.get("Message-ID") == message_id, timeout=30)

    def postmap(self, key: str) -> subprocess.CompletedProcess[str]:
        """Postfix's own socketmap client: exit 0 found, 1 not found, else an error."""
        return subprocess.run(
            ["postmap", "-c", str(self.postmap_dir), "-q", key,
             f"socketmap:unix:{self.socket_path}:postfix"],
            capture_output=True, text=True, timeout=30, check=False)

    def metric(self, name: str, labels: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture(scope="module")
def world(stack: MailStack) -> Iterator[World]:
    base = stack.base_dir / "dane"
    base.mkdir()
    base.chmod(0o755)  # the sender's smtp (user postfix) reaches the socket in here
    ca = TestCa(base)
    site = Site()
    server = https_server(ca.issue("policy-host", [f"mta-sts.{DOMAIN}",
                                                   "mta-sts.notlsa.example",
                                                   "mta-sts.plain.example"]), site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The receiver's certificate names no MX and comes from a CA the sender does not
    # trust: PKIX (MTA-STS) verification must fail; DANE-EE does not look at either.
    receiver = ca.issue("receiver", ["receiver.invalid"])
    stack.postfix.reconfigure({
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(receiver.cert_file),
        "smtpd_tls_key_file": str(receiver.key_file),
    })
    nsd = SigningDns(base / "nsd", signed=SIGNED, expired=[BOGUS])
    nsd.start()
    unbound = ValidatingResolver(base / "unbound", (nsd.host, nsd.port), ["example"],
                                 nsd.trust_anchors, host=free_loopback_address(53), port=53)
    socket_path = base / "tlspolicy.sock"
    metrics_port = free_port()
    config = base / "mailward.toml"
    config.write_text(dumps({
        "general": {"log_level": "debug"},
        "dns": {"nameservers": [nsd.host], "port": nsd.port, "timeout": 2.0},
        "tlspolicy": {
            "socket": f"unix:{socket_path}",
            "socket_group": "postfix",
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "ca_file": str(ca.ca_file),
            "policy_port": server.server_address[1],
            "cache_path": str(base / "tlspolicy.db"),
            "dane": True,
            "dnssec_resolver": unbound.address,
            "dnssec_timeout": 3.0,
        },
    }))
    service = ManagedProcess("mailward-tlspolicy", mailward_command("tlspolicy", config),
                             base / "tlspolicy.log")
    resolv = base / "resolv.conf"
    # trust-ad: glibc passes the resolver's AD bit on to Postfix only when told to.
    resolv.write_text(f"nameserver {unbound.host}\noptions timeout:2 attempts:1 trust-ad\n")
    resolv.chmod(0o644)
    port = stack.postfix.smtp_port
    sender = sending_postfix(base / "sender", port, hostname="relay.sender.example", params={
        "relayhost": "",
        "transport_maps": f"inline:{{ {DOMAIN}=smtp:{DOMAIN}:{port} }}",
        "smtp_dns_support_level": "dnssec",
        "smtp_host_lookup": "dns",
        "smtp_tls_security_level": "may",
        "smtp_tls_policy_maps": f"socketmap:unix:{socket_path}:postfix",
        "smtp_tls_loglevel": "1",
        # One delivery per smtp process: a process keeps TLSA answers it looked up (for
        # their TTL, rounded to whole seconds), and the mismatch test changes the record.
        "max_use": "1",
    })
    # Run the sender's master (and so its smtp processes) with the test's resolv.conf.
    master = sender._process  # the harness builds the argv; wrap it, nothing else
    master.argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
                   *master.argv]
    postmap_dir = base / "postmap"
    postmap_dir.mkdir()
    (postmap_dir / "main.cf").write_text("compatibility_level = 3.6\n")
    world = World(stack, nsd, unbound, site, sender, service, socket_path, metrics_port,
                  postmap_dir, tlsa_for(receiver))
    world.publish_dane(world.receiver_tlsa)
    nsd.set_signed_zone("partial.example", [
        ("@", "MX", "10 mx1.partial.example."), ("@", "MX", "20 mx2.partial.example."),
        ("mx1", "A", "127.0.0.1"), ("mx2", "A", "127.0.0.1"),
        ("_25._tcp.mx1", "TLSA", world.receiver_tlsa)])
    nsd.set_signed_zone("notlsa.example", [
        ("@", "MX", "10 mx1.notlsa.example."), ("mx1", "A", "127.0.0.1"),
        ("_mta-sts", 0, "TXT", "v=STSv1; id=n1"), ("mta-sts", "A", "127.0.0.1")])
    site.policy("notlsa.example", ENFORCE.format(mx="mx1.notlsa.example"))
    nsd.set_signed_zone(BOGUS, [("@", "MX", f"10 mx1.{BOGUS}."), ("mx1", "A", "127.0.0.1"),
                                (f"_25._tcp.mx1.{BOGUS}.", "TLSA", world.receiver_tlsa)])
    # Unsigned: its TLSA record proves nothing (no AD bit), so MTA-STS decides.
    nsd.set_zone("plain.example", [
        ("@", "MX", "10 mx1.plain.example."), ("mx1", "A", "127.0.0.1"),
        ("_25._tcp.mx1", "TLSA", world.receiver_tlsa),
        ("_mta-sts", 0, "TXT", "v=STSv1; id=p1"), ("mta-sts", "A", "127.0.0.1")])
    site.policy("plain.example", ENFORCE.format(mx="mx1.plain.example"))
    unbound.start()
    service.start()
    try:
        wait_until(lambda: unix_accepts(socket_path), 20.0, "mailward tlspolicy socket",
                   diagnostics=service.output)
        sender.start()
        yield world
    finally:
        sender.stop()
        service.stop()
        unbound.stop()
        nsd.close()
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the harness


def test_the_resolver_validates_signed_zones_only(world: World) -> None:
    """The ground the other tests stand on: AD for the signed zone, none for the
    unsigned one, SERVFAIL for the one whose signatures expired."""
    assert world.unbound.is_secure(DOMAIN, "MX")
    assert not world.unbound.is_secure("plain.example", "MX")
    assert world.unbound.query("plain.example", "MX").rcode() == 0
    assert world.unbound.query(BOGUS, "MX").rcode() == 2  # SERVFAIL


# --------------------------------------------------------------------------- delivery


def test_dane_wins_over_mta_sts_and_delivers_over_verified_tls(world: World) -> None:
    world.publish_dane(world.receiver_tlsa)
    mark = world.sender.log_mark()
    recipient, message_id = world.send()
    world.stored(recipient, message_id)
    log = world.sender.log_text(since=mark)
    assert re.search(rf"Verified TLS connection established to mx1\.{re.escape(DOMAIN)}", log), log
    assert re.search(rf"{re.escape(DOMAIN)}:\d+: OK dane-only \(DANE: usable TLSA records",
                     world.service.output())
    assert world.metric("mailward_tlspolicy_decisions_total",
                        'mechanism="dane",mode="dane-only"') >= 1
    # DANE decided: the MTA-STS policy (which would have failed this delivery) was
    # never even fetched.
    assert not any(r.startswith(f"mta-sts.{DOMAIN}") for r in world.site.requests)


def test_tlsa_mismatch_defers_and_the_matching_record_delivers(world: World) -> None:
    world.publish_dane(WRONG_TLSA)
    mark = world.sender.log_mark()
    recipient, message_id = world.send()
    world.sender.wait_for_log(
        rf"to=<{re.escape(recipient)}>.*dsn=4\.7\.5, status=deferred \(Server certificate "
        r"not verified\)", timeout=30, since=mark)
    assert re.search(r"server certificate verification failed for mx1\..*no matching DANE "
                     r"TLSA records", world.sender.log_text(since=mark))
    world.publish_dane(world.receiver_tlsa)
    world.sender.flush()
    world.stored(recipient, message_id)
    assert re.search(rf"Verified TLS connection established to mx1\.{re.escape(DOMAIN)}",
                     world.sender.log_text(since=mark))


# --------------------------------------------------------------------------- answers


def test_some_mx_hosts_with_tlsa_answer_dane(world: World) -> None:
    result = world.postmap("partial.example")
    assert (result.returncode, result.stdout.strip()) == (0, "dane"), result.stderr


def test_signed_zone_without_tlsa_leaves_the_decision_to_mta_sts(world: World) -> None:
    result = world.postmap("notlsa.example")
    assert result.returncode == 0, result.stderr + world.service.output()
    assert result.stdout.startswith("secure match=mx1.notlsa.example")
    assert world.metric("mailward_tlspolicy_dane_lookups_total", 'outcome="no_tlsa"') >= 1


def test_tlsa_in_an_unsigned_zone_gives_no_dane(world: World) -> None:
    result = world.postmap("plain.example")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("secure match=mx1.plain.example")
    assert world.metric("mailward_tlspolicy_dane_lookups_total", 'outcome="insecure"') >= 1


def test_bogus_signatures_are_temp_not_a_downgrade(world: World) -> None:
    before = world.metric("mailward_tlspolicy_answers_total", 'kind="temp"')
    result = world.postmap(BOGUS)
    # Neither a policy nor "not found": Postfix's lookup fails (smtp defers and retries).
    assert result.stdout == "" and "query error" in result.stderr, result
    assert re.search(rf"{re.escape(BOGUS)}: TEMP DANE lookup failed \(MX lookup failed "
                     r"\(SERVFAIL\)", world.service.output())
    assert world.metric("mailward_tlspolicy_answers_total", 'kind="temp"') == before + 1
    assert world.metric("mailward_tlspolicy_dane_lookups_total", 'outcome="tempfail"') >= 1


def test_an_unreachable_validating_resolver_defers_rather_than_downgrades(
        world: World) -> None:
    """notlsa.example has an MTA-STS policy, but without the validating resolver nobody
    can tell whether DANE applies: TEMP, then the usual answer once it is back."""
    key = "notlsa.example:2526"  # a key not asked before: no remembered answer
    world.unbound.stop()
    try:
        result = world.postmap(key)
        assert result.stdout == "" and "query error" in result.stderr, result
        assert re.search(rf"{re.escape(key)}: TEMP DANE lookup failed \(MX lookup failed",
                         world.service.output())
    finally:
        world.unbound.start()
    result = world.postmap(key)
    assert result.stdout.startswith("secure match=mx1.notlsa.example"), result.stderr
