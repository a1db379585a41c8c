"""dkimpy's DNS hook (`dnsfunc`), answered by our resolver.

Tests verify what Mailward signs and seals with dkimpy, an independent implementation;
dkimpy looks up key records through a `dnsfunc(name, timeout=...)` argument, and
handing it this function makes it ask the same resolver (and so the test's nsd) that
Mailward uses.  DNS outcomes keep their meaning: a temporary failure raises dkimpy's
DnsTimeoutError (so the signature is `temperror`), while NXDOMAIN/NODATA is "no key".
"""

from __future__ import annotations

from collections.abc import Callable

import dkim

from mailward.checks.dkim import MAX_KEY_RECORD_BYTES
from mailward.dns import Outcome, Resolver

DnsFunc = Callable[..., bytes | None]


def dkim_dnsfunc(resolver: Resolver) -> DnsFunc:
    """A `dnsfunc` for dkimpy that asks `resolver` for the first TXT record of `name`."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        answer = resolver.query(text, "TXT")
        if answer.outcome is Outcome.TEMPERROR:
            raise dkim.DnsTimeoutError(f"{text}: {answer.error or 'temporary DNS failure'}")
        if answer.outcome is not Outcome.ANSWER or not answer.txt_strings:
            return None
        record = b"".join(answer.txt_strings[0])
        if len(record) > MAX_KEY_RECORD_BYTES:
            return None
        return record

    return lookup
