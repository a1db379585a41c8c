"""DMARC (RFC 7489, RFC 9989): does the From domain's owner vouch for this message?

A message passes DMARC when SPF or DKIM authenticated a domain that is *aligned* with
the domain in its From header: the same domain (strict), or one with the same
Organizational Domain (relaxed).  When it does not, the From domain's policy record
says what the owner asks receivers to do: nothing, quarantine, or reject.

This module evaluates; it decides no SMTP reply.  Inputs are explicit values: the raw
From header values of the message, the SPF outcome (`SpfOutcome` or anything with
`domain` and `result`) and one entry per DKIM signature (`DkimEvidence`, or the DKIM
check's outcomes: anything with `domain` and `result`).  The output is a
`DmarcOutcome` that carries everything the enforcement step needs:

* `result`: pass, fail, none (no policy), temperror, permerror (RFC 7489 11.2);
* `requested_disposition`: what the domain asks for this message (none / quarantine /
  reject) after `pct` sampling, `t=y` testing mode and our `reject_downgrade` option;
* `rests_on_temperror`: a DNS error could have changed the result or the disposition,
  so a rejection must be a 451, never a 550;
* `from_problem`: the From header was missing, multiple or unusable; the disposition
  then follows `[dmarc] missing_from` / `multiple_from` (default: reject).

Policy discovery and Organizational Domains follow RFC 9989's DNS Tree Walk (see
`mailward.orgdomain`): the record at the From domain applies with `p`; otherwise the
Organizational Domain's record (or a public suffix operator's `psd=y` record) applies
with `sp`, or with `np` when the From domain does not exist (no A, AAAA or MX lookup
finds the name, and NXDOMAIN says it is not there).  RFC 7489's `pct` is honoured when
a record has no RFC 9989 `t` tag.

Errors have meaning: a DNS error on the policy lookup is `temperror`; a failure that a
DNS error on an aligned identifier could have turned into a pass is `temperror` too,
with the disposition a failure would have asked for.  A broken record is `permerror`
(or `p=none` when it names a report address, as RFC 7489 6.6.3 asks).  Bad input (junk
records, unparseable or non-ASCII From, no headers at all) gets a defined outcome and a
log line.  An exception that escapes here is a bug, left for the pipeline to log.
"""

from __future__ import annotations

import functools
import logging
import random as random_module
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from mailward import metrics
from mailward.checks import dkim as dkim_check
from mailward.checks import spf as spf_check
from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.config import DmarcSettings, MissingFromAction, MultipleFromAction
from mailward.dkimcore.text import short as _short
from mailward.dns import Outcome, Resolver
from mailward.fromheader import AuthorDomains, FromProblem, author_domains, from_header_values
from mailward.model import AuthProperty, AuthResult, Connection, Transaction
from mailward.orgdomain import (
    OrgDomain,
    OrgDomainSource,
    PublicSuffixes,
    StepOutcome,
    TreeWalk,
    WalkStep,
    ascii_domain,
    is_dmarc_record,
    organizational_domain,
    select_org_domain,
    split_tags,
)

METHOD = "dmarc"
log = logging.getLogger("mailward.dmarc")

# Author domains evaluated with `evaluate_each` (the From header is read, within its
# own bounds, by `mailward.fromheader`).
MAX_FROM_DOMAINS = 8
# Problems remembered per record (for the log line): a junk record stays one line.
_MAX_PROBLEMS = 8


class DmarcResult(StrEnum):
    """The DMARC results of RFC 8601 (Authentication-Results `dmarc=`)."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class Disposition(StrEnum):
    """What a policy asks receivers to do with a failing message."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    @property
    def rank(self) -> int:
        return _DISPOSITION_ORDER.index(self)

    def lowered(self) -> Disposition:
        """One step milder: reject -> quarantine -> none (RFC 7489 6.6.4)."""
        return _DISPOSITION_ORDER[max(0, self.rank - 1)]


