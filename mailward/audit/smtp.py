"""Each MX host on port 25: banner, EHLO name vs PTR, STARTTLS, certificate, TLS version.

Only the first address of each host is probed (the others are the same server in
nearly every setup, and the audit should stay short).  A server that cannot be reached
is "could not check", not a failure: the network between us and it may be the problem.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

from mailward.audit.context import AuditContext, MxHost
from mailward.audit.findings import Finding, Status, Unchecked
from mailward.audit.probe import ProbeError, SmtpProbe, probe_smtp

FAMILY = "smtp"


def _finding(code: str, status: Status, subject: str, evidence: str, fix: str = "") -> Finding:
    return Finding(FAMILY, f"smtp.{code}", status, subject, evidence, fix)


def audit(context: AuditContext) -> Iterator[Finding | Unchecked]:
    if not context.options.connect:
        return
    options = context.options
    for host in context.mx_hosts:
        address = host.addresses[0]
        try:
            probe = probe_smtp(str(address), options.smtp_port, host.name, options.ehlo_name,
                               options.timeout, options.ca_file)
        except ProbeError as exc:
            # This host only: the next MX may answer.
            yield Unchecked(FAMILY, f"{host.name} port {options.smtp_port}", str(exc))
            continue
        now = datetime.fromtimestamp(context.clock() if context.clock else time.time(), UTC)
        yield from findings_for(host, probe, context.ptr_names.get(address, ()), now,
                                options.expiry_warning_days)


def findings_for(host: MxHost, probe: SmtpProbe, ptr_names: tuple[str, ...], now: datetime,
                 warning_days: int) -> Iterator[Finding]:
    """The findings for one probed server (pure: tested with recorded probes)."""
    subject = host.name
    yield _finding("banner", Status.OK, subject, f"220 {probe.banner}")
    ehlo = probe.ehlo_name.lower().rstrip(".")
    if ptr_names and ehlo not in ptr_names:
        yield _finding("ehlo_mismatch", Status.WARN, subject,
                       f"EHLO name {probe.ehlo_name} is not the PTR name {', '.join(ptr_names)}",
                       "set myhostname (Postfix) to the name the address's PTR gives")
    elif ptr_names:
        yield _finding("ehlo", Status.OK, subject, f"EHLO name {probe.ehlo_name} matches the PTR")
    if not probe.starttls:
        yield _finding("no_starttls", Status.FAIL, subject,
                       "STARTTLS not offered: mail to this host travels in clear text",
                       "set smtpd_tls_security_level = may with a certificate for "
                       f"{host.name}")
        return
    tls = probe.tls
    if tls is None or not tls.verified:
        error = tls.error if tls is not None else "no handshake"
        yield _finding("certificate", Status.FAIL, subject,
                       f"STARTTLS offered, certificate not valid for {host.name}: {error}",
                       f"install a certificate for {host.name} from a public CA")
        return
    yield _finding("tls", Status.OK, subject, f"STARTTLS with {tls.version}, certificate valid "
                   f"for {host.name}")
    if tls.version in ("TLSv1", "TLSv1.1"):
        yield _finding("tls_old", Status.WARN, subject, f"{tls.version} negotiated",
                       "allow TLS 1.2 and 1.3 (smtpd_tls_protocols)")
    if tls.not_after is not None:
        days = (tls.not_after - now).total_seconds() / 86400
        if days < warning_days:
            yield _finding("certificate_expiring", Status.WARN, subject,
                           f"certificate expires {tls.not_after:%Y-%m-%d} ({days:.0f} days)",
                           "renew the certificate (and make renewal automatic)")
