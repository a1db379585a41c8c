"""Configuration: one TOML file in, frozen and validated settings out.

Every key is read exactly once, through a typed accessor that knows its key path, so an
error can say `milter.workers: expected an integer, got "two" (line 14)`.  Unknown keys
are errors too: a typo such as `trusted_network` must not silently fall back to a
default.  All errors of a file are collected before anything is raised, so that
`mailward check-config` can list them in one go.

Nothing here is global: `load_settings()` returns a new `Settings`; the services hold
it and swap it as a whole on reload.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from mailward.configreader import (
    ConfigError as ConfigError,
)
from mailward.configreader import (
    ConfigProblem as ConfigProblem,
)
from mailward.configreader import (
    IPNetwork,
    LineLocator,
    Problems,
    Table,
    domain_name,
    hostname,
    nameserver,
    network,
)
from mailward.model import Action, unmapped
from mailward.reports.settings import ReportSettings, read_report_settings
from mailward.scoring import ScoringSettings, read_scoring
from mailward.tlspolicy.settings import TlsPolicySettings, read_tlspolicy

T = TypeVar("T")

DEFAULT_CONFIG_PATH = Path("/etc/mailward/mailward.toml")


# --------------------------------------------------------------------------- value types


class SocketKind(StrEnum):
    UNIX = "unix"
    INET = "inet"
    INET6 = "inet6"


@dataclass(frozen=True)
class SocketAddress:
    """A listening socket, written the way Postfix's main.cf writes it.

    `unix:/run/mailward/milter.sock`, `inet:127.0.0.1:8891`, `inet:[::1]:8891` or
    `inet6:[::1]:8891`: the admin copies one string into both files.
    """

    kind: SocketKind
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> SocketAddress:
        scheme, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ValueError(
                f"{text!r} is not a socket: use unix:/path, inet:HOST:PORT or inet6:[ADDR]:PORT"
            )
        scheme = scheme.lower()
        if scheme == "unix":
            if not rest.startswith("/"):
                raise ValueError(f"unix socket path must be absolute, got {rest!r}")
            return cls(SocketKind.UNIX, path=rest)
        if scheme not in ("inet", "inet6"):
            raise ValueError(f"unknown socket type {scheme!r}: use unix, inet or inet6")
        host, port = _split_host_port(rest)
        kind = SocketKind.INET6 if scheme == "inet6" or ":" in host else SocketKind.INET
        if scheme == "inet6" and ":" not in host:
            raise ValueError(f"inet6 socket needs an IPv6 address in brackets, got {host!r}")
        return cls(kind, host=host, port=port)

    def __str__(self) -> str:
        if self.kind is SocketKind.UNIX:
            return f"unix:{self.path}"
        if self.kind is SocketKind.INET6:
            return f"inet6:[{self.host}]:{self.port}"
        return f"inet:{self.host}:{self.port}"

    def libmilter_spec(self) -> str:
        """The same socket in libmilter's own syntax (`inet:PORT@HOST`)."""
        if self.kind is SocketKind.UNIX:
            return f"unix:{self.path}"
        return f"{self.kind.value}:{self.port}@{self.host}"


def _split_host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError(f"{text!r}: expected [ADDRESS]:PORT")
        port_text = port_text[1:]
        ipaddress.IPv6Address(host)  # raises ValueError with a clear message
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses in brackets, [::1]:PORT")
    # isascii: str.isdigit() also accepts other scripts' digits, which Postfix does not.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class ListenAddress:
    """An HTTP listener such as the metrics endpoint: HOST:PORT, [V6]:PORT."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        host, port = _split_host_port(text)
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- settings


class InternalErrorAction(StrEnum):
    TEMPFAIL = "tempfail"
    ACCEPT = "accept"

    def as_action(self) -> Action:
        return Action.TEMPFAIL if self is InternalErrorAction.TEMPFAIL else Action.ACCEPT


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class StateBackend(StrEnum):
    SQLITE = "sqlite"
    REDIS = "redis"


@dataclass(frozen=True)
class GeneralSettings:
    authserv_id: str = "localhost"
    trusted_networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    on_internal_error: InternalErrorAction = InternalErrorAction.TEMPFAIL
    log_level: LogLevel = LogLevel.INFO

    def is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        address = unmapped(address)
        return any(address in network for network in self.trusted_networks)


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 2.0
    message_budget: float = 6.0  # DNS seconds one message may spend in all; 0 = no cap
    cache_entries: int = 20000
    negative_ttl_max: int = 900


@dataclass(frozen=True)
class SocketPermissions:
    """Who may connect to a unix socket: Postfix's smtpd runs as user `postfix`."""

    mode: int = 0o660
    group: str = ""  # empty: the service's own group


class MilterEngine(StrEnum):
    """[milter] engine: who speaks the milter protocol with the MTA (milters/engine.py)."""

    PYTHON = "python"  # Mailward's own protocol core: malformed packets cost one session
    LIBMILTER = "libmilter"  # Sendmail's libmilter through pymilter (the fallback)


