"""DNS blocklists: reversed names, return codes to symbols, error codes never scored,
timeouts within the per-message budget, configuration errors."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mailward.checks.base import CheckInput
from mailward.checks.dnsbl import (
    DnsblCheck,
    DnsblSettings,
    DnsList,
    ListLookups,
    reversed_name,
)
from mailward.config import settings_from_mapping
from mailward.configreader import ConfigError
from mailward.dns import DnsAnswer, InMemoryResolver
from mailward.model import Connection, Symbol, Transaction

ZEN = DnsList("zen", "zen.example", {"127.0.0.2": "RBL_SBL", "127.0.0.3": "RBL_CSS",
                                     "127.0.0.4": "RBL_XBL", "127.0.0.10": "RBL_PBL"})
OTHER = DnsList("other", "other.example", {})

ZONES = {
    "zen.example": "\n".join([
        "2.2.0.192.zen.example. 60 IN A 127.0.0.2",
        "2.2.0.192.zen.example. 60 IN A 127.0.0.10",
        "9.2.0.192.zen.example. 60 IN A 127.255.255.254",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example. 60 IN A "
        "127.0.0.4",
    ]),
    "other.example": "2.2.0.192.other.example. 60 IN A 127.0.0.5\n",
}

TRANSACTION = Transaction(queue_id="Q", mail_from="", recipients=("a@example.net",), headers=())


def run(resolver: Any, address: str, lists: tuple[DnsList, ...] = (ZEN, OTHER),
        timeout: float = 2.0) -> tuple[Symbol, ...]:
    check = DnsblCheck(DnsblSettings(True, timeout, lists), ListLookups(resolver, "dnsbl"))
    result = check.evaluate(CheckInput(Connection(ipaddress.ip_address(address)), TRANSACTION))
    return tuple(check.symbols(result))


def lookups(status: str, list_name: str = "zen") -> float:
    return REGISTRY.get_sample_value("mailward_dnslist_lookups_total",
                                     {"kind": "dnsbl", "list": list_name, "status": status}) or 0


def test_reversed_names() -> None:
    assert reversed_name(ipaddress.ip_address("192.0.2.1")) == "1.2.0.192"
    assert reversed_name(ipaddress.ip_address("::ffff:192.0.2.1")) == "1.2.0.192"
    assert reversed_name(ipaddress.ip_address("2001:db8::1")) == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2")


def test_codes_map_to_symbols_and_unmapped_codes_to_the_default() -> None:
    symbols = run(InMemoryResolver.from_zones(ZONES), "192.0.2.2")
    assert symbols == (Symbol("RBL_PBL", "zen"), Symbol("RBL_SBL", "zen"),
                       Symbol("RBL_LISTED", "other"))


def test_ipv6_clients_are_looked_up_in_nibble_form() -> None:
    assert run(InMemoryResolver.from_zones(ZONES), "2001:db8::1") == (Symbol("RBL_XBL", "zen"),)


def test_unlisted_client_scores_nothing() -> None:
    before = lookups("clean")
    assert run(InMemoryResolver.from_zones(ZONES), "192.0.2.3") == ()
    assert lookups("clean") == before + 1


def test_error_codes_are_counted_never_scored() -> None:
    before = lookups("error_code")
    assert run(InMemoryResolver.from_zones(ZONES), "192.0.2.9") == ()
    assert lookups("error_code") == before + 1


def test_temporary_failure_scores_nothing_and_is_counted() -> None:
    resolver = InMemoryResolver.from_zones(ZONES)
    resolver.fail("2.2.0.192.zen.example")
    before = lookups("error")
    assert run(resolver, "192.0.2.2") == (Symbol("RBL_LISTED", "other"),)
    assert lookups("error") == before + 1


class StuckResolver:
    """Answers `other` at once and never answers `zen` until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._inner = InMemoryResolver.from_zones(ZONES)

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        if name.endswith("zen.example"):
            self.release.wait(30)
        return self._inner.query(name, rdtype)


def test_a_slow_list_is_cut_off_by_the_budget_and_the_others_still_count() -> None:
    resolver = StuckResolver()
    before = lookups("timeout")
    try:
        assert run(resolver, "192.0.2.2", timeout=0.2) == (Symbol("RBL_LISTED", "other"),)
    finally:
        resolver.release.set()
    assert lookups("timeout") == before + 1


def test_lists_skip_ipv6_when_configured() -> None:
    v4_only = DnsList("zen", "zen.example", ZEN.codes, ipv6=False)
    assert run(InMemoryResolver.from_zones(ZONES), "2001:db8::1", (v4_only,)) == ()


def test_config_reads_lists() -> None:
    settings = settings_from_mapping({"dnsbl": {"enabled": True, "timeout": 1.5, "lists": [
        {"zone": "zen.spamhaus.org", "name": "zen", "codes": {"127.0.0.2": "RBL_SBL"}}]}})
    section = settings.checks["dnsbl"]
    assert isinstance(section, DnsblSettings)
    assert section.timeout == 1.5
    assert section.lists == (DnsList("zen", "zen.spamhaus.org", {"127.0.0.2": "RBL_SBL"}),)


@pytest.mark.parametrize(("lists", "message"), [
    ([{"name": "x"}], r"dnsbl.lists\[0\].zone: required"),
    ([{"zone": "bl.example", "codes": {"127.0.0.2": "lower"}}], "UPPER_SNAKE_CASE"),
    ([{"zone": "bl.example", "codes": {"banana": "RBL_X"}}], "not an IPv4 return code"),
    ([{"zone": "bl.example", "colour": "red"}], r"dnsbl.lists\[0\].colour: unknown key"),
    ([{"zone": "not a zone"}], "not a domain name"),
])
def test_bad_list_config_is_an_error(lists: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping({"dnsbl": {"enabled": True, "lists": lists}})


def test_disabled_or_empty_builds_no_check() -> None:
    from mailward.pipeline import build_inbound_checks

    settings = settings_from_mapping({"dnsbl": {"enabled": False, "lists": [
        {"zone": "bl.example"}]}})
    assert "dnsbl" not in [check.name for check in build_inbound_checks(
        settings, InMemoryResolver())]
    settings = settings_from_mapping({"dnsbl": {"enabled": True, "lists": [
        {"zone": "bl.example"}]}})
    assert "dnsbl" in [check.name for check in build_inbound_checks(
        settings, InMemoryResolver())]
