"""The RFC 7208 SPF test suite (openspf.org, shipped with pyspf), run against our SPF check.

Every case of `data/rfc7208-tests.yml` is one pytest test.  Each scenario's `zonedata`
is served through Mailward's `InMemoryResolver`, so the suite exercises the whole path
that production uses: pyspf's evaluation, our DNS hook, our outcome translation.

Zone data conventions (those of the suite's reference driver, pyspf's test/testspf.py):

* `SPF` records (type 99) are also served as TXT when the name lists no TXT record;
  `TXT: NONE` means "no TXT record, and do not copy SPF ones".  RFC 7208 implementations
  look at TXT only, which is what the suite now expects.
* `TIMEOUT` in a name's list: a query for a type that has no record listed before it
  times out (temperror); `{TYPE: TIMEOUT}` makes that type time out.
* A TXT record with no strings (`SPF: []`) cannot exist in dnspython (nor usefully on the
  wire); it is served as one empty string, which is what "null text" means to SPF.

A case lists one result or the allowed results.  When it gives an `explanation`, the
value `DEFAULT` means "the domain supplied none"; our outcome then has an empty
explanation.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.SPF
import dns.rdtypes.ANY.TXT
import dns.zone
import pytest
import yaml

from mailward.checks.spf import evaluate_spf
from mailward.dns import InMemoryResolver

SUITE = Path(__file__).parent / "data" / "rfc7208-tests.yml"

# Every type a zone may be asked for; a TIMEOUT name fails those it has no records of.
_QUERY_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")


@dataclass(frozen=True)
class SuiteCase:
    scenario: str
    name: str
    zonedata: dict[str, list[Any]]
    helo: str
    host: str
    mailfrom: str
    allowed: tuple[str, ...]
    explanation: str | None

    @property
    def id(self) -> str:
        return f"{self.scenario}/{self.name}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_cases() -> list[SuiteCase]:
    cases = []
    with SUITE.open("rb") as stream:
        for document in yaml.safe_load_all(stream):
            scenario = _slug(document["description"])
            for name, test in document["tests"].items():
                result = test["result"]
                allowed = tuple(result) if isinstance(result, list) else (result,)
                cases.append(
                    SuiteCase(
                        scenario=scenario,
                        name=name,
                        zonedata=document.get("zonedata") or {},
                        helo=str(test["helo"]),
                        host=str(test["host"]),
                        mailfrom=str(test["mailfrom"]),
                        allowed=allowed,
                        explanation=test.get("explanation"),
                    )
                )
    return cases


CASES = load_cases()


# --------------------------------------------------------------------------- zone building


def build_resolver(zonedata: dict[str, list[Any]]) -> InMemoryResolver:
    """One root zone holding every name of the scenario, with the suite's TIMEOUT rules."""
    zone = dns.zone.Zone(dns.name.root, relativize=False)
    resolver = InMemoryResolver(zones={".": zone})
    for owner, entries in zonedata.items():
        _add_name(zone, resolver, owner, entries)
    return resolver


def _add_name(
    zone: dns.zone.Zone, resolver: InMemoryResolver, owner: str, entries: list[Any]
) -> None:
    name = dns.name.from_text(owner)
    records: dict[str, list[Any]] = {}
    failing: set[str] = set()
    timed_out = False
    listed_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
    for entry in entries:
        if entry == "TIMEOUT":
            timed_out = True
            continue
        ((rtype, value),) = entry.items()
        if value == "TIMEOUT":
            failing.add(rtype)
        elif not timed_out and value != "NONE":
            # After a TIMEOUT, the reference driver never reaches further records.
            records.setdefault(rtype, []).append(value)
    if not listed_txt and "SPF" in records:
        # SPF records are served as TXT too, but (as in the driver) after any TIMEOUT.
        if timed_out:
            failing.add("TXT")
        else:
            records["TXT"] = list(records["SPF"])
    if timed_out:
        failing.update(t for t in _QUERY_TYPES if t not in records)
    for rtype in failing:
        resolver.fail(owner, rtype)
    for rtype, values in records.items():
        node = zone.find_node(name, create=True)
        rdataset = node.find_rdataset(
            dns.rdataclass.IN, dns.rdatatype.from_text(rtype), create=True
        )
        for value in values:
            rdataset.add(_rdata(rtype, value), ttl=300)


def _rdata(rtype: str, value: Any) -> dns.rdata.Rdata:
    IN = dns.rdataclass.IN
    if rtype in ("TXT", "SPF"):
        strings = [value] if isinstance(value, str) else list(value)
        encoded = [s.encode("utf-8") for s in strings] or [b""]
        if rtype == "SPF":
            return dns.rdtypes.ANY.SPF.SPF(IN, dns.rdatatype.SPF, encoded)
        return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, encoded)
    if rtype == "MX":
        preference, exchange = value
        return dns.rdtypes.ANY.MX.MX(  # type: ignore[no-untyped-call]
            IN, dns.rdatatype.MX, int(preference), _absolute(str(exchange))
        )
    if rtype in ("PTR", "CNAME"):
        return dns.rdata.from_text(IN, rtype, _absolute(str(value)).to_text())
    return dns.rdata.from_text(IN, rtype, str(value))


def _absolute(text: str) -> dns.name.Name:
    return dns.name.from_text(text) if text else dns.name.root


# --------------------------------------------------------------------------- the tests


def test_suite_is_complete() -> None:
    """All documents and cases were read (203 cases in the 2014.04 RFC 7208 suite)."""
    assert len(CASES) == 203
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_rfc7208(case: SuiteCase) -> None:
    resolver = build_resolver(case.zonedata)
    outcome = evaluate_spf(
        resolver, ipaddress.ip_address(case.host), case.helo, case.mailfrom
    )
    assert outcome.result.value in case.allowed, (
        f"{case.id}: got {outcome.result} ({outcome.problem or outcome.mechanism}), "
        f"allowed {case.allowed}"
    )
    if case.explanation is not None:
        # The suite gives explanations for fail results only; ours are set for fail only.
        expected = "" if case.explanation == "DEFAULT" else case.explanation
        assert outcome.explanation == expected
