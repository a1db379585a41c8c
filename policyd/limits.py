"""Open-file limits and the connection cap of the policy service.

Every policy connection is a file descriptor.  With Debian's default soft limit (1024),
about a thousand idle connections exhaust them, and then `accept()` fails for the very
client that needs an answer.  So the service raises its soft limit toward the hard
limit at start (allowed without privileges), and caps its connections below what the
limit leaves, keeping a reserve for what else the process opens (the state store, DNS
sockets, log files, the metrics endpoint, threads).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

#: Descriptors kept free of policy connections for everything else the process opens.
RESERVED_DESCRIPTORS = 64
#: The derived cap never exceeds this: beyond it memory, not descriptors, is the limit.
MAX_DERIVED_CONNECTIONS = 20_000
#: ... and is never below this, even with an absurdly low limit.
MIN_CONNECTIONS = 1


@dataclass(frozen=True)
class OpenFilesLimit:
    """RLIMIT_NOFILE as found at start (`before`) and after raising it (`soft`)."""

    before: int
    soft: int
    hard: int  # resource.RLIM_INFINITY (-1) if unlimited
    error: str = ""  # why raising failed, if it did


def raise_open_files_limit(ceiling: int = 1 << 20) -> OpenFilesLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or `ceiling` if the hard one is
    unlimited: the kernel's nr_open refuses more); never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            return OpenFilesLimit(before=soft, soft=soft, hard=hard, error=str(exc))
        return OpenFilesLimit(before=soft, soft=target, hard=hard)
    return OpenFilesLimit(before=soft, soft=soft, hard=hard)


def descriptor_room(soft_limit: int) -> int:
    """How many connections the descriptor limit leaves room for."""
    if soft_limit == resource.RLIM_INFINITY:
        return MAX_DERIVED_CONNECTIONS
    return max(MIN_CONNECTIONS, soft_limit - RESERVED_DESCRIPTORS)


def connection_cap(configured: int, soft_limit: int) -> int:
    """The cap in force: `[policyd] max_connections`, or (0) one derived from the limit.

    A configured cap larger than the descriptors allow is lowered to what they allow:
    above it the process would fail to accept instead of closing idle connections."""
    room = descriptor_room(soft_limit)
    if configured <= 0:
        return min(room, MAX_DERIVED_CONNECTIONS)
    return min(configured, room)
