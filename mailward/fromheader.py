"""The From header field (RFC 5322 3.6.2): who wrote the message, the one parser of it.

DMARC evaluates the author domain, DKIM verification ranks signatures by it, and DKIM
signing picks its key by the author address; all three read From here, so a message
has one author for all of them.

Addresses are read with the email package (groups, comments, obsolete syntax, RFC 2047
encoded words in display names, RFC 6532 UTF-8), except for the common plain shapes,
read by a pattern first (the package's parser costs about as much as a whole DMARC
evaluation).  A value the parser can only read by guessing ("a@b.com c@d.com",
unbalanced brackets, an encoded word inside the address) is INVALID: another program
might read it differently, which is how From spoofing slips past filters.  What the
parser reports about a display name alone (an encoded word not followed by white
space, `=?UTF-8?B?...?=<a@example.com>`) is not such a doubt: the display name never
decides the address.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import _header_value_parser as header_parser
from email.errors import (
    HeaderParseError,
    MessageDefect,
    NonASCIILocalPartDefect,
    ObsoleteHeaderDefect,
    UndecodableBytesDefect,
)
from email.policy import default as _default_policy
from enum import StrEnum

from mailward.dkimcore.text import short as _short
from mailward.model import Transaction
from mailward.orgdomain import ascii_domain

# Bounds on hostile input.  The email package's address parser is super-linear in the
# number of addresses and recursive in comment nesting: a From value longer than this
# is not parsed (RFC 5322 lines are at most 998 characters; a From needs far fewer).
MAX_FROM_LENGTH = 2048
# ... and all From fields of a message together (it takes the parser ~0.1 s to reject
# the worst 2048 characters; a message must not buy more than a few of those).
MAX_FROM_TOTAL_LENGTH = 2 * MAX_FROM_LENGTH
# From header fields looked at.
MAX_FROM_HEADERS = 16


class FromProblem(StrEnum):
    MISSING = "missing"  # no From header field
    MULTIPLE = "multiple"  # several From fields, or addresses in several domains
    INVALID = "invalid"  # a From that cannot be parsed, or without a usable domain


@dataclass(frozen=True)
class FromAddress:
    """One author address: local part and domain as written, and the domain in A-labels."""

    local_part: str
    raw_domain: str
    domain: str


@dataclass(frozen=True)
class AuthorDomains:
    """What the From header fields of a message name as author domains.

    `domains` are distinct, in order, as A-labels; `addresses` every address read, in
    order.  `problem` is None for the normal case: one From field whose addresses all
    share one domain.
    """

    domains: tuple[str, ...]
    headers: int
    problem: FromProblem | None = None
    detail: str = ""
    non_ascii: bool = False
    addresses: tuple[FromAddress, ...] = ()


_FOLD = re.compile(r"\r?\n(?=[ \t])")
# Defects that do not make the address ambiguous: obsolete syntax (a period in a
# display name, a route), a UTF-8 local part (RFC 6532), undecodable bytes (the domain
# is checked separately, so they can only be in a display name or local part).
_TOLERATED_DEFECTS = (ObsoleteHeaderDefect, NonASCIILocalPartDefect, UndecodableBytesDefect)
# Exceptions the stdlib address parser is known to raise on malformed input ("joe@"
# raises IndexError; deeply nested comments exhaust the recursion limit; an unclosed
# domain literal after 8-bit text, '"a, b"\x96<a@[ ', hits an unassigned local in
# _get_ptext_to_endchars: UnboundLocalError, found by bench.fuzz after 1.18M inputs).
_PARSER_ERRORS = (HeaderParseError, IndexError, ValueError, TypeError, AttributeError,
                  RecursionError, UnboundLocalError)


def from_header_values(transaction: Transaction) -> tuple[str, ...]:
    """The raw values of the message's From header fields, in order."""
    return tuple(header.value for _, header in transaction.headers_named("From"))


def author_domains(from_values: Sequence[str]) -> AuthorDomains:
    """The author domains of a message from its raw From header values (RFC 7489 6.6.1)."""
    count = len(from_values)
    if count == 0:
        return AuthorDomains((), 0, FromProblem.MISSING, "no From header")
    if count > MAX_FROM_HEADERS:
        return AuthorDomains((), count, FromProblem.MULTIPLE, f"{count} From headers")
    if sum(len(value) for value in from_values) > MAX_FROM_TOTAL_LENGTH:
        return AuthorDomains(
            (), count, FromProblem.INVALID,
            f"From headers longer than {MAX_FROM_TOTAL_LENGTH} characters in all",
        )
    domains: list[str] = []
    addresses: list[FromAddress] = []
    non_ascii = False
    for value in from_values:
        parsed = parse_from(value)
        if isinstance(parsed, str):
            return AuthorDomains(tuple(domains), count, FromProblem.INVALID, parsed)
        for address in parsed:
            non_ascii = non_ascii or not address.raw_domain.isascii()
            if address.domain not in domains:
                domains.append(address.domain)
        addresses += parsed
    found = tuple(addresses)
    if count > 1:
        return AuthorDomains(
            tuple(domains), count, FromProblem.MULTIPLE, f"{count} From headers", non_ascii,
            found,
        )
    if len(domains) > 1:
        return AuthorDomains(
            tuple(domains), count, FromProblem.MULTIPLE,
            f"From has addresses in {len(domains)} domains", non_ascii, found,
        )
    return AuthorDomains(tuple(domains), count, None, "", non_ascii, found)


