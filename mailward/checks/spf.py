"""SPF (RFC 7208): is this client allowed to send for the MAIL FROM or HELO domain?

pyspf evaluates the policy (record parsing, macros, mechanisms, the processing
limits); this module owns everything around it:

* **Identities.**  `evaluate_spf` checks the MAIL FROM identity, or the HELO identity
  when the sender is null (RFC 7208 2.4); `evaluate_helo` checks the HELO identity on
  its own (RFC 7208 2.3).  Both take plain values, so the milter (through `SpfCheck`)
  and the policy service at RCPT time share one code path.
* **DNS.**  Every lookup goes through our `Resolver`, via a subclass of `spf.query`
  that overrides its DNS method.  Nothing in pyspf's module is changed, so concurrent
  evaluations with different resolvers cannot see each other, and caching, timeouts
  and metrics are the resolver's.  Timeouts and SERVFAIL become `temperror`;
  NXDOMAIN and NODATA are empty answers that count as void lookups (RFC 7208 4.6.4).
* **Results are data.**  An evaluation returns an `SpfOutcome`; `auth_result` turns it
  into an A-R result and `received_spf` into a Received-SPF value (RFC 7208 9.1).

Expected failures (DNS errors, malformed records or domains, non-ASCII input, any
client address) end in one of the seven RFC results.  An exception that escapes here
is a bug; it is deliberately not caught, so that the pipeline logs and counts it.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import dns.exception
import dns.name
import spf

from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.dns import DnsAnswer, Outcome, Resolver
from mailward.model import (
    AuthProperty,
    AuthResult,
    Connection,
    HeaderEdit,
    InsertHeader,
    IPAddress,
    strip_angle_brackets,
    unmapped,
)

METHOD = "spf"
RECEIVED_SPF = "Received-SPF"


class SpfResult(StrEnum):
    """The seven results of check_host() (RFC 7208 2.6)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


class SpfIdentity(StrEnum):
    """Which identity was checked; also the Received-SPF `identity` key."""

    MAILFROM = "mailfrom"
    HELO = "helo"


_MAX_NESTING = 20  # pyspf's MAX_RECURSION


@dataclass(frozen=True)
class SpfLimits:
    """Processing limits.  The defaults are RFC 7208 4.6.4's; tests may lower them.

    `max_record_length` guards against absurd TXT data: an SPF record longer than this
    is a permerror instead of being parsed.  `max_seconds` bounds one evaluation's
    total DNS time (RFC 7208 4.6.4 suggests at least 20 s); past it the result is
    `temperror`, because waiting longer might still give an answer.
    """

    dns_mechanisms: int = 10
    void_lookups: int = 2
    max_record_length: int = 4096
    max_seconds: float = 20.0

    def __post_init__(self) -> None:
        # pyspf asserts (a bug, not a result) past 20 nested includes; the lookup limit
        # is what keeps nesting below that, so it may not be raised beyond it.
        if not 1 <= self.dns_mechanisms <= _MAX_NESTING:
            raise ValueError(f"dns_mechanisms must be 1..{_MAX_NESTING}")
        if self.void_lookups < 0 or self.max_record_length < 1 or self.max_seconds < 0:
            raise ValueError("SPF limits must not be negative")


DEFAULT_LIMITS = SpfLimits()

# Explanations come from the sender's domain; keep what we store and show bounded.
_MAX_EXPLANATION = 512


@dataclass(frozen=True)
class SpfOutcome:
    """One check_host() evaluation and what is needed to report it.

    `sender` is check_host()'s <sender>: the MAIL FROM address (local-part defaulted to
    `postmaster`) or `postmaster@<HELO>`.  `domain` is the domain whose policy was
    evaluated, in A-label form; it is "" when there was no usable domain.
    `explanation` is the domain's own `exp=` text, for `fail` only ("" if it gave none).
    `problem` says why the result is permerror, temperror or a `none` that came
    from an unusable identity.  `mechanism` is the top-level mechanism that matched.
    """

    result: SpfResult
    identity: SpfIdentity
    domain: str
    sender: str
    client_ip: IPAddress
    helo: str
    explanation: str = ""
    problem: str = ""
    mechanism: str = ""


# --------------------------------------------------------------------------- evaluation