_DISPOSITION_ORDER = (Disposition.NONE, Disposition.QUARANTINE, Disposition.REJECT)


class AlignmentMode(StrEnum):
    RELAXED = "r"
    STRICT = "s"


class PolicyTag(StrEnum):
    """Which tag of the record applies: the domain's own, subdomains', non-existent's."""

    P = "p"
    SP = "sp"
    NP = "np"


class PolicyOverride(StrEnum):
    """Why the requested disposition is milder than the policy (report vocabulary)."""

    SAMPLED_OUT = "sampled_out"  # RFC 7489 pct: this message was not sampled
    TESTING = "policy_test_mode"  # RFC 9989 t=y: the owner is testing its policy
    LOCAL_POLICY = "local_policy"  # our reject_downgrade option


# --------------------------------------------------------------------------- inputs


class Evidence(Protocol):
    """An authenticated (or not) identifier: SPF's checked domain, or a DKIM d=.

    `mailward.checks.spf.SpfOutcome` fits as it is (its `domain` is the domain whose
    policy was evaluated, already in A-labels).  `result` is the method's result word:
    only "pass" can make DMARC pass, and "temperror" may make its failure temporary.
    """

    @property
    def domain(self) -> str: ...

    @property
    def result(self) -> str: ...


@dataclass(frozen=True)
class DkimEvidence:
    """One DKIM signature's outcome, as DMARC needs it: signing domain and result."""

    domain: str
    result: str
    selector: str = ""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class DmarcRecord:
    """A parsed DMARC policy record (RFC 7489 6.3, RFC 9989 4.7).

    The policy fields hold what applies: a missing `p` is `none` (RFC 9989), and an
    invalid `p`, `sp` or `np` turns the record into `p=none` if it names a report
    address, and makes it unusable (`usable` false: permerror) if not (RFC 7489 6.6.3).
    Unknown tags and junk are ignored and noted in `problems`; an invalid value of an
    optional tag falls back to its default, noted too.
    """

    text: str
    p: Disposition = Disposition.NONE
    sp: Disposition | None = None
    np: Disposition | None = None
    adkim: AlignmentMode = AlignmentMode.RELAXED
    aspf: AlignmentMode = AlignmentMode.RELAXED
    pct: int | None = None
    t: bool | None = None
    psd: str = "u"
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    usable: bool = True
    problems: tuple[str, ...] = ()

    def policy(self, tag: PolicyTag) -> Disposition:
        """The disposition a tag asks for, with RFC 9989's defaults (np -> sp -> p)."""
        if tag is PolicyTag.P:
            return self.p
        if tag is PolicyTag.SP:
            return self.sp or self.p
        return self.np or self.sp or self.p


#: Distinct record texts whose parse is kept (a few hundred bytes each at most).
PARSED_RECORDS_CACHED = 1024

_KNOWN_TAGS = frozenset(
    {"v", "p", "sp", "np", "adkim", "aspf", "pct", "t", "psd", "rua", "ruf", "fo", "rf", "ri"}
)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")


