"""Which CPU a worker process stays on (`[milter] pin_cpus`).

Why pin: a worker is one Python process whose threads take turns holding the GIL (the
connection loop and the threads running ends of message).  Left to the scheduler, those
threads run on different cores, and every hand-over of the GIL wakes a thread on another
core: an idle core's wake-up latency and cold caches, a few times per message.  On bench's
inbound message one worker pinned to one core served about 1.4x the messages per second
of the same worker free to move (bench/README.md, "pinned workers").  The GIL lets a
worker use one core at a time anyway; pinning only stops it paying for the moves.

Workers are spread over the CPUs the service may use (its own affinity, which systemd's
CPUAffinity= or a cgroup cpuset may already narrow), the least used CPU first, so that a
respawned worker takes the place of the one that died.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterable, Sequence

log = logging.getLogger("mailward.milter")


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on, in order."""
    return tuple(sorted(os.sched_getaffinity(0)))


def least_used(allowed: Sequence[int], in_use: Iterable[int]) -> int:
    """The allowed CPU with the fewest workers on it (the lowest number on a tie)."""
    if not allowed:
        raise ValueError("no CPU to choose from")
    counts = collections.Counter(cpu for cpu in in_use if cpu in allowed)
    return min(allowed, key=lambda cpu: (counts[cpu], cpu))


def pin_to(cpu: int) -> bool:
    """Keep this process (and the threads it starts later) on `cpu`; False if refused.

    A refusal (the CPU went offline, a container forbids it) is logged and costs only
    speed: the worker runs unpinned.
    """
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.warning("cannot pin this worker to CPU %d (%s); it runs unpinned", cpu, exc)
        return False
    return True
