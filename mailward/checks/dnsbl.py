"""DNS blocklists for the client IP (RFC 5782): each list's answers mapped to symbols.

`[[dnsbl.lists]]` names a zone and maps return codes to symbols (the Spamhaus ZEN layout
is the shipped example: 127.0.0.2 SBL, .3 CSS, .4-.7 XBL, .10/.11 PBL).  The address is
queried reversed (IPv4 octets, IPv6 nibbles) under each zone, all lists at once, within
one per-message time budget: a list that does not answer in time scores nothing and is
counted.  Answers in 127.255.255.0/24 are the lists' way of saying "refused / over
quota / public resolver": counted and logged, never scored.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from mailward import metrics, turns
from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.configreader import Table, domain_name
from mailward.dns import DnsAnswer, Resolver, cached_answer
from mailward.model import IPAddress, unmapped

log = logging.getLogger(__name__)

_SYMBOL = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_ERROR_NET = ipaddress.ip_network("127.255.255.0/24")
_LISTING_NET = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True)
class DnsList:
    """One list: its zone, a short name for logs/metrics, and code -> symbol."""

    name: str
    zone: str
    codes: Mapping[str, str]
    default_symbol: str = "RBL_LISTED"
    ipv6: bool = True

    def symbol_for(self, code: str) -> str:
        return self.codes.get(code, self.default_symbol)


@dataclass(frozen=True)
class DnsblSettings:
    """`[dnsbl]`: off unless enabled, with the lists and the per-message budget."""

    enabled: bool = False
    timeout: float = 2.0
    lists: tuple[DnsList, ...] = ()

    def symbol_names(self) -> set[str]:
        return {name for item in self.lists for name in (*item.codes.values(),
                                                          item.default_symbol)}


def read_dnsbl(table: Table) -> DnsblSettings:
    settings = DnsblSettings(
        enabled=table.scalar("enabled", bool, False),
        timeout=table.number("timeout", float, 2.0, 0.05, 30.0),
        lists=read_lists(table),
    )
    table.finish()
    return settings


def read_lists(table: Table, default_symbol: str = "RBL_LISTED") -> tuple[DnsList, ...]:
    """Every `[[...lists]]` entry of a list check's section."""
    lists: list[DnsList] = []
    for index, item in enumerate(table.raw_list("lists")):
        entry = table.item_table("lists", index, item)
        if entry is not None:
            parsed = read_list(entry, default_symbol)
            if parsed is not None:
                lists.append(parsed)
    return tuple(lists)


def read_list(entry: Table, default_symbol: str = "RBL_LISTED") -> DnsList | None:
    """One `[[...lists]]` entry (shared with the RHSBL and URI list readers)."""
    zone = entry.parsed("zone", domain_name, "")
    name = entry.scalar("name", str, re.sub(r"[^a-z0-9_\-]", "_", zone)[:32] or "list")
    if not re.fullmatch(r"[a-z0-9_\-]{1,32}", name or ""):
        entry.error("name", "must be 1-32 characters of a-z, 0-9, _ or -")
    default_symbol = entry.scalar("symbol", str, default_symbol)
    if not _SYMBOL.fullmatch(default_symbol):
        entry.error("symbol", f"{default_symbol!r} is not an UPPER_SNAKE_CASE symbol name")
    codes: dict[str, str] = {}
    code_table = entry.table("codes")
    for code in code_table.written_keys():
        symbol = code_table.scalar(code, str, "")
        try:
            address = ipaddress.IPv4Address(code)
        except ValueError:
            code_table.error(code, f"{code!r} is not an IPv4 return code")
            continue
        if not _SYMBOL.fullmatch(symbol):
            code_table.error(code, f"{symbol!r} is not an UPPER_SNAKE_CASE symbol name")
            continue
        codes[str(address)] = symbol
    code_table.finish()
    ipv6 = entry.scalar("ipv6", bool, True)
    entry.finish(subtables=("codes",))
    if not zone:
        if "zone" not in entry.reported:
            entry.error("zone", "required")
        return None
    return DnsList(name, zone, codes, default_symbol, ipv6)


def reversed_name(address: IPAddress) -> str:
    """192.0.2.1 -> 1.2.0.192; IPv6 as 32 reversed nibbles (RFC 5782 2.4)."""
    address = unmapped(address)
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


@dataclass(frozen=True)
class ListAnswer:
    """What one list said about one name."""

    dns_list: DnsList
    query: str
    codes: tuple[str, ...] = ()
    status: str = "clean"  # clean | listed | error_code | timeout | error


@dataclass(frozen=True)
class DnsblResult:
    answers: tuple[ListAnswer, ...] = field(default_factory=tuple)

    @property
    def listed(self) -> tuple[ListAnswer, ...]:
        return tuple(answer for answer in self.answers if answer.status == "listed")


def _ask(resolver: Resolver, dns_list: DnsList, query: str) -> ListAnswer:
    return _list_answer(dns_list, query, resolver.query(query, "A"))


def _list_answer(dns_list: DnsList, query: str, answer: DnsAnswer) -> ListAnswer:
    if answer.is_temporary_failure:
        return ListAnswer(dns_list, query, status="error")
    if not answer.ok:
        return ListAnswer(dns_list, query)
    codes = tuple(sorted({record for record in answer.records}))
    listed = tuple(code for code in codes if _is_listing(code))
    if listed:
        return ListAnswer(dns_list, query, listed, "listed")
    return ListAnswer(dns_list, query, codes, "error_code")