def evaluate_spf(
    resolver: Resolver,
    client_ip: IPAddress | str,
    helo: str | None,
    mail_from: str | None,
    *,
    receiver: str | None = None,
    limits: SpfLimits = DEFAULT_LIMITS,
) -> SpfOutcome:
    """The SPF result for MAIL FROM, or for HELO when the sender is null (RFC 7208 2.4).

    `mail_from` may carry angle brackets; `<>`, "" and None are the null sender.  A
    string `client_ip` that is not an address raises ValueError: adapters hand us what
    the MTA reported, and a garbled address is their bug, not the sender's.
    """
    address = normalise_client_ip(client_ip)
    sender = strip_angle_brackets(mail_from or "")
    if not sender:
        return evaluate_helo(resolver, address, helo, receiver=receiver, limits=limits)
    local, at, domain = sender.rpartition("@")
    if not at:
        # A bare domain (or <postmaster>): treat it as the domain, as pyspf does.
        local, domain = "", sender
    return _check_host(
        resolver,
        address,
        domain,
        local or "postmaster",
        helo or "",
        SpfIdentity.MAILFROM,
        receiver=receiver,
        limits=limits,
    )


def evaluate_helo(
    resolver: Resolver,
    client_ip: IPAddress | str,
    helo: str | None,
    *,
    receiver: str | None = None,
    limits: SpfLimits = DEFAULT_LIMITS,
) -> SpfOutcome:
    """The SPF result for the HELO identity, with <sender> `postmaster@HELO` (RFC 7208 2.3).

    A missing HELO, an address literal or a name that is not a multi-label domain
    gives `none` without any DNS lookup (RFC 7208 4.3).
    """
    address = normalise_client_ip(client_ip)
    name = (helo or "").strip()
    return _check_host(
        resolver, address, name, "postmaster", name, SpfIdentity.HELO,
        receiver=receiver, limits=limits,
    )


def normalise_client_ip(client_ip: IPAddress | str) -> IPAddress:
    """The address SPF must evaluate: IPv4-mapped IPv6 (::ffff:a.b.c.d) is IPv4.

    A dual-stack MTA reports IPv4 clients in mapped form; RFC 7208 5 evaluates them
    as IPv4, so `ip4:` mechanisms and `A` lookups apply.
    """
    address = ipaddress.ip_address(client_ip) if isinstance(client_ip, str) else client_ip
    return unmapped(address)


def _check_host(
    resolver: Resolver,
    client_ip: IPAddress,
    domain: str,
    local: str,
    helo: str,
    identity: SpfIdentity,
    *,
    receiver: str | None,
    limits: SpfLimits,
) -> SpfOutcome:
    """check_host(<ip>, <domain>, <sender>) for one identity, through pyspf."""
    ascii_domain = lookup_domain(domain)
    if ascii_domain is None:
        return SpfOutcome(
            SpfResult.NONE, identity, "", f"{local}@{domain}", client_ip, helo,
            problem="no valid domain to check" if domain else "no domain to check",
        )
    query = _ResolverQuery(
        resolver, limits, client_ip=client_ip, local=local, domain=ascii_domain,
        helo=helo, receiver=receiver,
    )
    result_text, _code, text = query.check()
    result = SpfResult(result_text)
    return SpfOutcome(
        result=result,
        identity=identity,
        domain=ascii_domain,
        sender=f"{local}@{ascii_domain}",
        client_ip=client_ip,
        helo=helo,
        explanation=_clean_text(text) if result is SpfResult.FAIL else "",
        problem=query.problem() if result in _ERRORS else "",
        mechanism=query.matched_mechanism() if result not in _ERRORS else "",
    )


_ERRORS = frozenset({SpfResult.PERMERROR, SpfResult.TEMPERROR})

# A label of letters, digits, hyphens and underscores (some real mail domains have
# them).  Deliberately lenient: anything DNS could hold under a host name may be tried.
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def lookup_domain(domain: str) -> str | None:
    """The domain as check_host() may query it, or None if it is not a usable domain.

    RFC 7208 4.3: a malformed domain (empty or over-long label, over 253 octets) or one
    that is not multi-label gives `none`.  Address literals (`[192.0.2.1]`) and
    all-numeric top labels (a bare IP as HELO) are not domains either.  Internationalised
    names are converted to A-labels, as RFC 8616 asks.
    """
    name = domain.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name or name.startswith("["):
        return None
    if not name.isascii():
        try:
            name = dns.name.from_unicode(name).to_text(omit_final_dot=True)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or labels[-1].isdigit():
        return None
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return name.lower()


def _clean_text(text: str) -> str:
    """Text from DNS fit for a header or SMTP reply: no control characters, bounded."""
    return _printable(text)[:_MAX_EXPLANATION]


