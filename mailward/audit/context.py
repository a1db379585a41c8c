"""What every audit family gets: the domain, our resolver, the options, and DNS helpers.

The helpers turn `Outcome.TEMPERROR` into `CouldNotCheck`, so a family reads as the
checklist it is and never mistakes a timeout for a missing record.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.reversename

from mailward.audit.findings import CouldNotCheck
from mailward.config import Settings
from mailward.dns import DnsAnswer, Outcome, Resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class AuditOptions:
    selectors: tuple[str, ...] = ()
    sending_ips: tuple[IPAddress, ...] = ()
    connect: bool = True
    smtp_port: int = 25
    https_port: int = 443
    ca_file: Path | None = None
    timeout: float = 5.0
    ehlo_name: str = "localhost"
    expiry_warning_days: int = 14
    dnsbl_zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class MxHost:
    name: str
    priority: int
    addresses: tuple[IPAddress, ...]


@dataclass
class AuditContext:
    domain: str
    resolver: Resolver
    settings: Settings
    options: AuditOptions = field(default_factory=AuditOptions)
    #: The MX hosts (or the implicit MX) once the MX family has resolved them.
    mx_hosts: list[MxHost] = field(default_factory=list)
    #: PTR names per address, filled by the reverse-DNS family for the SMTP family.
    ptr_names: dict[IPAddress, tuple[str, ...]] = field(default_factory=dict)
    clock: Callable[[], float] | None = None

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        """An answer, NXDOMAIN or NODATA; a temporary failure raises CouldNotCheck."""
        answer = self.resolver.query(name, rdtype)
        if answer.outcome is Outcome.TEMPERROR:
            raise CouldNotCheck(f"{name} {rdtype}", answer.error or "temporary DNS failure")
        return answer

    def addresses(self, name: str) -> tuple[IPAddress, ...]:
        found: list[IPAddress] = []
        for rdtype in ("A", "AAAA"):
            answer = self.query(name, rdtype)
            found.extend(ipaddress.ip_address(record) for record in answer.records)
        return tuple(found)

    def txt_records(self, name: str, prefix: str) -> tuple[str, ...] | None:
        """TXT records at `name` that start with `prefix` (case-insensitive); None for
        NXDOMAIN (the name does not exist), () when it exists without one."""
        answer = self.query(name, "TXT")
        if answer.outcome is Outcome.NXDOMAIN:
            return None
        return tuple(r for r in answer.records if r.lower().startswith(prefix.lower()))


def reverse_name(address: IPAddress) -> str:
    return dns.reversename.from_address(str(address)).to_text().rstrip(".")
