"""The message as bytes, and the small header helpers several checks need.

A `Transaction` keeps each header as the MTA handed it to us: the name, and the value
as it followed the colon (leading white space and folding kept, decoded with
surrogateescape).  Postfix joins folded lines with a bare LF; on the wire, and in
what a DKIM or ARC signer hashed, they end in CRLF.  `raw_message` and the helpers
below rebuild the RFC 5322 form: `name ":" value CRLF` per header, line ends inside
folded values normalised to CRLF, an empty line, then the body as received.

Only line ends are normalised; every other byte (trailing white space, tabs, non-ASCII)
is kept, because signatures with "simple" canonicalization cover it.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable

from mailward.model import Header, Transaction

CRLF = b"\r\n"

_FOLD = re.compile(r"\r?\n(?=[ \t])")


def to_crlf(data: bytes) -> bytes:
    """`data` with every line end (LF or CRLF) as CRLF; a lone CR is left alone.

    Data that already uses CRLF throughout is returned as is, without copying.
    """
    newlines = data.count(b"\n")
    if newlines == 0 or data.count(b"\r\n") == newlines:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def header_value_bytes(header: Header) -> bytes:
    """The header's raw value (after the colon) with folded line ends as CRLF.

    No trailing CRLF: that belongs to the header line, see `header_line`.
    """
    return to_crlf(header.raw_value())


def header_name_bytes(header: Header) -> bytes:
    return header.name.encode("utf-8", "surrogateescape")


def header_line(header: Header) -> bytes:
    """One header as it appears in the message: `name:value` CRLF."""
    return header_name_bytes(header) + b":" + header_value_bytes(header) + CRLF


def header_block(headers: Iterable[Header]) -> bytes:
    """All header lines, without the empty line that ends the header section."""
    return b"".join(header_line(header) for header in headers)


def raw_message(transaction: Transaction) -> bytes:
    """The whole message as RFC 5322 bytes: header lines, empty line, body.

    The body is what the adapter kept (at most `milter.max_body_size` bytes; see
    `Transaction.body_truncated`), unchanged: Postfix already hands it over with CRLF
    line ends.
    """
    return header_block(transaction.headers) + CRLF + transaction.body


_HEADER_LINE = re.compile(rb"([!-9;-~]+)[ \t]*:")


def transaction_from_bytes(
    raw: bytes,
    *,
    mail_from: str = "",
    recipients: tuple[str, ...] = (),
    queue_id: str | None = None,
) -> Transaction:
    """A Transaction holding `raw` the way Postfix hands a message to the milter.

    For tests, conformance suites and command-line tools that start from a file.  LF or
    CRLF line ends; a leading mbox "From " line is dropped.  Header values keep their
    leading white space and join folded lines with a bare LF, as Postfix sends them
    (with SMFIP_HDR_LEADSPC); the body gets CRLF line ends.  As in Postfix, the header
    section ends at the empty line or at the first line that is neither a header nor a
    continuation, which then starts the body.
    """
    text = raw.replace(b"\r\n", b"\n")
    if text.startswith(b"From "):
        text = text.partition(b"\n")[2]
    headers: list[Header] = []
    lines = text.split(b"\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if line[:1] in (b" ", b"\t") and headers:
            last = headers[-1]
            continuation = line.decode("utf-8", "surrogateescape")
            headers[-1] = Header(last.name, f"{last.value}\n{continuation}")
        else:
            match = _HEADER_LINE.match(line)
            if match is None:
                if not line:
                    index += 1  # the empty line that ends the header section
                break
            name = match.group(1).decode("ascii")
            value = line[match.end():].decode("utf-8", "surrogateescape")
            headers.append(Header(name, value))
        index += 1
    body = b"\r\n".join(lines[index:])
    return Transaction(
        queue_id=queue_id,
        mail_from=mail_from,
        recipients=recipients,
        headers=tuple(headers),
        body=body,
        body_size=len(body),
    )


def unfold(value: str) -> str:
    """A header value with folding undone (RFC 5322 2.2.3): line breaks before WSP go."""
    return _FOLD.sub("", value)


def header_values(transaction: Transaction, name: str) -> tuple[str, ...]:
    """The unfolded values of every header called `name`, in message order.

    Leading and trailing white space is stripped; an absent header gives ().
    """
    return tuple(unfold(header.value).strip() for _, header in transaction.headers_named(name))


def first_header(transaction: Transaction, name: str) -> Header | None:
    """The topmost header called `name` (case-insensitive), or None."""
    for _, header in transaction.headers_named(name):
        return header
    return None


def address_domains(value: str) -> tuple[str, ...]:
    """The lower-cased domains of the addresses in an address-list header value.

    Lenient, as a header parser that feeds policy must be: display names, comments and
    groups are skipped; an address without a domain contributes nothing.  Non-ASCII
    domains are returned as they are written (no IDNA conversion here).
    """
    domains = []
    for _, address in email.utils.getaddresses([unfold(value)]):
        local, at, domain = address.rpartition("@")
        domain = domain.strip().rstrip(".").lower()
        if at and local and domain:
            domains.append(domain)
    return tuple(domains)


def from_domain(transaction: Transaction) -> str | None:
    """The domain of the single From address (RFC 5322 author), or None.

    None when there is no From header, more than one, or it does not name exactly one
    address with a domain: those messages have no single author domain to align with.
    """
    values = header_values(transaction, "From")
    if len(values) != 1:
        return None
    domains = address_domains(values[0])
    return domains[0] if len(domains) == 1 else None