# Control characters (C0 and DEL) become spaces: header text must stay one line.
_CONTROLS_TO_SPACE = {code: " " for code in (*range(32), 127)}


def _printable(text: str) -> str:
    return text.translate(_CONTROLS_TO_SPACE)


# --------------------------------------------------------------------------- pyspf hook


class _ResolverQuery(spf.query):  # type: ignore[misc]
    """A pyspf query whose DNS goes through our Resolver; one object per evaluation.

    pyspf calls `self.dns(name, qtype)` for every lookup it makes (the SPF record,
    includes, a/mx/ptr/exists targets, explanations), so overriding that method is the
    whole hook.  It also counts void lookups; `check_lookups` is overridden so both
    limits come from `SpfLimits` instead of pyspf's module constants.  pyspf's own
    per-query cache lived inside the replaced method and is not used: the resolver
    caches, with TTLs.
    """

    def __init__(
        self,
        resolver: Resolver,
        limits: SpfLimits,
        *,
        client_ip: IPAddress,
        local: str,
        domain: str,
        helo: str,
        receiver: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            i=client_ip, s=f"{local}@{domain}", h=helo, receiver=receiver, strict=True,
        )
        # pyspf splits the sender at the first "@"; a quoted local-part may hold one.
        self.l, self.o, self.d = local, domain, domain
        # An empty default explanation: the outcome then shows only the domain's own.
        self.set_default_explanation("")
        self._resolver = resolver
        self._limits = limits
        self._clock = clock
        self._started = clock()

    def set_ip(self, i: IPAddress | str) -> None:
        """pyspf's set_ip for the address object we already hold.

        pyspf parses the client address from its text for every query; ours is parsed
        (and unmapped, see `normalise_client_ip`) once per connection, so the same
        attributes are set from it directly: `c` (presentation form), `i` (the %{i}
        macro: dotted nibbles for IPv6), `A`, `v` and `cidrmax`.
        """
        if isinstance(i, str):
            super().set_ip(i)
            return
        address = unmapped(i)
        self.iplist = False
        self.ipaddr = address
        self.c = str(address)
        if address.version == 6:
            self.A, self.v, self.cidrmax = "AAAA", "ip6", 128
            self.i = ".".join(address.exploded.replace(":", "").upper())
        else:
            self.A, self.v, self.cidrmax = "A", "in-addr", 32
            self.i = address.exploded

    def dns(
        self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False
    ) -> list[Any]:
        """Answer pyspf's lookup from our resolver, in the shapes pyspf expects.

        Names that cannot be queried (empty, or with an empty or over-long label) are a
        no-match without a query and do not count as void, as in pyspf's own method;
        so is an INVALID_NAME answer.  The resolver follows CNAMEs, so pyspf's CNAME
        handling is not needed.  (pyspf asks for type SPF only in its "harsh" mode,
        which we never use; RFC 7208 3.1 retired that type.)
        """
        name = str(name)
        if name.endswith("."):
            name = name[:-1]
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []
        self._check_time()
        answer = self._resolver.query(name, qtype)
        if answer.outcome is Outcome.TEMPERROR:
            raise spf.TempError(f"DNS error for {name}/{qtype}: {answer.error or 'no answer'}")
        if answer.outcome is Outcome.INVALID_NAME:
            return []
        records = _pyspf_records(answer, qtype) if answer.ok else []
        if not records and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > self._limits.void_lookups:
                raise spf.PermError(
                    f"Void lookup limit of {self._limits.void_lookups} exceeded", name
                )
        return records

    def check_lookups(self) -> None:
        """Count a DNS-querying mechanism or redirect; over the limit is permerror."""
        self.lookups += 1
        if self.lookups > self._limits.dns_mechanisms:
            raise spf.PermError(f"Too many DNS lookups (limit {self._limits.dns_mechanisms})")

    def dns_spf(self, domain: str) -> str | None:
        """The domain's SPF record; an absurdly long one is a permerror, not parsed."""
        record: str | None = super().dns_spf(domain)
        if record is not None and len(record) > self._limits.max_record_length:
            raise spf.PermError(
                f"SPF record longer than {self._limits.max_record_length} characters", domain
            )
        return record

    def _check_time(self) -> None:
        elapsed = self._clock() - self._started
        if elapsed >= self._limits.max_seconds:
            raise spf.TempError(f"SPF evaluation exceeded {self._limits.max_seconds:g} seconds")

    def problem(self) -> str:
        """Why the evaluation ended in permerror or temperror, with the term at fault."""
        problem = str(getattr(self, "prob", "") or "")
        terms: list[str] = [str(term) for term in getattr(self, "mech", []) or []]
        if terms:
            problem = f"{problem}: {terms[-1]}" if problem else terms[-1]
        return _clean_text(problem)

    def matched_mechanism(self) -> str:
        mechanism = getattr(self, "mechanism", None)
        return _clean_text(str(mechanism)) if mechanism else ""


