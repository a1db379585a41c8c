"""What a stored message says about its own path: hops, others' results, signatures.

Pure functions over a Transaction: no DNS, no configuration.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from mailward.authresults import authserv_id_of, parse_results
from mailward.message import unfold
from mailward.model import AuthResult, IPAddress, Transaction

_FROM = re.compile(r"\bfrom\s+(\S+)", re.IGNORECASE)
_BY = re.compile(r"\bby\s+(\S+)", re.IGNORECASE)
_BRACKET = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_HELO = re.compile(r"\bhelo[= ]+([^\s)]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Hop:
    """One Received header: `by` received it from `from_name` at `client_ip`."""

    by: str
    from_name: str
    client_ip: IPAddress | None
    received_at: datetime | None
    delay_seconds: float | None = None  # since the previous (older) hop
    raw: str = ""


def _hop(value: str) -> Hop:
    text = " ".join(unfold(value).split())
    clauses, _, date_text = text.rpartition(";")
    if not clauses:
        clauses, date_text = text, ""
    from_match = _FROM.search(clauses)
    by_match = _BY.search(clauses)
    client_ip: IPAddress | None = None
    from_clause = clauses[: by_match.start()] if by_match else clauses
    for candidate in _BRACKET.findall(from_clause):
        try:
            client_ip = ipaddress.ip_address(candidate)
            break
        except ValueError:
            continue
    received_at: datetime | None
    try:
        received_at = parsedate_to_datetime(date_text.strip()) if date_text.strip() else None
    except (TypeError, ValueError):
        received_at = None
    return Hop(
        by=by_match.group(1) if by_match else "",
        from_name=from_match.group(1) if from_match else "",
        client_ip=client_ip,
        received_at=received_at,
        raw=text,
    )


def hops(transaction: Transaction) -> tuple[Hop, ...]:
    """The Received headers oldest first, each with the delay since the one before."""
    parsed = [_hop(header.value) for _, header in transaction.headers_named("Received")]
    parsed.reverse()
    result: list[Hop] = []
    previous: datetime | None = None
    for hop in parsed:
        delay = None
        if hop.received_at is not None and previous is not None:
            try:
                delay = (hop.received_at - previous).total_seconds()
            except TypeError:  # naive vs aware dates
                delay = None
        result.append(Hop(hop.by, hop.from_name, hop.client_ip, hop.received_at, delay, hop.raw))
        if hop.received_at is not None:
            previous = hop.received_at
    return tuple(result)


def helo_of(hop: Hop) -> str | None:
    """The HELO name a Received header records: Postfix writes `from HELO (name [ip])`."""
    match = _HELO.search(hop.raw)
    if match:
        return match.group(1)
    return hop.from_name or None


@dataclass(frozen=True)
class ForeignResults:
    """One Authentication-Results (or ARC-Authentication-Results) found in the message."""

    header: str
    authserv_id: str
    value: str
    ours: bool
    instance: int | None = None  # ARC i=


def foreign_results(transaction: Transaction, our_id: str) -> tuple[ForeignResults, ...]:
    found: list[ForeignResults] = []
    for header in transaction.headers:
        name = header.name.lower()
        value = " ".join(unfold(header.value).split())
        if name == "authentication-results":
            server = authserv_id_of(value) or "?"
            found.append(ForeignResults(header.name, server, value,
                                        server.lower() == our_id.lower()))
        elif name == "arc-authentication-results":
            instance_text, _, rest = value.partition(";")
            instance = _int_tag(instance_text, "i")
            server = authserv_id_of(rest) or "?"
            found.append(ForeignResults(header.name, server, rest.strip(),
                                        server.lower() == our_id.lower(), instance))
    return tuple(found)


@dataclass(frozen=True)
class ArcSeal:
    instance: int | None
    domain: str
    cv: str
    trusted: bool


def arc_seals(transaction: Transaction, trusted_sealers: tuple[str, ...]) -> tuple[ArcSeal, ...]:
    trusted = {domain.lower() for domain in trusted_sealers}
    seals = []
    for _, header in transaction.headers_named("ARC-Seal"):
        tags = tag_list(header.value)
        domain = tags.get("d", "").lower()
        seals.append(ArcSeal(_int_tag(header.value, "i"), domain, tags.get("cv", "").lower(),
                             domain in trusted))
    return tuple(sorted(seals, key=lambda seal: seal.instance or 0))


@dataclass(frozen=True)
class DkimSignature:
    domain: str
    selector: str
    signed_headers: tuple[str, ...]
    body_length: int | None
    canonicalization: str
    b_prefix: str


def dkim_signatures(transaction: Transaction) -> tuple[DkimSignature, ...]:
    signatures = []
    for _, header in transaction.headers_named("DKIM-Signature"):
        tags = tag_list(header.value)
        length = tags.get("l", "")
        signatures.append(DkimSignature(
            domain=tags.get("d", "").lower(),
            selector=tags.get("s", ""),
            signed_headers=tuple(h.strip().lower() for h in tags.get("h", "").split(":")
                                 if h.strip()),
            body_length=int(length) if length.isdigit() else None,
            canonicalization=tags.get("c", "simple/simple"),
            b_prefix=tags.get("b", "")[:8],
        ))
    return tuple(signatures)


def tag_list(value: str) -> dict[str, str]:
    """A DKIM/ARC tag=value list, white space removed from values; repeated tags: first."""
    tags: dict[str, str] = {}
    for part in unfold(value).split(";"):
        name, equals, tag_value = part.partition("=")
        if equals and name.strip():
            tags.setdefault(name.strip().lower(), "".join(tag_value.split()))
    return tags


def _int_tag(value: str, name: str) -> int | None:
    text = tag_list(value).get(name, "")
    return int(text) if text.isdigit() else None


def recorded_results(transaction: Transaction, our_id: str) -> tuple[AuthResult, ...] | None:
    """Our own Authentication-Results as stored at delivery (the topmost one with our
    authserv-id), as typed results; None if the message has none (or it does not parse).

    This is what `explain --offline` reads: what we decided then, with the DNS of then.
    """
    for header in transaction.headers:
        if header.name.lower() != "authentication-results":
            continue
        value = " ".join(unfold(header.value).split())
        if (authserv_id_of(value) or "").lower() != our_id.lower():
            continue
        parsed = parse_results(value)
        return None if parsed.error else parsed.results
    return None
