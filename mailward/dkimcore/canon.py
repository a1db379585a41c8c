"""DKIM canonicalization (RFC 6376 3.4) and header selection (5.4.2), over bytes.

Signer and verifier must hash the very same octets, so everything here works on the
raw bytes of the message: header values exactly as received (non-ASCII bytes kept),
the body as the MTA handed it over.  Line ends are normalised to CRLF first, because
Postfix joins folded header lines with a bare LF, and what leaves the MTA (and what a
verifier hashes) uses CRLF.

Two header algorithms (`simple` keeps the field as is, `relaxed` lower-cases the name,
unfolds and squeezes white space) and two body algorithms (`simple` only drops
trailing empty lines, `relaxed` also squeezes white space inside lines and drops it at
their ends).  Everything runs in linear time: a regular expression over white space
(as dkimpy's relaxed body canonicalization uses) takes quadratic time on long runs of
it, which a sender can use to stall a worker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from enum import StrEnum

from mailward.dkimcore.taglist import strip_b_value
from mailward.message import CRLF, to_crlf

_WSP_RUN = re.compile(rb"[ \t]+")


class Canon(StrEnum):
    """A canonicalization algorithm, as c= names it."""

    SIMPLE = "simple"
    RELAXED = "relaxed"


def parse_canonicalization(value: bytes) -> tuple[Canon, Canon] | None:
    """A c= value as (header, body) algorithms; None for one we do not know.

    RFC 6376 3.5: "c=relaxed" means relaxed/simple; the names are case-insensitive.
    """
    header, slash, body = value.decode("ascii", "replace").lower().partition("/")
    header_canon = _CANON_NAMES.get(header)
    body_canon = _CANON_NAMES.get(body) if slash else Canon.SIMPLE
    if header_canon is None or body_canon is None:
        return None
    return header_canon, body_canon


#: c= names to algorithms: a dict lookup where Canon(name) costs an Enum call per name.
_CANON_NAMES = {canon.value: canon for canon in Canon}


# --------------------------------------------------------------------------- body


def content_end(data: bytes) -> int:
    """Length of `data` without its trailing run of CRLF pairs ("empty lines"), in O(n).

    The trailing run is the longest suffix that is a whole number of b"\\r\\n"; a lone
    CR or LF before it belongs to the content.
    """
    window = data[-64:]  # rstrip copies: look at the end first, the whole only if needed
    kept = len(window.rstrip(b"\r\n"))
    tail_start = len(data) - len(window) + kept if kept else len(data.rstrip(b"\r\n"))
    tail = data[tail_start:]
    if not tail.endswith(b"\n"):
        return len(data)
    # In the tail (only CR and LF), the CRLF run is the alternating stretch at its end.
    start = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    if tail[start : start + 1] == b"\n":
        start += 1
    return tail_start + start


def canonicalize_body(body: bytes, canon: str) -> bytes:
    """The body canonicalized as RFC 6376 3.4.3 (simple) or 3.4.4 (relaxed).

    Line ends may be LF or CRLF (`message.to_crlf` is applied, without a copy when the
    body already uses CRLF).  A non-empty body without a final CRLF gets one before
    the rules apply.
    """
    body = to_crlf(body)
    if body and not body.endswith(CRLF):
        body += CRLF
    if canon == Canon.RELAXED:
        body = compress_wsp(body).replace(b" \r\n", CRLF)
    end = content_end(body)
    if not end:
        return b"" if canon == Canon.RELAXED else CRLF
    if end == len(body) - 2:
        return body  # already ends in exactly one CRLF: no copy
    return body[:end] + CRLF


def compress_wsp(data: bytes) -> bytes:
    """Every run of spaces and tabs as one space.

    Done with bytes.replace, which runs at memory speed: tabs become spaces, then double
    spaces are halved until none is left (log2 of the longest run passes, each over a
    shrinking buffer).  A regular expression does the same an order of magnitude slower,
    which matters for multi-megabyte bodies.
    """
    data = data.replace(b"\t", b" ")
    while True:
        halved = data.replace(b"  ", b" ")
        if len(halved) == len(data):
            return data
        data = halved


# --------------------------------------------------------------------------- headers


def header_key(name: bytes) -> bytes:
    """A field name as h= lists name it: lower-cased, white space before the colon gone."""
    return name.lower().rstrip(b" \t")


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header field canonicalized as RFC 6376 3.4.2 (relaxed), with its CRLF."""
    unfolded = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in unfolded or b"  " in unfolded:  # else there is no run to squeeze
        unfolded = _WSP_RUN.sub(b" ", unfolded)
    compact = unfolded.strip(b" ")
    return header_key(name) + b":" + compact + CRLF


def simple_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.1: the field unchanged (line ends as CRLF), CRLF-terminated."""
    return name + b":" + to_crlf(value) + CRLF


def canonical_header(canon: str, name: bytes, value: bytes) -> bytes:
    """One header field (raw name, raw value after the colon) in `canon` form."""
    if canon == Canon.RELAXED:
        return relaxed_header(name, value)
    return simple_header(name, value)


def select_headers(keys: Sequence[bytes], wanted: Iterable[bytes]) -> list[int]:
    """The positions of the header instances an h= list refers to (RFC 6376 5.4.2).

    `keys` are the message's field names as `header_key` gives them, top first;
    `wanted` the h= names, lower-case.  Several instances of one name are taken from
    the bottom up; a name listed more often than it occurs (oversigning) refers to a
    non-existent field, which contributes nothing to the hash and nothing here.
    """
    positions: dict[bytes, list[int]] = {}
    for index, key in enumerate(keys):
        positions.setdefault(key, []).append(index)
    chosen = []
    for name in wanted:
        instances = positions.get(name)
        if instances:  # the bottom-most instance not taken yet
            chosen.append(instances.pop())
    return chosen


def canonical_headers(
    canon: str, headers: Sequence[tuple[bytes, bytes]], names: Iterable[str | bytes]
) -> bytes:
    """The canonical form of the headers an h= list signs, concatenated in h= order.

    `headers` are (raw name, raw value) pairs in message order; `names` the h= list.
    """
    keys = [header_key(name) for name, _ in headers]
    wanted = (name.lower() if isinstance(name, bytes) else name.lower().encode("ascii")
              for name in names)
    return b"".join(canonical_header(canon, *headers[index])
                    for index in select_headers(keys, wanted))


def signature_header_data(
    canon: str, name: bytes, value: bytes, *, b_emptied: bool = False
) -> bytes:
    """The signature field itself as it is hashed (RFC 6376 3.7, RFC 8617 4.1.2-3):
    in `canon` form with b='s value emptied, without the final CRLF.

    `b_emptied`: the caller has already emptied b= (`taglist.strip_b_from_specs` on
    the specs it split the value into anyway), so the value is not split again.
    """
    return canonical_header(canon, name, value if b_emptied else strip_b_value(value))[:-2]
