"""The TLS policy service: Postfix's socketmap connections, served with asyncio.

Postfix's smtp processes keep a socketmap connection open and send one lookup after
another.  One asyncio loop serves many such connections, each an `asyncio.Protocol`
(`_Connection`): bytes in, the pure codec (socketmap.py) splits them into lookups,
answers go out in order.  Most answers are already known (engine.known_answer: the
decision for that key is still valid, no I/O needed), so they are written from
`data_received` itself: no task, no thread, no timer per lookup.  A lookup that needs a
decision (DNS, an HTTPS fetch) runs in a pool of `[tlspolicy] threads` threads while the
loop serves the other connections; later lookups on that connection wait for it, so the
answers keep their order.

Robustness: a framing error closes the connection (the stream cannot resynchronise;
Postfix reconnects); an idle connection is closed after `idle_timeout`; a bug while
deciding is logged and answered `TEMP` (Postfix defers that delivery and retries: never
a bounce, never a silently weaker policy).  A client that sends faster than it reads
is paused (no reading while its answers wait in the kernel).  SIGHUP reloads the
configuration and keeps the policy cache; SIGTERM stops accepting and lets lookups in
progress finish.

One process uses one core.  With `[tlspolicy] workers` above 1, `serve_forever` makes
this process the supervisor of that many worker processes accepting on its socket
(mailward.tlspolicy.workers).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailward import metrics, runtime
from mailward.config import ConfigError, Settings, load_settings
from mailward.tlspolicy.engine import AnswerKind, TlsAnswer, TlsPolicyEngine
from mailward.tlspolicy.mtasts import MemoryPolicyCache, PolicyCache
from mailward.tlspolicy.socketmap import (
    Lookup,
    Reply,
    ReplyStatus,
    SocketmapDecoder,
    SocketmapError,
    encode_reply,
)
from mailward.tlspolicy.tally import AnswerTally

log = logging.getLogger("mailward.tlspolicy")

#: Builds the engine from settings and the cache that outlives reloads.
EngineFactory = Callable[[Settings, PolicyCache], TlsPolicyEngine]

#: Seconds between moving the answers counted in memory into the metrics.
_TALLY_INTERVAL = 1.0
_INTERNAL_ERROR = Reply(ReplyStatus.TEMP, "internal error")


def default_factory(settings: Settings, cache: PolicyCache) -> TlsPolicyEngine:
    from mailward.dns import DnsResolver
    from mailward.tlspolicy.engine import build_engine

    return build_engine(settings.tlspolicy, DnsResolver(settings.dns), cache)


def open_cache(settings: Settings) -> PolicyCache:
    """`[tlspolicy] cache`: SQLite keeps learnt policies across restarts; Redis (at
    `[state] url`) also shares them between relays."""
    if settings.tlspolicy.cache == "redis":
        from mailward.tlspolicy.redis_cache import RedisPolicyCache

        return RedisPolicyCache(settings.state.url,
                                local_entries=settings.tlspolicy.cache_entries)
    if settings.tlspolicy.cache == "sqlite":
        from mailward.tlspolicy.store import SqlitePolicyCache

        return SqlitePolicyCache(settings.tlspolicy.cache_path)
    return MemoryPolicyCache(settings.tlspolicy.cache_entries)


class TlsPolicyServer:
    """Serves the socketmap protocol on `[tlspolicy] socket` until stopped."""

    def __init__(self, config_path: Path | None, settings: Settings,
                 factory: EngineFactory = default_factory,
                 listening: socket.socket | None = None) -> None:
        """`listening`: a socket already bound and listening (a worker gets its
        supervisor's); by default the server opens `[tlspolicy] socket` itself."""
        self.config_path = config_path
        self.settings = settings
        self.factory = factory
        self.listening = listening
        self.cache = open_cache(settings)
        self.engine = factory(settings, self.cache)
        self._executor = ThreadPoolExecutor(max_workers=settings.tlspolicy.threads,
                                            thread_name_prefix="mailward-tlspolicy")
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._closed = asyncio.Event()  # set when the last connection is gone
        self._tally = AnswerTally(
            {kind.value: metrics.TLSPOLICY_ANSWERS.labels(kind.value) for kind in AnswerKind},
            metrics.TLSPOLICY_CACHE.labels("memory"), metrics.TLSPOLICY_ANSWER_SECONDS)
        self._tally_timer: asyncio.TimerHandle | None = None
        #: key -> (the known answer, its reply netstring): encoded once, not per lookup.
        self._wire: dict[str, tuple[TlsAnswer, bytes]] = {}
        #: A whole request netstring, as read, -> its key: Postfix sends the same bytes
        #: for a destination each time, so a repeat needs no decoding.
        self._keys: dict[bytes, str] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        address = self.settings.tlspolicy.socket
        sock = self.listening if self.listening is not None else runtime.open_service_socket(
            address, self.settings.tlspolicy.socket_permissions)
        if sock.family == socket.AF_UNIX:
            self._server = await loop.create_unix_server(self._protocol, sock=sock)
        else:
            self._server = await loop.create_server(self._protocol, sock=sock)
        self._tally_timer = loop.call_later(_TALLY_INTERVAL, self._flush_tally)
        log.info("mailward tlspolicy listening on %s", address)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let lookups in progress finish, close idle connections."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            if connection.idle:
                connection.close()
        if self._connections:
            self._closed.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._closed.wait()
            except TimeoutError:
                for connection in list(self._connections):
                    connection.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self.listening is None:
            runtime.remove_unix_socket(self.settings.tlspolicy.socket)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._tally_timer is not None:
            self._tally_timer.cancel()
        self._tally.flush()

    def discard(self) -> None:
        """Release what a server that will not serve holds (a supervisor's own)."""
        self._executor.shutdown(wait=False)
        close = getattr(self.cache, "close", None)
        if callable(close):
            close()

    def reload(self) -> None:
        """New settings and engine for the next lookups; the policy cache is kept (a
        reload must not forget the enforce policies already learnt)."""
        if self.config_path is None:
            return
        try:
            settings = load_settings(self.config_path)
            engine = self.factory(settings, self.cache)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            metrics.CONFIG_RELOADS.labels("error").inc()
            return
        runtime.warn_about_restart_keys({
            "tlspolicy.socket": (self.settings.tlspolicy.socket, settings.tlspolicy.socket),
            "tlspolicy.threads": (self.settings.tlspolicy.threads, settings.tlspolicy.threads),
            "tlspolicy.workers": (self.settings.tlspolicy.workers, settings.tlspolicy.workers),
            "tlspolicy.cache_entries": (self.settings.tlspolicy.cache_entries,
                                        settings.tlspolicy.cache_entries),
            "tlspolicy.cache": (self.settings.tlspolicy.cache, settings.tlspolicy.cache),
        })
        self.settings, self.engine = settings, engine
        self._wire.clear()
        self._keys.clear()  # decoded again, under the new max_request_size
        runtime.set_log_level(settings.general.log_level)
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded from %s", self.config_path)

    def _flush_tally(self) -> None:
        self._tally.flush()
        self._tally_timer = asyncio.get_running_loop().call_later(_TALLY_INTERVAL,
                                                                  self._flush_tally)

    # ------------------------------------------------------------------ connections

    def _protocol(self) -> _Connection:
        return _Connection(self)

    def _admit(self, connection: _Connection) -> bool:
        if len(self._connections) >= self.settings.tlspolicy.max_connections or self._stopping:
            log.warning("too many socketmap connections (%d); closing a new one",
                        len(self._connections))
            metrics.TLSPOLICY_PROTOCOL_ERRORS.labels("too_many_connections").inc()
            return False
        self._connections.add(connection)
        metrics.TLSPOLICY_CONNECTIONS.inc()
        metrics.TLSPOLICY_ACTIVE_CONNECTIONS.inc()
        return True

    def _forget(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            metrics.TLSPOLICY_ACTIVE_CONNECTIONS.dec()
        if not self._connections:
            self._closed.set()

    # ------------------------------------------------------------------ answers

    def known_reply(self, key: str, started: float) -> bytes | None:
        """The reply netstring for a key already decided (no I/O: on the loop), or
        None when it needs `decide`."""
        known = self.engine.known_answer(key)
        if known is None:
            return None
        wire = self._wire.get(key)
        if wire is None or wire[0] is not known:
            if len(self._wire) >= self.settings.tlspolicy.cache_entries:
                self._wire.clear()  # a bound, like the engine's own
            wire = (known, encode_reply(known.reply))
            self._wire[key] = wire
        self._tally.count(known.kind.value, time.perf_counter() - started)
        if known.kind is AnswerKind.TEMP or log.isEnabledFor(logging.DEBUG):
            self._log(known, repeated=True)
        return wire[1]

    def remember_request(self, request: bytes, key: str) -> None:
        """`request` (exactly one netstring, just decoded) asks about `key`."""
        if len(self._keys) >= self.settings.tlspolicy.cache_entries:
            self._keys.clear()
        self._keys[request] = key

    async def decide(self, lookup: Lookup) -> bytes:
        """Decide in the thread pool (blocking DNS and HTTPS) and encode the reply."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._executor, self.engine.answer,
                                                lookup.key)
        except Exception:
            log.exception("TLS policy decision failed for %r", lookup.key)
            metrics.ERRORS.labels("tlspolicy").inc()
            metrics.TLSPOLICY_ANSWERS.labels("temp").inc()
            return encode_reply(_INTERNAL_ERROR)
        _count(answer)
        metrics.TLSPOLICY_ANSWER_SECONDS.observe(time.perf_counter() - started)
        _ANSWER_KINDS[answer.kind].inc()
        self._log(answer, repeated=False)
        return encode_reply(answer.reply)

    @staticmethod
    def _log(answer: TlsAnswer, repeated: bool) -> None:
        """A decision that changes a delivery is logged at INFO when it is made; its
        repeats from memory (same TXT data, within its TTL) only at DEBUG, or a busy
        relay would log one line per delivery attempt."""
        level = logging.INFO if answer.changes_delivery and not repeated else logging.DEBUG
        if answer.kind is AnswerKind.TEMP:
            level = logging.WARNING  # a delivery deferred because DNS(SEC) failed
        if log.isEnabledFor(level):
            log.log(level, "%s: %s %s (%s)", answer.key, answer.reply.status,
                    answer.reply.data, answer.reason)

    @staticmethod
    def report(problem: SocketmapError) -> None:
        log.warning("socketmap protocol error, closing the connection: %s", problem.detail)
        metrics.TLSPOLICY_PROTOCOL_ERRORS.labels(problem.kind.value).inc()


class _Connection(asyncio.Protocol):
    """One Postfix socketmap connection: the codec's lookups answered in order.

    `_decision` is the lookup being decided in the thread pool, if any; lookups that
    arrive meanwhile wait in `_waiting` (answering them first would reorder replies)."""

    def __init__(self, server: TlsPolicyServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._decoder = SocketmapDecoder(server.settings.tlspolicy.max_request_size)
        self._waiting: collections.deque[Lookup] = collections.deque()
        self._decision: asyncio.Task[bytes] | None = None
        self._last_activity = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._eof = False  # the client has sent everything it will send
        self._writes_paused = False

    @property
    def idle(self) -> bool:
        """Nothing started and not answered: closing now loses no lookup."""
        return self._decision is None and not self._waiting and not self._decoder.pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._server._admit(self):
            self._closing = True
            transport.close()
            return
        self._last_activity = self._loop.time()
        self._idle_timer = self._loop.call_later(
            self._server.settings.tlspolicy.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        started = time.perf_counter()
        self._last_activity = self._loop.time()
        server = self._server
        assert self._transport is not None
        if self.idle:
            # The usual read: one whole request seen before, whose answer is known.
            key = server._keys.get(data)
            if key is not None and (reply := server.known_reply(key, started)) is not None:
                self._transport.write(reply)
                if server._stopping:
                    self.close()
                return
        events = self._decoder.feed(data)
        for event in events:
            if isinstance(event, SocketmapError):
                server.report(event)
                self.close()
                return
            if self._decision is not None or self._waiting:
                self._waiting.append(event)
                continue
            reply = server.known_reply(event.key, started)
            if reply is None:
                self._start_decision(event)
            else:
                self._transport.write(reply)
                if len(events) == 1 and not self._decoder.pending:
                    server.remember_request(data, event.key)
        if server._stopping and self.idle:
            self.close()

    def eof_received(self) -> bool | None:
        self._eof = True
        problem = self._decoder.eof()
        if problem is not None:
            self._server.report(problem)
        if self.idle:
            return None  # close now
        return True  # keep the transport open to write the answers still to come

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._decision is not None:
            self._decision.cancel()
        self._waiting.clear()
        self._server._forget(self)

    def pause_writing(self) -> None:
        """The client does not read its answers: stop reading its lookups."""
        self._writes_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writes_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read only while answers can be written and no decision is in progress: a
        client that sends lookups faster than they are answered waits in the kernel's
        buffers, not in ours (at most one read's worth waits in `_waiting`)."""
        if self._transport is None or self._closing or self._eof:
            return
        wanted = not self._writes_paused and self._decision is None
        if wanted != self._transport.is_reading():
            if wanted:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ internals

    def _start_decision(self, lookup: Lookup) -> None:
        self._decision = self._loop.create_task(self._server.decide(lookup))
        self._decision.add_done_callback(self._decided)
        self._update_reading()

    def _decided(self, task: asyncio.Task[bytes]) -> None:
        self._decision = None
        if task.cancelled() or self._closing or self._transport is None:
            return
        self._transport.write(task.result())
        self._last_activity = self._loop.time()
        started = time.perf_counter()
        while self._waiting and self._decision is None:
            lookup = self._waiting.popleft()
            reply = self._server.known_reply(lookup.key, started)
            if reply is None:
                self._start_decision(lookup)
            else:
                self._transport.write(reply)
        if self.idle and (self._server._stopping or self._eof):
            self.close()
            return
        self._update_reading()

    def _check_idle(self) -> None:
        """Close a connection nothing was heard from for `idle_timeout` seconds."""
        timeout = self._server.settings.tlspolicy.idle_timeout
        quiet = self._loop.time() - self._last_activity
        if self._closing:
            return
        if quiet >= timeout and self._decision is None:
            if self._decoder.pending:
                metrics.TLSPOLICY_PROTOCOL_ERRORS.labels("idle_timeout").inc()
            self.close()
            return
        self._idle_timer = self._loop.call_later(max(timeout - quiet, 0.1), self._check_idle)


#: Label children looked up once.
_ANSWER_KINDS = {kind: metrics.TLSPOLICY_ANSWERS.labels(kind.value) for kind in AnswerKind}


def _count(answer: TlsAnswer) -> None:
    if answer.dane is not None:
        metrics.TLSPOLICY_DANE_LOOKUPS.labels(answer.dane.outcome.value).inc()
    decision = answer.decision
    if answer.kind is AnswerKind.DANE:
        metrics.TLSPOLICY_DECISIONS.labels("dane", answer.reply.data).inc()
    elif answer.kind is AnswerKind.OVERRIDE:
        metrics.TLSPOLICY_DECISIONS.labels("override", "none").inc()
    elif decision is not None:
        mechanism = "mta_sts" if decision.policy is not None else "none"
        metrics.TLSPOLICY_DECISIONS.labels(mechanism, decision.mode.value).inc()
        metrics.TLSPOLICY_CACHE.labels(decision.source.value).inc()
        if decision.fetch_outcome is not None:
            metrics.TLSPOLICY_FETCHES.labels(decision.fetch_outcome).inc()


async def serve_forever(server: TlsPolicyServer) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads.

    With `[tlspolicy] workers` above 1 (and a configuration file the workers can read),
    this process becomes their supervisor instead of serving (mailward.tlspolicy.workers)."""
    if (server.settings.tlspolicy.workers > 1 and server.listening is None
            and server.config_path is not None):
        from mailward.tlspolicy.workers import supervise

        return await supervise(server)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
    except (OSError, KeyError) as exc:
        log.error("cannot listen on %s: %s", server.settings.tlspolicy.socket, exc)
        return 1
    await stop.wait()
    log.info("stopping: finishing lookups in progress")
    await server.stop()
    log.info("mailward tlspolicy stopped")
    return 0
