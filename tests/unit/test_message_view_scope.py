"""One MessageView per message: DKIM and ARC share canonical bodies and body hashes.

The pipeline opens `message_scope` around its checks; inside it `view_of` hands every
check the same view, so a body signed by a DKIM-Signature and an ARC-Message-Signature
with the same canonicalization is canonicalized and hashed once, not once per check.
"""

from __future__ import annotations

import hashlib
from typing import Any

import dkim
import pytest

from mailward.checks.arc import ArcResult, ArcVerifier
from mailward.checks.dkim import DkimResult, DkimVerifier
from mailward.dkimcore import view as view_module
from mailward.dkimcore.canon import canonicalize_body
from mailward.dkimcore.view import MessageView, message_scope, view_of
from mailward.dns import InMemoryResolver
from mailward.model import Header, Transaction
from tests.unit.test_arc import chain, key_record, private_key, resolver, transaction

__all__ = ["key_record", "private_key", "resolver"]  # fixtures used by the tests below


def _tx(body: bytes = b"hello\r\n") -> Transaction:
    return Transaction(None, "", (), (Header("From", " a@example.com"),), body=body)


def test_view_of_is_shared_inside_the_scope_only() -> None:
    tx = _tx()
    outside = view_of(tx)
    assert view_of(tx) is not outside  # no scope: a new view each time
    with message_scope(tx):
        inside = view_of(tx)
        assert isinstance(inside, MessageView)
        assert view_of(tx) is inside
        other = _tx()  # equal but another message object: never the scope's view
        assert other == tx and view_of(other) is not inside
        with message_scope(other):
            assert view_of(other) is view_of(other) and view_of(other) is not inside
        assert view_of(tx) is inside  # the inner scope ended, the outer one is back
    assert view_of(tx) is not inside


def test_scope_ends_when_the_block_raises() -> None:
    tx = _tx()
    with pytest.raises(RuntimeError), message_scope(tx):
        shared = view_of(tx)
        raise RuntimeError("a check blew up")
    assert view_of(tx) is not shared


class _CountingHashlib:
    """hashlib for the view module, counting the digests it makes."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def new(self, name: str, data: Any = b"") -> Any:
        self.calls.append(name)
        return hashlib.new(name, data)


def _signed(private_key: bytes) -> bytes:
    """ARC-sealed by lists.example (relaxed body), then DKIM-signed relaxed/relaxed."""
    sealed = chain(private_key)
    signature = dkim.sign(sealed, b"arc", b"lists.example", private_key,
                          canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from"])
    signed: bytes = signature + sealed
    return signed


@pytest.mark.parametrize("scoped", [True, False])
def test_dkim_and_arc_canonicalize_and_hash_the_body_once_per_scope(
    monkeypatch: pytest.MonkeyPatch, private_key: bytes, resolver: InMemoryResolver,
    scoped: bool,
) -> None:
    tx = transaction(_signed(private_key))
    canonicalized: list[str] = []
    real = canonicalize_body

    def counting(body: bytes, canon: str) -> bytes:
        canonicalized.append(canon)
        return real(body, canon)

    counter = _CountingHashlib()
    monkeypatch.setattr(view_module, "canonicalize_body", counting)
    monkeypatch.setattr(view_module, "hashlib", counter)

    def both() -> tuple[Any, Any]:
        return DkimVerifier(resolver).verify(tx), ArcVerifier(resolver).verify(tx)

    if scoped:
        with message_scope(tx):
            outcomes, arc = both()
    else:
        outcomes, arc = both()
    assert [o.result for o in outcomes] == [DkimResult.PASS]
    assert arc.result is ArcResult.PASS, arc.reason
    times = 1 if scoped else 2
    assert canonicalized == ["relaxed"] * times
    assert counter.calls == ["sha256"] * times
