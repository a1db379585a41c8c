"""The socketmap connection protocol: replies stay in order when a decision (thread pool)
precedes answers known in memory, a half-closed client still gets its answers, and a
stop lets a decision in progress finish and be answered."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from mailward.config import Settings
from mailward.dns import InMemoryResolver
from mailward.tlspolicy.engine import TlsPolicyEngine
from mailward.tlspolicy.mtasts import PolicyCache
from mailward.tlspolicy.service import TlsPolicyServer
from mailward.tlspolicy.socketmap import Lookup, encode_lookup
from tests.unit.test_tlspolicy_service import POLICY, factory, read_netstring, settings_for

RELEASE = threading.Event()


def blocking_factory(settings: Settings, cache: PolicyCache) -> TlsPolicyEngine:
    """slow.example's policy fetch waits until the test sets RELEASE."""
    resolver = InMemoryResolver.from_zones(
        {"slow.example": '_mta-sts 300 IN TXT "v=STSv1; id=1"\n'})

    def fetch(domain: str) -> str:
        RELEASE.wait(30)
        return POLICY.replace("mx.example.org", "mx.slow.example")

    return TlsPolicyEngine(settings.tlspolicy, resolver, fetch, cache)


def lookups(*keys: str) -> bytes:
    return b"".join(encode_lookup(Lookup("postfix", key)) for key in keys)


async def ordered(tmp_path: Path) -> None:
    socket_path = tmp_path / "tls.sock"
    server = TlsPolicyServer(None, settings_for(socket_path), factory)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        writer.write(lookups("example.org"))
        assert await read_netstring(reader) == b"OK secure match=mx.example.org"
        # A decision (that fails: TEMP), then answers known in memory: in order.
        writer.write(lookups("crash.example", "example.org", "example.org"))
        assert await read_netstring(reader) == b"TEMP internal error"
        assert await read_netstring(reader) == b"OK secure match=mx.example.org"
        assert await read_netstring(reader) == b"OK secure match=mx.example.org"
        # Lookups, then end of input: the answers still come, then the server closes.
        writer.write(lookups("crash.example", "example.org"))
        writer.write_eof()
        assert await read_netstring(reader) == b"TEMP internal error"
        assert await read_netstring(reader) == b"OK secure match=mx.example.org"
        assert await reader.read() == b""
        writer.close()
    finally:
        await server.stop()


def test_replies_keep_their_order_and_survive_a_half_close(tmp_path: Path) -> None:
    asyncio.run(ordered(tmp_path))


async def stopping(tmp_path: Path) -> None:
    socket_path = tmp_path / "tls.sock"
    server = TlsPolicyServer(None, settings_for(socket_path), blocking_factory)
    await server.start()
    RELEASE.clear()
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    idle_reader, idle_writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(lookups("slow.example"))
    await writer.drain()
    while not server._connections or all(c.idle for c in server._connections):
        await asyncio.sleep(0.01)  # poll until the decision is in progress
    stop = asyncio.create_task(server.stop(timeout=20))
    assert await idle_reader.read() == b""  # an idle connection is closed at once
    assert not stop.done()
    RELEASE.set()
    assert await read_netstring(reader) == b"OK secure match=mx.slow.example"
    assert await reader.read() == b""  # then that one is closed too
    await stop
    writer.close()
    idle_writer.close()


def test_stop_answers_the_lookup_in_progress(tmp_path: Path) -> None:
    asyncio.run(stopping(tmp_path))
