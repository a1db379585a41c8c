"""The policy server on loopback: persistent connections, bad clients, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY

from mailward.config import PolicydSettings, Settings, SocketAddress, SocketKind, load_settings
from mailward.dns import DnsAnswer, InMemoryResolver
from mailward.policies.engine import DUNNO, PolicyAnswer, PolicyEngine
from mailward.state import GreylistOutcome, GreylistParams, MemoryStore, StateStore
from policyd.codec import encode_request
from policyd.server import PolicyServer
from tests.unit.test_policies_helpers import (
    ORG_SERVER,
    OUTSIDER,
    BrokenStore,
    attributes,
    resolver,
)

T = TypeVar("T")

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class EchoEngine(PolicyEngine):
    """Answers each valid request with its `seq` attribute, so order can be checked."""

    def decide(self, attributes: Mapping[str, str]) -> PolicyAnswer:
        answer = super().decide(attributes)
        if answer.reason:
            return answer
        return PolicyAnswer(f"PREPEND X-Seq: {attributes.get('seq', '')}")


@dataclass(frozen=True)
class BrokenEngine(PolicyEngine):
    def decide(self, attributes: Mapping[str, str]) -> PolicyAnswer:
        if attributes.get("seq") == "boom":
            raise RuntimeError("bug while deciding")
        return PolicyAnswer(f"PREPEND X-Seq: {attributes.get('seq', '')}")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one test's coroutine in a fresh loop, with an overall deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, 20)

    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def inet_settings(idle_timeout: float = 5.0, max_connections: int = 1000) -> Settings:
    address = SocketAddress(SocketKind.INET, host="127.0.0.1", port=free_port())
    return Settings(
        policyd=PolicydSettings(
            socket=address, idle_timeout=idle_timeout, max_connections=max_connections,
        )
    )


def request(seq: str | int, **extra: str) -> bytes:
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": "192.0.2.1",
        "seq": str(seq),
    }
    attributes.update(extra)
    return encode_request(attributes)


async def connect(settings: Settings) -> Streams:
    address = settings.policyd.socket
    if address.kind is SocketKind.UNIX:
        return await asyncio.open_unix_connection(address.path)
    return await asyncio.open_connection(address.host, address.port)


async def answer(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)


async def ask(streams: Streams, data: bytes) -> bytes:
    reader, writer = streams
    writer.write(data)
    await writer.drain()
    return await answer(reader)


async def closed_by_server(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    """True once the server has closed the connection (EOF or reset) within the deadline."""
    try:
        data = await asyncio.wait_for(reader.read(65536), within)
    except ConnectionError:
        return True
    return data == b""


async def close(streams: Streams) -> None:
    writer = streams[1]
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def serving(
    settings: Settings,
    body: Callable[[PolicyServer], Awaitable[None]],
    factory: Callable[[Settings], PolicyEngine] = EchoEngine,
) -> None:
    server = PolicyServer(None, settings, factory)
    await server.start()
    try:
        await body(server)
    finally:
        await server.stop(timeout=2.0)


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def seq_answer(seq: str | int) -> bytes:
    return f"action=PREPEND X-Seq: {seq}\n\n".encode()


# --------------------------------------------------------------------------- conversations


def test_persistent_connection_answers_in_order():
    settings = inet_settings()

    async def body(server: PolicyServer) -> None:
        streams = await connect(settings)
        for seq in range(5):
            assert await ask(streams, request(seq)) == seq_answer(seq)
        # Pipelined: several requests in one write, answered in order.
        streams[1].write(b"".join(request(seq) for seq in range(5, 15)))
        await streams[1].drain()
        for seq in range(5, 15):
            assert await answer(streams[0]) == seq_answer(seq)
        # One request split across many writes.
        data = request("split")
        for index in range(len(data)):
            streams[1].write(data[index : index + 1])
            await streams[1].drain()
        assert await answer(streams[0]) == seq_answer("split")
        await close(streams)

    run(serving(settings, body))


def test_malformed_request_gets_dunno_and_connection_goes_on():
    settings = inet_settings()

    async def body(server: PolicyServer) -> None:
        streams = await connect(settings)
        before = metric("mailward_policyd_protocol_errors_total", {"kind": "no_equals"})
        garbled = b"request=smtpd_access_policy\nthis is not an attribute\nseq=1\n\n"
        assert await ask(streams, garbled) == b"action=DUNNO\n\n"
        assert metric("mailward_policyd_protocol_errors_total", {"kind": "no_equals"}) == before + 1
        assert await ask(streams, b"\n") == b"action=DUNNO\n\n"  # empty request
        # Well-formed but not something the engine can evaluate.
        assert await ask(streams, request(2, request="junk")) == b"action=DUNNO\n\n"
        assert await ask(streams, request(3, client_address="nope")) == b"action=DUNNO\n\n"
        assert await ask(streams, request(4)) == seq_answer(4)
        await close(streams)

    run(serving(settings, body))


def test_engine_bug_is_answered_dunno():
    settings = inet_settings()

    async def body(server: PolicyServer) -> None:
        streams = await connect(settings)
        before = metric("mailward_errors_total", {"component": "policyd"})
        assert await ask(streams, request("boom")) == b"action=DUNNO\n\n"
        assert metric("mailward_errors_total", {"component": "policyd"}) == before + 1
        assert await ask(streams, request(1)) == seq_answer(1)
        await close(streams)

    run(serving(settings, body, BrokenEngine))


def test_binary_garbage_closes_only_that_connection():
    settings = inet_settings()

    async def body(server: PolicyServer) -> None:
        good, bad = await connect(settings), await connect(settings)
        assert await ask(good, request(1)) == seq_answer(1)
        assert await ask(bad, request(2)) == seq_answer(2)
        before = metric("mailward_policyd_protocol_errors_total", {"kind": "binary"})
        bad[1].write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n")
        await bad[1].drain()
        assert await closed_by_server(bad[0])
        assert metric("mailward_policyd_protocol_errors_total", {"kind": "binary"}) == before + 1
        for seq in range(3, 6):
            assert await ask(good, request(seq)) == seq_answer(seq)
        # And new connections are still accepted.
        fresh = await connect(settings)
        assert await ask(fresh, request(6)) == seq_answer(6)
        await close(good)
        await close(fresh)
        await close(bad)

    run(serving(settings, body))


def test_over_long_line_closes_the_connection():
    settings = inet_settings()

    async def body(server: PolicyServer) -> None:
        streams = await connect(settings)
        streams[1].write(b"sender=" + b"x" * (settings.policyd.max_request_size + 10))
        await streams[1].drain()
        assert await closed_by_server(streams[0])
        await close(streams)

    run(serving(settings, body))


def test_idle_connection_is_closed_after_idle_timeout():
    settings = inet_settings(idle_timeout=0.3)

    async def body(server: PolicyServer) -> None:
        streams = await connect(settings)
        assert await ask(streams, request(1)) == seq_answer(1)
        started = time.monotonic()
        assert await closed_by_server(streams[0], within=3.0)
        assert 0.25 <= time.monotonic() - started < 2.0
        await close(streams)

    run(serving(settings, body))


def test_client_stalled_inside_a_request_is_closed_and_counted():
    settings = inet_settings(idle_timeout=0.3)

    async def body(server: PolicyServer) -> None:
        before = metric("mailward_policyd_protocol_errors_total", {"kind": "idle_timeout"})
        streams = await connect(settings)
        streams[1].write(b"request=smtpd_access_policy\nprotocol_")
        await streams[1].drain()
        assert await closed_by_server(streams[0], within=3.0)
        after = metric("mailward_policyd_protocol_errors_total", {"kind": "idle_timeout"})
        assert after == before + 1
        await close(streams)

    run(serving(settings, body))


def test_two_hundred_concurrent_connections():
    settings = inet_settings()

    async def client(number: int) -> list[bytes]:
        streams = await connect(settings)
        answers = [await ask(streams, request(f"{number}-{turn}")) for turn in range(3)]
        await close(streams)
        return answers

    async def body(server: PolicyServer) -> None:
        before = metric("mailward_policyd_connections_total")
        results = await asyncio.gather(*(client(number) for number in range(200)))
        assert results == [
            [seq_answer(f"{number}-{turn}") for turn in range(3)] for number in range(200)
        ]
        assert metric("mailward_policyd_connections_total") == before + 200

    run(serving(settings, body))


def test_too_many_connections_are_refused_politely():
    """At the cap with every connection inside a request there is no idle one to close
    (see test_policy_server_limits): the new one is closed, the others go on."""
    settings = inet_settings(max_connections=2)

    async def body(server: PolicyServer) -> None:
        first, second = await connect(settings), await connect(settings)
        partial = request(1)
        for streams in (first, second):
            streams[1].write(partial[:10])
            await streams[1].drain()
        while len(server._busy) < 2:  # both requests begun, as the server sees it
            await asyncio.sleep(0.01)
        third = await connect(settings)
        assert await closed_by_server(third[0])
        first[1].write(partial[10:])
        assert await answer(first[0]) == seq_answer(1)
        for streams in (first, second, third):
            await close(streams)

    run(serving(settings, body))


def test_stop_closes_everything():
    settings = inet_settings()

    async def body() -> None:
        active_before = metric("mailward_policyd_active_connections")
        server = PolicyServer(None, settings, EchoEngine)
        await server.start()
        clients = [await connect(settings) for _ in range(3)]
        for number, streams in enumerate(clients):
            assert await ask(streams, request(number)) == seq_answer(number)
        assert metric("mailward_policyd_active_connections") == active_before + 3
        started = time.monotonic()
        await server.stop(timeout=5.0)
        assert time.monotonic() - started < 1.0  # idle connections are not waited for
        for streams in clients:
            assert await closed_by_server(streams[0], within=2.0)
            await close(streams)
        assert metric("mailward_policyd_active_connections") == active_before
        with pytest.raises(OSError):
            await connect(settings)

    run(body())


def test_stop_lets_a_request_in_progress_finish():
    settings = inet_settings()

    async def body() -> None:
        server = PolicyServer(None, settings, EchoEngine)
        await server.start()
        streams = await connect(settings)
        assert await ask(streams, request(1)) == seq_answer(1)
        data = request(2)
        streams[1].write(data[:10])
        await streams[1].drain()
        # Wait until the server has read the partial request.
        deadline = time.monotonic() + 5
        while not server._busy:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        stopping = asyncio.create_task(server.stop(timeout=10.0))
        await asyncio.sleep(0)
        streams[1].write(data[10:])
        await streams[1].drain()
        assert await answer(streams[0]) == seq_answer(2)
        # Once its request is answered, the connection is closed: shutdown does not wait
        # for the client (Postfix keeps policy connections open) until the timeout.
        answered = time.monotonic()
        await stopping
        assert time.monotonic() - answered < 1.0
        assert await closed_by_server(streams[0], within=2.0)
        await close(streams)

    run(body())


def test_unix_socket(tmp_path: Path):
    path = tmp_path / "policyd.sock"
    settings = Settings(
        policyd=PolicydSettings(
            socket=SocketAddress(SocketKind.UNIX, path=str(path)), idle_timeout=5.0
        )
    )

    async def body(server: PolicyServer) -> None:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        streams = await connect(settings)
        for seq in range(3):
            assert await ask(streams, request(seq)) == seq_answer(seq)
        other = await connect(settings)
        assert await ask(other, b"no equals\n\n") == b"action=DUNNO\n\n"
        await close(streams)
        await close(other)

    run(serving(settings, body))
    assert not path.exists()  # removed on stop


def test_unix_socket_stale_file_is_replaced_but_live_one_is_not(tmp_path: Path):
    path = tmp_path / "policyd.sock"
    settings = Settings(
        policyd=PolicydSettings(socket=SocketAddress(SocketKind.UNIX, path=str(path)))
    )
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file remains, nobody listens

    async def body(server: PolicyServer) -> None:
        second = PolicyServer(None, settings, EchoEngine)
        with pytest.raises(OSError, match="already listens"):
            await second.start()
        streams = await connect(settings)
        assert await ask(streams, request(1)) == seq_answer(1)
        await close(streams)

    run(serving(settings, body))


# --------------------------------------------------------------------------- engine


VALID = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.1"}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"request": "junk"}, "request='junk', expected 'smtpd_access_policy'"),
        ({"request": ""}, "request='', expected"),
        ({"protocol_state": "QUIT"}, "unknown protocol_state 'QUIT'"),
        ({"protocol_state": ""}, "unknown protocol_state ''"),
        ({"client_address": "999.1.1.1"}, "client_address '999.1.1.1' is not an IP address"),
        ({"client_address": "unknown"}, "client_address 'unknown' is not an IP address"),
    ],
)
def test_engine_rejects_invalid_requests_with_dunno(changes: dict[str, str], fragment: str):
    attributes = {**VALID, **changes}
    engine = PolicyEngine(Settings())
    assert fragment in PolicyEngine.validate(attributes)
    decided = engine.decide(attributes)
    assert decided.action == "DUNNO"
    assert fragment in decided.reason
    assert decided.reason.startswith("invalid request: ")


def test_engine_missing_request_attribute():
    attributes = {k: v for k, v in VALID.items() if k != "request"}
    assert PolicyEngine.validate(attributes).startswith("request=''")


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"protocol_state": "rcpt"},
        {"protocol_state": "END-OF-MESSAGE"},
        {"client_address": "2001:db8::1"},
        {"client_address": ""},
        {"unknown_attribute": "kept"},
    ],
)
def test_engine_accepts_valid_requests(changes: dict[str, str]):
    attributes = {**VALID, **changes}
    assert PolicyEngine.validate(attributes) == ""
    assert PolicyEngine(Settings()).decide(attributes) == DUNNO


@pytest.mark.parametrize(
    ("action", "label"),
    [("DUNNO", "DUNNO"), ("550 5.7.23 SPF fail", "5xx"), ("450 try later", "4xx"),
     ("defer_if_permit greylisted", "DEFER_IF_PERMIT"), ("PREPEND X-A: b", "PREPEND")],
)
def test_answer_label_is_bounded(action: str, label: str):
    assert PolicyAnswer(action).label == label


# --------------------------------------------------------------------------- real engine
#
# The policy server with the real engine: blocking work off the loop, reloads, outages.

PORT_CONFIG = """
[general]
authserv_id = "mx.example.net"
[policyd]
socket = "inet:127.0.0.1:{port}"
on_state_error = "{on_state_error}"
threads = 4
[policyd.greylist]
enabled = {greylist}
delay = 60
"""


def write_config(path: Path, greylist: bool = False, on_state_error: str = "dunno",
                 port: int | None = None) -> Settings:
    path.write_text(PORT_CONFIG.format(port=port or free_port(), greylist=str(greylist).lower(),
                                       on_state_error=on_state_error))
    return load_settings(path)


def factory(dns: InMemoryResolver, stores: list[StateStore],
            make_store: Callable[[], StateStore] = MemoryStore
            ) -> Callable[[Settings], PolicyEngine]:
    def build(settings: Settings) -> PolicyEngine:
        store = make_store()
        stores.append(store)
        return PolicyEngine.from_settings(settings, dns, store=store)

    return build


def query(**values: str) -> bytes:
    """A request whose HELO name has no SPF record (so MAIL FROM decides)."""
    return encode_request(attributes(**{"helo_name": "x.test", **values}))


async def serving_engine(config: Path, settings: Settings,
                         build: Callable[[Settings], PolicyEngine],
                         body: Callable[[PolicyServer], Awaitable[None]]) -> None:
    server = PolicyServer(config, settings, build)
    await server.start()
    try:
        await body(server)
    finally:
        await server.stop(timeout=2.0)


class GatedResolver(InMemoryResolver):
    """Holds queries for `gated` names until the test opens the gate."""

    def __init__(self, base: InMemoryResolver, gated: Sequence[str]) -> None:
        super().__init__(zones=base.zones)
        self.gated = set(gated)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        if name.rstrip(".").lower() in self.gated:
            self.waiting.set()
            if not self.gate.wait(10):
                raise TimeoutError("gate never opened")
        return super().query(name, rdtype)


def test_answers_from_the_real_engine_over_many_connections(tmp_path: Path):
    config = tmp_path / "mailward.toml"
    settings = write_config(config)
    stores: list[StateStore] = []

    async def client(number: int) -> list[bytes]:
        streams = await connect(settings)
        answers = []
        for turn in range(3):
            outsider = (number + turn) % 4 == 0
            answers.append(await ask(streams, query(
                client_address=OUTSIDER if outsider else ORG_SERVER, helo_name="x.test",
                recipient=f"r{number}-{turn}@example.net")))
        await close(streams)
        return answers

    async def body(server: PolicyServer) -> None:
        results = await asyncio.gather(*(client(number) for number in range(150)))
        for number, answers in enumerate(results):
            for turn, answer in enumerate(answers):
                if (number + turn) % 4 == 0:
                    assert answer.startswith(b"action=550 5.7.23 203.0.113.9 is not one of"), answer
                else:
                    assert answer.startswith(b"action=PREPEND Received-SPF: pass "), answer

    run(serving_engine(config, settings, factory(resolver(), stores), body))


def test_a_request_waiting_for_dns_does_not_hold_up_other_connections(tmp_path: Path):
    config = tmp_path / "mailward.toml"
    settings = write_config(config)
    dns = GatedResolver(resolver(), gated=["slow.example.org"])

    async def body(server: PolicyServer) -> None:
        slow, fast = await connect(settings), await connect(settings)
        slow[1].write(query(sender="a@slow.example.org", helo_name="x.test"))
        await slow[1].drain()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, dns.waiting.wait, 5)
        # While that one waits in a thread for DNS, another connection is answered.
        answer = await ask(fast, query(client_address="127.0.0.1"))
        assert answer == b"action=DUNNO\n\n"
        answer = await ask(fast, query(helo_name="x.test"))
        assert answer.startswith(b"action=PREPEND Received-SPF: pass ")
        dns.gate.set()
        reply = await asyncio.wait_for(slow[0].readuntil(b"\n\n"), 5)
        assert reply.startswith(b"action=PREPEND Received-SPF: none ")
        await close(slow)
        await close(fast)

    run(serving_engine(config, settings, factory(dns, []), body))


class GatedStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()
        self.closed = False

    def greylist(self, triplet: str, client: str, now: float,
                 params: GreylistParams) -> GreylistOutcome:
        self.waiting.set()
        self.gate.wait(10)
        return super().greylist(triplet, client, now, params)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_reload_closes_the_old_store_after_its_last_request(tmp_path: Path):
    config = tmp_path / "mailward.toml"
    settings = write_config(config, greylist=True)
    stores: list[StateStore] = []
    build = factory(resolver(), stores, GatedStore)

    async def body(server: PolicyServer) -> None:
        streams = await connect(settings)
        streams[1].write(query(client_address=OUTSIDER, sender="a@nospf.example"))
        await streams[1].drain()
        old = stores[0]
        assert isinstance(old, GatedStore)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, old.waiting.wait, 5)
        write_config(config, greylist=False, port=settings.policyd.socket.port)
        server.reload()
        assert len(stores) == 2 and server.engine.store is stores[1]
        assert not old.closed  # a request still uses it
        old.gate.set()
        reply = await asyncio.wait_for(streams[0].readuntil(b"\n\n"), 5)
        assert reply.startswith(b"action=DEFER_IF_PERMIT 4.7.1 Greylisted")
        assert old.closed
        # The new engine (greylisting off) answers the next request.
        answer = await ask(streams, query(client_address=OUTSIDER, sender="a@nospf.example"))
        assert answer.startswith(b"action=PREPEND Received-SPF: none ")
        await close(streams)

    run(serving_engine(config, settings, build, body))
    current = stores[1]
    assert isinstance(current, GatedStore) and current.closed  # stop() closed it


def test_state_outage_is_answered_as_configured_and_counted(tmp_path: Path):
    config = tmp_path / "mailward.toml"
    settings = write_config(config, greylist=True, on_state_error="defer")
    labels = {"backend": "memory", "operation": "greylist"}

    async def body(server: PolicyServer) -> None:
        before = metric("mailward_state_errors_total", labels)
        streams = await connect(settings)
        answer = await ask(streams, query(client_address=OUTSIDER, sender="a@nospf.example"))
        assert answer == (b"action=DEFER_IF_PERMIT 4.3.0 Temporary policy failure, please "
                          b"try again later\n\n")
        assert metric("mailward_state_errors_total", labels) == before + 1
        await close(streams)

    run(serving_engine(config, settings, factory(resolver(), [], BrokenStore), body))
