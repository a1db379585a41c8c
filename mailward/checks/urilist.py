"""URI blocklists (SURBL, URIBL, Spamhaus DBL): the hosts of links in the message text.

Spam changes its sending IPs hourly but must point at the domains it advertises, so
lists of those domains catch what IP lists miss.  Hosts are taken from `http(s)://` and
`www.` URLs in the decoded text and HTML parts of the shared MIME parse, reduced to the
registrable domain with the Public Suffix List (lists publish `example.com`, not
`www.example.com`); IP literals are kept and asked reversed, as the lists expect.  The
scan is bounded twice: URLs examined (a million links cost a fixed amount) and distinct
names asked per list.  Lookups share one per-message budget (mailward/checks/dnsbl.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mailward.casefold import folded_matches
from mailward.checks import mime as mime_check
from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey
from mailward.checks.dnsbl import (
    DnsblResult,
    DnsList,
    ListLookups,
    NameListCheck,
    read_lists,
    reversed_name,
)
from mailward.configreader import Table
from mailward.mime import ParsedMessage
from mailward.orgdomain import PublicSuffixes

MAX_URLS_EXAMINED = 5000

_URL = re.compile(r"(?i)(?:\bhttps?://|\bwww\.)([^\s/?#<>\"'\\()\[\]]+|\[[0-9a-f:.]+\])")
#: `_URL` for lower-cased ASCII text: the same matches, about three times faster.  Case
#: folding (re.I) keeps the engine from skipping ahead to the next "h" or "w"; a leading
#: class without it lets it, and the look-behind puts `_URL`'s word boundary back.
_URL_IN_LOWER_ASCII = re.compile(
    r"[hw](?<=\b[hw])(?:ttps?://|ww\.)([^\s/?#<>\"'\\()\[\]]+|\[[0-9a-f:.]+\])")


def _url_matches(text: str) -> Iterator[re.Match[str]]:
    """`_URL`'s matches in `text` (on ASCII text, lower-cased: mailward/casefold.py)."""
    return folded_matches(_URL, _URL_IN_LOWER_ASCII, text)


@dataclass(frozen=True)
class UriListSettings:
    """`[urilist]`: off unless enabled; the lists; names per message; the budget."""

    enabled: bool = False
    timeout: float = 2.0
    max_domains: int = 20
    lists: tuple[DnsList, ...] = ()

    def symbol_names(self) -> set[str]:
        return {name for item in self.lists for name in (*item.codes.values(),
                                                          item.default_symbol)}


def read_urilist(table: Table) -> UriListSettings:
    settings = UriListSettings(
        enabled=table.scalar("enabled", bool, False),
        timeout=table.number("timeout", float, 2.0, 0.05, 30.0),
        max_domains=table.number("max_domains", int, 20, 1, 200),
        lists=read_lists(table, "URIBL_LISTED"),
    )
    table.finish()
    return settings


def _url_hosts(texts: Iterable[str]) -> Iterable[str]:
    """Host parts of URLs, in order of appearance, at most MAX_URLS_EXAMINED."""
    examined = 0
    for text in texts:
        for match in _url_matches(text):
            examined += 1
            if examined > MAX_URLS_EXAMINED:
                return
            prefix = match.group(0)[:4].lower()
            host = match.group(1).rpartition("@")[2]  # drop user:password@
            if host.startswith("["):
                host = host[1:].split("]", 1)[0]
            elif host.count(":") == 1:
                host = host.split(":", 1)[0]  # drop :port
            if prefix == "www.":
                host = "www." + host
            yield host.rstrip(".").lower()


def link_names(parsed: ParsedMessage, psl: PublicSuffixes, limit: int) -> dict[str, str]:
    """What to ask the lists: name under the zone -> the domain or address it stands for."""
    names: dict[str, str] = {}
    for host in _url_hosts(part.text for part in parsed.text_parts):
        if len(names) >= limit:
            break
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            domain = psl.registrable_domain(host)
            if domain is not None:
                names.setdefault(domain, domain)
            continue
        names.setdefault(reversed_name(address), str(address))
    return names


RESULT: ResultKey[DnsblResult] = ResultKey("urilist")


class UriListCheck(NameListCheck):
    """The link domains of the message against every configured URI list."""

    name = "urilist"
    produces = RESULT
    requires = (mime_check.RESULT,)

    def __init__(self, settings: UriListSettings, lookups: ListLookups,
                 psl: PublicSuffixes) -> None:
        self._settings = settings
        self._lookups = lookups
        self._psl = psl

    def evaluate(self, check_input: CheckInput) -> DnsblResult:
        view = check_input.results.get(mime_check.RESULT)
        if view is None:
            return DnsblResult()
        names = link_names(view.parsed, self._psl, self._settings.max_domains)
        queries = [(dns_list, f"{name}.{dns_list.zone}")
                   for dns_list in self._settings.lists for name in names]
        return DnsblResult(self._lookups.run(queries, self._settings.timeout,
                                             check_input.transaction.log_id))


def _build(context: BuildContext[UriListSettings]) -> UriListCheck | None:
    settings = context.section
    if not settings.enabled or not settings.lists:
        return None
    lookups = context.shared_object("dnslist_lookups_urilist",
                                    lambda: ListLookups(context.resolver, "urilist"))
    return UriListCheck(settings, lookups, PublicSuffixes.bundled())


SPEC: CheckSpec[UriListSettings] = CheckSpec("urilist", _build, section="urilist",
                                             read_settings=read_urilist)
