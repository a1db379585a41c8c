"""Domain blocklists (RHSBL, RFC 5782 section 2.3) for the names a message claims.

The envelope sender's domain, the HELO name, the From domain and every DKIM `d=` that
verified are asked under each `[[rhsbl.lists]]` zone (the Spamhaus DBL layout is the
shipped example), all at once within one per-message budget, through the same lookup
machinery as the IP lists (mailward/checks/dnsbl.py): timeouts score nothing and are
counted; 127.255.255.0/24 answers are logged, never scored.  Which names to ask is
configurable, because a HELO name says less than a signing domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailward.checks import dkim as dkim_check
from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey
from mailward.checks.dkim import DkimResult
from mailward.checks.dnsbl import (
    DnsblResult,
    DnsList,
    ListLookups,
    NameListCheck,
    read_lists,
)
from mailward.configreader import Table
from mailward.fromheader import author_domain
from mailward.orgdomain import ascii_domain

SOURCES = ("mail_from", "helo", "from", "dkim")
MAX_NAMES = 8  # distinct domains per message: enough for the four sources, bounded


@dataclass(frozen=True)
class RhsblSettings:
    """`[rhsbl]`: off unless enabled; which names to ask; the lists; the budget."""

    enabled: bool = False
    timeout: float = 2.0
    sources: tuple[str, ...] = SOURCES
    lists: tuple[DnsList, ...] = ()

    def symbol_names(self) -> set[str]:
        return {name for item in self.lists for name in (*item.codes.values(),
                                                          item.default_symbol)}


def _source(text: str) -> str:
    if text not in SOURCES:
        raise ValueError(f"{text!r} is not one of {', '.join(SOURCES)}")
    return text


def read_rhsbl(table: Table) -> RhsblSettings:
    settings = RhsblSettings(
        enabled=table.scalar("enabled", bool, False),
        timeout=table.number("timeout", float, 2.0, 0.05, 30.0),
        sources=table.string_list("sources", SOURCES, _source),
        lists=read_lists(table, "RHSBL_LISTED"),
    )
    table.finish()
    return settings


def claimed_domains(check_input: CheckInput, sources: Sequence[str]) -> dict[str, str]:
    """Domain -> where it came from (first source wins), A-labels, at most MAX_NAMES."""
    found: dict[str, str] = {}

    def add(name: str | None, source: str) -> None:
        domain = ascii_domain(name or "")
        if domain and "." in domain and domain not in found and len(found) < MAX_NAMES:
            found[domain] = source

    if "mail_from" in sources:
        _, _, domain = check_input.transaction.mail_from.rpartition("@")
        add(domain, "mail_from")
    if "helo" in sources:
        add(check_input.connection.helo, "helo")
    if "from" in sources:
        add(author_domain(check_input.transaction), "from")
    if "dkim" in sources:
        for outcome in check_input.results.get(dkim_check.RESULT) or ():
            if outcome.result is DkimResult.PASS:
                add(outcome.domain, "dkim")
    return found


RESULT: ResultKey[DnsblResult] = ResultKey("rhsbl")


class RhsblCheck(NameListCheck):
    """The domains a message claims against every configured domain list, concurrently."""

    name = "rhsbl"
    produces = RESULT
    uses = (dkim_check.RESULT,)

    def __init__(self, settings: RhsblSettings, lookups: ListLookups) -> None:
        self._settings = settings
        self._lookups = lookups

    def evaluate(self, check_input: CheckInput) -> DnsblResult:
        domains = claimed_domains(check_input, self._settings.sources)
        queries = [(dns_list, f"{domain}.{dns_list.zone}")
                   for dns_list in self._settings.lists for domain in domains]
        return DnsblResult(self._lookups.run(queries, self._settings.timeout,
                                             check_input.transaction.log_id))


def _build(context: BuildContext[RhsblSettings]) -> RhsblCheck | None:
    settings = context.section
    if not settings.enabled or not settings.lists:
        return None
    lookups = context.shared_object("dnslist_lookups_rhsbl",
                                    lambda: ListLookups(context.resolver, "rhsbl"))
    return RhsblCheck(settings, lookups)


SPEC: CheckSpec[RhsblSettings] = CheckSpec("rhsbl", _build, section="rhsbl",
                                           read_settings=read_rhsbl)