@functools.lru_cache(maxsize=256)
def _is_listing(code: str) -> bool:
    """A return code in 127/8 outside the lists' error range.  Cached: a list answers
    with a handful of codes, and parsing one costs more than the rest of the answer."""
    try:
        address = ipaddress.IPv4Address(code)
    except ValueError:
        return False
    return address in _LISTING_NET and address not in _ERROR_NET


class ListLookups:
    """Runs (list, name) lookups at once with one deadline; shared by the list checks."""

    def __init__(self, resolver: Resolver, kind: str, workers: int = 16) -> None:
        self._resolver = resolver
        self._kind = kind
        self._pool = ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix=f"mailward-{kind}")

    def run(self, queries: Sequence[tuple[DnsList, str]], timeout: float,
            log_id: str) -> tuple[ListAnswer, ...]:
        # Cached answers are taken here; only the rest go to the pool.  Handing a
        # lookup to a thread and waiting for it costs more than a cache hit, and on a
        # busy machine the wake-up alone takes milliseconds.
        futures: list[tuple[DnsList, str, Future[ListAnswer] | ListAnswer]] = []
        for dns_list, name in queries:
            known = cached_answer(self._resolver, name, "A")
            futures.append((dns_list, name, _list_answer(dns_list, name, known)
                            if known is not None
                            else self._pool.submit(_ask, self._resolver, dns_list, name)))
        pending = [future for _, _, future in futures if isinstance(future, Future)]
        if pending:
            with turns.waiting():  # another message computes meanwhile
                wait(pending, timeout=timeout)
        answers: list[ListAnswer] = []
        for dns_list, name, future in futures:
            if isinstance(future, ListAnswer):
                answer = future
            elif not future.done():
                future.cancel()
                answer = ListAnswer(dns_list, name, status="timeout")
            elif future.exception() is not None:
                log.warning("%s: %s lookup %s failed: %s", log_id, self._kind, name,
                            future.exception())
                answer = ListAnswer(dns_list, name, status="error")
            else:
                answer = future.result()
            if answer.status == "error_code":
                log.warning("%s: %s %s answered %s for %s (refused or over quota?): not "
                            "scored", log_id, self._kind, dns_list.name,
                            ",".join(answer.codes), name)
            metrics.DNSLIST_LOOKUPS.labels(self._kind, dns_list.name, answer.status).inc()
            answers.append(answer)
        return tuple(answers)


def answer_symbols(answers: Sequence[ListAnswer], detail: Mapping[str, str] | None = None
                   ) -> tuple[Symbol, ...]:
    """One symbol per (list, code) listing; detail is the list's name (and what was listed)."""
    symbols: list[Symbol] = []
    for answer in answers:
        if answer.status != "listed":
            continue
        listed = (detail or {}).get(answer.query, "")
        for name in sorted({answer.dns_list.symbol_for(code) for code in answer.codes}):
            symbols.append(Symbol(name, f"{answer.dns_list.name}{':' + listed if listed else ''}"))
    return tuple(symbols)


def list_metric_result(result: DnsblResult) -> str:
    """listed / incomplete (a list timed out or failed) / clean: bounded metric values."""
    if result.listed:
        return "listed"
    if any(answer.status in ("timeout", "error") for answer in result.answers):
        return "incomplete"
    return "clean"


class NameListCheck(Check[DnsblResult]):
    """A list check whose symbols name what was listed (RHSBL, URI lists).

    The detail is the queried name without the list's zone: a domain the message itself
    claims or links to, never anything of ours.
    """

    def symbols(self, result: DnsblResult) -> Sequence[Symbol]:
        detail = {answer.query: answer.query[: -len(answer.dns_list.zone) - 1]
                  for answer in result.listed}
        return answer_symbols(result.answers, detail)

    def metric_result(self, result: DnsblResult) -> str:
        return list_metric_result(result)


RESULT: ResultKey[DnsblResult] = ResultKey("dnsbl")


class DnsblCheck(Check[DnsblResult]):
    """The client IP against every configured list, concurrently."""

    name = "dnsbl"
    produces = RESULT

    def __init__(self, settings: DnsblSettings, lookups: ListLookups) -> None:
        self._settings = settings
        self._lookups = lookups

    def applies(self, check_input: CheckInput) -> bool:
        return check_input.connection.client_ip is not None

    def evaluate(self, check_input: CheckInput) -> DnsblResult:
        address = check_input.connection.client_ip
        assert address is not None  # applies() said so
        address = unmapped(address)
        reversed_address = reversed_name(address)
        queries = [(dns_list, f"{reversed_address}.{dns_list.zone}")
                   for dns_list in self._settings.lists
                   if dns_list.ipv6 or isinstance(address, ipaddress.IPv4Address)]
        return DnsblResult(self._lookups.run(queries, self._settings.timeout,
                                             check_input.transaction.log_id))

    def symbols(self, result: DnsblResult) -> Sequence[Symbol]:
        return answer_symbols(result.answers)

    def metric_result(self, result: DnsblResult) -> str:
        return list_metric_result(result)


def _build(context: BuildContext[DnsblSettings]) -> DnsblCheck | None:
    settings = context.section
    if not settings.enabled or not settings.lists:
        return None
    lookups = context.shared_object("dnslist_lookups_dnsbl",
                                    lambda: ListLookups(context.resolver, "dnsbl"))
    return DnsblCheck(settings, lookups)


SPEC: CheckSpec[DnsblSettings] = CheckSpec("dnsbl", _build, section="dnsbl",
                                           read_settings=read_dnsbl)