@dataclass(frozen=True)
class MilterSettings:
    engine: MilterEngine = MilterEngine.PYTHON
    socket: SocketAddress = SocketAddress(SocketKind.UNIX, path="/run/mailward/milter.sock")
    socket_permissions: SocketPermissions = SocketPermissions()
    workers: int = 1
    pin_cpus: bool = True  # each worker stays on one CPU (mailward/cpus.py says why)
    max_body_size: int = 10 * 1024 * 1024
    shutdown_timeout: float = 30.0
    mta_timeout: int = 300
    max_headers: int = 1000
    max_header_bytes: int = 1024 * 1024


class StateErrorAction(StrEnum):
    """[policyd] on_state_error: the answer when the state backend cannot be reached."""

    DUNNO = "dunno"  # go on without the policy (greylisting / rate limit not applied)
    DEFER = "defer"  # 4xx: the client retries later


#: The policies of the policy service, in their default evaluation order.
POLICY_NAMES = ("spf", "greylist", "ratelimit")


@dataclass(frozen=True)
class PolicydSettings:
    socket: SocketAddress = SocketAddress(SocketKind.INET, host="127.0.0.1", port=10040)
    socket_permissions: SocketPermissions = SocketPermissions()
    idle_timeout: float = 300.0
    max_connections: int = 0  # 0: derived from the open-files limit (policyd.limits)
    max_request_size: int = 64 * 1024
    order: tuple[str, ...] = POLICY_NAMES  # evaluation order; unlisted ones come after
    on_state_error: StateErrorAction = StateErrorAction.DUNNO
    threads: int = 32  # threads for blocking work (DNS, state backend)
    workers: int = 1  # processes sharing the socket (a supervisor starts them)
    request_timeout: float = 30.0  # seconds from a request's first byte to its last


@dataclass(frozen=True)
class MetricsSettings:
    listen: ListenAddress | None = ListenAddress("127.0.0.1", 9317)
    policyd_listen: ListenAddress | None = ListenAddress("127.0.0.1", 9318)


@dataclass(frozen=True)
class StateSettings:
    backend: StateBackend = StateBackend.SQLITE
    path: Path = Path("/var/lib/mailward/state.db")
    url: str = "redis://127.0.0.1:6379/0"


class QuarantineMode(StrEnum):
    HOLD = "hold"  # Postfix hold queue: an admin releases or deletes it
    HEADER = "header"  # deliver with a marker header; Sieve files it into Junk


@dataclass(frozen=True)
class SpfSettings:
    """[spf]: SPF (RFC 7208) on inbound mail in the milter."""

    enabled: bool = True
    helo: bool = True  # also check the HELO identity
    received_spf: bool = False  # add a Received-SPF header


@dataclass(frozen=True)
class DkimVerifySettings:
    """[dkim]: verification of DKIM signatures on inbound mail."""

    verify: bool = True
    max_signatures: int = 5  # signatures verified per message; the rest are reported
    min_key_bits: int = 1024  # smaller RSA keys give "policy" (RFC 8301 3.2)
    allow_sha1: bool = False  # rsa-sha1 signatures give "policy" unless true (RFC 8301 3.1)
    clock_skew: int = 300  # seconds of tolerance for t= in the future and x= in the past


@dataclass(frozen=True)
class DkimSigningKey:
    """One [[dkim.sign.keys]] table: sign mail from `domain` with this key."""

    domain: str
    selector: str
    key: Path
    algorithm: str = ""  # "rsa-sha256" / "ed25519-sha256" to assert it; "": follows the key
    active: bool = True  # false: loaded, checked and published, but not used (rotation)
    subdomains: bool = False  # also sign mail From subdomains of `domain`

    @property
    def name(self) -> str:
        """How [[dkim.sign.table]] refers to it: "domain:selector"."""
        return f"{self.domain}:{self.selector}"


class SignOrigin(StrEnum):
    """Which outbound mail [dkim.sign] signs (the pipeline's outbound path has three)."""

    AUTHENTICATED = "authenticated"  # SMTP AUTH ({auth_authen})
    TRUSTED_NETWORKS = "trusted_networks"  # client in general.trusted_networks
    LOCAL = "local"  # the sendmail command (non_smtpd_milters)


class SignFailureAction(StrEnum):
    TEMPFAIL = "tempfail"  # 4xx: the client retries (see README, "Signing and keys")
    UNSIGNED = "unsigned"  # pass the message on without a signature (logged, counted)


@dataclass(frozen=True)
class DkimSigningRule:
    """One [[dkim.sign.table]] entry: From `pattern` is signed with `keys`.

    `pattern` is a domain ("example.com"), a subdomain wildcard ("*.example.com"), a
    full address ("alice@example.com") or "*" (any From); `keys` are
    ("domain", "selector") pairs naming [[dkim.sign.keys]] tables.
    """

    pattern: str
    keys: tuple[tuple[str, str], ...]


