"""`[tlspolicy]`: the TLS policy service's section, read next to its code.

mailward.config holds one field of this type and calls `read_tlspolicy`; the socket and
listener types are config.py's own, imported when used (config.py imports this module,
so a top-level import back would be circular).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailward.configreader import Table, domain_name

if TYPE_CHECKING:
    from mailward.config import ListenAddress, SocketAddress, SocketPermissions

DEFAULT_SOCKET = "unix:/run/mailward/tlspolicy.sock"
DEFAULT_METRICS = "127.0.0.1:9319"
# What an override may say: a Postfix TLS policy (smtp_tls_policy_maps value), one line.
_OVERRIDE = re.compile(r"(none|may|encrypt|dane|dane-only|fingerprint|verify|secure)"
                       r"( [A-Za-z_]+=[^\s]+)*")


def _default_socket() -> SocketAddress:
    from mailward.config import SocketAddress

    return SocketAddress.parse(DEFAULT_SOCKET)


def _default_permissions() -> SocketPermissions:
    from mailward.config import SocketPermissions

    return SocketPermissions()


def _default_metrics() -> ListenAddress | None:
    from mailward.config import ListenAddress

    return ListenAddress.parse(DEFAULT_METRICS)


@dataclass(frozen=True)
class ResolverAddress:
    """`[tlspolicy] dnssec_resolver`: a validating resolver on loopback only.  Its AD
    bit travels unprotected, so from anywhere else anyone on the path could set it."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ResolverAddress:
        """`127.0.0.1:5353`, `[::1]:53`, or an address alone (port 53)."""
        host, port_text = text, "53"
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{text!r} is not HOST:PORT")
                port_text = rest[1:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: bad port {port_text!r}")
        try:
            address = ipaddress.ip_address(host)
        except ValueError as exc:
            raise ValueError(f"{host!r} is not an IP address") from exc
        if not address.is_loopback:
            raise ValueError(f"{host} is not a loopback address: the AD bit of a resolver "
                             "elsewhere cannot be trusted")
        return cls(str(address), int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsPolicySettings:
    socket: SocketAddress = field(default_factory=_default_socket)
    socket_permissions: SocketPermissions = field(default_factory=_default_permissions)
    metrics_listen: ListenAddress | None = field(default_factory=_default_metrics)
    idle_timeout: float = 300.0
    max_connections: int = 1000
    max_request_size: int = 10_000
    threads: int = 16  # threads for DNS lookups and policy fetches
    #: Processes accepting on `socket` (one asyncio loop uses one core); 1: no supervisor.
    workers: int = 1
    fetch_timeout: float = 10.0
    max_policy_size: int = 64 * 1024
    policy_port: int = 443  # tests serve the policy on a high port
    ca_file: Path | None = None  # None: the system's CA store
    servername: bool = True  # Postfix >= 3.4 reads `servername=hostname`
    refresh_before: float = 3600.0
    cache_entries: int = 100_000
    #: "memory" (lost on restart), "sqlite" (kept in `cache_path`) or "redis" (at
    #: `[state] url`, shared by several relays).
    cache: str = "sqlite"
    cache_path: Path = Path("/var/lib/mailward/tlspolicy.db")
    #: domain -> Postfix TLS policy, answered as is (before MTA-STS is consulted).
    overrides: Mapping[str, str] = field(default_factory=dict)
    #: DANE (RFC 7672) before MTA-STS; needs `dnssec_resolver` (a validating resolver).
    dane: bool = False
    dnssec_resolver: ResolverAddress | None = None
    dnssec_timeout: float = 5.0


def _mode(text: str) -> int:
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f"{text!r} is not an octal file mode such as \"0660\"")
    return int(text, 8)


def _cache_kind(text: str) -> str:
    if text not in ("memory", "sqlite", "redis"):
        raise ValueError(f"must be 'memory', 'sqlite' or 'redis', got {text!r}")
    return text


def _override(text: str) -> str:
    if not _OVERRIDE.fullmatch(text):
        raise ValueError(f"{text!r} is not a Postfix TLS policy (e.g. \"secure match=...\")")
    return text


def read_tlspolicy(table: Table) -> TlsPolicySettings:
    from mailward.config import ListenAddress, SocketAddress, SocketPermissions

    defaults = TlsPolicySettings()
    metrics_text = table.scalar("metrics_listen", str, DEFAULT_METRICS)
    metrics_listen: ListenAddress | None = None
    if metrics_text:
        try:
            metrics_listen = ListenAddress.parse(metrics_text)
        except ValueError as exc:
            table.error("metrics_listen", str(exc))
    ca_text = table.scalar("ca_file", str, "")
    settings = TlsPolicySettings(
        socket=table.parsed("socket", SocketAddress.parse, defaults.socket),
        socket_permissions=SocketPermissions(
            mode=table.parsed("socket_mode", _mode, defaults.socket_permissions.mode),
            group=table.scalar("socket_group", str, defaults.socket_permissions.group),
        ),
        metrics_listen=metrics_listen,
        idle_timeout=table.number("idle_timeout", float, defaults.idle_timeout, 1.0, 86400.0),
        max_connections=table.number("max_connections", int, defaults.max_connections,
                                     1, 100_000),
        max_request_size=table.number("max_request_size", int, defaults.max_request_size,
                                      256, 100_000),
        threads=table.number("threads", int, defaults.threads, 1, 1024),
        workers=table.number("workers", int, defaults.workers, 1, 64),
        fetch_timeout=table.number("fetch_timeout", float, defaults.fetch_timeout, 0.1, 120.0),
        max_policy_size=table.number("max_policy_size", int, defaults.max_policy_size,
                                     1024, 1024 * 1024),
        policy_port=table.number("policy_port", int, defaults.policy_port, 1, 65535),
        ca_file=Path(ca_text) if ca_text else None,
        servername=table.scalar("servername", bool, defaults.servername),
        refresh_before=table.number("refresh_before", float, defaults.refresh_before,
                                    0.0, 31_557_600.0),
        cache_entries=table.number("cache_entries", int, defaults.cache_entries,
                                   1, 10_000_000),
        cache=table.parsed("cache", _cache_kind, defaults.cache),
        cache_path=Path(table.scalar("cache_path", str, str(defaults.cache_path))),
        overrides=_read_overrides(table.table("overrides")),
        dane=table.scalar("dane", bool, defaults.dane),
        dnssec_resolver=table.parsed("dnssec_resolver", _resolver_address, None),
        dnssec_timeout=table.number("dnssec_timeout", float, defaults.dnssec_timeout,
                                    0.1, 60.0),
    )
    if settings.dane and settings.dnssec_resolver is None:
        table.error("dane", "dane = true needs dnssec_resolver = \"127.0.0.1:PORT\" (a "
                            "DNSSEC-validating resolver on loopback whose AD bit is trusted)")
    table.finish()
    return settings


def _resolver_address(text: str) -> ResolverAddress | None:
    return ResolverAddress.parse(text) if text else None


def _read_overrides(table: Table) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for key in table.written_keys():
        try:
            domain = domain_name(key)
        except ValueError as exc:
            table.error(key, str(exc))
            table.scalar(key, str, "")
            continue
        value = table.parsed(key, _override, "")
        if value:
            overrides[domain] = value
    table.finish()
    return overrides
