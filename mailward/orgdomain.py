"""Organizational domains: the RFC 9989 DNS Tree Walk, with the Public Suffix List behind it.

DMARC asks two questions of the DNS tree above a domain: which DMARC policy record
applies to it (policy discovery), and which domain is its Organizational Domain, the
boundary that relaxed alignment compares (RFC 9989 4.10).  RFC 7489 answered the second
with the Public Suffix List; RFC 9989 answers both with a DNS Tree Walk over `_dmarc`
records, which lets domain owners and public suffix operators say where their
boundaries are (`psd=y`, `psd=n`).

The walk (RFC 9989 4.10): query `_dmarc.<domain>` for TXT; keep the records that start
with `v=DMARC1`; several such records at one name are all discarded; a single record
with `psd=y` or `psd=n` ends the walk.  Otherwise drop the left-most label (a name of
eight or more labels is cut to its last seven at once) and query again, down to the
single-label top-level domain.  So a walk makes at most eight queries.

The Organizational Domain is then (RFC 9989 4.10.2): the domain of a `psd=n` record;
else, for a `psd=y` record above the start, the domain one label below it; else the
domain of the record with the fewest labels.  When the walk finds no record at all,
RFC 9989 makes the domain its own Organizational Domain; we take the Public Suffix
List's registrable domain instead (the RFC 7489 answer, from the list bundled with the
`publicsuffixlist` package, never downloaded), which agrees with RFC 9989 wherever
DMARC can tell the two apart and keeps reports grouped as before.  A DNS error during
the walk leaves the answer unknown: the PSL's answer is used and marked `uncertain`, so
that a DMARC failure resting on it can be answered with 451 instead of 550.

Everything here is pure except `TreeWalk`, which queries through the injected
`Resolver` (whose cache serves the names that walks for one message share).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum

import dns.exception
import dns.name
from publicsuffixlist import PublicSuffixList

from mailward.dkimcore.taglist import tag_specs
from mailward.dns import Outcome, Resolver

# RFC 9989 4.10 step 4: a name of eight or more labels is shortened to this many at once.
WALK_SHORTCUT_LABELS = 7
# Hence the most names one walk queries: the start, then 7, 6, ..., 1 labels.
MAX_WALK_QUERIES = WALK_SHORTCUT_LABELS + 1

DMARC_PREFIX = "_dmarc."

# A label of letters, digits, hyphens and underscores.  Deliberately lenient about
# hyphens and underscores: any name the DNS could hold under a host name may be walked.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# "v=DMARC1" as the first tag: the tag name is case-insensitive (RFC 5234 literal), the
# value is not (RFC 7489 6.4 spells it with %x literals); white space around "=".
_VERSION = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")


def ascii_domain(name: str) -> str | None:
    """`name` as a DNS name in lower-case A-labels, or None if it cannot be one.

    A trailing dot is dropped; U-labels are converted (IDNA, as dnspython does for our
    other checks).  Empty or over-long labels, names over 253 octets, characters other
    than letters, digits, hyphen and underscore, and undecodable bytes give None.
    Single-label names are allowed here: top-level domains are walked and listed.
    """
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        return None
    if not text.isascii():
        try:
            text = dns.name.from_unicode(text).to_text(omit_final_dot=True)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return None
    text = text.lower()
    if len(text) > 253:
        return None
    if not all(_LABEL.fullmatch(label) for label in text.split(".")):
        return None
    return text


def walk_targets(domain: str) -> tuple[str, ...]:
    """The names a DNS Tree Walk from `domain` queries, in order (RFC 9989 4.10).

    `domain` must already be in `ascii_domain` form.  At most `MAX_WALK_QUERIES` names.
    """
    labels = domain.split(".")
    targets = [domain]
    while len(labels) > 1:
        if len(labels) > WALK_SHORTCUT_LABELS:
            labels = labels[-WALK_SHORTCUT_LABELS:]
        else:
            labels = labels[1:]
        targets.append(".".join(labels))
    return tuple(targets)


# --------------------------------------------------------------------------- records


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT record is a DMARC record: it starts with the tag `v=DMARC1`."""
    return _VERSION.match(text) is not None


