"""The TLS policy service: Postfix's socketmap connections, served with asyncio.

Postfix's smtp processes keep a socketmap connection open and send one lookup after
another.  One asyncio loop serves many such connections; each is a small loop: read,
feed the codec, answer each lookup in order.  Lookups block (DNS, HTTPS fetches), so
they run in a pool of `[tlspolicy] threads` threads while the loop serves the others.

Robustness: a framing error closes the connection (the stream cannot resynchronise;
Postfix reconnects); an idle connection is closed after `idle_timeout`; a bug while
deciding is logged and answered `TEMP` (Postfix defers that delivery and retries: never
a bounce, never a silently weaker policy).  SIGHUP reloads the configuration and keeps
the policy cache; SIGTERM stops accepting and lets lookups in progress finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
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

log = logging.getLogger("mailward.tlspolicy")

#: Builds the engine from settings and the cache that outlives reloads.
EngineFactory = Callable[[Settings, PolicyCache], TlsPolicyEngine]

_READ_SIZE = 65536


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
                 factory: EngineFactory = default_factory) -> None:
        self.config_path = config_path
        self.settings = settings
        self.factory = factory
        self.cache = open_cache(settings)
        self.engine = factory(settings, self.cache)
        self._executor = ThreadPoolExecutor(max_workers=settings.tlspolicy.threads,
                                            thread_name_prefix="mailward-tlspolicy")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        address = self.settings.tlspolicy.socket
        self._server = await runtime.start_stream_server(
            self._serve, address, self.settings.tlspolicy.socket_permissions)
        log.info("mailward tlspolicy listening on %s", address)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let lookups in progress finish, close idle connections."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in self._connections - self._busy:
            task.cancel()
        pending = [task for task in self._connections if not task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        runtime.remove_unix_socket(self.settings.tlspolicy.socket)
        self._executor.shutdown(wait=False, cancel_futures=True)

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
            "tlspolicy.cache_entries": (self.settings.tlspolicy.cache_entries,
                                        settings.tlspolicy.cache_entries),
            "tlspolicy.cache": (self.settings.tlspolicy.cache, settings.tlspolicy.cache),
        })
        self.settings, self.engine = settings, engine
        runtime.set_log_level(settings.general.log_level)
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded from %s", self.config_path)

    # ------------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.settings.tlspolicy.max_connections or self._stopping:
            log.warning("too many socketmap connections (%d); closing a new one",
                        len(self._connections))
            metrics.TLSPOLICY_PROTOCOL_ERRORS.labels("too_many_connections").inc()
            writer.close()
            return
        self._connections.add(task)
        metrics.TLSPOLICY_CONNECTIONS.inc()
        metrics.TLSPOLICY_ACTIVE_CONNECTIONS.inc()
        try:
            await self._converse(reader, writer, task)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or we are stopping
        except Exception:
            log.exception("socketmap connection failed")
            metrics.ERRORS.labels("tlspolicy").inc()
        finally:
            self._connections.discard(task)
            self._busy.discard(task)
            metrics.TLSPOLICY_ACTIVE_CONNECTIONS.dec()
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        task: asyncio.Task[None]) -> None:
        decoder = SocketmapDecoder(self.settings.tlspolicy.max_request_size)
        while True:
            try:
                async with asyncio.timeout(self.settings.tlspolicy.idle_timeout):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                if decoder.pending:
                    metrics.TLSPOLICY_PROTOCOL_ERRORS.labels("idle_timeout").inc()
                return
            if not data:
                problem = decoder.eof()
                if problem is not None:
                    self._report(problem)
                return
            self._busy.add(task)
            for event in decoder.feed(data):
                if isinstance(event, SocketmapError):
                    self._report(event)
                    return
                writer.write(encode_reply(await self._answer(event)))
            await writer.drain()
            if not decoder.pending:
                self._busy.discard(task)
                if self._stopping:
                    return

    async def _answer(self, lookup: Lookup) -> Reply:
        started = time.perf_counter()
        engine = self.engine
        known = engine.known_answer(lookup.key)
        if known is not None:
            _ANSWERS_FROM_MEMORY.inc()
            return self._answered(known, started, repeated=True)
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._executor, engine.answer, lookup.key)
        except Exception:
            log.exception("TLS policy decision failed for %r", lookup.key)
            metrics.ERRORS.labels("tlspolicy").inc()
            metrics.TLSPOLICY_ANSWERS.labels("temp").inc()
            return Reply(ReplyStatus.TEMP, "internal error")
        _count(answer)
        return self._answered(answer, started)

    @staticmethod
    def _answered(answer: TlsAnswer, started: float, repeated: bool = False) -> Reply:
        """Count and log an answer.  A decision that changes a delivery is logged at INFO
        when it is made; its repeats from memory (same TXT data, within its TTL) only at
        DEBUG, or a busy relay would log one line per delivery attempt."""
        metrics.TLSPOLICY_ANSWER_SECONDS.observe(time.perf_counter() - started)
        _ANSWER_KINDS[answer.kind].inc()
        level = logging.INFO if answer.changes_delivery and not repeated else logging.DEBUG
        if answer.kind is AnswerKind.TEMP:
            level = logging.WARNING  # a delivery deferred because DNS(SEC) failed
        if log.isEnabledFor(level):
            log.log(level, "%s: %s %s (%s)", answer.key, answer.reply.status,
                    answer.reply.data, answer.reason)
        return answer.reply

    @staticmethod
    def _report(problem: SocketmapError) -> None:
        log.warning("socketmap protocol error, closing the connection: %s", problem.detail)
        metrics.TLSPOLICY_PROTOCOL_ERRORS.labels(problem.kind.value).inc()


#: Label children looked up once: an answer from memory takes a few microseconds.
_ANSWER_KINDS = {kind: metrics.TLSPOLICY_ANSWERS.labels(kind.value) for kind in AnswerKind}
_ANSWERS_FROM_MEMORY = metrics.TLSPOLICY_CACHE.labels("memory")


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
    """Run until SIGTERM/SIGINT; SIGHUP reloads."""
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
