"""The policy server with the real engine: blocking work off the loop, reloads, outages."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from mailward.config import Settings, load_settings
from mailward.dns import DnsAnswer, InMemoryResolver
from mailward.policies.engine import PolicyEngine
from mailward.state import GreylistOutcome, GreylistParams, MemoryStore, StateStore
from policyd.codec import encode_request
from policyd.server import PolicyServer
from tests.unit.test_policies_helpers import (
    ORG_SERVER,
    OUTSIDER,
    BrokenStore,
    attributes,
    metric,
    resolver,
)
from tests.unit.test_policy_server import ask, close, connect, free_port, run

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


async def serving(config: Path, settings: Settings, build: Callable[[Settings], PolicyEngine],
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

    run(serving(config, settings, factory(resolver(), stores), body))


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

    run(serving(config, settings, factory(dns, []), body))


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

    run(serving(config, settings, build, body))
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

    run(serving(config, settings, factory(resolver(), [], BrokenStore), body))
