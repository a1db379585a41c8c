"""Where the real milter service's workers run: `[milter] pin_cpus` (mailward/cpus.py).

Read from the kernel (/proc/PID/status, Cpus_allowed_list), not from our own bookkeeping:
each worker stays on one CPU, the workers are spread over the CPUs the service may use,
a respawned worker takes the CPU of the one that died, and `pin_cpus = false` leaves
them where the kernel puts them.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.harness import CHECKS_OFF, toml
from tests.harness.process import wait_for_children, wait_until


def allowed_cpus(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            cpus: set[int] = set()
            for part in line.split(":", 1)[1].strip().split(","):
                first, _, last = part.partition("-")
                cpus.update(range(int(first), int(last or first) + 1))
            return cpus
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def pinned_placement(workers: set[int]) -> dict[int, set[int]]:
    """Each worker's CPUs, once every one of them has pinned itself.

    A worker pins itself first thing after the fork, so for an instant after it appears
    under the supervisor it still has the supervisor's CPUs; reading then would race it.
    A worker that never pins still fails here, with the CPUs it kept.
    """
    last: dict[int, set[int]] = {}

    def pinned() -> dict[int, set[int]] | None:
        last.update({pid: allowed_cpus(pid) for pid in workers})
        return dict(last) if all(len(cpus) == 1 for cpus in last.values()) else None
    return wait_until(pinned, 15, "every worker pinned to one CPU",
                      diagnostics=lambda: f"CPUs allowed: {last}")


def workers_config(**milter: object) -> dict[str, object]:
    return toml.deep_merge(CHECKS_OFF, {"milter": {"workers": 2, **milter}})


def test_each_worker_stays_on_its_own_cpu_and_a_respawn_takes_the_free_one(
        stack, mailward_factory):
    services = mailward_factory(workers_config(), services=["milter"], attach=False)
    supervisor = services.pids()["milter"]
    ours = sorted(os.sched_getaffinity(0))  # the service inherits the test's CPUs
    expected = sorted(ours[:2]) if len(ours) >= 2 else [ours[0], ours[0]]

    workers = wait_for_children(supervisor, 2)
    placed = pinned_placement(workers)
    assert sorted(next(iter(cpus)) for cpus in placed.values()) == expected
    assert allowed_cpus(supervisor) == set(ours)  # the supervisor itself is not pinned

    victim = min(workers)
    freed = placed[victim]
    os.kill(victim, signal.SIGKILL)
    (pid,) = wait_for_children(supervisor, 2, without={victim}) - workers
    assert pinned_placement({pid})[pid] == freed


def test_pin_cpus_false_leaves_the_workers_unpinned(stack, mailward_factory):
    services = mailward_factory(workers_config(pin_cpus=False), services=["milter"],
                                attach=False)
    supervisor = services.pids()["milter"]
    workers = wait_for_children(supervisor, 2)
    ours = set(os.sched_getaffinity(0))
    assert all(allowed_cpus(pid) == ours for pid in workers)
