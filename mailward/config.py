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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from mailward.model import Action

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

T = TypeVar("T")

DEFAULT_CONFIG_PATH = Path("/etc/mailward/mailward.toml")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path}: {self.message}{where}" if self.path else f"{self.message}{where}"


class ConfigError(Exception):
    """The configuration is unusable; `problems` lists every reason."""

    def __init__(self, source: str, problems: Iterable[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} configuration error(s):\n{lines}")


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
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted_networks)


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 2.0
    cache_entries: int = 20000
    negative_ttl_max: int = 900


@dataclass(frozen=True)
class SocketPermissions:
    """Who may connect to a unix socket: Postfix's smtpd runs as user `postfix`."""

    mode: int = 0o660
    group: str = ""  # empty: the service's own group


@dataclass(frozen=True)
class MilterSettings:
    socket: SocketAddress = SocketAddress(SocketKind.UNIX, path="/run/mailward/milter.sock")
    socket_permissions: SocketPermissions = SocketPermissions()
    workers: int = 1
    max_body_size: int = 10 * 1024 * 1024
    shutdown_timeout: float = 30.0
    mta_timeout: int = 300


@dataclass(frozen=True)
class PolicydSettings:
    socket: SocketAddress = SocketAddress(SocketKind.INET, host="127.0.0.1", port=10040)
    socket_permissions: SocketPermissions = SocketPermissions()
    idle_timeout: float = 300.0
    max_connections: int = 1000
    max_request_size: int = 64 * 1024


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


@dataclass(frozen=True)
class DkimSigningKey:
    """One [[dkim.sign.keys]] table: sign mail from `domain` with this key."""

    domain: str
    selector: str
    key: Path


@dataclass(frozen=True)
class DkimSignSettings:
    """[dkim.sign]: outbound signing."""

    keys: tuple[DkimSigningKey, ...] = ()


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


@dataclass(frozen=True)
class IprevSettings:
    """[iprev]: forward-confirmed reverse DNS of the client (RFC 8601 3)."""

    enabled: bool = True


@dataclass(frozen=True)
class DmarcSettings:
    """[dmarc]: DMARC evaluation and enforcement."""

    enabled: bool = True
    enforce: bool = True  # false: evaluate and report, never reject or quarantine
    quarantine: QuarantineMode = QuarantineMode.HOLD


@dataclass(frozen=True)
class PolicydSpfSettings:
    """[policyd.spf]: SPF at RCPT time in the policy service."""

    enabled: bool = True
    reject_fail: bool = True  # 550 5.7.23 at RCPT for SPF fail


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
    source: str = "<defaults>"


# --------------------------------------------------------------------------- reading


class _LineLocator:
    """Finds the line a key was written on, for error messages.

    tomllib does not report positions, so this scans the text: it tracks the current
    [table] header and records where each `key =` appears.  Good enough to point an
    admin at the right line; when it cannot tell, the error simply has no line.
    """

    _TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")

    def __init__(self, text: str) -> None:
        self._lines: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            if match := self._TABLE.match(line):
                table = self._normalise(match.group(1))
                self._lines.setdefault(table, number)
            elif match := self._KEY.match(line):
                key = self._normalise(match.group(1))
                self._lines.setdefault(f"{table}.{key}" if table else key, number)

    @staticmethod
    def _normalise(dotted: str) -> str:
        return ".".join(part.strip().strip("\"'") for part in dotted.split("."))

    def line_of(self, path: str) -> int | None:
        return self._lines.get(re.sub(r"\[\d+\]", "", path))


class _Problems:
    def __init__(self, locator: _LineLocator | None) -> None:
        self.items: list[ConfigProblem] = []
        self._locator = locator

    def add(self, path: str, message: str) -> None:
        line = self._locator.line_of(path) if self._locator else None
        self.items.append(ConfigProblem(path, message, line))


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


