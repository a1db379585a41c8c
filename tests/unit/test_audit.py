"""mailward audit's checklist over an in-memory zone: one case per finding family."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta

from mailward.audit.context import AuditContext, AuditOptions, MxHost
from mailward.audit.findings import ExitStatus, Status
from mailward.audit.probe import SmtpProbe, TlsInfo
from mailward.audit.render import as_json, as_text
from mailward.audit.runner import run_audit
from mailward.audit.smtp import findings_for
from mailward.audit.spf import LookupCount, count_lookups, parse_terms
from mailward.audit.transport import mx_matches, parse_policy
from mailward.config import Settings
from mailward.dns import InMemoryResolver

DOMAIN = "example.org"

GOOD_ZONE = """
@            MX  10 mx.example.org.
@            TXT "v=spf1 mx ip4:192.0.2.0/24 -all"
mx           A   192.0.2.25
_dmarc       TXT "v=DMARC1; p=reject; rua=mailto:dmarc@example.org"
_smtp._tls   TXT "v=TLSRPTv1; rua=mailto:tlsrpt@example.org"
"""
REVERSE = "25 PTR mx.example.org.\n"


def rsa_public_b64(bits: int) -> str:
    import base64

    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def audit(zone: str, *, options: AuditOptions | None = None, extra: dict[str, str] | None = None,
          resolver: InMemoryResolver | None = None):
    if resolver is None:
        resolver = InMemoryResolver.from_zones({DOMAIN: zone, "2.0.192.in-addr.arpa": REVERSE,
                                                **(extra or {})})
    context = AuditContext(DOMAIN, resolver, Settings(),
                           options or AuditOptions(connect=False))
    return run_audit(context)


def codes(report) -> dict[str, Status]:
    return {finding.code: finding.status for finding in report.findings}


def test_a_good_domain_has_no_failures():
    report = audit(GOOD_ZONE)
    found = codes(report)
    assert report.exit_status == ExitStatus.FINE, as_text(report)
    assert found["mx.present"] is Status.OK
    assert found["rdns.confirmed"] is Status.OK
    assert found["spf.all"] is Status.OK
    assert found["dmarc.policy"] is Status.OK
    assert found["transport.tlsrpt"] is Status.OK


def test_missing_mx_is_the_implicit_mx():
    report = audit("@ A 192.0.2.25\n")
    assert codes(report)["mx.implicit"] is Status.WARN


def test_null_mx_is_recognised():
    report = audit('@ MX 0 .\n@ TXT "v=spf1 -all"\n')
    assert codes(report)["mx.null"] is Status.INFO
    assert "mx.present" not in codes(report)


def test_mx_target_that_is_a_cname_fails():
    zone = GOOD_ZONE.replace("mx           A   192.0.2.25",
                             "mx CNAME host.example.org.\nhost A 192.0.2.25")
    assert codes(audit(zone))["mx.target_cname"] is Status.FAIL


def test_missing_ptr_and_unconfirmed_ptr_fail():
    assert codes(audit(GOOD_ZONE, extra={"2.0.192.in-addr.arpa": ""}))["rdns.no_ptr"] \
        is Status.FAIL
    report = audit(GOOD_ZONE, extra={"2.0.192.in-addr.arpa": "25 PTR other.example.org.\n"})
    assert codes(report)["rdns.not_confirmed"] is Status.FAIL


def test_spf_counts_mx_as_one_lookup_and_its_empty_hosts_as_voids():
    zone = """
