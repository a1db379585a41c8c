"""Received-chain heuristics: how the message says it travelled, and where that is odd.

Every relay prepends a Received header; spamware that sends direct from a botnet host or
forges hops leaves tell-tale shapes (symbols are names only, no addresses or hosts).
The first four rules look at the topmost hop from a public address by SMTP, the last
relay outside the receiving site.  In the milter that is the SMTP client itself, from
the connection (Postfix hands its own Received line to no milter); for a message file
without a client (explain, the corpus) it is read from the headers:

* RCVD_HELO_IP_LITERAL: its HELO was a bare IP address (a mail server greets with its
  name).
* RCVD_NO_RDNS: it had no reverse DNS ("unknown", or only the bracketed address).
* RCVD_DYNAMIC_RDNS: its reverse name looks like an access line (its address digits in
  the name, or dsl/dialup/ppp/pool/dhcp/cable-style words): end-user machines, not mail
  servers, delivering straight to us.
* RCVD_HELO_NO_DOT: it greeted with a bare single-label name.
* RCVD_OUT_OF_ORDER: an older hop is dated more than 12 hours after the hop above it:
  hops that were made up (a clock off by a few hours is common and not scored).
* MID_ADDED_BY_RELAY: the Message-ID's domain is the name of a receiving server (a
  "by" host down to the one that took the message from the last external relay; in the
  milter, our own Postfix): the sender wrote none and our side had to add it, which
  mail programs never leave to the recipient's servers and bulk scripts do.
* FORGED_FREEMAIL_RCVD: From is a large freemail provider but no hop mentions its
  mail servers: webmail of those providers always relays through them.

Only the first `MAX_HOPS` Received headers are read, each cut to `MAX_HEADER_CHARS`.
The chain's text is what senders and relays wrote; nothing here trusts it for more than
a hint.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.checks.headers import parse_timestamp
from mailward.checks.rulebase import RuleCheck, RuleFindings
from mailward.fromheader import parse_from
from mailward.model import Connection, Transaction

MAX_HOPS = 12
MAX_HEADER_CHARS = 2000
OUT_OF_ORDER_SLACK = 12 * 3600.0

#: Freemail providers whose web and submission mail always passes their own relays:
#: registrable From domain -> names that appear in those relays' Received lines.
FREEMAIL_RELAYS: dict[str, tuple[str, ...]] = {
    "hotmail.com": ("hotmail.com", "msn.com", "outlook.com"),
    "msn.com": ("hotmail.com", "msn.com", "outlook.com"),
    "yahoo.com": ("yahoo.com", "yahoo.net", "yahoodns.net"),
    "aol.com": ("aol.com", "aol.net"),
    "gmail.com": ("google.com", "gmail.com"),
    "excite.com": ("excite.com",),
    "lycos.com": ("lycos.com",),
}

_FROM_PART = re.compile(r"^\s*from\s+(.*?)(?:\s+by\s|;|$)", re.I | re.S)
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")
_RDNS = re.compile(r"\(\s*(?:[^\s()@]+@)?([A-Za-z0-9._-]+)\s*\[", re.I)
_BY_HOST = re.compile(r"\bby\s+([A-Za-z0-9][A-Za-z0-9.-]{0,252})", re.I)
_MID_DOMAIN = re.compile(r"@([A-Za-z0-9][A-Za-z0-9.-]{0,252})>\s*$")
_PROTOCOL = re.compile(r"\swith\s+([A-Za-z0-9_-]+)", re.I)
_HELO_WORD = re.compile(r"\(\s*helo[= ]\s*([^\s()]+)|helo=([^\s()]+)", re.I)
_DYNAMIC_WORDS = re.compile(
    r"(?:^|[.\-\d])(?:a?dsl|dialup|dial-up|dial|ppp|pool|dyn|dynamic|dhcp|cable|modem|"
    r"cpe|client|customer|broadband|catv|user|home)(?:[.\-\d]|$)", re.I)


@dataclass(frozen=True)
class Hop:
    """What one Received header says about the client it came from.

    `rdns` is the client's reverse name as the receiving server recorded it; when
    `rdns_known` is False the header's form does not say (sendmail's `from helo ([ip])`
    may mean either), and no rule reads `rdns`.  `smtp` is False for hops by other
    protocols (QMQP, local, IMAP fetches), which the rules skip.
    """

    helo: str
    rdns: str
    rdns_known: bool
    address: str
    stamp: float | None
    smtp: bool = True
    #: The receiving server's name as the header gives it ("" when it does not).
    by: str = ""


def parse_hop(value: str) -> Hop:
    """The HELO, reverse name and client address of one Received header (bounded).

    Forms understood: Postfix `from helo (rdns|unknown [ip])`, sendmail `from helo
    (rdns [ip])`, Exim `from rdns ([ip] helo=name)` / `from [ip] (helo=name)`, qmail
    `from rdns|unknown (HELO name) (ip)`; anything else yields what it plainly says.
    """
    text = " ".join(value[:MAX_HEADER_CHARS].split())
    _, semicolon, date_text = text.rpartition(";")
    stamp = parse_timestamp(date_text) if semicolon else None
    protocol = _PROTOCOL.search(text)
    smtp = protocol is None or "smtp" in protocol.group(1).lower()
    by_match = _BY_HOST.search(text)
    by = by_match.group(1).lower().rstrip(".") if by_match else ""
    match = _FROM_PART.match(text)
    if match is None:
        return Hop("", "", False, "", stamp, smtp, by)
    clause = match.group(1)
    words = clause.split()
    first = words[0] if words else ""
    helo = first.strip("[]()")
    helo_word = _HELO_WORD.search(clause)
    if helo_word:
        helo = (helo_word.group(1) or helo_word.group(2)).strip("[])")
    addresses = _IPV4.findall(clause)
    address = addresses[0] if addresses else ""
    rdns, known = "", False
    rdns_match = _RDNS.search(clause)
    if rdns_match:
        rdns, known = rdns_match.group(1).lower(), True
    elif first.lower() == "unknown" or (helo_word and first.startswith("[")):
        known = True  # qmail's "from unknown (HELO x)", Exim's "from [ip] (helo=x)"
    elif (helo_word or "exim" in text.lower()) and first and not first.startswith(("(", "[")):
        rdns, known = first.lower(), True  # Exim and qmail put the verified name first
    if rdns == "unknown":
        rdns = ""
    return Hop(helo, rdns, known, address, stamp, smtp, by)


def connection_hop(connection: Connection, own_name: str) -> Hop | None:
    """The hop into us as the MTA reported it, or None without an SMTP client.

    Postfix hands its own Received line to no milter, so the headers start with what
    the client wrote; the client's address, reverse name and HELO come from the
    connection instead, and this hop goes on top of the chain.
    """
    if connection.client_ip is None:
        return None
    name = connection.client_name.lower().rstrip(".")
    return Hop(helo=(connection.helo or "").strip().strip("[]"),
               rdns="" if name in ("", "unknown") else name, rdns_known=True,
               address=str(connection.client_ip), stamp=None, smtp=True,
               by=own_name.lower())


def _is_public(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


def _looks_dynamic(rdns: str, address: str) -> bool:
    octets = address.split(".")
    digits = re.findall(r"\d+", rdns)
    if sum(1 for octet in octets if octet in digits) >= 3:
        return True
    return bool(_DYNAMIC_WORDS.search(rdns))


def hop_symbols(hops: Sequence[Hop]) -> list[Symbol]:
    found: dict[str, Symbol] = {}
    for hop in hops:
        if not hop.smtp or not _is_public(hop.address):
            continue
        # Only the topmost public hop: the last relay outside the receiving site.  In
        # the milter that is the hop our own Postfix wrote (the real client); the hops
        # below it are what the sender and its relays wrote about themselves, and a
        # user's dial-up PC handing mail to its provider's relay is ordinary there.
        if _IPV4.fullmatch(hop.helo):
            found.setdefault("RCVD_HELO_IP_LITERAL", Symbol("RCVD_HELO_IP_LITERAL"))
        elif hop.helo and "." not in hop.helo and hop.helo.lower() != "unknown":
            found.setdefault("RCVD_HELO_NO_DOT", Symbol("RCVD_HELO_NO_DOT"))
        if not hop.rdns_known:
            break
        if not hop.rdns or _IPV4.fullmatch(hop.rdns):
            found.setdefault("RCVD_NO_RDNS", Symbol("RCVD_NO_RDNS"))
        elif _looks_dynamic(hop.rdns, hop.address):
            found.setdefault("RCVD_DYNAMIC_RDNS", Symbol("RCVD_DYNAMIC_RDNS"))
        break
    for newer, older in itertools.pairwise(hops):
        if (newer.stamp is not None and older.stamp is not None
                and older.stamp > newer.stamp + OUT_OF_ORDER_SLACK):
            found.setdefault("RCVD_OUT_OF_ORDER", Symbol("RCVD_OUT_OF_ORDER"))
            break
    return list(found.values())


def forged_freemail_symbols(transaction: Transaction, received: Sequence[str]) -> list[Symbol]:
    for _, header in transaction.headers_named("From"):
        parsed = parse_from(header.value)
        if isinstance(parsed, str) or len(parsed) != 1:
            return []
        domain = ".".join(parsed[0].domain.lower().rstrip(".").split(".")[-2:])
        relays = FREEMAIL_RELAYS.get(domain)
        if relays is None:
            return []
        chain = " ".join(received).lower()
        if any(relay in chain for relay in relays):
            return []
        return [Symbol("FORGED_FREEMAIL_RCVD")]
    return []


def receiving_hosts(hops: Sequence[Hop]) -> set[str]:
    """The "by" hosts of the receiving site: the Received headers from the top down to
    the one recording the topmost public SMTP client, inclusive.  Empty when no hop came
    from outside (mail made on the site itself, such as cron's, gets its Message-ID from
    the local server, rightly)."""
    hosts: set[str] = set()
    for hop in hops:
        if hop.by:
            hosts.add(hop.by)
        if hop.smtp and _is_public(hop.address):
            return hosts
    return set()


def relay_message_id_symbols(transaction: Transaction, hops: Sequence[Hop]) -> list[Symbol]:
    for _, header in transaction.headers_named("Message-ID"):
        domain = _MID_DOMAIN.search(header.value[:MAX_HEADER_CHARS])
        if domain is None or "." not in domain.group(1):
            return []
        relays = receiving_hosts(hops)
        return [Symbol("MID_ADDED_BY_RELAY")] if domain.group(1).lower() in relays else []
    return []


RESULT: ResultKey[RuleFindings] = ResultKey("received")


class ReceivedHeuristics(RuleCheck):
    """The Received-chain rules above: the headers, under the hop into us from the
    connection (`own_name` is our name in that hop, `general.authserv_id`)."""

    name = "received"
    produces = RESULT

    def __init__(self, own_name: str = "") -> None:
        self._own_name = own_name

    def evaluate(self, check_input: CheckInput) -> RuleFindings:
        transaction = check_input.transaction
        received = [header.value[:MAX_HEADER_CHARS] for _, header in
                    itertools.islice(transaction.headers_named("Received"), MAX_HOPS)]
        hops = [parse_hop(value) for value in received]
        ours = connection_hop(check_input.connection, self._own_name)
        if ours is not None:
            hops.insert(0, ours)
        return RuleFindings(tuple([*hop_symbols(hops),
                                   *forged_freemail_symbols(transaction, received),
                                   *relay_message_id_symbols(transaction, hops)]))


def _build(context: BuildContext[None]) -> ReceivedHeuristics | None:
    if not context.settings.scoring.enabled:
        return None
    return ReceivedHeuristics(context.settings.general.authserv_id)


SPEC: CheckSpec[None] = CheckSpec("received", _build)
