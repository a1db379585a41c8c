"""Outbound DKIM signing through real Postfix, verified by a real OpenDKIM.

Mail submitted with SMTP AUTH (SASL through Dovecot), from a trusted network or with
the sendmail command leaves signed with RSA and Ed25519.  OpenDKIM runs as a second
milter in verify-only mode, resolving keys from the test's nsd through libunbound, and
writes its verdict into an Authentication-Results header of its own; dkimpy checks the
stored message too.  The defined outcomes for bad input and broken keys are checked as
an admin would see them: delivered unsigned and counted, or a reload refused.
"""

from __future__ import annotations

import email.message
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailward.config import DnsSettings
from mailward.dns import DnsResolver
from tests.harness import HarnessError, MailStack, MailwardServices, build_message, zone_text
from tests.harness.process import ManagedProcess, free_port, tcp_accepts, wait_until
from tests.harness.services import REPO_ROOT
from tests.integration.conftest import MailwardFactory
from tests.support.dkimpy import dkim_dnsfunc

DOMAIN = "example.net"  # the stack's mail domain: recipients and signing domain
VERIFIER_ID = "verifier.example.net"
PASSWORD = "secret"  # Dovecot's static passdb in the harness


# --------------------------------------------------------------------------- fixtures


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Keys:
    """An RSA-2048 and an Ed25519 key for example.net, written 0600, published in nsd."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.directory = directory
        self.rsa = directory / f"{DOMAIN}.rsa.key"
        self.ed = directory / f"{DOMAIN}.ed.key"
        for path, key in ((self.rsa, rsa.generate_private_key(65537, 2048)),
                          (self.ed, ed25519.Ed25519PrivateKey.generate())):
            path.write_bytes(_pem(key))
            path.chmod(0o600)

    def config(self) -> dict[str, Any]:
        return {"dkim": {"sign": {
            "key_directory": str(self.directory),
            "keys": [
                {"domain": DOMAIN, "selector": "rsa", "key": self.rsa.name},
                {"domain": DOMAIN, "selector": "ed", "key": self.ed.name},
            ],
        }}}

    def records(self) -> list[tuple[str, str, str]]:
        from mailward.signing.keys import LoadedKey, read_private_key

        records = []
        for selector, path in (("rsa", self.rsa), ("ed", self.ed)):
            key = LoadedKey(DOMAIN, selector, path, read_private_key(path))
            records.append((f"{selector}._domainkey", "TXT", key.dns_record()))
        return records


class OpenDkimVerifier:
    """opendkim -f in verify mode on loopback, its DNS through libunbound to our nsd."""

    def __init__(self, base_dir: Path, dns_port: int) -> None:
        base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        unbound = base_dir / "unbound.conf"
        unbound.write_text(
            "server:\n  do-not-query-localhost: no\n  module-config: \"iterator\"\n"
            f"stub-zone:\n  name: \"{DOMAIN}\"\n  stub-addr: 127.0.0.1@{dns_port}\n"
        )
        config = base_dir / "opendkim.conf"
        config.write_text(
            "Mode v\n"
            f"Socket inet:{self.port}@127.0.0.1\n"
            f"PidFile {base_dir / 'opendkim.pid'}\n"
            f"AuthservID {VERIFIER_ID}\n"
            "AlwaysAddARHeader yes\n"
            "Syslog no\n"
            "UMask 022\n"
            # Verify everything, also mail from loopback (the default treats it as ours).
            "InternalHosts 192.0.2.254\n"
            f"ResolverConfiguration {unbound}\n"
        )
        self.process = ManagedProcess("opendkim", ["opendkim", "-f", "-x", str(config)],
                                      base_dir / "opendkim.out")

    @property
    def socket(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: tcp_accepts("127.0.0.1", self.port), 15, "opendkim to listen",
                   diagnostics=self.process.output)

    def stop(self) -> None:
        self.process.stop(timeout=10)


@pytest.fixture(scope="module")
def keys(stack: MailStack) -> Keys:
    made = Keys(stack.base_dir / "keys")
    stack.dns.set_zone(DOMAIN, zone_text(made.records()))
    return made


@pytest.fixture(scope="module")
def opendkim(stack: MailStack, keys: Keys) -> Iterator[OpenDkimVerifier]:
    verifier = OpenDkimVerifier(stack.base_dir / "opendkim", stack.dns.port)
    verifier.start()
    try:
        yield verifier
    finally:
        verifier.stop()


@pytest.fixture
def signing_milter(
    stack: MailStack, mailward_factory: MailwardFactory, keys: Keys, opendkim: OpenDkimVerifier
) -> MailwardServices:
    """Mailward signing, then OpenDKIM verifying, as Postfix's two smtpd_milters."""
    services = mailward_factory(keys.config(), services=("milter",))
    stack.postfix.reconfigure(milter=f"{services.milter_socket}, {opendkim.socket}")
    return services


