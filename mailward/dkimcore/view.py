"""One message as DKIM and ARC verifiers see it, canonical forms computed once.

A message with several signatures (DKIM-Signatures, ARC-Message-Signatures, ARC-Seals)
needs the same canonical header fields and bodies again and again; `MessageView`
computes each on first use and keeps it for the message's lifetime.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from mailward import message
from mailward.dkimcore.canon import (
    Canon,
    canonicalize_body,
    header_key,
    relaxed_header,
    select_headers,
    signature_header_data,
)
from mailward.model import Transaction


class MessageView:
    """One message as the signatures see it; canonical forms are computed once, lazily.

    Only the field names are read up front (every h= selection needs them); a field's
    value is turned into bytes when a signature covers it, and then kept.
    """

    def __init__(self, transaction: Transaction) -> None:
        self.truncated = transaction.body_truncated
        self._transaction = transaction
        self._fields = transaction.headers
        self._names = [message.header_name_bytes(h) for h in self._fields]
        self._keys = [header_key(name) for name in self._names]
        self._simple: dict[int, bytes] = {}
        self._relaxed: dict[int, bytes] = {}
        self._bodies: dict[str, bytes] = {}
        self._digests: dict[tuple[str, str, int | None], bytes | None] = {}
        self.from_count = self._keys.count(b"from")

    def canonical_body(self, canon: str) -> bytes:
        """The whole body in `canon` form (computed once per canonicalization)."""
        body = self._bodies.get(canon)
        if body is None:
            body = self._bodies[canon] = canonicalize_body(self._transaction.body, canon)
        return body

    def body_digest(self, canon: str, hash_name: str, length: int | None) -> bytes | None:
        """Digest of the canonical body (its first `length` octets); None if it is shorter."""
        key = (canon, hash_name, length)
        if key not in self._digests:
            body = self.canonical_body(canon)
            if length is not None and length > len(body):
                self._digests[key] = None
            else:
                data = body if length is None else memoryview(body)[:length]
                self._digests[key] = hashlib.new(hash_name, data).digest()
        return self._digests[key]

    def select(self, signed: Sequence[bytes]) -> list[int]:
        """Indexes of the headers h= names, each name taking instances bottom-up."""
        return select_headers(self._keys, signed)

    def header(self, index: int, canon: str) -> bytes:
        """The field at `index` in `canon` form, with its CRLF."""
        forms = self._simple if canon == Canon.SIMPLE else self._relaxed
        cached = forms.get(index)
        if cached is None:
            name = self._names[index]
            value = message.header_value_bytes(self._fields[index]) + message.CRLF
            simple = canon == Canon.SIMPLE
            cached = name + b":" + value if simple else relaxed_header(name, value)
            forms[index] = cached
        return cached


def signed_data(
    view: MessageView,
    signed_headers: Sequence[bytes],
    canon: str,
    own: tuple[bytes, bytes],
    *,
    b_emptied: bool = False,
) -> bytes:
    """The canonical header data a signature covers (RFC 6376 3.7, RFC 8617 4.1.2).

    The headers named in `signed_headers` (lower-case names, h= order, repeated names
    taken bottom-up, absent ones contributing nothing) in `canon` ("simple" or
    "relaxed") form, then the signature field itself (`own`: its name as written and
    its value) with b= emptied and without a final CRLF.  `b_emptied`: `own`'s value
    has b= emptied already (see `canon.signature_header_data`).
    """
    parts = [view.header(index, canon) for index in view.select(signed_headers)]
    parts.append(signature_header_data(canon, *own, b_emptied=b_emptied))
    return b"".join(parts)