DKIM_DEFAULT_SIGNED_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "in-reply-to", "references", "resent-date", "resent-from",
    "resent-sender", "resent-to", "resent-cc", "resent-message-id", "list-id",
    "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
    "list-post", "list-owner", "list-archive",
)
DKIM_DEFAULT_OVERSIGNED_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "in-reply-to",
    "references",
)


@dataclass(frozen=True)
class DkimSignSettings:
    """[dkim.sign]: outbound signing."""

    keys: tuple[DkimSigningKey, ...] = ()
    table: tuple[DkimSigningRule, ...] = ()
    key_directory: Path = Path("/etc/mailward/keys")
    origins: tuple[SignOrigin, ...] = tuple(SignOrigin)
    header_canonicalization: str = "relaxed"
    body_canonicalization: str = "relaxed"
    headers: tuple[str, ...] = DKIM_DEFAULT_SIGNED_HEADERS
    oversign: tuple[str, ...] = DKIM_DEFAULT_OVERSIGNED_HEADERS
    expire: int = 0  # seconds from t= to x=; 0: no x=
    body_length: bool = False  # l= (RFC 6376 8.2 warns against it)
    on_error: SignFailureAction = SignFailureAction.TEMPFAIL
    on_oversized: SignFailureAction = SignFailureAction.UNSIGNED


@dataclass(frozen=True)
class DkimSettings:
    verify: DkimVerifySettings = DkimVerifySettings()
    sign: DkimSignSettings = DkimSignSettings()


@dataclass(frozen=True)
class ArcSettings:
    """[arc]: ARC verification (and sealing as an intermediary)."""

    verify: bool = True
    seal: bool = False
    trusted_sealers: tuple[str, ...] = ()  # domains whose ARC results may override DMARC
    # Sealing (with seal = true): the key, and which inbound mail gets an ARC set.  Both
    # lists empty: every inbound message; otherwise mail to one of `seal_recipients`
    # (addresses or domains) or from a client in `seal_relays` (networks).
    seal_domain: str = ""
    seal_selector: str = ""
    seal_key: Path | None = None
    seal_recipients: tuple[str, ...] = ()
    seal_relays: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class IprevSettings:
    """[iprev]: forward-confirmed reverse DNS of the client (RFC 8601 3)."""

    enabled: bool = True


class MultipleFromAction(StrEnum):
    """[dmarc] multiple_from: a message with several From headers or author domains."""

    REJECT = "reject"  # ask for rejection (RFC 5322 allows one From header)
    EVALUATE_EACH = "evaluate_each"  # evaluate every author domain; the strictest wins
    ACCEPT = "accept"  # no DMARC evaluation (lets such mail bypass DMARC)


class MissingFromAction(StrEnum):
    """[dmarc] missing_from: no From header, or none with a usable domain."""

    REJECT = "reject"
    ACCEPT = "accept"  # no DMARC evaluation


@dataclass(frozen=True)
class DmarcSettings:
    """[dmarc]: DMARC evaluation and enforcement."""

    enabled: bool = True
    enforce: bool = True  # false: evaluate and report, never reject or quarantine
    quarantine: QuarantineMode = QuarantineMode.HOLD
    multiple_from: MultipleFromAction = MultipleFromAction.REJECT
    missing_from: MissingFromAction = MissingFromAction.REJECT
    reject_downgrade: bool = False  # true: treat a domain's p=reject as quarantine


@dataclass(frozen=True)
class PolicydSpfSettings:
    """[policyd.spf]: SPF at RCPT time in the policy service."""

    enabled: bool = True
    reject_fail: bool = True  # 550 5.7.23 at RCPT for SPF fail
    protocol_state: str = "RCPT"  # or "MAIL" (check_policy_service in sender restrictions)
    helo: bool = True  # check the HELO identity first (RFC 7208 2.3)
    defer_temperror: bool = False  # DEFER_IF_PERMIT 4.7.24 on temperror (else DUNNO)
    reject_permerror: bool = False  # 550 5.7.24 on permerror (else DUNNO)
    received_spf: bool = True  # PREPEND a Received-SPF header (once per message)


@dataclass(frozen=True)
class PolicydGreylistSettings:
    """[policyd.greylist]: greylisting of (client network, sender, recipient) triplets."""

    enabled: bool = False
    delay: float = 300.0  # seconds a new triplet is deferred
    retry_window: float = 2 * 86400.0  # a retry must come within this after first seen
    expiry: float = 35 * 86400.0  # a passed triplet (and auto-allowed client) is kept
    auto_allow_after: int = 5  # passed triplets after which a client skips greylisting
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    spf_pass_domains: tuple[str, ...] = ()  # large senders: skipped when their SPF passes


class RateLimitIdentity(StrEnum):
    SASL_USERNAME = "sasl_username"
    SENDER = "sender"
    CLIENT_ADDRESS = "client_address"


class RateLimitCount(StrEnum):
    MESSAGES = "messages"
    RECIPIENTS = "recipients"


class RateLimitScope(StrEnum):
    OUTBOUND = "outbound"  # SASL-authenticated clients and general.trusted_networks
    ALL = "all"