# --------------------------------------------------------------------------- helpers


def _stored_raw(stack: MailStack, recipient: str, message_id: str) -> bytes:
    def find() -> bytes | None:
        for raw in stack.dovecot.raw_messages(recipient):
            if message_id.encode() in raw:
                return raw
        return None

    return wait_until(find, 20, f"message {message_id} for {recipient}")


def _parsed(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw)


def _verifier_results(message: email.message.Message) -> str:
    values = [" ".join(str(v).split()) for v in message.get_all("Authentication-Results", [])]
    ours = [v for v in values if v.startswith(VERIFIER_ID)]
    assert len(ours) == 1, values
    return ours[0]


def _dkimpy_results(raw: bytes, dns_port: int) -> list[bool]:
    resolver = DnsResolver(DnsSettings(nameservers=("127.0.0.1",), port=dns_port, timeout=2.0))
    dnsfunc = dkim_dnsfunc(resolver)
    count = len(_parsed(raw).get_all("DKIM-Signature", []))
    verifier = dkim.DKIM(raw)
    return [bool(verifier.verify(index, dnsfunc=dnsfunc)) for index in range(count)]


def _message_id() -> str:
    return f"<{uuid.uuid4().hex}@{DOMAIN}>"


def _signatures(message: email.message.Message) -> list[dict[str, str]]:
    signatures = []
    for value in message.get_all("DKIM-Signature", []):
        pairs = (part.split("=", 1) for part in str(value).split(";") if "=" in part)
        signatures.append({k.strip(): "".join(v.split()) for k, v in pairs})
    return signatures


# --------------------------------------------------------------------------- signing


def test_sasl_submission_is_dual_signed_and_opendkim_verifies(
    stack: MailStack, signing_milter: MailwardServices, recipient: str
) -> None:
    message_id = _message_id()
    message = build_message(f"alice@{DOMAIN}", recipient, message_id=message_id,
                            subject="Quarterly report  with  spaces",
                            body="Dear Bob,\r\n\r\nplease find  the numbers below.   \r\n\r\n")
    result = stack.send(f"alice@{DOMAIN}", recipient, message, auth=(f"alice@{DOMAIN}", PASSWORD))
    assert result.auth[0] == 235 and result.accepted, result
    raw = _stored_raw(stack, recipient, message_id)
    stored = _parsed(raw)
    signatures = _signatures(stored)
    assert sorted((s["a"], s["s"], s["d"]) for s in signatures) == [
        ("ed25519-sha256", "ed", DOMAIN), ("rsa-sha256", "rsa", DOMAIN)]
    verdict = _verifier_results(stored)
    assert re.search(r"dkim=pass \(2048-bit key[^)]*\) header\.d=example\.net"
                     r".*header\.s=rsa", verdict), verdict
    assert re.search(r"dkim=pass[^;]*header\.s=ed", verdict), verdict
    assert "fail" not in verdict
    assert _dkimpy_results(raw, stack.dns.port) == [True, True]
    assert signing_milter.metric_value(
        "mailward_dkim_sign_messages_total", {"result": "signed"}) == 1.0
    assert signing_milter.metric_value(
        "mailward_dkim_signatures_added_total", {"algorithm": "ed25519-sha256"}) == 1.0


