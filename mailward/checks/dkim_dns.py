"""dkimpy's DNS hook (`dnsfunc`), answered by our resolver.

dkimpy looks up key records through a `dnsfunc(name, timeout=...)` argument; handing it
this function keeps caching, timeouts and metrics in mailward.dns, and keeps DNS
outcomes meaningful: a temporary failure raises dkimpy's DnsTimeoutError (so the
signature is `temperror`), while NXDOMAIN/NODATA is "no key" (`permerror`).

Used by the DKIM signing and ARC sealing tests to verify with dkimpy; the verifiers
themselves fetch keys through mailward.checks.dkim.KeyFetcher.
"""

from __future__ import annotations

from collections.abc import Callable

import dkim

from mailward.dns import Outcome, Resolver

DnsFunc = Callable[..., bytes | None]

# RFC 6376 3.6.2.2: the key record is one TXT record; an absurdly long one is not a key.
MAX_KEY_RECORD_BYTES = 16384


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
