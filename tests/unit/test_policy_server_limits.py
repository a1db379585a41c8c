"""The policy server's limits on loopback: a per-request deadline and the connection cap.

A real PolicyServer on 127.0.0.1, raw clients: one dribbling a byte every 0.2 s (which
the idle timeout alone never closes), and more idle clients than the cap allows."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import sys

import pytest

from mailward.config import PolicydSettings, Settings, SocketAddress, SocketKind
from policyd.limits import RESERVED_DESCRIPTORS, connection_cap, descriptor_room
from policyd.server import PolicyServer
from tests.unit.test_policy_server import (
    Streams,
    answer,
    ask,
    close,
    closed_by_server,
    connect,
    free_port,
    metric,
    request,
    run,
    seq_answer,
    serving,
)


def limited_settings(*, request_timeout: float = 30.0, idle_timeout: float = 60.0,
                     max_connections: int = 0) -> Settings:
    address = SocketAddress(SocketKind.INET, host="127.0.0.1", port=free_port())
    return Settings(policyd=PolicydSettings(
        socket=address, idle_timeout=idle_timeout, max_connections=max_connections,
        request_timeout=request_timeout,
    ))


# --------------------------------------------------------------------------- request deadline


def test_dribbling_client_is_closed_after_request_timeout_without_an_answer():
    settings = limited_settings(request_timeout=1.0, idle_timeout=60.0)
    data = request("slow")  # ~90 bytes: 18 s at one byte per 0.2 s

    async def dribble(streams: Streams) -> None:
        with contextlib.suppress(ConnectionError):
            for index in range(len(data)):
                streams[1].write(data[index:index + 1])
                await streams[1].drain()
                await asyncio.sleep(0.2)  # the attack's pace, not a wait for readiness

    async def body(server: PolicyServer) -> None:
        before = metric("mailward_policyd_protocol_errors_total", {"kind": "request_timeout"})
        streams = await connect(settings)
        dribbler = asyncio.create_task(dribble(streams))
        # Closed well before the request could complete (or idle_timeout could fire),
        # and with nothing written back: no reject, no answer at all.
        assert await closed_by_server(streams[0], within=10.0)
        assert not dribbler.done()  # it was still sending: the deadline closed it
        dribbler.cancel()
        assert metric("mailward_policyd_protocol_errors_total",
                      {"kind": "request_timeout"}) == before + 1
        # Others are served, and a connection that answers in time is not affected.
        other = await connect(settings)
        assert await ask(other, request(1)) == seq_answer(1)
        await close(other)
        await close(streams)

    run(serving(settings, body))


def test_deadline_is_per_request_not_per_connection():
    """Many quick requests on one connection, spread past request_timeout, all answered."""
    settings = limited_settings(request_timeout=0.5)

    async def body(server: PolicyServer) -> None:
        streams = await connect(settings)
        loop = asyncio.get_running_loop()
        started = loop.time()
        seq = 0
        while loop.time() - started < 1.5:  # three deadlines' worth of one connection
            assert await ask(streams, request(seq)) == seq_answer(seq)
            seq += 1
            await asyncio.sleep(0.1)  # pace between requests (idle, not inside one)
        await close(streams)

    run(serving(settings, body))


# --------------------------------------------------------------------------- connection cap


def test_at_the_cap_the_oldest_idle_connections_make_room():
    cap = 5
    settings = limited_settings(max_connections=cap)

    async def body(server: PolicyServer) -> None:
        evicted_before = metric("mailward_policyd_evicted_connections_total")
        idle: list[Streams] = []
        for number in range(cap + 3):
            streams = await connect(settings)
            # Answered: the server has taken it in (and it is idle, in this order).
            assert await ask(streams, request(number)) == seq_answer(number)
            idle.append(streams)
        # The three oldest made room for the three newest.
        for streams in idle[:3]:
            assert await closed_by_server(streams[0], within=10.0)
        # A new client still gets an answer; the oldest idle one left goes for it.
        newcomer = await connect(settings)
        assert await ask(newcomer, request("new")) == seq_answer("new")
        assert await closed_by_server(idle[3][0], within=10.0)
        # The more recent ones were kept and still answer.
        for number, streams in enumerate(idle[4:], start=4):
            assert await ask(streams, request(number)) == seq_answer(number)
        assert metric("mailward_policyd_evicted_connections_total") == evicted_before + 4
        assert len(server._connections) == cap
        for streams in [*idle, newcomer]:
            await close(streams)

    run(serving(settings, body))


def test_a_connection_inside_a_request_is_not_evicted():
    settings = limited_settings(max_connections=2)

    async def body(server: PolicyServer) -> None:
        busy, idle = await connect(settings), await connect(settings)
        assert await ask(idle, request("idle")) == seq_answer("idle")
        partial = request("busy")
        busy[1].write(partial[:10])
        await busy[1].drain()
        while busy_count(server) < 1:  # the server has read the first bytes
            await asyncio.sleep(0.01)
        # `busy` connected first, but it is inside a request: `idle` makes room.
        newcomer = await connect(settings)
        assert await ask(newcomer, request("new")) == seq_answer("new")
        assert await closed_by_server(idle[0], within=10.0)
        busy[1].write(partial[10:])
        assert await answer(busy[0]) == seq_answer("busy")
        for streams in (busy, idle, newcomer):
            await close(streams)

    run(serving(settings, body))


def busy_count(server: PolicyServer) -> int:
    return len(server._busy)


# --------------------------------------------------------------------------- descriptors


def test_cap_is_derived_from_the_descriptor_limit():
    assert connection_cap(0, 1024) == 1024 - RESERVED_DESCRIPTORS
    assert connection_cap(0, 1 << 20) == 20_000  # memory, not descriptors, bounds it
    assert connection_cap(50, 1024) == 50
    assert connection_cap(5000, 1024) == 1024 - RESERVED_DESCRIPTORS  # lowered to fit
    assert connection_cap(0, 10) == 1
    assert descriptor_room(resource.RLIM_INFINITY) == 20_000


_RAISE_PROBE = """
import resource, sys
from policyd.limits import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
got = raise_open_files_limit()
print(soft, got.before, got.soft, got.hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_open_files_limit_is_raised_to_the_hard_limit():
    """In a child whose soft limit starts low (as Debian's default 1024 does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, soft)
    expected = 1 << 20 if hard == resource.RLIM_INFINITY else hard

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    result = subprocess.run([sys.executable, "-c", _RAISE_PROBE], preexec_fn=lower_limit,
                            capture_output=True, text=True, check=True, timeout=30)
    start, before, raised, reported_hard, in_force = map(int, result.stdout.split())
    assert start == before == low
    assert raised == in_force == max(low, expected)
    assert reported_hard == hard


def test_server_start_logs_the_limit_and_cap(caplog):
    settings = limited_settings(max_connections=0)

    async def body(server: PolicyServer) -> None:
        assert server._cap == connection_cap(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    with caplog.at_level("INFO", logger="mailward.policyd"):
        run(serving(settings, body))
    assert any("open-files limit" in message for message in caplog.messages)
    assert any("concurrent policy connections" in message for message in caplog.messages)


# --------------------------------------------------------------------------- configuration


def test_request_timeout_and_derived_cap_are_read_and_checked(tmp_path):
    from mailward.config import ConfigError, load_settings

    path = tmp_path / "mailward.toml"
    path.write_text('[policyd]\nrequest_timeout = 2.5\nmax_connections = 0\n')
    policyd = load_settings(path).policyd
    assert policyd.request_timeout == 2.5
    assert policyd.max_connections == 0
    assert PolicydSettings().max_connections == 0  # derived from the limit by default
    for bad in ("request_timeout = 0", "request_timeout = \"soon\"", "max_connections = -1"):
        path.write_text(f"[policyd]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"request_timeout|max_connections"):
            load_settings(path)
