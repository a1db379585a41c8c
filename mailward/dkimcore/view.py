"""One message as DKIM and ARC verifiers see it, canonical forms computed once.

A message with several signatures (DKIM-Signatures, ARC-Message-Signatures, ARC-Seals)
needs the same canonical header fields and bodies again and again; `MessageView`
computes each on first use and keeps it for the message's lifetime.  DKIM and ARC
verification of one message share one view (`message_scope` + `view_of`), so the body
is canonicalized and hashed once per (canonicalization, algorithm, length), whichever
check asks first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

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


class _Scope:
    """The message being evaluated and its view, made when a check first asks for it."""

    __slots__ = ("transaction", "view")

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction
        self.view: MessageView | None = None


# Per thread (and per asyncio task): the milter evaluates messages on several threads.
_SCOPE: ContextVar[_Scope | None] = ContextVar("mailward_message_view", default=None)


@contextmanager
def message_scope(transaction: Transaction) -> Iterator[None]:
    """While inside, `view_of(transaction)` hands every caller the same `MessageView`.

    The pipeline opens one scope per message around its checks, so DKIM and ARC (and
    every signature of each) share canonical bodies, body hashes and header forms
    instead of computing their own.  Leaving the scope drops the view with the message.
    """
    token = _SCOPE.set(_Scope(transaction))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def view_of(transaction: Transaction) -> MessageView:
    """The shared view of `transaction` inside its `message_scope`, else a new one.

    Identity, not equality, picks the scope's view: a different transaction object
    (a test, a re-built message) never sees another message's canonical forms.
    """
    scope = _SCOPE.get()
    if scope is None or scope.transaction is not transaction:
        return MessageView(transaction)
    if scope.view is None:
        scope.view = MessageView(transaction)
    return scope.view


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