def test_trusted_network_and_sendmail_are_signed(
    stack: MailStack, signing_milter: MailwardServices, recipient: str
) -> None:
    trusted_id, local_id = _message_id(), _message_id()
    # No AUTH, no XCLIENT: the client is 127.0.0.1, inside general.trusted_networks.
    result = stack.send(f"bob@{DOMAIN}", recipient,
                        build_message(f"bob@{DOMAIN}", recipient, message_id=trusted_id))
    assert result.accepted, result
    stack.postfix.sendmail(build_message(f"root@{DOMAIN}", recipient, message_id=local_id),
                           [recipient], f"root@{DOMAIN}")
    for message_id in (trusted_id, local_id):
        raw = _stored_raw(stack, recipient, message_id)
        assert _dkimpy_results(raw, stack.dns.port) == [True, True], message_id
        assert "dkim=pass" in _verifier_results(_parsed(raw))


def test_inbound_mail_is_not_signed(
    stack: MailStack, mailward_factory: MailwardFactory, keys: Keys, recipient: str
) -> None:
    # Inbound mail meets the inbound checks; DMARC off, so that the test zones (no
    # _dmarc records, no parent zones) do not turn it into a tempfail.
    mailward_factory({**keys.config(), "dmarc": {"enabled": False}}, services=("milter",))
    message_id = _message_id()
    result = stack.send(f"alice@{DOMAIN}", recipient,
                        build_message(f"alice@{DOMAIN}", recipient, message_id=message_id),
                        xclient_addr="192.0.2.10")
    assert result.accepted, result
    stored = _parsed(_stored_raw(stack, recipient, message_id))
    assert stored.get_all("DKIM-Signature") is None


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("headers", "result"), [
    ([("From", f"a@{DOMAIN}"), ("From", f"b@{DOMAIN}")], "multiple_from"),
    ([("From", "someone@unsigned.example")], "no_key"),
])
def test_unsignable_mail_is_delivered_unsigned_and_counted(
    stack: MailStack, signing_milter: MailwardServices, recipient: str,
    headers: list[tuple[str, str]], result: str,
) -> None:
    message_id = _message_id()
    message = build_message(f"alice@{DOMAIN}", recipient, headers=headers, message_id=message_id)
    sent = stack.send(f"alice@{DOMAIN}", recipient, message, auth=(f"alice@{DOMAIN}", PASSWORD))
    assert sent.accepted, sent
    stored = _parsed(_stored_raw(stack, recipient, message_id))
    assert stored.get_all("DKIM-Signature") is None
    assert signing_milter.metric_value(
        "mailward_dkim_sign_messages_total", {"result": result}) == 1.0
    signing_milter.wait_for_log(r"not DKIM-signed: ")


def test_message_without_from(
    stack: MailStack, signing_milter: MailwardServices, recipient: str
) -> None:
    def send() -> bytes:
        message_id = _message_id()
        message = (f"To: {recipient}\r\nSubject: no author\r\nMessage-ID: {message_id}\r\n"
                   "\r\nWho wrote this?\r\n").encode()
        sent = stack.send(f"alice@{DOMAIN}", recipient, message,
                          auth=(f"alice@{DOMAIN}", PASSWORD))
        assert sent.accepted, sent
        return _stored_raw(stack, recipient, message_id)

    # Postfix repairs a local client's header before any milter sees it (From: the
    # envelope sender): that From is what gets signed.
    repaired = send()
    assert _parsed(repaired)["From"] == f"alice@{DOMAIN}"
    assert _dkimpy_results(repaired, stack.dns.port) == [True, True]
    # Without that repair the milter meets no From at all: delivered unsigned, logged.
    default = stack.postfix.postconf("local_header_rewrite_clients")
    stack.postfix.reconfigure({"local_header_rewrite_clients": ""})
    try:
        bare = send()
    finally:
        stack.postfix.reconfigure({"local_header_rewrite_clients": default})
    assert _parsed(bare).get_all("From") is None
    assert _parsed(bare).get_all("DKIM-Signature") is None
    signing_milter.wait_for_log(r"not DKIM-signed: no From header")
    assert signing_milter.metric_value(
        "mailward_dkim_sign_messages_total", {"result": "no_from"}) == 1.0