@functools.lru_cache(maxsize=PARSED_RECORDS_CACHED)
def parse_record(text: str) -> DmarcRecord:
    """Parse one DMARC record; never raises (see `DmarcRecord` for the leniency).

    A pure function of the text with an immutable result, so parsed records are kept
    (least recently used first out): the resolver already answers a busy sender's
    `_dmarc` TXT from its cache, and re-parsing the same text per message was DMARC's
    largest own cost.
    """
    if not is_dmarc_record(text):
        return DmarcRecord(text, usable=False, problems=("does not start with v=DMARC1",))
    tag_list = split_tags(text)
    problems = [f"junk {_short(part)!r} ignored" for part in tag_list.junk]
    values: dict[str, str] = {}
    for name, value in tag_list.tags:
        if name in values:
            problems.append(f"duplicate {name}= ignored")
        elif name not in _KNOWN_TAGS:
            problems.append(f"unknown tag {_short(name)}= ignored")
        else:
            values[name] = value

    rua = _uris(values.get("rua"))
    ruf = _uris(values.get("ruf"))
    policies: dict[str, Disposition | None] = {}
    invalid_policy = []
    for name in ("p", "sp", "np"):
        raw = values.get(name)
        policies[name] = None
        if raw is None:
            continue
        try:
            policies[name] = Disposition(raw.lower())
        except ValueError:
            invalid_policy.append(f"{name}={_short(raw)}")
    p = policies["p"] or Disposition.NONE
    sp, np = policies["sp"], policies["np"]
    usable = True
    if invalid_policy:
        if any(_URI.fullmatch(uri.split("!")[0]) for uri in rua):
            problems.append(f"invalid {', '.join(invalid_policy)}: treated as p=none (rua given)")
            p, sp, np = Disposition.NONE, None, None
        else:
            problems.append(f"invalid {', '.join(invalid_policy)} and no rua: record unusable")
            usable = False

    adkim = _mode(values.get("adkim"), "adkim", problems)
    aspf = _mode(values.get("aspf"), "aspf", problems)
    pct = None
    if "pct" in values:
        raw = values["pct"]
        if re.fullmatch(r"[0-9]{1,3}", raw) and int(raw) <= 100:
            pct = int(raw)
        else:
            problems.append(f"invalid pct={_short(raw)} ignored")
    testing = None
    if "t" in values:
        raw = values["t"].lower()
        if raw in ("y", "n"):
            testing = raw == "y"
        else:
            problems.append(f"invalid t={_short(values['t'])} ignored")
    psd = values.get("psd", "u").lower()
    if psd not in ("y", "n", "u"):
        problems.append(f"invalid psd={_short(values['psd'])} ignored")
        psd = "u"
    if len(problems) > _MAX_PROBLEMS:
        problems = [*problems[:_MAX_PROBLEMS], f"and {len(problems) - _MAX_PROBLEMS} more"]
    return DmarcRecord(
        text=text, p=p, sp=sp, np=np, adkim=adkim, aspf=aspf, pct=pct, t=testing, psd=psd,
        rua=rua, ruf=ruf, usable=usable, problems=tuple(problems),
    )