@dataclass(frozen=True)
class TagList:
    """A DMARC record split into tags (RFC 7489 6.4), without judging their values.

    `tags` keeps (name, value) pairs in order, names lower-cased, values stripped of
    surrounding white space; `junk` holds the parts that are not `name=value` at all.
    """

    tags: tuple[tuple[str, str], ...]
    junk: tuple[str, ...]

    def first(self, name: str) -> str | None:
        """The value of the first tag called `name`, or None."""
        for tag, value in self.tags:
            if tag == name:
                return value
        return None


def split_tags(text: str) -> TagList:
    """Split a record into `name=value` tags (the DKIM tag-list syntax, RFC 7489 6.4);
    names are case-insensitive here, and what does not fit goes to `junk`."""
    tags: list[tuple[str, str]] = []
    junk: list[str] = []
    for spec in tag_specs(text):
        if not spec.text:
            continue
        if spec.well_formed:
            tags.append((spec.name.lower(), spec.value))
        else:
            junk.append(spec.text)
    return TagList(tuple(tags), tuple(junk))


@functools.lru_cache(maxsize=1024)
def psd_flag(record: str) -> str:
    """The record's `psd` tag: "y", "n", or "u" when absent or not a valid value.

    Pure, and asked for every record a walk meets (each message's `_dmarc` answer,
    usually from the resolver's cache): the flag of the last texts seen is kept,
    as `checks.dmarc.parse_record` keeps their parse.
    """
    value = (split_tags(record).first("psd") or "u").lower()
    return value if value in ("y", "n", "u") else "u"


# --------------------------------------------------------------------------- the walk


class StepOutcome(StrEnum):
    """What one query of a walk found at `_dmarc.<name>`."""

    RECORD = "record"  # exactly one DMARC record
    NO_RECORD = "no_record"  # no DMARC record (NXDOMAIN, NODATA, only other TXT)
    MULTIPLE = "multiple"  # several DMARC records: all discarded (RFC 9989 4.10)
    TEMPERROR = "temperror"  # the DNS did not answer: nothing is known


@dataclass(frozen=True)
class WalkStep:
    """One name a walk queried, and what it found there."""

    domain: str
    outcome: StepOutcome
    record: str = ""  # the DMARC record (RECORD only), TXT strings joined
    psd: str = "u"  # the record's psd tag: "y", "n" or "u"
    error: str = ""  # the DNS error (TEMPERROR only)

    @property
    def ends_walk(self) -> bool:
        """A psd=y or psd=n record, or a DNS error, ends the walk here."""
        return self.outcome is StepOutcome.TEMPERROR or self.psd in ("y", "n")


def query_dmarc(resolver: Resolver, domain: str) -> WalkStep:
    """Look up the DMARC record of `domain` (an `ascii_domain`) at `_dmarc.<domain>`."""
    answer = resolver.query(DMARC_PREFIX + domain, "TXT")
    if answer.outcome is Outcome.TEMPERROR:
        return WalkStep(domain, StepOutcome.TEMPERROR, error=answer.error or "no answer")
    if answer.outcome is not Outcome.ANSWER:
        # NXDOMAIN, NODATA, or a name too long to exist: no record can be there.
        return WalkStep(domain, StepOutcome.NO_RECORD)
    records = [text for text in answer.records if is_dmarc_record(text)]
    if not records:
        return WalkStep(domain, StepOutcome.NO_RECORD)
    if len(records) > 1:
        return WalkStep(domain, StepOutcome.MULTIPLE)
    return WalkStep(domain, StepOutcome.RECORD, record=records[0], psd=psd_flag(records[0]))


class TreeWalk:
    """A DNS Tree Walk from one domain, queried lazily, one step at a time.

    Policy discovery often needs only the first step (a record at the Author Domain);
    the Organizational Domain needs the whole walk.  A walk object does each query at
    most once, so both can share it.  Not thread-safe: one walk belongs to one
    evaluation.
    """

    def __init__(self, resolver: Resolver, domain: str) -> None:
        self.domain = domain
        self._resolver = resolver
        self._targets = walk_targets(domain)
        self._steps: list[WalkStep] = []

    def first(self) -> WalkStep:
        """The step at the start domain itself."""
        if not self._steps:
            self._steps.append(query_dmarc(self._resolver, self._targets[0]))
        return self._steps[0]

    def complete(self) -> tuple[WalkStep, ...]:
        """Every step of the walk, querying what has not been queried yet."""
        self.first()
        while not self.finished:
            self._steps.append(query_dmarc(self._resolver, self._targets[len(self._steps)]))
        return tuple(self._steps)

    @property
    def finished(self) -> bool:
        return bool(self._steps) and (
            self._steps[-1].ends_walk or len(self._steps) == len(self._targets)
        )

    @property
    def steps(self) -> tuple[WalkStep, ...]:
        """The steps queried so far."""
        return tuple(self._steps)

    @property
    def temperror(self) -> WalkStep | None:
        """The step whose DNS error cut the walk short, if one did."""
        last = self._steps[-1] if self._steps else None
        return last if last is not None and last.outcome is StepOutcome.TEMPERROR else None


