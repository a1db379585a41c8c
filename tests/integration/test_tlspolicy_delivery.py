"""MTA-STS decides real deliveries: a sending Postfix with
`smtp_tls_policy_maps = socketmap:...` asks the running `mailward tlspolicy`, looks up the
MX of the destination in DNS, and delivers over TLS to the stack's Postfix (the
receiver), whose certificate comes from a private CA made here.

The sending Postfix must find MX records in the test's DNS.  Postfix resolves through
libc (/etc/resolv.conf, port 53 only), so the sender runs in its own mount namespace
(`unshare -m`) where /etc/resolv.conf names an nsd on a random 127.0.0.0/8 address, port
53: the machine's own resolver configuration is untouched.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.harness import (
    AuthoritativeDns,
    MailStack,
    PostfixInstance,
    build_message,
    free_port,
    mailward_command,
    wait_until,
)
from tests.harness.process import ManagedProcess, unix_accepts
from tests.harness.relay import sending_postfix
from tests.harness.toml import dumps
from tests.support.mtasts import Site, TestCa, https_server

DOMAIN = "sts.example"
STACK_OPTIONS = {"domains": [DOMAIN]}
ENFORCE = f"version: STSv1\nmode: enforce\nmx: mx1.{DOMAIN}\nmax_age: 86400\n"


def _free_dns_address() -> str:
    """A 127/8 address whose port 53 is free (UDP and TCP) for this module's nsd."""
    for _ in range(50):
        address = f"127.0.{random.randint(100, 250)}.{random.randint(2, 250)}"
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind((address, 53))
        except OSError:
            continue
        return address
    raise RuntimeError("no free loopback address for port 53")


@dataclass
class Delivery:
    stack: MailStack
    ca: TestCa
    nsd: AuthoritativeDns
    site: Site
    sender: PostfixInstance
    service: ManagedProcess

    def publish(self, policy_id: str, policy: str) -> None:
        self.nsd.set_zone(DOMAIN, [
            ("_mta-sts", 0, "TXT", f"v=STSv1; id={policy_id}"),
            ("mta-sts", "A", "127.0.0.1"),
            ("@", "MX", f"10 mx1.{DOMAIN}."),
            ("mx1", "A", "127.0.0.1"),
        ])
        self.site.policy(DOMAIN, policy)

    def receiver_certificate(self, names: list[str]) -> None:
        issued = self.ca.issue(f"receiver-{uuid.uuid4().hex[:8]}", names)
        self.stack.postfix.reconfigure({
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(issued.cert_file),
            "smtpd_tls_key_file": str(issued.key_file),
        })

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


@pytest.fixture(scope="module")
def delivery(stack: MailStack) -> Iterator[Delivery]:
    base = stack.base_dir / "tlspolicy"
    base.mkdir()
    base.chmod(0o755)  # the sender's smtp (user postfix) reaches the socket in here
    ca = TestCa(base)
    ca.ca_file.chmod(0o644)
    site = Site()
    server = https_server(ca.issue("policy-host", [f"mta-sts.{DOMAIN}"]), site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    nsd = AuthoritativeDns(base / "nsd", port=53, host=_free_dns_address())
    nsd.start()
    socket_path = base / "tlspolicy.sock"
    config = base / "mailward.toml"
    config.write_text(dumps({
        "general": {"log_level": "debug"},
        "dns": {"nameservers": [nsd.host], "port": 53, "timeout": 2.0},
        "tlspolicy": {
            "socket": f"unix:{socket_path}",
            "socket_group": "postfix",
            "metrics_listen": f"127.0.0.1:{free_port()}",
            "ca_file": str(ca.ca_file),
            "policy_port": server.server_address[1],
            "cache_path": str(base / "tlspolicy.db"),
        },
    }))
    service = ManagedProcess("mailward-tlspolicy", mailward_command("tlspolicy", config),
                             base / "tlspolicy.log")
    resolv = base / "resolv.conf"
    resolv.write_text(f"nameserver {nsd.host}\noptions timeout:2 attempts:1\n")
    resolv.chmod(0o644)
    sender = sending_postfix(base / "sender", stack.postfix.smtp_port,
                             hostname="relay.sender.example", params={
        "relayhost": "",
        "transport_maps": f"inline:{{ {DOMAIN}=smtp:{DOMAIN}:{stack.postfix.smtp_port} }}",
        "smtp_tls_security_level": "may",
        "smtp_tls_policy_maps": f"socketmap:unix:{socket_path}:postfix",
        "smtp_tls_CAfile": str(ca.ca_file),
        "smtp_tls_loglevel": "1",
    })
    # Run the sender's master (and so its smtp processes) with the test's resolv.conf.
    master = sender._process  # the harness builds the argv; wrap it, nothing else
    master.argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
                   *master.argv]
    service.start()
    try:
        wait_until(lambda: unix_accepts(socket_path), 20.0, "mailward tlspolicy socket",
                   diagnostics=service.output)
        sender.start()
        yield Delivery(stack, ca, nsd, site, sender, service)
    finally:
        sender.stop()
        service.stop()
        nsd.close()
        server.shutdown()
        server.server_close()


def test_enforce_defers_a_mismatching_certificate_and_delivers_once_it_matches(
        delivery: Delivery) -> None:
    delivery.publish("e1", ENFORCE)
    delivery.receiver_certificate(["mx9.elsewhere.example"])
    mark = delivery.sender.log_mark()
    recipient, message_id = delivery.send()
    delivery.sender.wait_for_log(
        rf"to=<{re.escape(recipient)}>.*status=deferred.*(certificate|[Vv]erif)", timeout=30)
    assert re.search(rf"{re.escape(DOMAIN)}:\d+: OK secure match=mx1\.{re.escape(DOMAIN)} ",
                     delivery.service.output())
    delivery.receiver_certificate([f"mx1.{DOMAIN}"])
    delivery.sender.flush()
    delivery.stored(recipient, message_id)
    log = delivery.sender.log_text(since=mark)
    assert re.search(r"Verified TLS connection established to mx1\." + re.escape(DOMAIN), log)


def test_testing_mode_delivers_despite_a_mismatch_and_logs_it(delivery: Delivery) -> None:
    delivery.publish("t1", ENFORCE.replace("enforce", "testing"))
    delivery.receiver_certificate(["mx9.elsewhere.example"])
    recipient, message_id = delivery.send()
    delivery.stored(recipient, message_id)
    assert re.search(rf"{re.escape(DOMAIN)}:\d+: NOTFOUND  \(MTA-STS testing, not enforced",
                     delivery.service.output())
