"""The resolver's AD (authenticated data) bit for one query.

mailward.dns.Resolver returns records, not message flags; DANE findings need the flag,
so this asks the configured nameservers once more with the DO bit set.  We report what
the resolver says; validating DNSSEC is the resolver's job, not ours.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.resolver

from mailward.config import DnsSettings


def authenticated(settings: DnsSettings, name: str, rdtype: str) -> bool | None:
    """True/False as the resolver's AD bit says; None if the query failed."""
    resolver = dns.resolver.Resolver(configure=not settings.nameservers)
    if settings.nameservers:
        resolver.nameservers = list(settings.nameservers)
    resolver.port = settings.port
    resolver.lifetime = resolver.timeout = settings.timeout
    resolver.use_edns(0, dns.flags.DO, 1232)
    resolver.flags = dns.flags.RD | dns.flags.AD
    try:
        answer = resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
    except (dns.exception.DNSException, OSError):
        return None
    return bool(answer.response.flags & dns.flags.AD)
