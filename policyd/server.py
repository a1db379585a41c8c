"""The policy service: Postfix's persistent policy connections, served with asyncio.

Postfix keeps a policy connection open and sends one request after another on it
(`smtpd_policy_service_reuse_count_limit`), from many smtpd processes at once.  One
asyncio loop serves hundreds of such connections; each connection is a small loop:
read, feed the codec, answer each complete request in order.

Robustness rules: a malformed request is logged and answered `DUNNO` if the stream is
still in sync, otherwise the connection is closed; an idle connection is closed after
`idle_timeout`; a bug while deciding is logged and answered `DUNNO` (never a reject);
one bad client never affects the others.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from mailward import metrics, runtime
from mailward.config import ConfigError, Settings, SocketKind, load_settings
from mailward.policy import DUNNO, PolicyAnswer, PolicyEngine
from policyd.codec import PolicyDecoder, PolicyRequest, ProtocolError, encode_response

log = logging.getLogger("mailward.policyd")

EngineFactory = Callable[[Settings], PolicyEngine]

_READ_SIZE = 65536


class PolicyServer:
    """Serves the policy protocol on the configured socket until stopped."""

    def __init__(self, config_path: Path | None, settings: Settings, factory: EngineFactory):
        self.config_path = config_path
        self.settings = settings
        self.factory = factory
        self.engine = factory(settings)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # connections inside a request
        self._stopping = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        address = self.settings.policyd.socket
        if address.kind is SocketKind.UNIX:
            runtime.ensure_socket_directory(address)
            if runtime.socket_in_use(address):
                raise OSError(f"another process already listens on {address}")
            runtime.remove_unix_socket(address)
            self._server = await asyncio.start_unix_server(self._serve, path=address.path)
            runtime.apply_socket_permissions(address, self.settings.policyd.socket_permissions)
        else:
            family = socket.AF_INET6 if address.kind is SocketKind.INET6 else socket.AF_INET
            self._server = await asyncio.start_server(
                self._serve, host=address.host, port=address.port, family=family,
                reuse_address=True, backlog=1024,
            )
        log.info("mailward policyd listening on %s", address)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish, close idle connections."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        idle = self._connections - self._busy
        for task in idle:
            task.cancel()
        pending = [task for task in self._connections if not task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        runtime.remove_unix_socket(self.settings.policyd.socket)
        self._stopped.set()

    def reload(self) -> None:
        if self.config_path is None:
            return
        try:
            settings = load_settings(self.config_path)
            engine = self.factory(settings)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            metrics.CONFIG_RELOADS.labels("error").inc()
            return
        except Exception:
            log.exception("reload refused: building the engine failed")
            metrics.CONFIG_RELOADS.labels("error").inc()
            return
        if settings.policyd.socket != self.settings.policyd.socket:
            log.warning("policyd.socket changed: takes effect after a restart")
        self.settings, self.engine = settings, engine
        runtime.set_log_level(settings.general.log_level)
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded from %s", self.config_path)

    # ------------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.settings.policyd.max_connections:
            log.warning("too many policy connections (%d); closing a new one",
                        len(self._connections))
            metrics.POLICYD_PROTOCOL_ERRORS.labels("too_many_connections").inc()
            writer.close()
            return
        self._connections.add(task)
        metrics.POLICYD_CONNECTIONS.inc()
        metrics.POLICYD_ACTIVE_CONNECTIONS.inc()
        _set_nodelay(writer)
        try:
            await self._converse(reader, writer, task)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            pass  # shutting down
        except Exception:
            log.exception("policy connection failed")
            metrics.ERRORS.labels("policyd").inc()
        finally:
            self._connections.discard(task)
            self._busy.discard(task)
            metrics.POLICYD_ACTIVE_CONNECTIONS.dec()
            writer.close()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        decoder = PolicyDecoder(self.settings.policyd.max_request_size)
        peer = _peer_name(writer)
        while True:
            try:
                data = await asyncio.wait_for(
                    reader.read(_READ_SIZE), self.settings.policyd.idle_timeout
                )
            except TimeoutError:
                if decoder.pending:
                    log.warning("policy client %s stalled inside a request; closing", peer)
                    metrics.POLICYD_PROTOCOL_ERRORS.labels("idle_timeout").inc()
                return
            if not data:
                problem = decoder.eof()
                if problem is not None:
                    self._report(problem, peer)
                return
            self._busy.add(task)
            replies, fatal = self._handle(decoder.feed(data), peer)
            if replies:
                writer.write(b"".join(replies))
                await writer.drain()
            if fatal:
                return
            if not decoder.pending:
                self._busy.discard(task)  # between requests: safe to cancel at shutdown
                if self._stopping:
                    return  # its request is answered; stop() is waiting for this task

    def _handle(self, events: list[PolicyRequest | ProtocolError], peer: str
                ) -> tuple[list[bytes], bool]:
        """Answer each complete request in order; stop at a fatal protocol error."""
        replies = []
        for event in events:
            if isinstance(event, PolicyRequest):
                replies.append(encode_response(self._answer(event).action))
                continue
            self._report(event, peer)
            if event.fatal:
                return replies, True
            replies.append(encode_response(DUNNO.action))
        return replies, False

    def _answer(self, request: PolicyRequest) -> PolicyAnswer:
        started = time.perf_counter()
        try:
            answer = self.engine.decide(request.attributes)
        except Exception:
            log.exception("policy decision failed for %s", _describe(request))
            metrics.ERRORS.labels("policyd").inc()
            answer = PolicyAnswer("DUNNO", reason="internal error")
        metrics.POLICYD_REQUEST_SECONDS.observe(time.perf_counter() - started)
        state = request.protocol_state if request.protocol_state else "UNKNOWN"
        metrics.POLICYD_REQUESTS.labels(state.lower(), answer.label).inc()
        level = logging.DEBUG if answer.action == "DUNNO" and not answer.reason else logging.INFO
        log.log(level, "%s: action=%s%s", _describe(request), answer.action,
                f" ({answer.reason})" if answer.reason else "")
        return answer

    def _report(self, problem: ProtocolError, peer: str) -> None:
        metrics.POLICYD_PROTOCOL_ERRORS.labels(problem.kind.value).inc()
        outcome = "closing the connection" if problem.fatal else "answered DUNNO"
        log.warning("malformed policy request from %s: %s; %s", peer, problem.detail, outcome)


def _describe(request: PolicyRequest) -> str:
    return (
        f"{request.get('queue_id') or 'NOQUEUE'}: {request.protocol_state or '?'} "
        f"client={request.get('client_name', 'unknown')}[{request.get('client_address', '?')}] "
        f"from=<{request.get('sender')}> to=<{request.get('recipient')}>"
    )


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return f"{peer[0]}:{peer[1]}"
    return "unix socket client"


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve_forever(server: PolicyServer) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
    except (OSError, KeyError) as exc:
        log.error("cannot listen on %s: %s", server.settings.policyd.socket, exc)
        return 1
    await stop.wait()
    log.info("stopping: finishing requests in progress")
    await server.stop()
    log.info("mailward policyd stopped")
    return 0
