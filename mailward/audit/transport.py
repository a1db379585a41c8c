"""Transport security records: MTA-STS (RFC 8461), TLS-RPT (RFC 8460), DANE TLSA (RFC 7672).

The MTA-STS policy is fetched over HTTPS from `mta-sts.<domain>` (its address from our
resolver, its certificate verified for that name) and its `mx:` patterns are matched
against the MX hosts found earlier.  DANE records are reported with the resolver's AD
bit: we do not validate DNSSEC ourselves.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from mailward.audit.context import AuditContext
from mailward.audit.findings import Finding, Status, Unchecked
from mailward.audit.probe import ProbeError, https_get
from mailward.dns import Outcome

FAMILY = "transport"
POLICY_PATH = "/.well-known/mta-sts.txt"
MIN_MAX_AGE = 86400  # RFC 8461 3.2 recommends weeks; under a day defeats caching


def _finding(code: str, status: Status, subject: str, evidence: str, fix: str = "") -> Finding:
    return Finding(FAMILY, f"transport.{code}", status, subject, evidence, fix)


@dataclass(frozen=True)
class StsPolicy:
    version: str = ""
    mode: str = ""
    max_age: int | None = None
    mx: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())


def parse_policy(text: str) -> StsPolicy:
    """RFC 8461 3.2 key: value lines (CRLF or LF); unknown keys ignored."""
    values: dict[str, str] = {}
    mx: list[str] = []
    problems: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            problems.append(f"not a key: value line: {line[:60]!r}")
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            values.setdefault(key, value)
    max_age: int | None = None
    if values.get("max_age", "").isdigit():
        max_age = int(values["max_age"])
    elif "max_age" in values:
        problems.append(f"max_age {values['max_age']!r} is not a number")
    return StsPolicy(values.get("version", ""), values.get("mode", "").lower(), max_age,
                     tuple(mx), tuple(problems))


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: a leading `*.` matches exactly one label."""
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def audit(context: AuditContext) -> Iterator[Finding | Unchecked]:
    sts = yield from _audit_mta_sts(context)
    yield from _audit_tlsrpt(context, sts)
    yield from _audit_dane(context)


def _audit_mta_sts(context: AuditContext) -> Generator[Finding | Unchecked, None, bool]:
    domain = context.domain
    name = f"_mta-sts.{domain}"
    records = context.txt_records(name, "v=STSv1") or ()
    if not records:
        yield _finding("no_mta_sts", Status.INFO, name,
                       "no MTA-STS record: senders fall back to opportunistic TLS",
                       "publish an MTA-STS policy (RFC 8461) once TLS works on every MX")
        return False
    if len(records) > 1:
        yield _finding("mta_sts_multiple", Status.FAIL, name, f"{len(records)} STSv1 records",
                       "keep exactly one")
        return True
    if "id=" not in records[0].replace(" ", ""):
        yield _finding("mta_sts_no_id", Status.FAIL, name, f"{records[0]!r} has no id=",
                       "add id=<date-serial> and change it with every policy change")
    if not context.options.connect:
        yield _finding("mta_sts_record", Status.OK, name, records[0])
        return True
    yield from _audit_policy(context)
    return True


def _audit_policy(context: AuditContext) -> Iterator[Finding | Unchecked]:
    host = f"mta-sts.{context.domain}"
    addresses = context.addresses(host)
    url = f"https://{host}{POLICY_PATH}"
    if not addresses:
        yield _finding("mta_sts_no_host", Status.FAIL, url, f"{host} has no address",
                       f"publish {host} and serve the policy there over HTTPS")
        return
    options = context.options
    try:
        result = https_get(str(addresses[0]), options.https_port, host, POLICY_PATH,
                           options.timeout, options.ca_file)
    except ProbeError as exc:
        # The policy only: TLS-RPT and DANE are still checked.
        yield Unchecked(FAMILY, url, str(exc))
        return
    if not result.tls.verified:
        yield _finding("mta_sts_certificate", Status.FAIL, url,
                       f"certificate not valid for {host}: {result.tls.error}",
                       f"serve the policy with a certificate for {host}")
        return
    if result.status != 200:
        yield _finding("mta_sts_http", Status.FAIL, url, f"HTTP {result.status}",
                       f"serve the policy at {url} with status 200")
        return
    policy = parse_policy(result.body)
    for problem in policy.problems:
        yield _finding("mta_sts_syntax", Status.WARN, url, problem, "fix the policy file")
    if policy.version != "STSv1" or policy.mode not in ("enforce", "testing", "none"):
        yield _finding("mta_sts_invalid", Status.FAIL, url,
                       f"version={policy.version!r} mode={policy.mode!r}",
                       "the policy needs `version: STSv1` and mode enforce|testing|none")
        return
    mode_status = {"enforce": Status.OK, "testing": Status.WARN, "none": Status.INFO}
    yield _finding("mta_sts_mode", mode_status[policy.mode], url, f"mode: {policy.mode}",
                   "" if policy.mode == "enforce" else "switch to mode: enforce once TLS-RPT "
                   "reports are clean")
    if policy.max_age is None or policy.max_age < MIN_MAX_AGE:
        yield _finding("mta_sts_max_age", Status.WARN, url, f"max_age: {policy.max_age}",
                       "use max_age of at least 86400 (weeks is usual: 1209600)")
    for mx_host in context.mx_hosts:
        if any(mx_matches(pattern, mx_host.name) for pattern in policy.mx):
            yield _finding("mta_sts_mx", Status.OK, mx_host.name, "covered by the policy's mx:")
        else:
            yield _finding("mta_sts_mx_uncovered", Status.FAIL, mx_host.name,
                           f"not matched by the policy's mx: {', '.join(policy.mx) or '(none)'}",
                           f"add `mx: {mx_host.name}` to the policy (and change the id=)")


def _audit_tlsrpt(context: AuditContext, has_sts: bool) -> Iterator[Finding]:
    name = f"_smtp._tls.{context.domain}"
    records = context.txt_records(name, "v=TLSRPTv1") or ()
    if not records:
        yield _finding("no_tlsrpt", Status.WARN if has_sts else Status.INFO, name,
                       "no TLS-RPT record: you hear nothing of senders' TLS failures",
                       f"publish `{name}. TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@{context.domain}\"`")
    elif "rua=" not in records[0]:
        yield _finding("tlsrpt_no_rua", Status.FAIL, name, f"{records[0]!r} has no rua=",
                       "add rua=mailto:...")
    else:
        yield _finding("tlsrpt", Status.OK, name, records[0])


def _audit_dane(context: AuditContext) -> Iterator[Finding]:
    from mailward.audit.dnssec import authenticated

    for host in context.mx_hosts:
        name = f"_25._tcp.{host.name}"
        answer = context.query(name, "TLSA")
        if answer.outcome is not Outcome.ANSWER:
            continue
        ad = authenticated(context.settings.dns, name, "TLSA")
        state = {True: "AD bit set by the resolver", False: "resolver did not set AD "
                 "(not DNSSEC-validated: senders ignore these TLSA records)",
                 None: "AD bit unknown"}[ad]
        yield _finding("dane", Status.OK if ad else Status.WARN, name,
                       f"{len(answer.records)} TLSA record(s): {state}",
                       "" if ad else "sign the zone with DNSSEC, or remove the TLSA records")
