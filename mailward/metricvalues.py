"""Multiprocess metric values that ask the kernel for the process id once, not per update.

prometheus_client's multiprocess mode (mailward/metrics.py: the milter's workers write
their metrics to files the supervisor aggregates) checks `os.getpid()` on every `inc()`
and `observe()` to notice a fork.  That is a system call per update, and the milter
updates a few dozen values per message: measured with py-spy, about 7% of a worker's
time went to that check alone.  The library lets the process identifier be chosen
(`MultiProcessValue(process_identifier=...)`, which must differ between processes
running at once); this one is the real pid, read at import and again in every forked
child (`os.register_at_fork`), so a fork is still noticed and each worker still writes
its own files.
"""

from __future__ import annotations

import os

from prometheus_client import values

_process_id = os.getpid()


def _after_fork_in_child() -> None:
    global _process_id
    _process_id = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def process_id() -> int:
    """This process's id, as of its start or its last fork."""
    return _process_id


def install() -> None:
    """Use the cached-pid value class if multiprocess mode is on; before any metric exists.

    Outside multiprocess mode (tests, tools, the policy service when it runs alone)
    nothing changes.
    """
    value_class = values.ValueClass
    if getattr(value_class, "_multiprocess", False) and not getattr(
            value_class, "_mailward_cached_pid", False):
        cached = values.MultiProcessValue(process_identifier=process_id)  # type: ignore[no-untyped-call]
        cached._mailward_cached_pid = True
        values.ValueClass = cached