def select_org_domain(domain: str, steps: tuple[WalkStep, ...]) -> str | None:
    """RFC 9989 4.10.2: the Organizational Domain a completed walk establishes.

    None when the walk found no DMARC record at all (the caller decides the fallback).
    """
    found = [step for step in steps if step.outcome is StepOutcome.RECORD]
    for step in found:
        if step.psd == "n":
            return step.domain
        if step.psd == "y" and step.domain != domain:
            # The domain one label below the public suffix domain.
            keep = step.domain.count(".") + 2
            return ".".join(domain.split(".")[-keep:])
    return found[-1].domain if found else None


# --------------------------------------------------------------------------- PSL


class PublicSuffixes:
    """The Public Suffix List, for the registrable domain of a name (RFC 7489 3.2).

    Unknown top-level domains count as public suffixes, and the private section of
    the list is used too (blogspot.com, github.io: each customer its own organization).
    Names are taken and returned as `ascii_domain` A-labels.
    """

    def __init__(self, psl: PublicSuffixList | None = None) -> None:
        self._psl = psl if psl is not None else PublicSuffixList()

    @classmethod
    def bundled(cls) -> PublicSuffixes:
        """The list shipped with the publicsuffixlist package, parsed once per process."""
        return _bundled()

    def registrable_domain(self, domain: str) -> str | None:
        """The public suffix plus one label, or None if `domain` is a public suffix
        itself or not a usable name."""
        name = ascii_domain(domain)
        if name is None:
            return None
        return self._psl.privatesuffix(name)

    def is_public_suffix(self, domain: str) -> bool:
        name = ascii_domain(domain)
        return name is not None and self._psl.is_public(name)


@functools.cache
def _bundled() -> PublicSuffixes:
    # Read-only once built (PublicSuffixList is thread-safe after __init__).
    return PublicSuffixes()


# --------------------------------------------------------------------------- result


class OrgDomainSource(StrEnum):
    TREE_WALK = "tree-walk"  # RFC 9989 4.10.2 from the records the walk found
    PSL = "psl"  # the walk found no record (or failed): the PSL's registrable domain


@dataclass(frozen=True)
class OrgDomain:
    """The Organizational Domain of `of`, and how it was established.

    `uncertain` says a DNS error cut the walk short, so `domain` is the PSL's guess
    and a complete walk might have said otherwise.
    """

    of: str
    domain: str
    source: OrgDomainSource
    uncertain: bool = False
    error: str = ""


def organizational_domain(walk: TreeWalk, psl: PublicSuffixes) -> OrgDomain:
    """The Organizational Domain of the walk's start domain (completing the walk)."""
    steps = walk.complete()
    failed = walk.temperror
    if failed is None:
        selected = select_org_domain(walk.domain, steps)
        if selected is not None:
            return OrgDomain(walk.domain, selected, OrgDomainSource.TREE_WALK)
    fallback = psl.registrable_domain(walk.domain) or walk.domain
    if failed is not None:
        return OrgDomain(
            walk.domain, fallback, OrgDomainSource.PSL, uncertain=True,
            error=f"_dmarc.{failed.domain}: {failed.error}",
        )
    return OrgDomain(walk.domain, fallback, OrgDomainSource.PSL)


def find_org_domain(
    resolver: Resolver, domain: str, psl: PublicSuffixes | None = None
) -> OrgDomain | None:
    """The Organizational Domain of `domain`; None if it is not a usable DNS name."""
    name = ascii_domain(domain)
    if name is None:
        return None
    return organizational_domain(TreeWalk(resolver, name), psl or PublicSuffixes.bundled())
