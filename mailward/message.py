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