def _pyspf_records(answer: DnsAnswer, qtype: str) -> list[Any]:
    """Our answer in pyspf's shapes: TXT as lists of byte strings, MX as (pref, name)."""
    if qtype in ("TXT", "SPF"):
        # A TXT record has at least one string on the wire; keep pyspf safe if not.
        return [list(strings) or [b""] for strings in answer.txt_strings]
    if qtype == "MX":
        return [_mx(record) for record in answer.records]
    return list(answer.records)


def _mx(record: str) -> tuple[int, str]:
    preference, _, exchange = record.partition(" ")
    # A null MX (RFC 7505) has exchange "." and so no name: pyspf looks nothing up.
    return int(preference), exchange.strip().rstrip(".")


# --------------------------------------------------------------------------- reporting


def auth_result(outcome: SpfOutcome) -> AuthResult:
    """The A-R result for one outcome (RFC 8601 2.7.2).

    MAIL FROM results carry `smtp.mailfrom` (the address checked), HELO results
    `smtp.helo`.  The reason is the domain's explanation for fail, and the problem for
    permerror and temperror.
    """
    if outcome.identity is SpfIdentity.MAILFROM:
        prop = AuthProperty("smtp", "mailfrom", outcome.sender)
    else:
        prop = AuthProperty("smtp", "helo", outcome.helo)
    properties = (prop,) if prop.value else ()
    return AuthResult(METHOD, outcome.result.value, _reason(outcome), properties)


def _reason(outcome: SpfOutcome) -> str | None:
    if outcome.result is SpfResult.FAIL:
        return outcome.explanation or None
    if outcome.result in _ERRORS:
        return outcome.problem or outcome.result.value
    return None


def received_spf(outcome: SpfOutcome, receiver: str) -> str:
    """The value of a Received-SPF header field for `outcome` (RFC 7208 9.1).

    Result, a comment saying who decided what, then the key-value pairs.  Values that
    are not dot-atoms are quoted; nothing the client sent can add a line break.
    Returned folded with LF + TAB, as our other header values are.
    """
    comment = f"{receiver}: {_comment(outcome)}"
    pairs = [("client-ip", str(outcome.client_ip))]
    if outcome.identity is SpfIdentity.MAILFROM:
        pairs.append(("envelope-from", outcome.sender))
    if outcome.helo:
        pairs.append(("helo", outcome.helo))
    pairs.append(("receiver", receiver))
    if outcome.problem and outcome.result in _ERRORS:
        pairs.append(("problem", outcome.problem))
    if outcome.mechanism:
        pairs.append(("mechanism", outcome.mechanism))
    pairs.append(("identity", outcome.identity.value))
    # The comment may be folded between its words (RFC 5322 allows FWS in comments).
    words = [outcome.result.value, *f"({_comment_text(comment)})".split()]
    words.extend(f"{key}={_kv_value(value)};" for key, value in pairs)
    words[-1] = words[-1].rstrip(";")
    return _fold(words)


def _comment(outcome: SpfOutcome) -> str:
    ip, sender, domain = outcome.client_ip, outcome.sender, outcome.domain or outcome.sender
    match outcome.result:
        case SpfResult.PASS:
            return f"domain of {sender} designates {ip} as permitted sender"
        case SpfResult.FAIL:
            return f"domain of {sender} does not designate {ip} as permitted sender"
        case SpfResult.SOFTFAIL:
            return f"domain of transitioning {sender} does not designate {ip} as permitted sender"
        case SpfResult.NEUTRAL:
            return f"{ip} is neither permitted nor denied by domain of {sender}"
        case SpfResult.NONE:
            return f"domain of {sender} does not designate permitted sender hosts"
        case SpfResult.PERMERROR:
            return f"permanent error in processing domain of {domain}"
        case SpfResult.TEMPERROR:
            return f"temporary error in processing during lookup of {domain}"


# RFC 5322 atext plus "." between atoms: such a value needs no quotes.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _kv_value(value: str) -> str:
    value = _printable(value)
    if _DOT_ATOM.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment_text(text: str) -> str:
    text = _printable(text)
    return re.sub(r"([()\\])", r"\\\1", text)