@dataclass(frozen=True)
class RateLimitWindow:
    """At most `limit` messages or recipients per `seconds` (fixed, epoch-aligned)."""

    seconds: int
    limit: int


@dataclass(frozen=True)
class RateLimitOverride:
    """[[policyd.ratelimit.overrides]]: other windows for one identity (none: unlimited)."""

    identity: str
    windows: tuple[RateLimitWindow, ...]


@dataclass(frozen=True)
class PolicydRateLimitSettings:
    """[policyd.ratelimit]: outbound rate limits per SASL user, sender or client address."""

    enabled: bool = False
    by: RateLimitIdentity = RateLimitIdentity.SASL_USERNAME
    count: RateLimitCount = RateLimitCount.RECIPIENTS
    applies_to: RateLimitScope = RateLimitScope.OUTBOUND
    protocol_state: str = "RCPT"  # or "DATA", "END-OF-MESSAGE"
    windows: tuple[RateLimitWindow, ...] = (
        RateLimitWindow(60, 60), RateLimitWindow(86400, 1000),
    )
    overrides: tuple[RateLimitOverride, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Everything a Mailward service needs to know, validated."""

    general: GeneralSettings = field(default_factory=GeneralSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    milter: MilterSettings = field(default_factory=MilterSettings)
    policyd: PolicydSettings = field(default_factory=PolicydSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    state: StateSettings = field(default_factory=StateSettings)
    spf: SpfSettings = field(default_factory=SpfSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    arc: ArcSettings = field(default_factory=ArcSettings)
    iprev: IprevSettings = field(default_factory=IprevSettings)
    dmarc: DmarcSettings = field(default_factory=DmarcSettings)
    policyd_spf: PolicydSpfSettings = field(default_factory=PolicydSpfSettings)
    policyd_greylist: PolicydGreylistSettings = field(default_factory=PolicydGreylistSettings)
    policyd_ratelimit: PolicydRateLimitSettings = field(default_factory=PolicydRateLimitSettings)
    #: The settings of inbound checks that read their own section (by check name);
    #: see mailward/checks/registry.py.
    checks: Mapping[str, object] = field(default_factory=lambda: _check_sections(None))
    source: str = "<defaults>"
    dmarc_reports: ReportSettings = field(default_factory=ReportSettings)
    #: [scoring]: weights, thresholds, actions (mailward/scoring.py).
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    tlspolicy: TlsPolicySettings = field(default_factory=TlsPolicySettings)


def _read_scoring(table: Table, checks: Mapping[str, object]) -> ScoringSettings:
    from mailward.checks.registry import declared_symbols

    return read_scoring(table, declared_symbols(checks))


def _check_sections(root: Table | None) -> dict[str, object]:
    """Each check's own section, read by the check's reader (defaults when root is None).

    Imported here, not at the top: check modules import this module's section types.
    """
    from mailward.checks.registry import read_check_sections

    if root is None:
        root = Table({}, "", Problems(None))
    return read_check_sections(root)


# --------------------------------------------------------------------------- reading
def _optional_listen(text: str) -> ListenAddress | None:
    return ListenAddress.parse(text) if text else None


# --------------------------------------------------------------------------- sections


def _read_general(table: Table) -> GeneralSettings:
    defaults = GeneralSettings()
    general = GeneralSettings(
        authserv_id=table.parsed("authserv_id", hostname, defaults.authserv_id),
        trusted_networks=table.string_list(
            "trusted_networks", defaults.trusted_networks, network  # type: ignore[arg-type]
        ),
        on_internal_error=table.choice(
            "on_internal_error", InternalErrorAction, defaults.on_internal_error
        ),
        log_level=table.choice("log_level", LogLevel, defaults.log_level),
    )
    table.finish()
    return general


def _read_dns(table: Table) -> DnsSettings:
    defaults = DnsSettings()
    dns = DnsSettings(
        nameservers=table.string_list("nameservers", defaults.nameservers, nameserver),
        port=table.number("port", int, defaults.port, 1, 65535),
        timeout=table.number("timeout", float, defaults.timeout, 0.05, 60.0),
        message_budget=table.number("message_budget", float, defaults.message_budget, 0.0, 600.0),
        cache_entries=table.number("cache_entries", int, defaults.cache_entries, 0, 10_000_000),
        negative_ttl_max=table.number("negative_ttl_max", int, defaults.negative_ttl_max, 0, 86400),
    )
    table.finish()
    return dns


def _file_mode(text: str) -> int:
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f"expected an octal file mode such as \"0660\", got {text!r}")
    return int(text, 8)


def _group_name(text: str) -> str:
    if text and not re.fullmatch(r"[a-z_][a-z0-9_.\-]*\$?", text):
        raise ValueError(f"{text!r} is not a group name")
    return text


def _read_socket_permissions(table: Table) -> SocketPermissions:
    defaults = SocketPermissions()
    return SocketPermissions(
        mode=table.parsed("socket_mode", _file_mode, defaults.mode),
        group=table.parsed("socket_group", _group_name, defaults.group),
    )


def _read_milter(table: Table) -> MilterSettings:
    defaults = MilterSettings()
    milter = MilterSettings(
        engine=table.choice("engine", MilterEngine, defaults.engine),
        socket=table.parsed("socket", SocketAddress.parse, defaults.socket),
        socket_permissions=_read_socket_permissions(table),
        workers=table.number("workers", int, defaults.workers, 1, 64),
        pin_cpus=table.scalar("pin_cpus", bool, defaults.pin_cpus),
        max_body_size=table.number(
            "max_body_size", int, defaults.max_body_size, 0, 1024 * 1024 * 1024
        ),
        shutdown_timeout=table.number(
            "shutdown_timeout", float, defaults.shutdown_timeout, 0.0, 3600.0
        ),
        mta_timeout=table.number("mta_timeout", int, defaults.mta_timeout, 1, 3600),
        max_headers=table.number("max_headers", int, defaults.max_headers, 10, 1_000_000),
        max_header_bytes=table.number(
            "max_header_bytes", int, defaults.max_header_bytes, 4096, 1024 * 1024 * 1024
        ),
    )
    table.finish()
    return milter


def _read_policyd(table: Table) -> PolicydSettings:
    """[policyd]; its sub-tables ([policyd.spf], ...) have their own readers."""
    defaults = PolicydSettings()
    policyd = PolicydSettings(
        socket=table.parsed("socket", SocketAddress.parse, defaults.socket),
        socket_permissions=_read_socket_permissions(table),
        idle_timeout=table.number("idle_timeout", float, defaults.idle_timeout, 1.0, 86400.0),
        max_connections=table.number(
            "max_connections", int, defaults.max_connections, 0, 100_000
        ),
        max_request_size=table.number(
            "max_request_size", int, defaults.max_request_size, 1024, 16 * 1024 * 1024
        ),
        order=_policy_order(table),
        on_state_error=table.choice("on_state_error", StateErrorAction, defaults.on_state_error),
        threads=table.number("threads", int, defaults.threads, 1, 1024),
        workers=table.number("workers", int, defaults.workers, 1, 64),
        request_timeout=table.number(
            "request_timeout", float, defaults.request_timeout, 0.1, 3600.0
        ),
    )
    table.finish(subtables=POLICYD_SUBTABLES)
    return policyd


def _policy_order(table: Table) -> tuple[str, ...]:
    """[policyd] order: known names, each once; the ones left out follow in default order."""
    names = table.string_list("order", POLICY_NAMES)
    order: list[str] = []
    for index, name in enumerate(names):
        if name not in POLICY_NAMES:
            table.error(f"order[{index}]", f"unknown policy {name!r}; known: "
                        + ", ".join(POLICY_NAMES))
        elif name in order:
            table.error(f"order[{index}]", f"policy {name!r} is listed twice")
        else:
            order.append(name)
    return (*order, *(name for name in POLICY_NAMES if name not in order))


def _read_metrics(table: Table) -> MetricsSettings:
    defaults = MetricsSettings()
    metrics = MetricsSettings(
        listen=table.parsed("listen", _optional_listen, defaults.listen),
        policyd_listen=table.parsed("policyd_listen", _optional_listen, defaults.policyd_listen),
    )
    if metrics.listen is not None and metrics.listen == metrics.policyd_listen:
        table.error("policyd_listen", "must differ from metrics.listen (two services, two ports)")
    table.finish()
    return metrics


def _read_state(table: Table) -> StateSettings:
    defaults = StateSettings()
    state = StateSettings(
        backend=table.choice("backend", StateBackend, defaults.backend),
        path=Path(table.scalar("path", str, str(defaults.path))),
        url=table.scalar("url", str, defaults.url),
    )
    if not state.path.is_absolute():
        table.error("path", f"must be an absolute path, got {str(state.path)!r}")
    if not state.url.startswith(("redis://", "rediss://", "unix://")):
        table.error("url", f"must be a redis://, rediss:// or unix:// URL, got {state.url!r}")
    table.finish()
    return state


# ---------------------------------------------------------------- check sections

POLICYD_SUBTABLES = ("spf", "greylist", "ratelimit")


def _read_spf(table: Table) -> SpfSettings:
    defaults = SpfSettings()
    spf = SpfSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        helo=table.scalar("helo", bool, defaults.helo),
        received_spf=table.scalar("received_spf", bool, defaults.received_spf),
    )
    table.finish()
    return spf


def _read_dkim(table: Table) -> DkimSettings:
    verify_defaults = DkimVerifySettings()
    verify = DkimVerifySettings(
        verify=table.scalar("verify", bool, verify_defaults.verify),
        max_signatures=table.number(
            "max_signatures", int, verify_defaults.max_signatures, 1, 50
        ),
        min_key_bits=table.number(
            "min_key_bits", int, verify_defaults.min_key_bits, 1024, 8192
        ),
        allow_sha1=table.scalar("allow_sha1", bool, verify_defaults.allow_sha1),
        clock_skew=table.number("clock_skew", int, verify_defaults.clock_skew, 0, 86400),
    )
    dkim = DkimSettings(verify=verify, sign=_read_dkim_sign(table.table("sign")))
    table.finish()
    return dkim


def _read_dkim_sign(table: Table) -> DkimSignSettings:
    defaults = DkimSignSettings()
    key_directory = Path(table.scalar("key_directory", str, str(defaults.key_directory)))
    if not key_directory.is_absolute():
        table.error("key_directory", f"must be an absolute path, got {str(key_directory)!r}")
    keys: list[DkimSigningKey] = []
    raw_keys = table.raw_list("keys")
    for index, item in enumerate(raw_keys):
        key_table = table.item_table("keys", index, item)
        if key_table is None:
            continue
        domain = key_table.parsed("domain", domain_name, "")
        selector = key_table.parsed("selector", _selector, "")
        key_path = key_table.scalar("key", str, "")
        algorithm = key_table.scalar("algorithm", str, "")
        active = key_table.scalar("active", bool, True)
        subdomains = key_table.scalar("subdomains", bool, False)
        for name, value in (("domain", domain), ("selector", selector), ("key", key_path)):
            if not value and name not in key_table.reported:
                key_table.error(name, "is required")
        if algorithm and algorithm not in _DKIM_ALGORITHMS:
            key_table.error("algorithm", f"must be one of {', '.join(map(repr, _DKIM_ALGORITHMS))}"
                            f", got {algorithm!r}")
        key_table.finish()
        if domain and selector and key_path:
            # A relative key file is looked up in key_directory.
            key = DkimSigningKey(domain, selector, key_directory / key_path, algorithm,
                                 active, subdomains)
            if any(other.name == key.name for other in keys):
                table.error(f"keys[{index}]", f"a second key for {key.name}")
            keys.append(key)
    names = {key.name for key in keys}
    rules = []
    for index, item in enumerate(table.raw_list("table")):
        rule_table = table.item_table("table", index, item)
        if rule_table is None:
            continue
        pattern = rule_table.parsed("from", _sign_pattern, "")
        refs = rule_table.string_list("keys", (), _key_reference)
        if not pattern and "from" not in rule_table.reported:
            rule_table.error("from", "is required")
        if not refs and "keys" not in rule_table.reported:
            rule_table.error("keys", "must name at least one key (\"domain:selector\")")
        for position, (ref_domain, ref_selector) in enumerate(refs):
            if f"{ref_domain}:{ref_selector}" not in names:
                rule_table.error(f"keys[{position}]",
                                 f"no [[dkim.sign.keys]] for {ref_domain}:{ref_selector}")
        rule_table.finish()
        if pattern and refs:
            rules.append(DkimSigningRule(pattern, tuple(refs)))
    canonicalization = table.scalar("canonicalization", str, "relaxed/relaxed")
    header_canon, _, body_canon = canonicalization.lower().partition("/")
    body_canon = body_canon or "simple"  # RFC 6376 3.5: "c=relaxed" means relaxed/simple
    if header_canon not in ("relaxed", "simple") or body_canon not in ("relaxed", "simple"):
        table.error("canonicalization",
                    f"must be HEADER/BODY with relaxed or simple, got {canonicalization!r}")
        header_canon, body_canon = "relaxed", "relaxed"
    headers = tuple(name.lower() for name in table.string_list(
        "headers", defaults.headers, _header_field_name))
    oversign = tuple(name.lower() for name in table.string_list(
        "oversign", defaults.oversign, _header_field_name))
    if "from" not in headers:
        table.error("headers", "must include \"from\" (RFC 6376 5.4)")
    sign = DkimSignSettings(
        keys=tuple(keys),
        table=tuple(rules),
        key_directory=key_directory,
        origins=tuple(dict.fromkeys(table.string_list("origins", defaults.origins, _sign_origin))),
        header_canonicalization=header_canon,
        body_canonicalization=body_canon,
        headers=tuple(dict.fromkeys(headers)),
        oversign=tuple(dict.fromkeys(oversign)),
        expire=table.number("expire", int, defaults.expire, 0, 10 * 366 * 86400),
        body_length=table.scalar("body_length", bool, defaults.body_length),
        on_error=table.choice("on_error", SignFailureAction, defaults.on_error),
        on_oversized=table.choice("on_oversized", SignFailureAction, defaults.on_oversized),
    )
    table.finish()
    return sign


_DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")


def _sign_pattern(text: str) -> str:
    """A [[dkim.sign.table]] `from`: "*", "*.example.com", "example.com", "a@example.com"."""
    if text == "*":
        return text
    local, at, domain = text.rpartition("@")
    if at and not local:
        raise ValueError(f"{text!r}: an address needs a local part (or write just the domain)")
    wildcard = not at and domain.startswith("*.")
    name = domain_name(domain[2:] if wildcard else domain)
    if at:
        return f"{local.lower()}@{name}"
    return f"*.{name}" if wildcard else name


def _sign_origin(text: str) -> SignOrigin:
    try:
        return SignOrigin(text)
    except ValueError:
        allowed = ", ".join(repr(str(origin)) for origin in SignOrigin)
        raise ValueError(f"must be one of {allowed}, got {text!r}") from None


def _key_reference(text: str) -> tuple[str, str]:
    domain, colon, selector = text.partition(":")
    if not colon:
        raise ValueError(f"{text!r}: name a key as \"domain:selector\"")
    return domain_name(domain), _selector(selector)


def _header_field_name(text: str) -> str:
    # RFC 5322 ftext: printable US-ASCII except the colon.
    if not re.fullmatch(r"[!-9;-~]+", text):
        raise ValueError(f"{text!r} is not a header field name")
    if text.lower() == "dkim-signature":
        raise ValueError("DKIM-Signature must not be signed by another signature")
    return text


def _selector(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,62})", text):
        raise ValueError(f"{text!r} is not a DKIM selector")
    return text


def _read_arc(table: Table) -> ArcSettings:
    defaults = ArcSettings()
    arc = ArcSettings(
        verify=table.scalar("verify", bool, defaults.verify),
        seal=table.scalar("seal", bool, defaults.seal),
        trusted_sealers=table.string_list("trusted_sealers", defaults.trusted_sealers, domain_name),
        **_read_arc_seal(table),
    )
    table.finish()
    return arc


def _read_arc_seal(table: Table) -> dict[str, Any]:
    """The seal_* keys of [arc]; with seal = true, domain, selector and key are required."""
    domain = table.parsed("seal_domain", domain_name, "")
    selector = table.parsed("seal_selector", _selector, "")
    key = table.scalar("seal_key", str, "")
    if key and not key.startswith("/"):
        table.error("seal_key", f"must be an absolute path, got {key!r}")
    if table._raw("seal") is True:  # its type is checked (once) by _read_arc
        for name, value in (("seal_domain", domain), ("seal_selector", selector),
                            ("seal_key", key)):
            if not value and name not in table.reported:
                table.error(name, "is required when seal = true")
    return {
        "seal_domain": domain,
        "seal_selector": selector,
        "seal_key": Path(key) if key else None,
        "seal_recipients": tuple(
            item.lower() for item in table.string_list("seal_recipients", (), _seal_recipient)
        ),
        "seal_relays": table.string_list("seal_relays", (), network),
    }


def _seal_recipient(text: str) -> str:
    local, at, domain = text.rpartition("@")
    if at and not local:
        raise ValueError(f"{text!r}: write a domain as example.com, an address as a@example.com")
    name = domain_name(domain)
    return f"{local}@{name}" if at else name


def _read_iprev(table: Table) -> IprevSettings:
    iprev = IprevSettings(enabled=table.scalar("enabled", bool, IprevSettings().enabled))
    table.finish()
    return iprev


def _read_dmarc(table: Table) -> DmarcSettings:
    defaults = DmarcSettings()
    dmarc = DmarcSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        enforce=table.scalar("enforce", bool, defaults.enforce),
        quarantine=table.choice("quarantine", QuarantineMode, defaults.quarantine),
        multiple_from=table.choice("multiple_from", MultipleFromAction, defaults.multiple_from),
        missing_from=table.choice("missing_from", MissingFromAction, defaults.missing_from),
        reject_downgrade=table.scalar("reject_downgrade", bool, defaults.reject_downgrade),
    )
    table.finish()
    return dmarc


def _read_policyd_spf(table: Table) -> PolicydSpfSettings:
    defaults = PolicydSpfSettings()
    spf = PolicydSpfSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        reject_fail=table.scalar("reject_fail", bool, defaults.reject_fail),
        protocol_state=_protocol_state(table, defaults.protocol_state, ("RCPT", "MAIL")),
        helo=table.scalar("helo", bool, defaults.helo),
        defer_temperror=table.scalar("defer_temperror", bool, defaults.defer_temperror),
        reject_permerror=table.scalar("reject_permerror", bool, defaults.reject_permerror),
        received_spf=table.scalar("received_spf", bool, defaults.received_spf),
    )
    table.finish()
    return spf


def _protocol_state(table: Table, default: str, allowed: tuple[str, ...]) -> str:
    """A policy's `protocol_state`, written as Postfix writes it (any case)."""
    value = table.scalar("protocol_state", str, default).upper()
    if value not in allowed:
        table.error("protocol_state", "must be one of "
                    + ", ".join(repr(state.lower()) for state in allowed) + f", got {value!r}")
        return default
    return value


def _read_policyd_greylist(table: Table) -> PolicydGreylistSettings:
    defaults = PolicydGreylistSettings()
    greylist = PolicydGreylistSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        delay=table.number("delay", float, defaults.delay, 1.0, 86400.0),
        retry_window=table.number(
            "retry_window", float, defaults.retry_window, 2.0, 30 * 86400.0
        ),
        expiry=table.number("expiry", float, defaults.expiry, 60.0, 366 * 86400.0),
        auto_allow_after=table.number(
            "auto_allow_after", int, defaults.auto_allow_after, 0, 1_000_000
        ),
        ipv4_prefix=table.number("ipv4_prefix", int, defaults.ipv4_prefix, 8, 32),
        ipv6_prefix=table.number("ipv6_prefix", int, defaults.ipv6_prefix, 16, 128),
        spf_pass_domains=table.string_list(
            "spf_pass_domains", defaults.spf_pass_domains, domain_name
        ),
    )
    if greylist.retry_window <= greylist.delay:
        table.error("retry_window", f"must be longer than delay ({greylist.delay:g} s), "
                    f"got {greylist.retry_window:g}")
    table.finish()
    return greylist


