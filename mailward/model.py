"""The engine's vocabulary: what comes in (Connection, Transaction) and what goes out (Verdict).

These types are the boundary between the MTA adapters (milters/, policyd/) and the engine.
They are frozen values so that a check can never change what another check sees, and so
that the same Transaction can be evaluated twice (tests, re-evaluation after reload) with
the same result.  Adapters build them; the engine only reads them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:192.0.2.1) as the IPv4 address it is.

    A dual-stack MTA reports IPv4 clients in mapped form; trusted networks, SPF
    (RFC 7208 5) and reverse DNS must all treat them as IPv4.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def strip_angle_brackets(address: str) -> str:
    """An envelope address without the <> the MTA may hand it with ("<>" -> "")."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


class Action(StrEnum):
    """What the MTA should do with the message."""

    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    QUARANTINE = "quarantine"
    DISCARD = "discard"


class Direction(StrEnum):
    """Which path the pipeline takes: verify what comes in, sign what goes out."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(frozen=True)
class SmtpReply:
    """An SMTP reply the MTA should send instead of its own (RFC 5321 + RFC 3463 codes)."""

    code: str
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if len(self.code) != 3 or not self.code.isdigit() or self.code[0] not in "45":
            raise ValueError(f"SMTP reply code must be 4xx or 5xx, got {self.code!r}")
        if self.enhanced and self.enhanced[0] != self.code[0]:
            raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".replace("  ", " ")


@dataclass(frozen=True)
class Connection:
    """One SMTP client connection as the MTA describes it.

    `client_ip` is None when the message did not come over SMTP (Postfix's sendmail
    command through `non_smtpd_milters`).  `auth_user` is the SASL login name
    (`{auth_authen}`), None for unauthenticated sessions.
    """

    client_ip: IPAddress | None
    client_name: str = "unknown"
    client_port: int | None = None
    helo: str | None = None
    auth_user: str | None = None
    macros: Mapping[str, str] = field(default_factory=dict)

    @property
    def client_label(self) -> str:
        """The client the way Postfix logs it: name[address]."""
        address = str(self.client_ip) if self.client_ip is not None else "local"
        return f"{self.client_name}[{address}]"


@dataclass(frozen=True)
class Header:
    """One header field exactly as received: name and raw value (folding kept).

    The value keeps its original bytes decoded with surrogateescape, so that a signature
    check later sees what the sender signed, and non-UTF-8 bytes survive a round trip.
    """

    name: str
    value: str

    def raw_value(self) -> bytes:
        return self.value.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Transaction:
    """One message: envelope (MAIL FROM, RCPT TO) and content (headers, body).

    `body` holds at most the configured cap; `body_size` is what the client really sent,
    and `body_truncated` says that checks see only a prefix.
    """

    queue_id: str | None
    mail_from: str
    recipients: tuple[str, ...]
    headers: tuple[Header, ...]
    body: bytes = b""
    body_size: int = 0
    body_truncated: bool = False
    mail_params: Mapping[str, str | None] = field(default_factory=dict)

    def headers_named(self, name: str) -> Iterator[tuple[int, Header]]:
        """Yield (occurrence, header) for each header called `name`, case-insensitively.

        The occurrence is 1-based among headers of that name, which is the index the
        milter protocol's change-header command uses to address one of several.
        """
        return iter(self._headers_by_name.get(name.lower(), ()))

    @cached_property
    def _headers_by_name(self) -> Mapping[str, tuple[tuple[int, Header], ...]]:
        """Lower-cased name -> its (occurrence, header) pairs, made on the first lookup.

        The checks look headers up by name about fifty times per scored message; a scan
        of every header, lower-casing each name, per lookup was most of their cost."""
        by_name: dict[str, list[Header]] = {}
        for header in self.headers:
            by_name.setdefault(header.name.lower(), []).append(header)
        return {name: tuple(enumerate(found, 1)) for name, found in by_name.items()}

    @property
    def log_id(self) -> str:
        return self.queue_id or "NOQUEUE"


@dataclass(frozen=True)
class AuthProperty:
    """One `ptype.property=value` of an Authentication-Results resinfo (RFC 8601 2.3)."""

    ptype: str
    name: str
    value: str


@dataclass(frozen=True)
class AuthResult:
    """The typed outcome of one authentication method, as it goes into A-R.

    Checks return these; the A-R header is built from them, never from symbol names.
    """

    method: str
    result: str
    reason: str | None = None
    properties: tuple[AuthProperty, ...] = ()


@dataclass(frozen=True)
class InsertHeader:
    """Insert a header at `index` (0 = top of the message)."""

    name: str
    value: str
    index: int = 0


@dataclass(frozen=True)
class AppendHeader:
    """Add a header after the existing ones."""

    name: str
    value: str


@dataclass(frozen=True)
class RemoveHeader:
    """Remove the `occurrence`-th (1-based) header called `name`."""

    name: str
    occurrence: int


HeaderEdit = InsertHeader | AppendHeader | RemoveHeader


_SYMBOL_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
#: Names that passed `_SYMBOL_NAME` already.  Checks emit a small fixed set of names for
#: every message, so each is matched once per process instead of once per symbol; the
#: set is bounded by the names the code and the configuration declare.
_VALID_SYMBOL_NAMES: set[str] = set()


@dataclass(frozen=True)
class Symbol:
    """One named finding of a check, with an optional detail for people.

    The name is from a small fixed set per check (it may become a metric label and a
    scoring key); the detail (a domain, a list's name) is for the log and the
    X-Spam-Status header only, never a label.
    """

    name: str
    detail: str = ""
    #: A magnitude the check measured, for symbols that relay another filter's own
    #: score (SPAMASSASSIN): scoring multiplies the configured weight by it.  None for
    #: every ordinary symbol, whose weight is the configured one.
    value: float | None = None

    def __post_init__(self) -> None:
        if self.name in _VALID_SYMBOL_NAMES:
            return
        if not _SYMBOL_NAME.fullmatch(self.name):
            raise ValueError(f"symbol name must be UPPER_SNAKE_CASE, got {self.name!r}")
        if len(_VALID_SYMBOL_NAMES) < 4096:  # bounded whatever a caller makes up
            _VALID_SYMBOL_NAMES.add(self.name)

    def __str__(self) -> str:
        return f"{self.name}({self.detail})" if self.detail else self.name


@dataclass(frozen=True)
class Verdict:
    """What the engine decided about one message, and why.

    The adapter translates this into MTA commands and does nothing else: `reply` goes
    with reject/tempfail, `header_edits` are applied in order (removals are listed
    before insertions so that occurrence indexes refer to the message as received).
    """

    action: Action
    reply: SmtpReply | None = None
    header_edits: tuple[HeaderEdit, ...] = ()
    results: tuple[AuthResult, ...] = ()
    direction: Direction = Direction.INBOUND
    reason: str = ""
    symbols: tuple[Symbol, ...] = ()
    #: The spam score's summary for the log line (scoring.log_summary), when scored.
    spam: str = ""

    def __post_init__(self) -> None:
        if self.action in (Action.REJECT, Action.TEMPFAIL) and self.reply is None:
            raise ValueError(f"a {self.action} verdict needs an SMTP reply")