def _uris(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(uri.strip(" \t") for uri in value.split(",") if uri.strip(" \t"))


def _mode(value: str | None, name: str, problems: list[str]) -> AlignmentMode:
    if value is None:
        return AlignmentMode.RELAXED
    try:
        return AlignmentMode(value.lower())
    except ValueError:
        problems.append(f"invalid {name}={_short(value)}: relaxed")
        return AlignmentMode.RELAXED




# --------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class IdentifierAlignment:
    """One authenticated identifier and whether it aligns with the From domain.

    Alignment is worked out for results "pass" and "temperror" only (the others cannot
    make DMARC pass); for the rest `aligned` is False.  `uncertain` says a DNS error
    in an Organizational Domain walk left a relaxed comparison to the PSL's guess.
    """

    method: str  # "spf" or "dkim"
    domain: str
    result: str
    aligned: bool
    mode: AlignmentMode
    uncertain: bool = False
    selector: str = ""


@dataclass(frozen=True)
class DmarcOutcome:
    """The DMARC evaluation of one message.

    `from_domain` is the author domain evaluated (A-labels), "" when the From header
    gave none.  `record`, `policy_domain` (where the record was published) and
    `applied_policy` (p, sp or np) are set when a policy record was found;
    `org_domain` is the From domain's Organizational Domain when the evaluation needed
    it ("" otherwise).  `from_domains` lists every author domain the From header named
    (also when there is a `from_problem`).

    Enforcement reads three fields.  `requested_disposition` is what to do: for
    `temperror` it is what a failure would ask (`none` when even the policy is
    unknown), to be answered with 451 when it is not `none`.  `rests_on_temperror`
    says a DNS error could have changed the result or the disposition: never answer
    550 then.  `from_problem` says the From header itself was the reason (missing,
    multiple, unusable), for the reply text.  `override` says why the disposition is
    milder than the published policy.  For `multiple_from = "evaluate_each"`, `parts`
    holds each domain's outcome and the fields are those of the strictest.
    """

    result: DmarcResult
    from_domain: str
    reason: str = ""
    record: DmarcRecord | None = None
    policy_domain: str = ""
    org_domain: str = ""
    applied_policy: PolicyTag | None = None
    requested_disposition: Disposition = Disposition.NONE
    override: PolicyOverride | None = None
    alignments: tuple[IdentifierAlignment, ...] = ()
    rests_on_temperror: bool = False
    from_problem: FromProblem | None = None
    from_domains: tuple[str, ...] = ()
    parts: tuple[DmarcOutcome, ...] = ()

    @property
    def published_disposition(self) -> Disposition | None:
        """The policy's own disposition, before pct, t=y and local overrides."""
        if self.record is None or self.applied_policy is None:
            return None
        return self.record.policy(self.applied_policy)

    @property
    def spf_aligned(self) -> bool:
        return any(a.method == "spf" and a.aligned and a.result == "pass" for a in self.alignments)

    @property
    def dkim_aligned(self) -> bool:
        return any(
            a.method == "dkim" and a.aligned and a.result == "pass" for a in self.alignments
        )

    @property
    def aligned_by(self) -> tuple[str, ...]:
        """The passing aligned identifiers, as "spf:domain" / "dkim:domain"."""
        return tuple(
            f"{a.method}:{a.domain}" for a in self.alignments if a.aligned and a.result == "pass"
        )


def auth_result(outcome: DmarcOutcome) -> AuthResult:
    """The A-R result: `dmarc=<result> header.from=<domain> policy.dmarc=<disposition>`.

    `policy.dmarc` is the disposition after sampling and overrides, given for pass and
    fail (for a temperror nothing has been decided yet).  The reason explains every
    result but pass.
    """
    properties = []
    if outcome.from_domain:
        properties.append(AuthProperty("header", "from", outcome.from_domain))
    if outcome.result in (DmarcResult.PASS, DmarcResult.FAIL) and outcome.record is not None:
        properties.append(AuthProperty("policy", "dmarc", outcome.requested_disposition.value))
    reason = outcome.reason if outcome.result is not DmarcResult.PASS else ""
    return AuthResult(METHOD, outcome.result.value, reason or None, tuple(properties))


# --------------------------------------------------------------------------- evaluation

_PASS = "pass"
_TEMPERROR = "temperror"


class DmarcEvaluator:
    """Evaluates DMARC for messages: `evaluate(from_values, spf, dkim) -> DmarcOutcome`.

    `random` returns floats in [0, 1) for `pct` sampling (inject a seeded one in tests);
    `psl` is the Public Suffix List (the bundled one by default).  Thread-safe: every
    evaluation keeps its state to itself.
    """

    def __init__(
        self,
        resolver: Resolver,
        settings: DmarcSettings | None = None,
        *,
        psl: PublicSuffixes | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        self._resolver = resolver
        self._settings = settings or DmarcSettings()
        self._psl = psl or PublicSuffixes.bundled()
        self._random = random or random_module.Random().random

    def evaluate(
        self,
        from_values: Sequence[str],
        spf: Evidence | None = None,
        dkim: Iterable[Evidence] = (),
    ) -> DmarcOutcome:
        """Evaluate one message from its From header values and SPF/DKIM outcomes.

        `spf` is the MAIL FROM outcome (HELO's when the sender was null), or None when
        SPF was not checked; `dkim` has one entry per signature.
        """
        signatures = tuple(dkim)
        authors = author_domains(from_values)
        if authors.non_ascii:
            log.info("DMARC: non-ASCII From domain evaluated as %s", ", ".join(authors.domains))
        if authors.problem in (FromProblem.MISSING, FromProblem.INVALID):
            reject = self._settings.missing_from is MissingFromAction.REJECT
            return self._from_problem(authors, reject)
        if authors.problem is FromProblem.MULTIPLE:
            action = self._settings.multiple_from
            if action is not MultipleFromAction.EVALUATE_EACH:
                return self._from_problem(authors, action is MultipleFromAction.REJECT)
            if not authors.domains or len(authors.domains) > MAX_FROM_DOMAINS:
                return self._from_problem(
                    replace(authors, detail=f"{authors.detail}: too many to evaluate"), True
                )
            parts = [_Evaluation(self, domain, spf, signatures).run() for domain in authors.domains]
            return _strictest(parts, authors)
        outcome = _Evaluation(self, authors.domains[0], spf, signatures).run()
        return replace(outcome, from_domains=authors.domains)

    def evaluate_transaction(
        self, transaction: Transaction, spf: Evidence | None = None, dkim: Iterable[Evidence] = ()
    ) -> DmarcOutcome:
        return self.evaluate(from_header_values(transaction), spf, dkim)

    def _from_problem(self, authors: AuthorDomains, reject: bool) -> DmarcOutcome:
        assert authors.problem is not None
        log.info(
            "DMARC: %s From (%s): %s", authors.problem.value, authors.detail,
            "rejection requested" if reject else "accepted without DMARC evaluation",
        )
        return DmarcOutcome(
            result=DmarcResult.PERMERROR if reject else DmarcResult.NONE,
            from_domain="",
            reason=authors.detail,
            requested_disposition=Disposition.REJECT if reject else Disposition.NONE,
            from_problem=authors.problem,
            from_domains=authors.domains,
        )

    # Shared with _Evaluation.
    @property
    def resolver(self) -> Resolver:
        return self._resolver

    @property
    def psl(self) -> PublicSuffixes:
        return self._psl

    @property
    def settings(self) -> DmarcSettings:
        return self._settings

    def sample(self) -> float:
        return self._random()


def _strictest(parts: list[DmarcOutcome], authors: AuthorDomains) -> DmarcOutcome:
    """For evaluate_each: the outcome asking the most, a certain failure before an
    uncertain one; it stands for the message, with every part attached."""
    rank = {
        DmarcResult.PASS: 0, DmarcResult.NONE: 1, DmarcResult.PERMERROR: 2,
        DmarcResult.TEMPERROR: 3, DmarcResult.FAIL: 4,
    }
    worst = max(
        parts,
        key=lambda o: (o.requested_disposition.rank, rank[o.result], not o.rests_on_temperror),
    )
    return replace(
        worst,
        reason=f"{authors.detail}; {worst.from_domain}: {worst.reason}".rstrip(": "),
        from_problem=FromProblem.MULTIPLE,
        from_domains=authors.domains,
        parts=tuple(parts),
    )


class _Evaluation:
    """One author domain of one message: policy discovery, alignment, disposition."""

    def __init__(
        self, evaluator: DmarcEvaluator, from_domain: str, spf: Evidence | None,
        dkim: tuple[Evidence, ...],
    ) -> None:
        self._evaluator = evaluator
        self._resolver = evaluator.resolver
        self._psl = evaluator.psl
        self.from_domain = from_domain
        self._spf = spf
        self._dkim = dkim
        self._from_walk = TreeWalk(self._resolver, from_domain)
        self._org: dict[str, OrgDomain] = {}

    def run(self) -> DmarcOutcome:
        domain = self.from_domain
        found = self._discover_policy()
        if isinstance(found, DmarcOutcome):
            return found
        step, tag = found
        record = parse_record(step.record)
        if record.problems:
            log.info("DMARC: record at _dmarc.%s: %s", step.domain, "; ".join(record.problems))
        if not record.usable:
            return DmarcOutcome(
                DmarcResult.PERMERROR, domain, record=record, policy_domain=step.domain,
                org_domain=self._known_org_domain(),
                reason=f"unusable DMARC record at _dmarc.{step.domain}",
            )
        alignments = self._alignments(record)
        passed = any(a.aligned and a.result == _PASS for a in alignments)
        outcome = DmarcOutcome(
            DmarcResult.PASS if passed else DmarcResult.NONE, domain, record=record,
            policy_domain=step.domain, applied_policy=tag, alignments=alignments,
            org_domain=self._known_org_domain(),
        )
        if passed:
            return outcome

        could_pass = any(
            a.result in (_PASS, _TEMPERROR) and (a.aligned or a.uncertain)
            and not (a.result == _PASS and a.aligned)
            for a in alignments
        )
        tag, disposition, uncertain_tag = self._policy_for_failure(record, tag)
        requested, override = self._overrides(record, disposition)
        result = DmarcResult.TEMPERROR if could_pass else DmarcResult.FAIL
        reason = _failure_reason(alignments, could_pass)
        if uncertain_tag:
            reason += f"; DNS error checking whether {domain} exists"
        if result is DmarcResult.TEMPERROR or uncertain_tag:
            log.info("DMARC: %s for %s rests on a DNS error: %s", result.value, domain, reason)
        return replace(
            outcome, result=result, applied_policy=tag, requested_disposition=requested,
            override=override, reason=reason, rests_on_temperror=could_pass or uncertain_tag,
        )

    def _known_org_domain(self) -> str:
        """The From domain's Organizational Domain if the evaluation established it."""
        org = self._org.get(self.from_domain)
        return org.domain if org is not None else ""

    # ------------------------------------------------------------------ policy discovery

    def _discover_policy(self) -> tuple[WalkStep, PolicyTag] | DmarcOutcome:
        """RFC 9989 4.10.1: the record that applies to the From domain, and its tag."""
        domain = self.from_domain
        walk = self._from_walk
        first = walk.first()
        if first.outcome is StepOutcome.TEMPERROR:
            return self._temperror(f"DNS error looking up _dmarc.{domain}: {first.error}")
        if first.outcome is StepOutcome.RECORD:
            return first, PolicyTag.P
        steps = walk.complete()
        failed = walk.temperror
        if failed is not None:
            return self._temperror(
                f"DNS error looking up _dmarc.{failed.domain} (tree walk): {failed.error}"
            )
        notes = []
        if first.outcome is StepOutcome.MULTIPLE:
            notes.append(f"multiple DMARC records at _dmarc.{domain} discarded")
            log.info("DMARC: %s", notes[-1])
        org_name = select_org_domain(domain, steps)
        if org_name is None:
            org = organizational_domain(walk, self._psl)
            self._org[domain] = org
            return DmarcOutcome(
                DmarcResult.NONE, domain, reason="; ".join([*notes, "no DMARC record"]),
                org_domain=org.domain,
            )
        self._org[domain] = OrgDomain(domain, org_name, OrgDomainSource.TREE_WALK)
        for step in steps:
            if step.outcome is StepOutcome.RECORD and step.domain == org_name:
                return step, PolicyTag.SP
        last = steps[-1]
        if last.outcome is StepOutcome.RECORD and last.psd == "y":
            return last, PolicyTag.SP  # the public suffix operator's policy
        return DmarcOutcome(  # not reachable with a well-formed walk; defined anyway
            DmarcResult.NONE, domain, reason="no DMARC record", org_domain=org_name
        )

    def _temperror(self, reason: str) -> DmarcOutcome:
        log.info("DMARC: temperror for %s: %s", self.from_domain, reason)
        return DmarcOutcome(
            DmarcResult.TEMPERROR, self.from_domain, reason=reason, rests_on_temperror=True
        )

    # ------------------------------------------------------------------ alignment

    def _alignments(self, record: DmarcRecord) -> tuple[IdentifierAlignment, ...]:
        checks: list[IdentifierAlignment] = []
        if self._spf is not None:
            checks.append(self._align("spf", self._spf, record.aspf))
        for signature in self._dkim:
            selector = getattr(signature, "selector", "")
            selector = selector if isinstance(selector, str) else ""
            checks.append(self._align("dkim", signature, record.adkim, selector))
        return tuple(checks)

    def _align(
        self, method: str, evidence: Evidence, mode: AlignmentMode, selector: str = ""
    ) -> IdentifierAlignment:
        result = str(evidence.result).lower()
        domain = ascii_domain(evidence.domain) if evidence.domain else None
        if domain is None or result not in (_PASS, _TEMPERROR):
            shown = domain or _short(evidence.domain)
            return IdentifierAlignment(method, shown, result, False, mode, selector=selector)
        aligned, uncertain = self._aligned(domain, mode)
        return IdentifierAlignment(method, domain, result, aligned, mode, uncertain, selector)

    def _aligned(self, domain: str, mode: AlignmentMode) -> tuple[bool, bool]:
        """(aligned, uncertain) for an authenticated domain against the From domain."""
        if domain == self.from_domain:
            return True, False
        if mode is AlignmentMode.STRICT:
            return False, False
        if domain.rsplit(".", 1)[-1] != self.from_domain.rsplit(".", 1)[-1]:
            # Organizational Domains are suffixes: different top-level domains never match.
            return False, False
        mine = self._org_domain(self.from_domain)
        if not mine.uncertain and not (
            domain == mine.domain or domain.endswith("." + mine.domain)
        ):
            # An Organizational Domain is a suffix of its domain: one outside ours
            # cannot share it, whatever its own walk would say.
            return False, False
        theirs = self._org_domain(domain)
        return mine.domain == theirs.domain, mine.uncertain or theirs.uncertain

    def _org_domain(self, domain: str) -> OrgDomain:
        org = self._org.get(domain)
        if org is None:
            if domain == self.from_domain:
                walk = self._from_walk
            else:
                walk = TreeWalk(self._resolver, domain)
            org = organizational_domain(walk, self._psl)
            if org.uncertain:
                log.info("DMARC: organizational domain of %s uncertain (%s): PSL says %s",
                         domain, org.error, org.domain)
            self._org[domain] = org
        return org

    # ------------------------------------------------------------------ disposition

    def _policy_for_failure(
        self, record: DmarcRecord, tag: PolicyTag
    ) -> tuple[PolicyTag, Disposition, bool]:
        """(tag, disposition, uncertain): np applies to a non-existent From domain.

        The existence check is made only when np would change the disposition.  If DNS
        errors leave existence unknown, the stricter of sp and np is asked for and the
        outcome rests on a temperror.
        """
        if tag is PolicyTag.P or record.np is None:
            return tag, record.policy(tag), False
        if record.policy(PolicyTag.NP) == record.policy(PolicyTag.SP):
            return tag, record.policy(tag), False
        exists = domain_exists(self._resolver, self.from_domain)
        if exists is None:
            strictest = max((PolicyTag.SP, PolicyTag.NP), key=lambda t: record.policy(t).rank)
            return strictest, record.policy(strictest), True
        chosen = PolicyTag.SP if exists else PolicyTag.NP
        return chosen, record.policy(chosen), False

    def _overrides(
        self, record: DmarcRecord, disposition: Disposition
    ) -> tuple[Disposition, PolicyOverride | None]:
        """RFC 9989 t=y, else RFC 7489 pct sampling, then our reject_downgrade."""
        override = None
        if disposition is not Disposition.NONE:
            if record.t is True:
                disposition, override = disposition.lowered(), PolicyOverride.TESTING
            elif (
                record.t is None and record.pct is not None and record.pct < 100
                and not self._evaluator.sample() * 100 < record.pct
            ):
                disposition, override = disposition.lowered(), PolicyOverride.SAMPLED_OUT
        if disposition is Disposition.REJECT and self._evaluator.settings.reject_downgrade:
            disposition = Disposition.QUARANTINE
            override = override or PolicyOverride.LOCAL_POLICY
        return disposition, override


def domain_exists(resolver: Resolver, domain: str) -> bool | None:
    """Whether `domain` exists for np (RFC 9989): False when A, AAAA and MX lookups show
    no record and NXDOMAIN says the name does not exist; None when DNS errors leave it
    unknown.  Any answer or NODATA proves existence and ends the checks."""
    nxdomain = temperror = False
    for rdtype in ("A", "AAAA", "MX"):
        answer = resolver.query(domain, rdtype)
        if answer.outcome in (Outcome.ANSWER, Outcome.NODATA):
            return True
        if answer.outcome is Outcome.TEMPERROR:
            temperror = True
        elif answer.outcome is Outcome.NXDOMAIN:
            nxdomain = True
    if nxdomain:
        return False
    return None if temperror else False


def _failure_reason(alignments: tuple[IdentifierAlignment, ...], could_pass: bool) -> str:
    if could_pass:
        retry = [
            f"{a.method} {a.result} for {a.domain}" for a in alignments
            if a.result in (_PASS, _TEMPERROR) and (a.aligned or a.uncertain)
            and not (a.result == _PASS and a.aligned)
        ]
        return "no aligned pass yet: " + ", ".join(retry) + " (DNS error)"
    if not alignments:
        return "no SPF or DKIM result to align"
    passed = [a for a in alignments if a.result == _PASS]
    if not passed:
        return "SPF and DKIM did not pass"
    return "not aligned: " + ", ".join(f"{a.method} pass for {a.domain}" for a in passed)


# --------------------------------------------------------------------------- the inbound check

RESULT: ResultKey[DmarcOutcome] = ResultKey("dmarc")


def _symbols(outcome: DmarcOutcome) -> tuple[Symbol, ...]:
    symbols = [Symbol(f"DMARC_{outcome.result.value.upper()}", outcome.from_domain)]
    if outcome.result is DmarcResult.FAIL:
        disposition = outcome.requested_disposition.value.upper()
        symbols.append(Symbol(f"DMARC_POLICY_{disposition}", outcome.from_domain))
    if outcome.from_problem is not None:
        symbols.append(Symbol(f"DMARC_FROM_{outcome.from_problem.value.upper()}"))
    return tuple(symbols)


@functools.cache
def _result_counter(result: DmarcResult, disposition: Disposition) -> Any:
    """The DMARC_RESULTS child for one (result, disposition): looked up once per pair
    (both enums, so the cache is bounded), not with labels() per message."""
    return metrics.DMARC_RESULTS.labels(result.value, disposition.value)


class InboundDmarc(Check[DmarcOutcome]):
    """DMARC on the inbound path: reads the SPF and DKIM results, never their A-R text.

    Enforcement (reject, quarantine, the ARC override) is not this check's: it is a
    decision over several results, made by the pipeline after every check ran.
    """

    name = "dmarc"
    produces = RESULT
    requires = (spf_check.RESULT, dkim_check.RESULT)
    auth_methods = (METHOD,)

    def __init__(self, evaluator: DmarcEvaluator) -> None:
        self._evaluator = evaluator

    def evaluate(self, check_input: CheckInput) -> DmarcOutcome:
        results = check_input.results
        outcome = self._evaluator.evaluate_transaction(
            check_input.transaction,
            spf_check.dmarc_identity(results.get(spf_check.RESULT)),
            results.get(dkim_check.RESULT) or (),
        )
        _result_counter(outcome.result, outcome.requested_disposition).inc()
        return outcome

    def auth_results(self, result: DmarcOutcome, connection: Connection) -> Sequence[AuthResult]:
        return (auth_result(result),)

    def symbols(self, result: DmarcOutcome) -> Sequence[Symbol]:
        return _symbols(result)

    def metric_result(self, result: DmarcOutcome) -> str:
        return result.result.value


def _build(context: BuildContext[None]) -> InboundDmarc | None:
    settings = context.settings.dmarc
    if not settings.enabled:
        return None
    return InboundDmarc(DmarcEvaluator(context.resolver, settings))


SPEC: CheckSpec[None] = CheckSpec("dmarc", _build)