@        TXT "v=spf1 mx include:_spf.example.org -all"
@        MX  10 a.example.org.
@        MX  20 b.example.org.
@        MX  30 c.example.org.
_spf     TXT "v=spf1 a:gone.example.org exists:%{i}.x.example.org ~all"
c        A   192.0.2.1
"""
    count = LookupCount()
    count_lookups(AuditContext(DOMAIN, InMemoryResolver.from_zones({DOMAIN: zone}), Settings()),
                  DOMAIN, count)
    # mx, include, a, exists = 4 terms; a and b have no address, gone does not exist: 3 voids.
    assert count.lookups == 4
    assert count.voids == 3
    assert count.macros == ["exists:%{i}.x.example.org"]
    report = audit(zone)
    assert codes(report)["spf.too_many_void_lookups"] is Status.FAIL


def test_spf_over_ten_lookups_fails():
    includes = " ".join(f"include:s{i}.example.org" for i in range(6))
    zone = f'@ TXT "v=spf1 {includes} -all"\n' + "".join(
        f's{i} TXT "v=spf1 a mx:example.org -all"\ns{i} A 192.0.2.{i + 1}\n' for i in range(6))
    zone += "@ MX 10 mx.example.org.\nmx A 192.0.2.25\n"
    found = codes(audit(zone))
    assert found["spf.too_many_lookups"] is Status.FAIL  # 6 includes + 6 a + 6 mx


def test_spf_plus_all_ptr_and_syntax():
    assert codes(audit('@ TXT "v=spf1 ptr +all"\n'))["spf.all"] is Status.FAIL
    assert codes(audit('@ TXT "v=spf1 ptr ?all"\n'))["spf.ptr"] is Status.WARN
    assert codes(audit('@ TXT "v=spf1 ip5:1.2.3.4 -all"\n'))["spf.syntax"] is Status.FAIL
    assert codes(audit('@ TXT "v=spf1 -all"\n@ TXT "v=spf1 ~all"\n'))["spf.multiple"] \
        is Status.FAIL


def test_spf_evaluates_each_sending_ip():
    options = AuditOptions(connect=False, sending_ips=(ipaddress.ip_address("192.0.2.7"),
                                                       ipaddress.ip_address("198.51.100.1")))
    report = audit(GOOD_ZONE, options=options)
    by_subject = {f.subject: f.code for f in report.findings if f.family == "spf"}
    assert by_subject["192.0.2.7"] == "spf.ip_pass"
    assert by_subject["198.51.100.1"] == "spf.ip_not_pass"


def test_parse_terms_strips_cidr_of_a_and_mx():
    terms = parse_terms("v=spf1 a/24 mx:example.net/26 redirect=_spf.example.org")
    assert [(t.name, t.value) for t in terms] == [("a", ""), ("mx", "example.net"),
                                                   ("redirect", "_spf.example.org")]


def test_dkim_short_key_and_testing_flag():
    zone = GOOD_ZONE + f'old._domainkey TXT "v=DKIM1; k=rsa; t=y; p={rsa_public_b64(1024)}"\n'
    report = audit(zone, options=AuditOptions(connect=False, selectors=("old", "none")))
    found = codes(report)
    assert found["dkim.key_short"] is Status.WARN
    assert found["dkim.testing"] is Status.WARN
    assert found["dkim.missing"] is Status.FAIL


def test_dmarc_found_by_tree_walk_and_weak_policy_warned():
    zone = GOOD_ZONE.replace("p=reject", "p=none; pct=50")
    resolver = InMemoryResolver.from_zones({DOMAIN: zone, "2.0.192.in-addr.arpa": REVERSE})
    report = run_audit(AuditContext("sub.example.org", resolver, Settings(),
                                    AuditOptions(connect=False)))
    found = codes(report)
    assert "inherited from example.org" in report.by_code("dmarc.record")[0].evidence
    assert found["dmarc.policy_none"] is Status.WARN
    assert found["dmarc.pct"] is Status.WARN


def test_dmarc_external_report_destination_needs_authorization():
    zone = GOOD_ZONE.replace("mailto:dmarc@example.org", "mailto:d@reports.example.net")
    found = codes(audit(zone, extra={"example.net": ""}))
    assert found["dmarc.rua_unauthorized"] is Status.FAIL
    authorized = {"example.net": 'example.org._report._dmarc.reports TXT "v=DMARC1"\n'}
    assert codes(audit(zone, extra=authorized))["dmarc.rua_external"] is Status.OK


def test_dns_failure_is_unchecked_not_a_finding():
    resolver = InMemoryResolver.from_zones({DOMAIN: GOOD_ZONE, "2.0.192.in-addr.arpa": REVERSE})
    resolver.fail("_dmarc.example.org")
    report = audit("", resolver=resolver)
    assert not any(f.family == "dmarc" for f in report.findings)
    assert [u.family for u in report.unchecked] == ["dmarc"]
    assert report.exit_status == ExitStatus.COULD_NOT_CHECK
    assert json.loads(as_json(report))["unchecked"][0]["subject"] == "_dmarc.example.org TXT"


def test_smtp_findings_from_recorded_probes():
    host = MxHost("mx.example.org", 10, (ipaddress.ip_address("192.0.2.25"),))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    plain = SmtpProbe("mx.example.org ESMTP", "other.example.org", starttls=False)
    found = {f.code for f in findings_for(host, plain, ("mx.example.org",), now, 14)}
    assert {"smtp.ehlo_mismatch", "smtp.no_starttls"} <= found
    expiring = SmtpProbe("x", "mx.example.org", True,
                         TlsInfo(True, "TLSv1.3", not_after=now + timedelta(days=3)))
    found = {f.code for f in findings_for(host, expiring, ("mx.example.org",), now, 14)}
    assert {"smtp.ehlo", "smtp.tls", "smtp.certificate_expiring"} <= found
    bad = SmtpProbe("x", "mx.example.org", True, TlsInfo(False, error="hostname mismatch"))
    assert "smtp.certificate" in {f.code for f in findings_for(host, bad, (), now, 14)}


def test_mta_sts_policy_parsing_and_mx_patterns():
    policy = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: *.example.org\r\n"
                          "max_age: 604800\r\n")
    assert (policy.mode, policy.max_age, policy.mx) == ("enforce", 604800, ("*.example.org",))
    assert mx_matches("*.example.org", "mx.example.org")
    assert not mx_matches("*.example.org", "a.mx.example.org")
    assert not mx_matches("*.example.org", "example.org")


def test_text_output_names_fix_for_failures():
    text = as_text(audit('@ TXT "v=spf1 +all"\n'))
    assert "[FAIL] example.org: +all" in text
    assert "fix: replace +all with -all" in text


def test_dnsbl_listing_of_mx_addresses_and_sending_ips():
    from mailward.audit.dnsbl import query_name

    assert query_name(ipaddress.ip_address("192.0.2.25"), "bl.example") == \
        "25.2.0.192.bl.example"
    assert query_name(ipaddress.ip_address("2001:db8::1"), "bl.example").startswith(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.")
    options = AuditOptions(connect=False, dnsbl_zones=("bl.example",),
                           sending_ips=(ipaddress.ip_address("198.51.100.1"),))
    bl = ('25.2.0.192 A 127.0.0.2\n25.2.0.192 TXT "listed for spam"\n'
          "1.100.51.198 A 127.255.255.254\n")
    report = audit(GOOD_ZONE, options=options, extra={"bl.example": bl})
    (listed,) = report.by_code("dnsbl.listed")
    assert listed.subject == "192.0.2.25 on bl.example"
    assert "listed for spam" in listed.evidence
    # 127.255.255.254: the list refused the query, which says nothing about the address.
    assert [u.family for u in report.unchecked] == ["dnsbl"]


def test_unreachable_servers_are_unchecked_and_the_rest_goes_on():
    from tests.harness.process import free_port

    port = free_port()  # nothing listens there: connection refused, for SMTP and HTTPS
    zone = GOOD_ZONE.replace("mx           A   192.0.2.25", "mx A 127.0.0.1\nmta-sts A 127.0.0.1")
    zone += '_mta-sts TXT "v=STSv1; id=1"\n'
    options = AuditOptions(smtp_port=port, https_port=port, timeout=2.0)
    report = audit(zone, options=options, extra={"0.0.127.in-addr.arpa": "1 PTR mx.example.org.\n"})
    assert [(u.family, u.subject) for u in report.unchecked] == [
        ("smtp", f"mx.example.org port {port}"),
        ("transport", "https://mta-sts.example.org/.well-known/mta-sts.txt"),
    ]
    assert codes(report)["transport.tlsrpt"] is Status.OK  # checked after the failed fetch
    assert report.exit_status == ExitStatus.COULD_NOT_CHECK