def _rate_windows(table: Table, key: str, default: tuple[RateLimitWindow, ...]
                  ) -> tuple[RateLimitWindow, ...]:
    """An array of {seconds, limit} tables with distinct lengths."""
    if key not in table._data:  # absent: the default; an empty list is a value
        return default
    windows: list[RateLimitWindow] = []
    for index, item in enumerate(table.raw_list(key)):
        window_table = table.item_table(key, index, item)
        if window_table is None:
            continue
        seconds = window_table.scalar("seconds", int, -1)
        limit = window_table.scalar("limit", int, -1)
        for name, value, low, high in (("seconds", seconds, 1, 366 * 86400),
                                       ("limit", limit, 0, 1_000_000_000)):
            if name in window_table.reported:
                continue
            if value == -1:
                window_table.error(name, "is required")
            elif not low <= value <= high:
                window_table.error(name, f"must be between {low} and {high}, got {value}")
        window_table.finish()
        if 1 <= seconds <= 366 * 86400 and 0 <= limit <= 1_000_000_000:
            if any(window.seconds == seconds for window in windows):
                table.error(f"{key}[{index}]", f"two windows of {seconds} seconds")
            else:
                windows.append(RateLimitWindow(seconds, limit))
    return tuple(windows)


def _read_policyd_ratelimit(table: Table) -> PolicydRateLimitSettings:
    defaults = PolicydRateLimitSettings()
    by = table.choice("by", RateLimitIdentity, defaults.by)
    windows = _rate_windows(table, "windows", defaults.windows)
    if not windows and not any(key.startswith("windows") for key in table.reported):
        table.error("windows", "needs at least one {seconds, limit} window")
    overrides: list[RateLimitOverride] = []
    for index, item in enumerate(table.raw_list("overrides")):
        override = table.item_table("overrides", index, item)
        if override is None:
            continue
        identity = override.scalar("identity", str, "").strip()
        if not identity and "identity" not in override.reported:
            override.error("identity", "is required")
        own = _rate_windows(override, "windows", ())
        override.finish()
        if identity:
            if any(known.identity == identity for known in overrides):
                table.error(f"overrides[{index}]", f"identity {identity!r} is listed twice")
            overrides.append(RateLimitOverride(identity, own))
    ratelimit = PolicydRateLimitSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        by=by,
        count=table.choice("count", RateLimitCount, defaults.count),
        applies_to=table.choice("applies_to", RateLimitScope, defaults.applies_to),
        protocol_state=_protocol_state(
            table, defaults.protocol_state, ("RCPT", "DATA", "END-OF-MESSAGE")
        ),
        windows=windows,
        overrides=tuple(overrides),
    )
    table.finish()
    return ratelimit


