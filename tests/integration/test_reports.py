"""DMARC aggregate reports through the whole stack.

Real Postfix + the Mailward milter record what they see; `mailward dmarc-report send`
hands the reports to the same Postfix over SMTP on loopback, whose milter DKIM-signs
them (outbound from a trusted network), and Dovecot stores them in the `rua` mailbox.
nsd serves the senders' zones and the report consumer's `_report._dmarc`
authorization records.
"""

from __future__ import annotations

import base64
import email
import gzip
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import dkim
import parsedmarc  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailward.config import DnsSettings
from mailward.dns import DnsResolver
from mailward.reports.aggregate_xml import NAMESPACE
from tests.harness import MailStack, build_message
from tests.harness.nameserver import txt
from tests.harness.process import wait_until
from tests.support.dkimpy import dkim_dnsfunc
from tests.unit.reports_helpers import validate

SENDER = "sender.example"  # authorizes nothing itself; example.net authorizes it
FAILING = "failing.example"  # asks for failure reports (ruf=) at example.net
STRANGER = "stranger.example"  # its rua points at example.net, which does not authorize it
REPORTER = "example.net"  # our domain: reports come from dmarc-reports@example.net
GOOD_CLIENT = "192.0.2.10"
FORGER = "203.0.113.7"
NS = {"d": NAMESPACE}
DAY = 86400


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _record(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return txt("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())


@pytest.fixture(scope="module")
def world(stack: MailStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    sender_key = rsa.generate_private_key(65537, 2048)
    our_key = rsa.generate_private_key(65537, 2048)
    keys = stack.base_dir / "report-keys"
    keys.mkdir(mode=0o700)
    (keys / "example.net.rep.key").write_bytes(_pem(our_key))
    (keys / "example.net.rep.key").chmod(0o600)
    rua = stack.unique_address("rua")
    stranger_rua = stack.unique_address("stranger-rua")
    sender_ruf = stack.unique_address("sender-ruf")
    ruf = stack.unique_address("ruf")
    stack.dns.set_zones({
        "example": "", "net": "", "in-addr.arpa": "", "ip6.arpa": "",
        SENDER: f"""
@               IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc          IN TXT "v=DMARC1; p=none; rua=mailto:{rua}; ruf=mailto:{sender_ruf}"
s1._domainkey   IN TXT {_record(sender_key)}
""",
        STRANGER: f"""
@               IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc          IN TXT "v=DMARC1; p=none; rua=mailto:{stranger_rua}"
""",
        FAILING: f"""
@               IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc          IN TXT "v=DMARC1; p=none; fo=1; ruf=mailto:{ruf}"
""",
        REPORTER: f"""
@                                 IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc                            IN TXT "v=DMARC1; p=reject"
rep._domainkey                    IN TXT {_record(our_key)}
{SENDER}._report._dmarc           IN TXT "v=DMARC1"
{FAILING}._report._dmarc          IN TXT "v=DMARC1"
""",
    })
    return {"sender_pem": _pem(sender_key), "keys": keys, "rua": rua,
            "stranger_rua": stranger_rua, "sender_ruf": sender_ruf, "ruf": ruf}


def _config(stack: MailStack, world: dict[str, object],
            failure: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "dmarc_reports": {
            "enabled": True, "org_name": "Example Net Mail",
            "sender": f"dmarc-reports@{REPORTER}",
            "path": str(stack.base_dir / f"reports-{uuid.uuid4().hex[:6]}.db"),
            "smtp_port": stack.postfix.smtp_port, "smtp_timeout": 10.0,
            "failure": failure or {},
        },
        "dkim": {"sign": {"key_directory": str(world["keys"]), "keys": [
            {"domain": REPORTER, "selector": "rep", "key": "example.net.rep.key"}]}},
    }


def _send_report(config_path: Path, now: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailward", "dmarc-report", "send", "-c", str(config_path),
         "--now", str(now)], capture_output=True, text=True, timeout=120, check=False)


def _deliver(stack: MailStack, message: bytes, sender: str, client: str) -> None:
    recipient = stack.unique_address()
    result = stack.send(sender, recipient, message, xclient_addr=client, helo="mail.example")
    assert result.accepted, result


def test_reports_are_recorded_sent_signed_valid_and_sent_once(
        stack, world, mailward_factory, tmp_path):
    services = mailward_factory(_config(stack, world), services=["milter"])
    pem = world["sender_pem"]
    assert isinstance(pem, bytes)
    for index in range(3):
        message = build_message(f"alice@{SENDER}", "someone@example.net",
                                subject=f"good {index}")
        signature = dkim.sign(message, b"s1", SENDER.encode(), pem,
                              include_headers=[b"from", b"to", b"subject", b"date"])
        _deliver(stack, signature + message, f"alice@{SENDER}", GOOD_CLIENT)
    for index in range(2):
        _deliver(stack, build_message(f"ceo@{SENDER}", "someone@example.net",
                                      subject=f"forged {index}"),
                 "bounce@forger.example", FORGER)
    _deliver(stack, build_message(f"bob@{STRANGER}", "someone@example.net", subject="x"),
             f"bob@{STRANGER}", GOOD_CLIENT)
    wait_until(lambda: services.metric_value("mailward_dmarc_report_records_total",
                                             {"outcome": "recorded"}) == 6.0,
               20, "six recorded evaluations")

    tomorrow = time.time() + DAY
    done = _send_report(services.config_path, tomorrow)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"dropped: {STRANGER}" in done.stdout, done.stdout

    rua = str(world["rua"])
    raw = wait_until(lambda: next(iter(stack.dovecot.raw_messages(rua)), None), 20,
                     "the report in the rua mailbox")
    report = email.message_from_bytes(raw)
    assert " ".join(str(report["Subject"]).split()).startswith(
        f"Report Domain: {SENDER} Submitter: {REPORTER} Report-ID: <")
    (part,) = [p for p in report.walk() if p.get_content_type() == "application/gzip"]
    filename = str(part.get_filename())
    assert filename.startswith(f"{REPORTER}!{SENDER}!") and filename.endswith(".xml.gz")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    xml = gzip.decompress(payload)
    validate(xml, tmp_path)
    root = ET.fromstring(xml)
    rows = [(r.findtext("d:row/d:source_ip", namespaces=NS),
             int(r.findtext("d:row/d:count", "0", NS)),
             r.findtext("d:row/d:policy_evaluated/d:disposition", namespaces=NS))
            for r in root.findall("d:record", NS)]
    assert sorted(rows) == [(GOOD_CLIENT, 3, "pass"), (FORGER, 2, "none")]

    # An independent parser (parsedmarc, offline: no lookups) reads the same report.
    parsed = parsedmarc.parse_report_file(raw, offline=True, always_use_local_files=True)
    assert parsed["report_type"] == "aggregate"
    theirs = parsed["report"]
    assert theirs["policy_published"]["domain"] == SENDER
    assert sorted((r["source"]["ip_address"], r["count"]) for r in theirs["records"]) == [
        (GOOD_CLIENT, 3), (FORGER, 2)]
    assert all(r["auth_results"]["spf"][0]["scope"] == "mfrom" for r in theirs["records"])

    # Our own signature on the report verifies, with d= aligned to its From: DMARC pass.
    resolver = DnsResolver(DnsSettings(nameservers=("127.0.0.1",), port=stack.dns.port,
                                       timeout=2.0))
    assert dkim.DKIM(raw).verify(dnsfunc=dkim_dnsfunc(resolver))
    signature = dkim.util.parse_tag_value(
        report["DKIM-Signature"].replace("\r\n", "").replace("\n", "").encode())
    assert signature[b"d"] == REPORTER.encode()
    assert str(report["From"]).endswith(f"@{REPORTER}")

    # The stranger's destination never authorized it: nothing there.  Failure reports
    # are off by default: the forgeries got none, although the policy has ruf=.
    assert stack.dovecot.raw_messages(str(world["stranger_rua"])) == []
    assert stack.dovecot.raw_messages(str(world["sender_ruf"])) == []

    again = _send_report(services.config_path, tomorrow)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sent:" not in again.stdout
    assert len(stack.dovecot.raw_messages(rua)) == 1


def test_failure_reports_one_per_failing_message_up_to_the_rate_limit(
        stack, world, mailward_factory):
    config = _config(stack, world, failure={"enabled": True, "per_destination_per_hour": 2})
    services = mailward_factory(config, services=["milter"])
    for index in range(3):
        _deliver(stack, build_message(f"boss@{FAILING}", "someone@example.net",
                                      subject=f"forged {index}"),
                 "bounce@forger.example", FORGER)
    wait_until(lambda: services.metric_value("mailward_dmarc_report_records_total",
                                             {"outcome": "recorded"}) == 3.0,
               20, "three recorded evaluations")
    assert services.metric_value("mailward_dmarc_reports_total",
                                 {"kind": "failure", "outcome": "rate_limited"}) == 1.0

    done = _send_report(services.config_path, time.time() + 60)
    assert done.returncode == 0, done.stdout + done.stderr
    ruf = str(world["ruf"])

    def two_reports() -> list[bytes] | None:
        found = stack.dovecot.raw_messages(ruf)
        return found if len(found) == 2 else None

    reports = wait_until(two_reports, 20, "two failure reports")
    for raw in reports:
        report = email.message_from_bytes(raw)
        assert report.get_content_type() == "multipart/report"
        text = raw.decode(errors="replace")
        assert "Feedback-Type: auth-failure" in text and "Auth-Failure: dmarc" in text
        assert f"Source-IP: {FORGER}" in text
        assert "boss@" not in text  # local parts redacted
        # Signed by our milter like every report we send.
        assert report["DKIM-Signature"] is not None
    again = _send_report(services.config_path, time.time() + 120)
    assert "sent:" not in again.stdout, again.stdout


# --------------------------------------------------------------------------- Redis


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        self.sent.append((recipient, message))


def test_with_redis_state_two_mx_hosts_count_into_one_report(
        stack, world, mailward_factory, redis):
    """[state] backend = "redis": the milter records into Redis; a second host's
    recorder adds to the same rows; one run reports both, once."""
    from mailward.dmarc_enforcement import ACCEPT
    from mailward.reports.recorder import DmarcRecorder
    from mailward.reports.redis_store import RedisReportStore
    from mailward.reports.sender import ReportRunner
    from mailward.reports.settings import ReportSettings
    from tests.unit.reports_helpers import dkim as dkim_outcome
    from tests.unit.reports_helpers import dmarc as dmarc_outcome
    from tests.unit.reports_helpers import spf as spf_outcome

    prefix = f"mailward:dmarc:{uuid.uuid4().hex[:6]}:"
    config = _config(stack, world)
    config["state"] = {"backend": "redis", "url": redis.url}
    services = mailward_factory(config, services=["milter"])
    _deliver(stack, build_message(f"bob@{STRANGER}", "someone@example.net", subject="r"),
             f"bob@{STRANGER}", GOOD_CLIENT)
    wait_until(lambda: services.metric_value("mailward_dmarc_report_records_total",
                                             {"outcome": "recorded"}) == 1.0,
               20, "the milter's evaluation recorded")
    shared = RedisReportStore(redis.url)
    (period,) = [p for p in shared.periods() if p.policy_domain == STRANGER]
    assert [r.count for r in shared.rows(period)] == [1]

    # Two more hosts (their own prefix, to keep apart from the milter's rows).
    store_a, store_b = RedisReportStore(redis.url, prefix), RedisReportStore(redis.url, prefix)
    yesterday = time.time() - DAY
    for store in (store_a, store_b):
        DmarcRecorder(store, clock=lambda: yesterday).record(
            GOOD_CLIENT, dmarc_outcome(), spf_outcome(), [dkim_outcome()], ACCEPT)
    outbox = _Outbox()
    settings = ReportSettings(enabled=True, org_name="E", sender=f"d@{REPORTER}")
    runner = ReportRunner(settings, store_a, DnsResolver(DnsSettings(
        nameservers=("127.0.0.1",), port=stack.dns.port, timeout=2.0)), outbox)
    runner.send_due()
    assert len(outbox.sent) == 1
    (part,) = [p for p in email.message_from_bytes(outbox.sent[0][1]).walk()
               if p.get_content_type() == "application/gzip"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert b"<count>2</count>" in gzip.decompress(payload)
    ReportRunner(settings, store_b, runner.resolver, outbox).send_due()
    assert len(outbox.sent) == 1  # the other host sees it sent


def test_a_redis_outage_is_counted_and_the_message_proceeds():
    from mailward import metrics
    from mailward.dmarc_enforcement import ACCEPT
    from mailward.reports.recorder import DmarcRecorder
    from mailward.reports.redis_store import RedisReportStore
    from tests.harness.process import free_port
    from tests.unit.reports_helpers import dmarc as dmarc_outcome
    from tests.unit.reports_helpers import spf as spf_outcome

    down = RedisReportStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    before = metrics.DMARC_REPORT_RECORDS.labels("error")._value.get()
    DmarcRecorder(down).record(GOOD_CLIENT, dmarc_outcome(), spf_outcome(), [], ACCEPT)
    assert metrics.DMARC_REPORT_RECORDS.labels("error")._value.get() == before + 1


def test_redis_failure_queue_limits_across_hosts_and_finishes(redis):
    from mailward.reports.redis_store import RedisReportStore
    from mailward.reports.store import QueuedFailureReport

    prefix = f"mailward:dmarc:{uuid.uuid4().hex[:6]}:"
    host_a, host_b = RedisReportStore(redis.url, prefix), RedisReportStore(redis.url, prefix)
    report = QueuedFailureReport("mailto:ruf@x.example", SENDER, SENDER, b"AFRF bytes")
    now = time.time()
    queued = [store.queue_failure_report(report, now, 2, 100)
              for store in (host_a, host_b, host_a)]
    assert queued == [True, True, False]
    waiting = host_b.queued_failure_reports(10)
    assert [w.message for w in waiting] == [b"AFRF bytes"] * 2
    host_b.finish_failure_report(waiting[0].ident, "sent", 1)
    host_b.finish_failure_report(waiting[1].ident, "queued", 1)
    (left,) = host_a.queued_failure_reports(10)
    assert left.ident == waiting[1].ident and left.attempts == 1