def test_eight_bit_headers_are_signed_as_sent(
    stack: MailStack, signing_milter: MailwardServices, recipient: str
) -> None:
    message_id = _message_id()
    message = (f"From: Jörg Müller <joerg@{DOMAIN}>\r\nTo: {recipient}\r\n"
               f"Subject: Grüße aus Köln\r\nMessage-ID: {message_id}\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\nSchöne Grüße!\r\n").encode()
    sent = stack.send(f"joerg@{DOMAIN}", recipient, message, auth=(f"joerg@{DOMAIN}", PASSWORD))
    assert sent.accepted, sent
    raw = _stored_raw(stack, recipient, message_id)
    assert "Subject: Grüße aus Köln".encode() in raw
    assert _dkimpy_results(raw, stack.dns.port) == [True, True]


def test_body_over_the_cap_leaves_unsigned_never_falsely_signed(
    stack: MailStack, mailward_factory: MailwardFactory, keys: Keys, recipient: str
) -> None:
    config = keys.config()
    config["milter"] = {"max_body_size": 4096}
    services = mailward_factory(config, services=("milter",))
    message_id = _message_id()
    body = "".join(f"line {n:06d} of a long message\r\n" for n in range(2000))  # ~60 KB
    sent = stack.send(f"alice@{DOMAIN}", recipient,
                      build_message(f"alice@{DOMAIN}", recipient, body=body,
                                    message_id=message_id),
                      auth=(f"alice@{DOMAIN}", PASSWORD))
    assert sent.accepted, sent
    stored = _parsed(_stored_raw(stack, recipient, message_id))
    assert stored.get_all("DKIM-Signature") is None
    assert services.metric_value(
        "mailward_dkim_sign_messages_total", {"result": "oversized"}) == 1.0
    services.wait_for_log(r"exceeds milter\.max_body_size .*cannot be signed")


# --------------------------------------------------------------------------- key lifecycle


def test_garbage_key_and_sighup_keep_the_running_keys(
    stack: MailStack, signing_milter: MailwardServices, keys: Keys, recipient: str
) -> None:
    good = keys.rsa.read_bytes()
    try:
        keys.rsa.write_bytes(b"garbage from a broken deploy\n")
        signing_milter.reload(wait_for=r"reload refused")
        assert str(keys.rsa) in signing_milter.log_text("milter")
        message_id = _message_id()
        sent = stack.send(f"alice@{DOMAIN}", recipient,
                          build_message(f"alice@{DOMAIN}", recipient, message_id=message_id),
                          auth=(f"alice@{DOMAIN}", PASSWORD))
        assert sent.accepted, sent
        raw = _stored_raw(stack, recipient, message_id)
        assert _dkimpy_results(raw, stack.dns.port) == [True, True]
        assert signing_milter.metric_value(
            "mailward_config_reloads_total", {"result": "error"}) == 1.0
    finally:
        keys.rsa.write_bytes(good)
        keys.rsa.chmod(0o600)