class _Table:
    """Typed, path-aware access to one TOML table; remembers which keys were read."""

    def __init__(self, data: dict[str, Any], path: str, problems: _Problems) -> None:
        self._data = data
        self._path = path
        self._problems = problems
        self._seen: set[str] = set()

    def _key_path(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _raw(self, key: str) -> Any:
        self._seen.add(key)
        return self._data.get(key)

    def error(self, key: str, message: str) -> None:
        self._problems.add(self._key_path(key), message)

    def scalar(self, key: str, kind: type[T], default: T) -> T:
        value = self._raw(key)
        if value is None:
            return default
        # bool is an int in Python, but `workers = true` is a mistake, not 1.
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        if not ok:
            self.error(key, f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}")
            return default
        return value  # type: ignore[no-any-return]

    def number(
        self, key: str, kind: type[T], default: T, minimum: float, maximum: float
    ) -> T:
        value = self.scalar(key, kind, default)
        if not minimum <= value <= maximum:  # type: ignore[operator]
            self.error(key, f"must be between {minimum:g} and {maximum:g}, got {value}")
            return default
        return value

    def choice(self, key: str, kind: type[T], default: T) -> T:
        value = self.scalar(key, str, str(default))
        try:
            return kind(value)  # type: ignore[call-arg]
        except ValueError:
            allowed = ", ".join(repr(str(member)) for member in kind)  # type: ignore[attr-defined]
            self.error(key, f"must be one of {allowed}, got {value!r}")
            return default

    def parsed(self, key: str, parse: Callable[[str], T], default: T) -> T:
        value = self._raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {_describe(value)}")
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return default

    def string_list(
        self, key: str, default: tuple[str, ...], parse: Callable[[str], T] | None = None
    ) -> tuple[Any, ...]:
        value = self._raw(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.error(key, f"expected a list of strings, got {_describe(value)}")
            return default
        if parse is None:
            return tuple(value)
        parsed = []
        for index, item in enumerate(value):
            try:
                parsed.append(parse(item))
            except ValueError as exc:
                self.error(f"{key}[{index}]", str(exc))
        return tuple(parsed)

    def raw_list(self, key: str) -> list[Any]:
        """An array (of tables, typically): [[dkim.sign.keys]]."""
        value = self._raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"expected an array of tables, got {_describe(value)}")
            return []
        return value

    def item_table(self, key: str, index: int, item: Any) -> _Table | None:
        if not isinstance(item, dict):
            self.error(f"{key}[{index}]", f"expected a table, got {_describe(item)}")
            return None
        return _Table(item, self._key_path(f"{key}[{index}]"), self._problems)

    @property
    def reported(self) -> set[str]:
        """Keys of this table that already have an error (so "required" is not added)."""
        prefix = f"{self._path}." if self._path else ""
        return {
            problem.path[len(prefix):] for problem in self._problems.items
            if problem.path.startswith(prefix)
        }

    def table(self, key: str) -> _Table:
        value = self._raw(key)
        if value is None:
            value = {}
        elif not isinstance(value, dict):
            self.error(key, f"expected a table, got {_describe(value)}")
            value = {}
        return _Table(value, self._key_path(key), self._problems)

    def finish(self, subtables: Iterable[str] = ()) -> None:
        """Report every key nobody asked for: in a config file, a typo is an error."""
        allowed = self._seen | set(subtables)
        for key in self._data:
            if key not in allowed:
                what = "section" if isinstance(self._data[key], dict) else "key"
                self.error(key, f"unknown {what}")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network in CIDR form: {exc}") from None


def _hostname(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?", text):
        raise ValueError(f"{text!r} is not a host name")
    return text


def _nameserver(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _optional_listen(text: str) -> ListenAddress | None:
    return ListenAddress.parse(text) if text else None


# --------------------------------------------------------------------------- sections


def _read_general(table: _Table) -> GeneralSettings:
    defaults = GeneralSettings()
    general = GeneralSettings(
        authserv_id=table.parsed("authserv_id", _hostname, defaults.authserv_id),
        trusted_networks=table.string_list(
            "trusted_networks", defaults.trusted_networks, _network  # type: ignore[arg-type]
        ),
        on_internal_error=table.choice(
            "on_internal_error", InternalErrorAction, defaults.on_internal_error
        ),
        log_level=table.choice("log_level", LogLevel, defaults.log_level),
    )
    table.finish()
    return general


def _read_dns(table: _Table) -> DnsSettings:
    defaults = DnsSettings()
    dns = DnsSettings(
        nameservers=table.string_list("nameservers", defaults.nameservers, _nameserver),
        port=table.number("port", int, defaults.port, 1, 65535),
        timeout=table.number("timeout", float, defaults.timeout, 0.05, 60.0),
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


def _read_socket_permissions(table: _Table) -> SocketPermissions:
    defaults = SocketPermissions()
    return SocketPermissions(
        mode=table.parsed("socket_mode", _file_mode, defaults.mode),
        group=table.parsed("socket_group", _group_name, defaults.group),
    )


def _read_milter(table: _Table) -> MilterSettings:
    defaults = MilterSettings()
    milter = MilterSettings(
        socket=table.parsed("socket", SocketAddress.parse, defaults.socket),
        socket_permissions=_read_socket_permissions(table),
        workers=table.number("workers", int, defaults.workers, 1, 64),
        max_body_size=table.number(
            "max_body_size", int, defaults.max_body_size, 0, 1024 * 1024 * 1024
        ),
        shutdown_timeout=table.number(
            "shutdown_timeout", float, defaults.shutdown_timeout, 0.0, 3600.0
        ),
        mta_timeout=table.number("mta_timeout", int, defaults.mta_timeout, 1, 3600),
    )
    table.finish()
    return milter


def _read_policyd(table: _Table) -> PolicydSettings:
    """[policyd]; its sub-tables ([policyd.spf], ...) have their own readers."""
    defaults = PolicydSettings()
    policyd = PolicydSettings(
        socket=table.parsed("socket", SocketAddress.parse, defaults.socket),
        socket_permissions=_read_socket_permissions(table),
        idle_timeout=table.number("idle_timeout", float, defaults.idle_timeout, 1.0, 86400.0),
        max_connections=table.number(
            "max_connections", int, defaults.max_connections, 1, 100_000
        ),
        max_request_size=table.number(
            "max_request_size", int, defaults.max_request_size, 1024, 16 * 1024 * 1024
        ),
    )
    table.finish(subtables=POLICYD_SUBTABLES)
    return policyd


def _read_metrics(table: _Table) -> MetricsSettings:
    defaults = MetricsSettings()
    metrics = MetricsSettings(
        listen=table.parsed("listen", _optional_listen, defaults.listen),
        policyd_listen=table.parsed("policyd_listen", _optional_listen, defaults.policyd_listen),
    )
    if metrics.listen is not None and metrics.listen == metrics.policyd_listen:
        table.error("policyd_listen", "must differ from metrics.listen (two services, two ports)")
    table.finish()
    return metrics


def _read_state(table: _Table) -> StateSettings:
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

POLICYD_SUBTABLES = ("spf",)


def _domain(text: str) -> str:
    name = text.rstrip(".").lower()
    labels = name.split(".")
    if len(labels) < 2 or not all(
        re.fullmatch(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9])?", label) for label in labels
    ):
        raise ValueError(f"{text!r} is not a domain name")
    return name


def _read_spf(table: _Table) -> SpfSettings:
    defaults = SpfSettings()
    spf = SpfSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        helo=table.scalar("helo", bool, defaults.helo),
        received_spf=table.scalar("received_spf", bool, defaults.received_spf),
    )
    table.finish()
    return spf


def _read_dkim(table: _Table) -> DkimSettings:
    verify_defaults = DkimVerifySettings()
    verify = DkimVerifySettings(
        verify=table.scalar("verify", bool, verify_defaults.verify),
        max_signatures=table.number(
            "max_signatures", int, verify_defaults.max_signatures, 1, 50
        ),
    )
    dkim = DkimSettings(verify=verify, sign=_read_dkim_sign(table.table("sign")))
    table.finish()
    return dkim


def _read_dkim_sign(table: _Table) -> DkimSignSettings:
    keys = []
    raw_keys = table.raw_list("keys")
    for index, item in enumerate(raw_keys):
        key_table = table.item_table("keys", index, item)
        if key_table is None:
            continue
        domain = key_table.parsed("domain", _domain, "")
        selector = key_table.parsed("selector", _selector, "")
        key_path = key_table.scalar("key", str, "")
        for name, value in (("domain", domain), ("selector", selector), ("key", key_path)):
            if not value and name not in key_table.reported:
                key_table.error(name, "is required")
        if key_path and not key_path.startswith("/"):
            key_table.error("key", f"must be an absolute path, got {key_path!r}")
        key_table.finish()
        if domain and selector and key_path:
            keys.append(DkimSigningKey(domain, selector, Path(key_path)))
    sign = DkimSignSettings(keys=tuple(keys))
    table.finish()
    return sign


def _selector(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,62})", text):
        raise ValueError(f"{text!r} is not a DKIM selector")
    return text


def _read_arc(table: _Table) -> ArcSettings:
    defaults = ArcSettings()
    arc = ArcSettings(
        verify=table.scalar("verify", bool, defaults.verify),
        seal=table.scalar("seal", bool, defaults.seal),
        trusted_sealers=table.string_list("trusted_sealers", defaults.trusted_sealers, _domain),
    )
    table.finish()
    return arc


def _read_iprev(table: _Table) -> IprevSettings:
    iprev = IprevSettings(enabled=table.scalar("enabled", bool, IprevSettings().enabled))
    table.finish()
    return iprev


def _read_dmarc(table: _Table) -> DmarcSettings:
    defaults = DmarcSettings()
    dmarc = DmarcSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        enforce=table.scalar("enforce", bool, defaults.enforce),
        quarantine=table.choice("quarantine", QuarantineMode, defaults.quarantine),
    )
    table.finish()
    return dmarc


def _read_policyd_spf(table: _Table) -> PolicydSpfSettings:
    defaults = PolicydSpfSettings()
    spf = PolicydSpfSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        reject_fail=table.scalar("reject_fail", bool, defaults.reject_fail),
    )
    table.finish()
    return spf


def settings_from_mapping(
    data: dict[str, Any], source: str = "<mapping>", text: str | None = None
) -> Settings:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem."""
    problems = _Problems(_LineLocator(text) if text is not None else None)
    root = _Table(data, "", problems)
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
        source=source,
    )
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