def author_domain(transaction: Transaction) -> str | None:
    """The message's one author domain (A-labels), or None when it has no single one."""
    authors = author_domains(from_header_values(transaction))
    return authors.domains[0] if authors.problem is None else None


class AddressProblem(StrEnum):
    """Why a message has no single author address (bounded: a metric label)."""

    NO_FROM = "no_from"
    MULTIPLE_FROM = "multiple_from"
    BAD_FROM = "bad_from"


def author_address(transaction: Transaction) -> FromAddress | AddressProblem:
    """The single From address (RFC 5322 3.6.2 author), or why there is none.

    One From field holding exactly one address with a local part and a usable domain;
    anything else (no From, several, a list, a group of several, unparseable) has no
    single author.
    """
    values = from_header_values(transaction)
    if not values:
        return AddressProblem.NO_FROM
    if len(values) > 1:
        return AddressProblem.MULTIPLE_FROM
    authors = author_domains(values)
    if authors.problem is not None or len(authors.addresses) != 1:
        return AddressProblem.BAD_FROM
    address = authors.addresses[0]
    return address if address.local_part else AddressProblem.BAD_FROM


# --------------------------------------------------------------------------- one value

# The common, unambiguous shapes of a From value, read without the email package: an
# optional display name of plain words or a simple quoted string, then
# <dot-atom@domain>; or a bare dot-atom@domain.  Anything else (comments, encoded
# words, groups, several addresses, quoted local parts, non-ASCII) goes to the email
# package.  tests/unit/test_fromheader.py checks that both readings agree on
# everything this pattern accepts.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_SIMPLE_DOMAIN = r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+"
_SIMPLE_FROM = re.compile(
    rf'[ \t]*(?:(?:"[^"\\\r\n]*"|{_ATEXT}+(?:[ \t]+{_ATEXT}+)*)?[ \t]*'
    rf"<({_DOT_ATOM})@({_SIMPLE_DOMAIN})>|({_DOT_ATOM})@({_SIMPLE_DOMAIN}))[ \t]*"
)


def parse_from(value: str) -> list[FromAddress] | str:
    """Every address of one raw From value, or why they cannot be told."""
    text = _FOLD.sub("", value)
    if len(text) > MAX_FROM_LENGTH:
        return f"From header longer than {MAX_FROM_LENGTH} characters"
    simple = _simple_from(text)
    return simple if simple is not None else _parse_from_email(text)


def _simple_from(text: str) -> list[FromAddress] | str | None:
    """The fast reading of a From value in one of the simple shapes; None otherwise."""
    if "=?" in text or not text.isascii():
        return None
    match = _SIMPLE_FROM.fullmatch(text)
    if match is None:
        return None
    local = match.group(1) or match.group(3)
    raw = match.group(2) or match.group(4)
    domain = _author_domain(raw)
    if domain is None:
        return f"From address without a usable domain: {_short(raw)}"
    return [FromAddress(local, raw, domain)]


def _parse_from_email(text: str) -> list[FromAddress] | str:
    """The email package's reading of a From value (RFC 5322, with obsolete syntax)."""
    try:
        header = _default_policy.header_factory("From", text)
        addresses = header.addresses
        defects: Sequence[MessageDefect] = header.defects
        if any(not isinstance(defect, _TOLERATED_DEFECTS) for defect in defects):
            defects = _address_defects(text)
    except _PARSER_ERRORS as exc:
        return f"unparseable From header ({type(exc).__name__})"
    for defect in defects:
        if not isinstance(defect, _TOLERATED_DEFECTS):
            return f"malformed From header: {_short(str(defect), 80)}"
    if not addresses:
        return "From header has no address"
    result = []
    for address in addresses:
        raw = str(address.domain)
        domain = _author_domain(raw)
        if domain is None:
            shown = _short(raw) if raw else "(none)"
            return f"From address without a usable domain: {shown}"
        result.append(FromAddress(str(address.username), raw, domain))
    return result


def _address_defects(text: str) -> list[MessageDefect]:
    """The parser's defects for `text` except those inside a display name, in order.

    Only reached for a value with defects; parsing it again is cheaper than keeping
    the parse tree of every From.
    """
    address_list, _ = header_parser.get_address_list(text)
    found: list[MessageDefect] = []
    pending: list[object] = [address_list]
    while pending:
        token = pending.pop()
        if getattr(token, "token_type", "") == "display-name":
            continue
        found.extend(getattr(token, "defects", ()))
        if isinstance(token, list):
            pending.extend(reversed(token))
    return found


def _author_domain(raw: str) -> str | None:
    """A From domain one can authenticate: a multi-label DNS name, not an address literal."""
    domain = ascii_domain(raw)
    if domain is None or "." not in domain or domain.rsplit(".", 1)[1].isdigit():
        return None
    return domain
