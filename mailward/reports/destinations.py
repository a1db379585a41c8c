"""Where a report may go: `rua=`/`ruf=` URIs, their size limits, and their authorization.

A destination outside the policy domain's Organizational Domain must say it accepts
reports for that domain: a TXT record `v=DMARC1...` at
`<policy-domain>._report._dmarc.<destination host>` (RFC 9990 3, a wildcard works
through the DNS itself).  A DNS error is temporary (try again on the next run); no
record means unauthorized (the destination is dropped, and we say so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from mailward.dns import Resolver
from mailward.orgdomain import is_dmarc_record

_SIZE = re.compile(r"^(\d+)([kmgt]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Destination:
    uri: str
    address: str
    max_bytes: int | None = None

    @property
    def host(self) -> str:
        return self.address.rpartition("@")[2].lower()


class Authorization(StrEnum):
    INTERNAL = "internal"  # same Organizational Domain: no check needed
    AUTHORIZED = "authorized"
    UNAUTHORIZED = "unauthorized"
    TEMPORARY_FAILURE = "temporary_failure"


def parse_destination(uri: str) -> Destination | None:
    """A `mailto:` URI with an optional `!size` suffix; None for anything else
    (we send reports by mail only)."""
    text = uri.strip()
    if not text.lower().startswith("mailto:"):
        return None
    rest = text[len("mailto:"):]
    limit: int | None = None
    if "!" in rest:
        rest, _, size = rest.rpartition("!")
        match = _SIZE.match(size)
        if match is None:
            return None
        limit = int(match.group(1)) * _UNITS[match.group(2).lower()]
    address = rest.split("?", 1)[0]
    local, at, host = address.rpartition("@")
    if not at or not local or not re.fullmatch(r"[A-Za-z0-9.\-_]+\.[A-Za-z0-9\-]+", host):
        return None
    return Destination(uri=text, address=address, max_bytes=limit)


def _within(host: str, domain: str) -> bool:
    host, domain = host.lower().rstrip("."), domain.lower().rstrip(".")
    return host == domain or host.endswith("." + domain)


def authorize(resolver: Resolver, destination: Destination, policy_domain: str,
              org_domain: str) -> Authorization:
    if _within(destination.host, org_domain or policy_domain):
        return Authorization.INTERNAL
    answer = resolver.query(f"{policy_domain}._report._dmarc.{destination.host}", "TXT")
    if answer.is_temporary_failure:
        return Authorization.TEMPORARY_FAILURE
    if answer.ok and any(is_dmarc_record(text) for text in answer.records):
        return Authorization.AUTHORIZED
    return Authorization.UNAUTHORIZED
