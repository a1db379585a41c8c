"""The socketmap server with an engine the test controls: persistent connections,
order, framing errors, internal errors (TEMP, never a weaker answer), reload."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from mailward.config import Settings, SocketAddress
from mailward.dns import InMemoryResolver
from mailward.tlspolicy.engine import TlsPolicyEngine
from mailward.tlspolicy.mtasts import FetchError, MemoryPolicyCache, PolicyCache
from mailward.tlspolicy.service import TlsPolicyServer
from mailward.tlspolicy.settings import TlsPolicySettings
from mailward.tlspolicy.socketmap import Lookup, encode_lookup

POLICY = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 600\n"


def settings_for(socket_path: Path) -> Settings:
    return replace(Settings(), tlspolicy=TlsPolicySettings(
        socket=SocketAddress.parse(f"unix:{socket_path}"), metrics_listen=None,
        servername=False, overrides={"broken.example": "secure"}, cache="memory"))


def factory(settings: Settings, cache: PolicyCache) -> TlsPolicyEngine:
    resolver = InMemoryResolver.from_zones({
        "example.org": '_mta-sts 300 IN TXT "v=STSv1; id=1"\n',
        "crash.example": '_mta-sts 300 IN TXT "v=STSv1; id=1"\n',
    })

    def fetch(domain: str) -> str:
        if domain == "crash.example":
            raise RuntimeError("a bug")
        if domain != "example.org":
            raise FetchError("connect_error", "refused")
        return POLICY

    return TlsPolicyEngine(settings.tlspolicy, resolver, fetch, cache)


async def read_netstring(reader: asyncio.StreamReader) -> bytes:
    length = int((await reader.readuntil(b":"))[:-1])
    payload = await reader.readexactly(length + 1)
    assert payload.endswith(b",")
    return payload[:-1]


async def conversation(tmp_path: Path) -> None:
    socket_path = tmp_path / "tls.sock"
    server = TlsPolicyServer(None, settings_for(socket_path), factory)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        # Three lookups in one write, answered in order on one connection.
        writer.write(b"".join(encode_lookup(Lookup("postfix", key)) for key in
                              ("example.org", "other.example", "crash.example")))
        await writer.drain()
        assert await read_netstring(reader) == b"OK secure match=mx.example.org"
        assert await read_netstring(reader) == b"NOTFOUND "
        assert await read_netstring(reader) == b"TEMP internal error"
        # The connection is still usable; the second answer comes from the cache.
        writer.write(encode_lookup(Lookup("postfix", "example.org")))
        assert await read_netstring(reader) == b"OK secure match=mx.example.org"
        # A framing error closes the connection without an answer.
        writer.write(b"xx:garbage,")
        assert await reader.read() == b""
        writer.close()
    finally:
        await server.stop()
    assert not socket_path.exists()


def test_conversation(tmp_path: Path) -> None:
    asyncio.run(conversation(tmp_path))


FETCHES: list[str] = []


def counting_factory(settings: Settings, cache: PolicyCache) -> TlsPolicyEngine:
    def fetch(domain: str) -> str:
        FETCHES.append(domain)
        return POLICY

    resolver = InMemoryResolver.from_zones({"example.org": '_mta-sts 300 IN TXT "v=STSv1; id=1"\n'})
    return TlsPolicyEngine(settings.tlspolicy, resolver, fetch, cache)


def test_reload_keeps_learnt_policies_and_refuses_a_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "mailward.toml"
    config.write_text(f'[tlspolicy]\nsocket = "unix:{tmp_path}/t.sock"\nservername = false\n')
    server = TlsPolicyServer(config, settings_for(tmp_path / "t.sock"), counting_factory)
    FETCHES.clear()
    assert server.engine.answer("example.org").reply.data == "secure match=mx.example.org"
    config.write_text(f'[tlspolicy]\nsocket = "unix:{tmp_path}/t.sock"\n')
    old = server.engine
    server.reload()
    assert server.engine is not old
    answer = server.engine.answer("example.org")
    assert answer.reply.data == "secure match=mx.example.org servername=hostname"
    assert FETCHES == ["example.org"]  # the cache outlived the reload
    config.write_text("[tlspolicy]\nbogus = 1\n")
    current = server.engine
    server.reload()
    assert server.engine is current


def test_known_answers_follow_the_txt_ttl(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "x.sock")
    resolver = InMemoryResolver.from_zones({
        "example.org": '_mta-sts 300 IN TXT "v=STSv1; id=1"\n',
        "zero.example": '_mta-sts 0 IN TXT "v=STSv1; id=1"\n',
    })
    engine = TlsPolicyEngine(settings.tlspolicy, resolver, lambda domain: POLICY,
                             MemoryPolicyCache())
    assert engine.known_answer("example.org") is None
    first = engine.answer("example.org")
    known = engine.known_answer("example.org")
    assert known is not None and known.reply == first.reply
    engine.answer("zero.example")
    assert engine.known_answer("zero.example") is None  # TTL 0: decided again each time
    resolver.fail("_mta-sts.other.example")
    engine.answer("other.example")
    assert engine.known_answer("other.example") is None  # a failure is never remembered


def test_sqlite_cache_keeps_policies_across_instances(tmp_path: Path) -> None:
    from mailward.tlspolicy.mtasts import CachedPolicy, Mode, Policy
    from mailward.tlspolicy.store import SqlitePolicyCache

    path = tmp_path / "state" / "tlspolicy.db"
    entry = CachedPolicy(Policy(Mode.ENFORCE, ("mx1.example.org", "*.example.org"), 600),
                         "id7", 1234.5)
    first = SqlitePolicyCache(path)
    first.put("example.org", entry)
    first.close()
    second = SqlitePolicyCache(path)
    assert second.get("example.org") == entry
    assert second.get("other.example") is None
    second.delete("example.org")
    assert second.get("example.org") is None
    assert path.stat().st_mode & 0o777 == 0o600


def test_concurrent_lookups_of_one_domain_fetch_once(tmp_path: Path) -> None:
    import threading
    import time

    settings = settings_for(tmp_path / "x.sock")
    resolver = InMemoryResolver.from_zones({"example.org": '_mta-sts 300 IN TXT "v=STSv1; id=1"\n'})
    fetched: list[str] = []

    def slow_fetch(domain: str) -> str:
        fetched.append(domain)
        time.sleep(0.05)  # a slow server, so that the lookups overlap (not a readiness wait)
        return POLICY

    engine = TlsPolicyEngine(settings.tlspolicy, resolver, slow_fetch, MemoryPolicyCache())
    threads = [threading.Thread(target=engine.answer, args=("example.org",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fetched == ["example.org"]
