"""What "Mailward is in the mail path" means, asserted on the system Postfix + Dovecot.

Shared by the README test and the Ansible converge test, which must end in the same
state: inbound mail stored with our Authentication-Results, mail from the sendmail
command DKIM-signed (verified with dkimpy against the key in the test's DNS), a DMARC
p=reject spoof refused with 550.  The zones (`publish_zones`) are the test's Internet:
example.com is the admin's domain, sender.example an honest outside sender,
strict.example a p=reject domain that others forge.
"""

from __future__ import annotations

import email.message
import re
import subprocess
import uuid
from collections.abc import Callable

import dkim
import dns.message
import dns.query
import dns.rdatatype

from tests.harness import AuthoritativeDns, build_message, send_smtp
from tests.harness.stack import INTERNET_SKELETON
from tests.system import host

SENDER_DOMAIN = "sender.example"
SENDER_IP = "192.0.2.10"  # in sender.example's SPF
STRICT_DOMAIN = "strict.example"
RECIPIENT = f"{host.MAILBOX_USER}@{host.DOMAIN}"


def dkim_records(show_dns: str) -> str:
    """The zone-file record lines of `mailward keys show-dns` output (comments dropped)."""
    lines = show_dns.splitlines()
    start = next(i for i, line in enumerate(lines) if "._domainkey." in line)
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(("\t", " ")):
            break
        block.append(line)
    return "\n".join(block)


def publish_zones(nameserver: AuthoritativeDns, dkim_zone_lines: str) -> None:
    nameserver.set_zones({
        **{zone: "" for zone in INTERNET_SKELETON},
        host.DOMAIN: f'@ IN TXT "v=spf1 ip4:127.0.0.1 -all"\n'
                     f'_dmarc IN TXT "v=DMARC1; p=none"\n{dkim_zone_lines}\n',
        SENDER_DOMAIN: f'@ IN TXT "v=spf1 ip4:{SENDER_IP} -all"\n'
                       '_dmarc IN TXT "v=DMARC1; p=none"\n',
        STRICT_DOMAIN: '@ IN TXT "v=spf1 ip4:198.51.100.0/24 -all"\n'
                       '_dmarc IN TXT "v=DMARC1; p=reject"\n',
    })


def dns_lookup(nameserver: AuthoritativeDns) -> Callable[..., bytes]:
    """dkimpy's dnsfunc, asking the test's nsd."""
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode().rstrip("."), dns.rdatatype.TXT)
        answer = dns.query.udp(query, nameserver.host, port=nameserver.port, timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return b""
    return lookup


def our_results(message: email.message.Message) -> str:
    ours = [" ".join(str(value).split())
            for value in message.get_all("Authentication-Results", [])
            if str(value).strip().startswith(host.HOSTNAME)]
    assert len(ours) == 1, message.get_all("Authentication-Results")
    return ours[0]


def assert_inbound_mail_gets_our_results() -> None:
    subject = f"inbound {uuid.uuid4().hex}"
    sender = f"alice@{SENDER_DOMAIN}"
    result = send_smtp(25, sender, RECIPIENT, build_message(sender, RECIPIENT, subject=subject),
                       xclient_addr=SENDER_IP, helo=f"mail.{SENDER_DOMAIN}")
    assert result.accepted, result
    header = our_results(host.wait_for_stored(subject).message)
    assert f"spf=pass smtp.mailfrom={sender}" in header, header
    assert re.search(rf"dmarc=pass[^;]*header\.from={SENDER_DOMAIN}", header), header


def assert_sendmail_mail_is_signed(nameserver: AuthoritativeDns) -> None:
    subject = f"sendmail {uuid.uuid4().hex}"
    message = build_message(RECIPIENT, RECIPIENT, subject=subject).replace(b"\r\n", b"\n")
    submitted = subprocess.run(
        ["setpriv", f"--reuid={host.MAILBOX_USER}", f"--regid={host.MAILBOX_USER}",
         "--init-groups", "/usr/sbin/sendmail", "-t", "-i", "-f", RECIPIENT],
        input=message, capture_output=True, timeout=60, check=False, cwd="/",
    )
    assert submitted.returncode == 0, submitted.stderr
    stored = host.wait_for_stored(subject)
    signature = " ".join(str(stored.message["DKIM-Signature"]).split())
    assert f"d={host.DOMAIN};" in signature and "s=s2026r;" in signature, signature
    raw = stored.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert dkim.verify(raw, dnsfunc=dns_lookup(nameserver)), signature


def assert_dmarc_spoof_is_refused() -> None:
    subject = f"spoof {uuid.uuid4().hex}"
    # The envelope passes SPF (sender.example's host); the From is strict.example's:
    # unaligned, unsigned, p=reject.
    message = build_message(f"ceo@{STRICT_DOMAIN}", RECIPIENT, subject=subject)
    result = send_smtp(25, f"bounce@{SENDER_DOMAIN}", RECIPIENT, message,
                       xclient_addr=SENDER_IP, helo=f"mail.{SENDER_DOMAIN}")
    assert not result.accepted
    assert result.data[0] == 550, result
    assert "DMARC" in result.data[1], result
