"""SPF: one record, its syntax, and the RFC 7208 4.6.4 limits counted the way RFC 7208
counts them.

The 10-lookup limit counts the terms that cause DNS queries: `include`, `a`, `mx`,
`ptr`, `exists` and `redirect`, across the whole evaluation (includes and redirects
recursively).  `mx` is one lookup for the MX query; the address lookups of its (at most
10) MX hosts do not add to the ten, but each of them that finds nothing is a void lookup.
The void-lookup limit (2) counts queries of those terms that return NXDOMAIN or no
answer.  Domain specs with macros (`%{i}`) depend on the sender and cannot be counted
ahead of time: they are reported, not guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from mailward.audit.context import AuditContext
from mailward.audit.findings import Finding, Status
from mailward.audit.mx import parse_mx
from mailward.dns import Outcome

FAMILY = "spf"
LOOKUP_LIMIT = 10
VOID_LIMIT = 2
MX_ADDRESS_LIMIT = 10
_MAX_DEPTH = 10

_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_LOOKUP_TERMS = {"include", "a", "mx", "ptr", "exists"}
_TERM = re.compile(r"^([+?~-]?)([a-z0-9][a-z0-9._-]*)(?:([:=/])(.*))?$", re.IGNORECASE)


def _finding(code: str, status: Status, subject: str, evidence: str, fix: str = "") -> Finding:
    return Finding(FAMILY, f"spf.{code}", status, subject, evidence, fix)


def is_spf_record(text: str) -> bool:
    lowered = text.lower()
    return lowered == "v=spf1" or lowered.startswith("v=spf1 ")


@dataclass(frozen=True)
class Term:
    qualifier: str  # "+", "-", "~", "?" (a modifier has "")
    name: str  # lower-case mechanism or modifier name
    value: str  # the domain-spec / address / "" (for `a` and `mx`, without the cidr part)
    modifier: bool = False


class SpfSyntaxError(ValueError):
    pass


def parse_terms(record: str) -> tuple[Term, ...]:
    """The terms after `v=spf1`; raises SpfSyntaxError naming the first bad one."""
    terms: list[Term] = []
    for text in record.split()[1:]:
        match = _TERM.match(text)
        if match is None:
            raise SpfSyntaxError(f"unparseable term {text!r}")
        qualifier, name, separator, value = match.groups()
        name = name.lower()
        value = value or ""
        if separator == "=":
            if qualifier:
                raise SpfSyntaxError(f"modifier {text!r} cannot have a qualifier")
            terms.append(Term("", name, value, modifier=True))
            continue
        if name not in _MECHANISMS:
            raise SpfSyntaxError(f"unknown mechanism {text!r}")
        if separator == "/":
            value = ""  # `a/24`, `mx/24`: the current domain with a prefix length
        elif name in ("a", "mx") and "/" in value:
            value = value.split("/", 1)[0]
        if name in ("include", "exists", "ip4", "ip6") and not value:
            raise SpfSyntaxError(f"{name} needs a value: {text!r}")
        if name == "all" and separator:
            raise SpfSyntaxError(f"all takes no value: {text!r}")
        terms.append(Term(qualifier or "+", name, value))
    names = [term.name for term in terms if term.modifier]
    for once in ("redirect", "exp"):
        if names.count(once) > 1:
            raise SpfSyntaxError(f"{once}= appears more than once")
    return tuple(terms)


@dataclass
class LookupCount:
    """The running totals of one evaluation tree."""

    lookups: int = 0
    voids: int = 0
    macros: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    trail: list[str] = field(default_factory=list)


def count_lookups(context: AuditContext, domain: str, count: LookupCount, depth: int = 0,
                  record: str | None = None) -> None:
    """Add `domain`'s record's DNS-querying terms to `count`, following include/redirect."""
    if depth > _MAX_DEPTH:
        count.problems.append(f"include/redirect nesting deeper than {_MAX_DEPTH} at {domain}")
        return
    if record is None:
        records = [r for r in (context.txt_records(domain, "v=spf1") or ()) if is_spf_record(r)]
        if len(records) != 1:
            count.problems.append(f"{domain}: {len(records)} SPF records (included or "
                                  "redirected domains need exactly one)")
            return
        record = records[0]
    try:
        terms = parse_terms(record)
    except SpfSyntaxError as exc:
        count.problems.append(f"{domain}: {exc}")
        return
    redirect = next((t for t in terms if t.modifier and t.name == "redirect"), None)
    has_all = any(t.name == "all" for t in terms)
    for term in terms:
        if term.modifier or term.name not in _LOOKUP_TERMS:
            continue
        target = term.value or domain
        count.lookups += 1
        count.trail.append(f"{term.name}:{target}" if term.value else f"{term.name} ({domain})")
        if "%" in target:
            count.macros.append(f"{term.name}:{target}")
            continue
        if term.name == "include":
            count_lookups(context, target, count, depth + 1)
        elif term.name == "a":
            if not context.addresses(target):
                count.voids += 1
        elif term.name == "mx":
            _count_mx(context, target, count)
        elif term.name == "ptr":
            pass  # depends on the client's address: one lookup, voids unknown
        elif term.name == "exists" and context.query(target, "A").outcome is not Outcome.ANSWER:
            count.voids += 1
    if redirect is not None and not has_all:
        count.lookups += 1
        count.trail.append(f"redirect={redirect.value}")
        if "%" in redirect.value:
            count.macros.append(f"redirect={redirect.value}")
        else:
            count_lookups(context, redirect.value, count, depth + 1)


def _count_mx(context: AuditContext, target: str, count: LookupCount) -> None:
    answer = context.query(target, "MX")
    if answer.outcome is not Outcome.ANSWER:
        count.voids += 1
        return
    hosts = [host for _, host in (parse_mx(r) for r in answer.records) if host]
    if len(hosts) > MX_ADDRESS_LIMIT:
        count.problems.append(f"mx:{target} has {len(hosts)} MX hosts (limit "
                              f"{MX_ADDRESS_LIMIT} address lookups, RFC 7208 4.6.4)")
    for host in hosts[:MX_ADDRESS_LIMIT]:
        if not context.addresses(host):
            count.voids += 1


def audit(context: AuditContext) -> Iterator[Finding]:
    domain = context.domain
    found = context.txt_records(domain, "v=spf1")
    records = [r for r in (found or ()) if is_spf_record(r)]
    if not records:
        yield _finding("missing", Status.FAIL, domain, "no SPF record (TXT v=spf1)",
                       f"publish e.g. `{domain}. TXT \"v=spf1 mx -all\"`")
        return
    if len(records) > 1:
        yield _finding("multiple", Status.FAIL, domain,
                       f"{len(records)} SPF records: every check ends in permerror",
                       "merge them into one TXT record (RFC 7208 3.2)")
        return
    record = records[0]
    try:
        terms = parse_terms(record)
    except SpfSyntaxError as exc:
        yield _finding("syntax", Status.FAIL, domain, f"{exc} in {record!r}",
                       "fix the record: receivers treat it as permerror")
        return
    yield _finding("record", Status.OK, domain, record)
    yield from _audit_all(domain, terms)
    if any(term.name == "ptr" for term in terms):
        yield _finding("ptr", Status.WARN, domain, "uses the ptr mechanism",
                       "replace ptr with ip4/ip6 or a (RFC 7208 5.5: SHOULD NOT be used)")
    count = LookupCount()
    count_lookups(context, domain, count, record=record)
    yield from _audit_count(domain, count)
    yield from _audit_ips(context)


def _audit_all(domain: str, terms: tuple[Term, ...]) -> Iterator[Finding]:
    last = next((t for t in terms if t.name == "all"), None)
    if last is None:
        if any(t.modifier and t.name == "redirect" for t in terms):
            return
        yield _finding("no_all", Status.WARN, domain,
                       "no `all` and no redirect: unlisted senders get neutral",
                       "end the record with -all (or ~all while testing)")
        return
    verdicts = {
        "-": (Status.OK, "-all: unlisted senders fail", ""),
        "~": (Status.INFO, "~all: unlisted senders softfail (DMARC decides)",
              "use -all once every sending source is listed"),
        "?": (Status.WARN, "?all: unlisted senders are neutral, SPF protects nothing",
              "end the record with -all (or ~all)"),
        "+": (Status.FAIL, "+all: every host on the Internet may send as this domain",
              "replace +all with -all"),
    }
    status, evidence, fix = verdicts[last.qualifier]
    yield _finding("all", status, domain, evidence, fix)


def _audit_count(domain: str, count: LookupCount) -> Iterator[Finding]:
    for problem in count.problems:
        yield _finding("included_error", Status.FAIL, domain, problem,
                       "receivers get permerror from this part of the record")
    trail = ", ".join(count.trail) or "none"
    if count.lookups > LOOKUP_LIMIT:
        yield _finding("too_many_lookups", Status.FAIL, domain,
                       f"{count.lookups} DNS-querying terms (limit {LOOKUP_LIMIT}): {trail}",
                       "flatten includes into ip4/ip6, drop unused ones (permerror otherwise)")
    else:
        status = Status.WARN if count.lookups >= LOOKUP_LIMIT - 1 else Status.OK
        yield _finding("lookups", status, domain,
                       f"{count.lookups} of {LOOKUP_LIMIT} DNS lookups: {trail}",
                       "close to the limit: flatten includes" if status is Status.WARN else "")
    if count.voids > VOID_LIMIT:
        yield _finding("too_many_void_lookups", Status.FAIL, domain,
                       f"{count.voids} lookups find nothing (limit {VOID_LIMIT}, RFC 7208 4.6.4)",
                       "remove the a/mx/include/exists terms whose names do not exist")
    elif count.voids:
        yield _finding("void_lookups", Status.WARN, domain,
                       f"{count.voids} lookup(s) find nothing (limit {VOID_LIMIT})",
                       "remove terms that point at names without records")
    if count.macros:
        yield _finding("macros", Status.INFO, domain,
                       f"macros depend on the sender, not counted: {', '.join(count.macros)}")


def _audit_ips(context: AuditContext) -> Iterator[Finding]:
    from mailward.checks.spf import SpfResult, evaluate_spf

    for address in context.options.sending_ips:
        outcome = evaluate_spf(context.resolver, address, None, f"postmaster@{context.domain}")
        subject = str(address)
        if outcome.result is SpfResult.TEMPERROR:
            from mailward.audit.findings import CouldNotCheck

            raise CouldNotCheck(f"SPF for {address}", outcome.problem or "temperror")
        if outcome.result is SpfResult.PASS:
            yield _finding("ip_pass", Status.OK, subject,
                           f"SPF pass for {address} ({outcome.mechanism or 'matched'})")
        else:
            detail = f": {outcome.problem}" if outcome.problem else ""
            yield _finding("ip_not_pass", Status.FAIL, subject,
                           f"SPF {outcome.result} for {address}{detail}",
                           f"add ip4:/ip6:{address} (or the include of its provider) to the "
                           "record")
