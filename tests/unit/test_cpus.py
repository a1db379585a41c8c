"""mailward.cpus: spreading milter workers over the CPUs, and pinning one."""

from __future__ import annotations

import logging
import os

import pytest

from mailward import cpus


def test_workers_go_to_the_least_used_cpu_lowest_first():
    assert cpus.least_used((0, 1, 2), []) == 0
    assert cpus.least_used((0, 1, 2), [0]) == 1
    assert cpus.least_used((0, 1, 2), [0, 1, 2, 1]) == 0
    # A respawn takes the place of the worker that died (CPU 1 is free again).
    assert cpus.least_used((0, 1), [0, 0, 1]) == 1
    # CPUs the service may no longer use do not count.
    assert cpus.least_used((2, 3), [0, 1, 2]) == 3
    with pytest.raises(ValueError):
        cpus.least_used((), [])


def test_pinning_holds_for_the_process_and_a_refusal_is_logged_not_raised(caplog):
    first = cpus.allowed_cpus()[0]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pin a child, not the test process
        ok = cpus.pin_to(first)
        os.write(write, b"1" if ok and os.sched_getaffinity(0) == {first} else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)

    before = os.sched_getaffinity(0)
    with caplog.at_level(logging.WARNING, logger="mailward.milter"):
        assert cpus.pin_to(1 << 20) is False  # no such CPU
    assert os.sched_getaffinity(0) == before
    assert "cannot pin this worker to CPU 1048576" in caplog.text