def test_rotation_a_new_selector_is_activated_by_sighup(
    stack: MailStack, mailward_factory: MailwardFactory, keys: Keys, opendkim: OpenDkimVerifier,
    recipient: str,
) -> None:
    config = keys.config()
    config["dkim"]["sign"]["keys"][1]["active"] = False
    services = mailward_factory(config, services=("milter",))
    stack.postfix.reconfigure(milter=f"{services.milter_socket}, {opendkim.socket}")

    def send() -> email.message.Message:
        message_id = _message_id()
        sent = stack.send(f"alice@{DOMAIN}", recipient,
                          build_message(f"alice@{DOMAIN}", recipient, message_id=message_id),
                          auth=(f"alice@{DOMAIN}", PASSWORD))
        assert sent.accepted, sent
        return _parsed(_stored_raw(stack, recipient, message_id))

    assert [s["s"] for s in _signatures(send())] == ["rsa"]
    both = keys.config()["dkim"]["sign"]["keys"]
    services.update_config({"dkim": {"sign": {"keys": both}}})
    services.reload(wait_for=r"configuration reloaded")
    rotated = send()
    assert sorted(s["s"] for s in _signatures(rotated)) == ["ed", "rsa"]
    assert re.search(r"dkim=pass[^;]*header\.s=ed", _verifier_results(rotated))


def test_simple_canonicalization_survives_postfix(
    stack: MailStack, mailward_factory: MailwardFactory, keys: Keys, opendkim: OpenDkimVerifier,
    recipient: str,
) -> None:
    config = keys.config()
    config["dkim"]["sign"]["canonicalization"] = "simple/simple"
    services = mailward_factory(config, services=("milter",))
    stack.postfix.reconfigure(milter=f"{services.milter_socket}, {opendkim.socket}")
    message_id = _message_id()
    message = build_message(f"alice@{DOMAIN}", recipient, message_id=message_id,
                            headers=[("X-Folded", "one\r\n\ttwo  three")])
    sent = stack.send(f"alice@{DOMAIN}", recipient, message, auth=(f"alice@{DOMAIN}", PASSWORD))
    assert sent.accepted, sent
    raw = _stored_raw(stack, recipient, message_id)
    assert all(s["c"] == "simple/simple" for s in _signatures(_parsed(raw)))
    assert _dkimpy_results(raw, stack.dns.port) == [True, True]
    verdict = _verifier_results(_parsed(raw))
    assert verdict.count("dkim=pass") == 2, verdict


def test_world_readable_key_stops_the_start_with_the_file_named(
    stack: MailStack, mailward_factory: MailwardFactory, keys: Keys
) -> None:
    keys.ed.chmod(0o644)
    try:
        with pytest.raises(HarnessError) as raised:
            mailward_factory(keys.config(), services=("milter",))
    finally:
        keys.ed.chmod(0o600)
    assert f"{keys.ed}: mode 0644 lets others read" in str(raised.value)


def test_keys_check_against_the_published_records(
    stack: MailStack, keys: Keys, tmp_path: Path
) -> None:
    config = tmp_path / "mailward.toml"
    config.write_text(
        f'[dns]\nnameservers = ["127.0.0.1"]\nport = {stack.dns.port}\ntimeout = 2.0\n'
        f'[dkim.sign]\nkey_directory = "{keys.directory}"\n'
        f'[[dkim.sign.keys]]\ndomain = "{DOMAIN}"\nselector = "rsa"\nkey = "{keys.rsa.name}"\n'
        f'[[dkim.sign.keys]]\ndomain = "{DOMAIN}"\nselector = "ed"\nkey = "{keys.ed.name}"\n'
        f'[[dkim.sign.keys]]\ndomain = "{DOMAIN}"\nselector = "next"\nkey = "{keys.rsa.name}"\n'
        "active = false\n"
    )

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailward", "keys", "check", "-c",
                               str(config), *extra], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=60, check=False)

    published = check("--selector", "rsa")
    assert published.returncode == 0, published.stderr
    assert published.stdout == f"{DOMAIN}:rsa (rsa._domainkey.{DOMAIN}): matches\n"
    everything = check()
    assert everything.returncode == 1
    assert everything.stdout.splitlines()[1:] == [
        f"{DOMAIN}:ed (ed._domainkey.{DOMAIN}): matches",
        f"{DOMAIN}:next [inactive] (next._domainkey.{DOMAIN}): missing: nxdomain: publish the "
        "record `mailward keys show-dns` prints",
    ]