def _fold(words: Sequence[str], width: int = 78) -> str:
    """Join words, folding before a word that would take a line past `width`.

    The first line starts after the field name ("Received-SPF: "), so that is counted.
    """
    lines: list[str] = []
    line = ""
    offset = len(RECEIVED_SPF) + 2
    for word in words:
        if line and offset + len(line) + 1 + len(word) > width:
            lines.append(line)
            line, offset = word, 1  # continuation lines start with a TAB
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n\t".join(lines)


# --------------------------------------------------------------------------- the check


class SpfCheck:
    """The SPF inbound check: MAIL FROM (or HELO for a null sender), optionally HELO.

    `receiver` is our host name (the authserv-id): it expands the %{r} macro in
    explanations and names us in Received-SPF.  `check_helo` adds the HELO identity
    when the sender is not null (for a null sender HELO is the only identity).
    """

    method = METHOD

    def __init__(
        self,
        resolver: Resolver,
        *,
        check_helo: bool = True,
        receiver: str | None = None,
        limits: SpfLimits = DEFAULT_LIMITS,
    ) -> None:
        self._resolver = resolver
        self._check_helo = check_helo
        self._receiver = receiver
        self._limits = limits

    def evaluate(
        self, client_ip: IPAddress | str, helo: str | None, mail_from: str | None
    ) -> tuple[SpfOutcome, ...]:
        """Every identity this check covers, the MAIL FROM (or null-sender HELO) first."""
        first = evaluate_spf(
            self._resolver, client_ip, helo, mail_from,
            receiver=self._receiver, limits=self._limits,
        )
        if not self._check_helo or first.identity is SpfIdentity.HELO or not helo:
            return (first,)
        second = evaluate_helo(
            self._resolver, client_ip, helo, receiver=self._receiver, limits=self._limits
        )
        return (first, second)


# --------------------------------------------------------------------------- the inbound check

#: Every identity checked, the MAIL FROM (or a null sender's HELO) first.
RESULT: ResultKey[tuple[SpfOutcome, ...]] = ResultKey("spf")


def dmarc_identity(outcomes: Sequence[SpfOutcome] | None) -> SpfOutcome | None:
    """The outcome DMARC reads: MAIL FROM's (HELO's for a null sender), never the
    separate HELO check."""
    return outcomes[0] if outcomes else None


class InboundSpf(Check[tuple[SpfOutcome, ...]]):
    """SPF on the inbound path; adds Received-SPF when `[spf] received_spf` is on."""

    name = "spf"
    produces = RESULT
    auth_methods = (METHOD,)

    def __init__(self, check: SpfCheck, *, received_spf: bool) -> None:
        self._check = check
        self._received_spf = received_spf

    def applies(self, check_input: CheckInput) -> bool:
        return check_input.connection.client_ip is not None

    def evaluate(self, check_input: CheckInput) -> tuple[SpfOutcome, ...]:
        connection = check_input.connection
        assert connection.client_ip is not None  # applies() said so
        return self._check.evaluate(
            connection.client_ip, connection.helo, check_input.transaction.mail_from)

    def auth_results(
        self, result: tuple[SpfOutcome, ...], connection: Connection
    ) -> Sequence[AuthResult]:
        return tuple(auth_result(outcome) for outcome in result)

    def symbols(self, result: tuple[SpfOutcome, ...]) -> Sequence[Symbol]:
        return tuple(
            Symbol(f"SPF_{'HELO_' if outcome.identity is SpfIdentity.HELO else ''}"
                   f"{outcome.result.value.upper()}", outcome.domain)
            for outcome in result
        )

    def header_edits(
        self, result: tuple[SpfOutcome, ...], authserv_id: str
    ) -> Sequence[HeaderEdit]:
        if not self._received_spf or not result:
            return ()
        return (InsertHeader(RECEIVED_SPF, received_spf(result[0], authserv_id)),)

    def metric_result(self, result: tuple[SpfOutcome, ...]) -> str:
        return result[0].result.value if result else "none"


def _build(context: BuildContext[None]) -> InboundSpf | None:
    settings = context.settings
    if not settings.spf.enabled:
        return None
    check = SpfCheck(context.resolver, check_helo=settings.spf.helo,
                     receiver=settings.general.authserv_id)
    return InboundSpf(check, received_spf=settings.spf.received_spf)


SPEC: CheckSpec[None] = CheckSpec("spf", _build)
