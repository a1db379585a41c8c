"""The README's "Installing into an existing Postfix + Dovecot", run as written, on THIS
machine's Postfix and Dovecot (Debian 12's postfix 3.7 and dovecot 2.3).

The steps come out of README.md (tests/system/readme.py): each marked ```sh block runs
as root with bash (`set -euo pipefail`) from the repository's top directory, in order;
the marked configuration file is written as the admin would write it.  Two departures,
both forced by the machine and both named here:
- `start-systemd` is not run (no systemd as PID 1: `ps -p 1`); `start-without-systemd`,
  the README's alternative for that case, is;
- in the configuration, `[dns] port` becomes the port of the test's nsd (the README
  says 53; the test may bind no port but Postfix's 25) and `[metrics]` gets free ports.

The end state is asserted through the system Postfix on port 25 and what Dovecot stored:
inbound mail carries our Authentication-Results, mail from the sendmail command is
DKIM-signed (verified with dkimpy against the published key), a DMARC p=reject spoof is
refused.  Afterwards Mailward is removed, Postfix and Dovecot stopped and /etc/postfix,
/etc/dovecot restored from the backup the test made first.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.harness import AuthoritativeDns, build_message, free_port, send_smtp
from tests.harness.process import unix_accepts, wait_until
from tests.harness.stack import INTERNET_SKELETON
from tests.system import host
from tests.system.readme import Step, StepKind, readme_steps

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path("/etc/mailward/mailward.toml")
SENDER_DOMAIN = "sender.example"  # an outside domain whose SPF allows SENDER_IP
SENDER_IP = "192.0.2.10"
STRICT_DOMAIN = "strict.example"  # DMARC p=reject; nobody may send as it but its hosts
#: The README's steps, in order; the test fails when one is added, dropped or renamed.
EXPECTED_STEPS = ("install", str(CONFIG), "keys", "start-systemd", "start-without-systemd",
                  "postfix", "dovecot")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
pytestmark = pytest.mark.timeout(1200)


@dataclass(frozen=True)
class InstalledHost:
    """What the fixture leaves running: the DNS server and the step outputs."""

    nameserver: AuthoritativeDns
    outputs: dict[str, str]


def run_step(step: Step) -> str:
    """One README block as root, exactly as written; its output (fails with it)."""
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + step.text], cwd=REPO, capture_output=True,
        text=True, timeout=900, check=False,
        env={"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"README step {step.name!r} (README.md line {step.line}) exited "
        f"{result.returncode}:\n{step.text}\n--- output:\n{output}\n--- postfix log:\n"
        f"{host.postfix_log_tail()}")
    return output


def write_config(step: Step, nameserver: AuthoritativeDns) -> None:
    """The README's configuration, with the test's DNS port and free metrics ports."""
    text, replaced = re.subn(r"(?m)^port = 53$", f"port = {nameserver.port}", step.text)
    assert replaced == 1, "the README's configuration no longer has `[dns] port = 53`"
    assert "[metrics]" not in text, "the README's configuration has [metrics] now"
    text += (f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
             f'policyd_listen = "127.0.0.1:{free_port()}"\n')
    parsed = tomllib.loads(text)
    assert parsed["dns"]["nameservers"] == [nameserver.host]
    # The admin edits the file `make install` copied: its owner and mode stay.
    assert step.name == str(CONFIG) and CONFIG.exists(), "step 1 installs the example first"
    CONFIG.write_text(text)


def publish_zones(nameserver: AuthoritativeDns, dkim_records: str) -> None:
    records = "\n".join(line for line in dkim_records.splitlines()
                        if "._domainkey." in line or line.startswith(("\t", " ")))
    nameserver.set_zones({
        **{zone: "" for zone in INTERNET_SKELETON},
        host.DOMAIN: f'@ IN TXT "v=spf1 ip4:127.0.0.1 -all"\n'
                     f'_dmarc IN TXT "v=DMARC1; p=none"\n{records}\n',
        SENDER_DOMAIN: f'@ IN TXT "v=spf1 ip4:{SENDER_IP} -all"\n'
                       '_dmarc IN TXT "v=DMARC1; p=none"\n',
        STRICT_DOMAIN: '@ IN TXT "v=spf1 ip4:198.51.100.0/24 -all"\n'
                       '_dmarc IN TXT "v=DMARC1; p=reject"\n',
    })


def show_dns_output(outputs: str) -> str:
    """The zone-file lines `mailward keys show-dns` printed within the keys step."""
    lines = outputs.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("s2026r._domainkey."))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(("\t", " ")):
            break
        block.append(line)
    return "\n".join(block)


@pytest.fixture(scope="module")
def installed() -> Iterator[InstalledHost]:
    steps = readme_steps(REPO / "README.md")
    assert tuple(step.name for step in steps) == EXPECTED_STEPS
    host.check_untouched_host()
    backup = host.SystemBackup()
    nameserver = AuthoritativeDns(Path(backup.directory) / "nsd")
    outputs: dict[str, str] = {}
    try:
        host.write_baseline()
        nameserver.start()
        for step in steps:
            if not step.runs_in_the_test:
                continue
            if step.kind is StepKind.FILE:
                write_config(step, nameserver)
            else:
                outputs[step.name] = run_step(step)
            if step.name == "keys":
                publish_zones(nameserver, show_dns_output(outputs["keys"]))
        wait_until(lambda: unix_accepts("/run/mailward/milter.sock")
                   and unix_accepts("/run/mailward/policyd.sock"), 60,
                   "the Mailward sockets", diagnostics=service_logs)
        yield InstalledHost(nameserver, outputs)
    finally:
        nameserver.close()
        host.stop_mailward_services()
        host.stop_mail_servers()
        backup.restore()
        host.uninstall_mailward()


def service_logs() -> str:
    return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}"
                     for log in sorted(Path("/var/log").glob("mailward-*.log")))


def dns_lookup(nameserver: AuthoritativeDns):
    """dkimpy's dnsfunc, asking the test's nsd."""
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode().rstrip("."), dns.rdatatype.TXT)
        answer = dns.query.udp(query, nameserver.host, port=nameserver.port, timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return b""
    return lookup


def our_results(message) -> str:
    ours = [" ".join(str(value).split()) for value in message.get_all("Authentication-Results", [])
            if str(value).strip().startswith(host.HOSTNAME)]
    assert len(ours) == 1, message.get_all("Authentication-Results")
    return ours[0]


def test_the_install_made_what_the_readme_says(installed: InstalledHost):
    assert os.readlink("/usr/local/bin/mailward") == "/opt/mailward/bin/mailward"
    key = Path("/etc/mailward/keys/example.com.s2026r.key")
    assert (key.stat().st_mode & 0o777) == 0o600
    assert key.owner() == "mailward"
    # check-config, run as the service user, said OK:
    assert f"{CONFIG}: OK" in installed.outputs["keys"].splitlines()
    restrictions = host.run(["postconf", "-h", "smtpd_recipient_restrictions"]).stdout
    assert host.EXISTING_RESTRICTION in restrictions  # added to, not replaced
    assert "check_policy_service unix:/run/mailward/policyd.sock" in restrictions
    master = host.run(["postconf", "-F", "smtp/inet/chroot", "cleanup/unix/chroot"]).stdout
    assert master.split() == ["smtp/inet/chroot", "=", "n", "cleanup/unix/chroot", "=", "n"]


def test_inbound_mail_is_stored_with_our_authentication_results(installed: InstalledHost):
    subject = f"inbound {uuid.uuid4().hex}"
    sender = f"alice@{SENDER_DOMAIN}"
    recipient = f"{host.MAILBOX_USER}@{host.DOMAIN}"
    result = send_smtp(25, sender, recipient, build_message(sender, recipient, subject=subject),
                       xclient_addr=SENDER_IP, helo=f"mail.{SENDER_DOMAIN}")
    assert result.accepted, result
    header = our_results(host.wait_for_stored(subject).message)
    assert f"spf=pass smtp.mailfrom={sender}" in header, header
    assert re.search(rf"dmarc=pass[^;]*header\.from={SENDER_DOMAIN}", header), header


def test_mail_from_the_sendmail_command_is_dkim_signed(installed: InstalledHost):
    subject = f"sendmail {uuid.uuid4().hex}"
    address = f"{host.MAILBOX_USER}@{host.DOMAIN}"
    message = build_message(address, address, subject=subject).replace(b"\r\n", b"\n")
    submitted = subprocess.run(
        ["setpriv", f"--reuid={host.MAILBOX_USER}", f"--regid={host.MAILBOX_USER}",
         "--init-groups", "/usr/sbin/sendmail", "-t", "-i", "-f", address],
        input=message, capture_output=True, timeout=60, check=False, cwd="/",
    )
    assert submitted.returncode == 0, submitted.stderr
    stored = host.wait_for_stored(subject)
    signature = " ".join(str(stored.message["DKIM-Signature"]).split())
    assert "d=example.com;" in signature and "s=s2026r;" in signature, signature
    raw = stored.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert dkim.verify(raw, dnsfunc=dns_lookup(installed.nameserver)), signature


def test_a_dmarc_reject_spoof_is_refused(installed: InstalledHost):
    subject = f"spoof {uuid.uuid4().hex}"
    recipient = f"{host.MAILBOX_USER}@{host.DOMAIN}"
    # The envelope passes SPF (sender.example's host), the From is strict.example's:
    # unaligned, unsigned, p=reject.
    message = build_message(f"ceo@{STRICT_DOMAIN}", recipient, subject=subject)
    result = send_smtp(25, f"bounce@{SENDER_DOMAIN}", recipient, message,
                       xclient_addr=SENDER_IP, helo=f"mail.{SENDER_DOMAIN}")
    assert not result.accepted
    assert result.data[0] == 550, result
    assert "DMARC" in result.data[1], result
