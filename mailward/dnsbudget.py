"""One DNS time budget per message, shared by every lookup its checks make.

Each lookup has its own timeout ([dns] timeout), but a message asks many questions in turn:
iprev, SPF for MAIL FROM and HELO with their includes, each DKIM key, the DMARC tree walk.
With a dead or black-holed server each waits its full timeout and the session is held
15-19 s.  The budget caps the sum: a lookup gets at most what is left, and once it is spent
the rest answer `temperror` at once -- the same answer a timeout gives (451, never 5xx),
only sooner.

The deadline lives in a context variable set around one message's evaluation, so checks
need not carry it and unrelated callers (the policy service, tools) see no budget at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[tuple[float, Callable[[], float]] | None] = ContextVar(
    "mailward_dns_deadline", default=None)


@contextmanager
def message_budget(seconds: float, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Lookups made inside share `seconds` of DNS time (0 or less: no budget)."""
    if seconds <= 0:
        yield
        return
    token = _DEADLINE.set((clock() + seconds, clock))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left for DNS in the current message, or None outside any budget."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    at, clock = deadline
    return max(0.0, at - clock())