def settings_from_mapping(
    data: dict[str, Any], source: str = "<mapping>", text: str | None = None
) -> Settings:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem."""
    problems = Problems(LineLocator(text) if text is not None else None)
    root = Table(data, "", problems)
    settings = Settings(
        general=_read_general(root.table("general")),
        dns=_read_dns(root.table("dns")),
        milter=_read_milter(root.table("milter")),
        policyd=_read_policyd(root.table("policyd")),
        metrics=_read_metrics(root.table("metrics")),
        state=_read_state(root.table("state")),
        spf=_read_spf(root.table("spf")),
        dkim=_read_dkim(root.table("dkim")),
        arc=_read_arc(root.table("arc")),
        iprev=_read_iprev(root.table("iprev")),
        dmarc=_read_dmarc(root.table("dmarc")),
        policyd_spf=_read_policyd_spf(root.table("policyd").table("spf")),
        policyd_greylist=_read_policyd_greylist(root.table("policyd").table("greylist")),
        policyd_ratelimit=_read_policyd_ratelimit(root.table("policyd").table("ratelimit")),
        checks=_check_sections(root),
        source=source,
        dmarc_reports=read_report_settings(root.table("dmarc_reports")),
        tlspolicy=read_tlspolicy(root.table("tlspolicy")),
    )
    settings = replace(settings, scoring=_read_scoring(root.table("scoring"), settings.checks))
    root.finish()
    if problems.items:
        raise ConfigError(source, problems.items)
    return settings


def parse_settings(text: str, source: str = "<string>") -> Settings:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"not valid TOML: {exc}")]) from None
    return settings_from_mapping(data, source, text)


def load_settings(path: Path) -> Settings:
    """Read and validate a configuration file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read: {exc}")]) from None
    return parse_settings(text, str(path))
