"""The policy service: Postfix's persistent policy connections, served with asyncio.

Postfix keeps a policy connection open and sends one request after another on it
(`smtpd_policy_service_reuse_count_limit`), from many smtpd processes at once.  One
asyncio loop serves hundreds of such connections; each connection is a small loop:
read, feed the codec, answer each complete request in order.

Robustness rules: a malformed request is logged and answered `DUNNO` if the stream is
still in sync, otherwise the connection is closed; an idle connection is closed after
`idle_timeout`, and one whose request is not complete `request_timeout` seconds after
its first byte is closed too (a byte now and then must not hold it open for ever; it is
never answered a reject for it); a bug while deciding is logged and answered `DUNNO`
(never a reject); one bad client never affects the others.

Descriptors: at start the soft open-files limit is raised toward the hard one, and the
connections are capped below it (`[policyd] max_connections`, by default derived from the
limit, see policyd.limits).  At the cap the connection idle the longest is closed to
admit the new client: Postfix reopens a closed idle connection when it needs one, while
a client refused at accept gets no answer at all.

The engine's blocking work (SPF's DNS lookups, the greylisting and rate-limit store)
never runs on the event loop: the engine yields it as steps (mailward.policies.base),
which run in a pool of `[policyd] threads` threads while the loop serves the other
connections.  What needs no waiting (answers the engine has in memory) is decided on
the loop, without a thread hop.  Requests on one connection are answered in order.

On reload the new engine takes the next requests; the old one is closed (its state
store connections released) once its last request is answered.

One process uses one core.  With `[policyd] workers` above 1, `serve_forever` makes
this process a `Supervisor` of that many worker processes accepting on its socket.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mailward import metrics, runtime, sdnotify
from mailward.config import ConfigError, Settings, load_settings
from mailward.policies.engine import DUNNO, PROTOCOL_STATES, PolicyAnswer, PolicyEngine
from mailward.supervisor import WorkerPool, WorkerSupervisor
from policyd.codec import PolicyDecoder, PolicyRequest, ProtocolError, encode_response
from policyd.limits import OpenFilesLimit, connection_cap, raise_open_files_limit

log = logging.getLogger("mailward.policyd")

EngineFactory = Callable[[Settings], PolicyEngine]

_READ_SIZE = 65536


class _EngineInUse:
    """An engine and the number of requests using it, so a replaced one is closed only
    when its last request is answered."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.users = 0
        self.retired = False
        self.closed = False


class _Connection:
    """One client connection: its task (to cancel) and writer (to close) when it is
    evicted at the connection cap."""

    __slots__ = ("task", "writer")

    def __init__(self, task: asyncio.Task[None], writer: asyncio.StreamWriter) -> None:
        self.task = task
        self.writer = writer


class PolicyServer:
    """Serves the policy protocol on the configured socket until stopped."""

    def __init__(self, config_path: Path | None, settings: Settings, factory: EngineFactory,
                 listening: socket.socket | None = None):
        """`listening`: a socket already bound and listening (a worker gets its
        supervisor's); by default the server opens `[policyd] socket` itself."""
        self.config_path = config_path
        self.settings = settings
        self.factory = factory
        self.listening = listening
        self._current = _EngineInUse(factory(settings))
        self._executor = ThreadPoolExecutor(
            max_workers=settings.policyd.threads, thread_name_prefix="mailward-policyd"
        )
        self._server: asyncio.Server | None = None
        # Insertion order is recency: a connection moves to the end after each answered
        # request, so the first idle one is the one idle the longest.
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._busy: set[asyncio.Task[None]] = set()  # connections inside a request
        self._files: OpenFilesLimit | None = None
        self._cap = settings.policyd.max_connections or 1000
        self._at_cap = False  # logged once per episode at the cap, not per connection
        self._stopping = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._apply_descriptor_limits()
        address = self.settings.policyd.socket
        if self.listening is not None:
            if self.listening.family == socket.AF_UNIX:
                self._server = await asyncio.start_unix_server(self._serve, sock=self.listening)
            else:
                self._server = await asyncio.start_server(self._serve, sock=self.listening)
        else:
            self._server = await runtime.start_stream_server(
                self._serve, address, self.settings.policyd.socket_permissions)
        log.info("mailward policyd listening on %s", address)
        await self._check_state(self.engine)

    def _apply_descriptor_limits(self) -> None:
        """Raise the open-files limit (once per process) and set the connection cap."""
        if self._files is None:
            self._files = raise_open_files_limit()
            files = self._files
            if files.error:
                log.warning("could not raise the open-files limit from %d toward %d: %s",
                            files.before, files.hard, files.error)
            else:
                log.info("open-files limit %d (was %d, hard limit %s)", files.soft,
                         files.before, "unlimited" if files.hard < 0 else files.hard)
        configured = self.settings.policyd.max_connections
        self._cap = connection_cap(configured, self._files.soft)
        if configured and self._cap < configured:
            log.warning("policyd.max_connections %d lowered to %d: the open-files limit "
                        "(%d) leaves no room for more", configured, self._cap,
                        self._files.soft)
        log.info("at most %d concurrent policy connections", self._cap)

    @property
    def engine(self) -> PolicyEngine:
        """The engine new requests go to."""
        return self._current.engine

    async def _check_state(self, engine: PolicyEngine) -> None:
        """Warn (never fail) if the state backend does not answer: policies then follow
        `on_state_error` until it is back."""
        loop = asyncio.get_running_loop()
        problem = await loop.run_in_executor(self._executor, engine.check_state)
        if problem is not None:
            log.warning("state backend not available yet (policies follow "
                        "policyd.on_state_error until it is): %s", problem)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish, close idle connections."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        idle = self._connections.keys() - self._busy
        for task in idle:
            task.cancel()
        pending = [task for task in self._connections if not task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        if self.listening is None:  # a supervisor's socket is its own to remove
            runtime.remove_unix_socket(self.settings.policyd.socket)
        self._retire(self._current)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()

    def reload(self) -> None:
        if self.config_path is None:
            return
        loaded = runtime.load_and_build(self.config_path, self.factory,
                                        "reload refused, keeping the running configuration")
        if loaded is None:
            metrics.CONFIG_RELOADS.labels("error").inc()
            return
        settings, engine = loaded
        runtime.warn_about_restart_keys({
            "policyd.socket": (self.settings.policyd.socket, settings.policyd.socket),
            "policyd.threads": (self.settings.policyd.threads, settings.policyd.threads),
        })
        old, self._current = self._current, _EngineInUse(engine)
        self.settings = settings
        self._retire(old)
        if self._files is not None:
            self._apply_descriptor_limits()
        runtime.set_log_level(settings.general.log_level)
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded from %s", self.config_path)

    # ------------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self._make_room():
            log.warning("too many policy connections (%d, all inside a request); "
                        "closing a new one", len(self._connections))
            metrics.POLICYD_PROTOCOL_ERRORS.labels("too_many_connections").inc()
            writer.close()
            return
        self._connections[task] = _Connection(task, writer)
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
            self._connections.pop(task, None)
            self._busy.discard(task)
            metrics.POLICYD_ACTIVE_CONNECTIONS.dec()
            writer.close()

    def _make_room(self) -> bool:
        """Below the cap: True.  At it: close the connections idle the longest until one
        slot is free (True), or False if every connection is inside a request."""
        if len(self._connections) < self._cap:
            if self._at_cap and len(self._connections) < self._cap * 9 // 10:
                self._at_cap = False
            return True
        if not self._at_cap:
            self._at_cap = True
            log.warning("policy connections at the cap (%d, policyd.max_connections); "
                        "closing the ones idle the longest to admit new clients", self._cap)
        excess = len(self._connections) - self._cap + 1  # 1 unless the cap was lowered
        victims: list[_Connection] = []
        for task, connection in self._connections.items():  # oldest first; stops early
            if len(victims) == excess:
                break
            if task not in self._busy:
                victims.append(connection)
        for connection in victims:
            task = connection.task
            del self._connections[task]  # its slot is free now; its task ends on its own
            connection.writer.close()
            task.cancel()
            metrics.POLICYD_EVICTED_CONNECTIONS.inc()
            log.debug("closed idle policy connection from %s at the cap",
                      _peer_name(connection.writer))
        return len(self._connections) < self._cap

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        decoder = PolicyDecoder(self.settings.policyd.max_request_size)
        peer = _peer_name(writer)
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # when the request begun must be complete
        while True:
            policyd = self.settings.policyd
            idle_end = loop.time() + policyd.idle_timeout
            try:
                # asyncio.timeout, not wait_for: no extra task per read.
                async with asyncio.timeout_at(
                    idle_end if deadline is None else min(idle_end, deadline)
                ):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    log.warning("policy client %s did not complete a request within %gs "
                                "(policyd.request_timeout); closing", peer,
                                policyd.request_timeout)
                    metrics.POLICYD_PROTOCOL_ERRORS.labels("request_timeout").inc()
                elif decoder.pending:
                    log.warning("policy client %s stalled inside a request; closing", peer)
                    metrics.POLICYD_PROTOCOL_ERRORS.labels("idle_timeout").inc()
                return
            if not data:
                problem = decoder.eof()
                if problem is not None:
                    self._report(problem, peer)
                return
            self._busy.add(task)
            events = decoder.feed(data)
            replies, fatal = await self._handle(events, peer)
            if replies:
                writer.write(b"".join(replies))
                await writer.drain()
            if fatal:
                return
            if not decoder.pending:
                deadline = None
                self._busy.discard(task)  # between requests: safe to cancel at shutdown
                self._touch(task)
                if self._stopping:
                    return  # its request is answered; stop() is waiting for this task
            elif deadline is None or events:
                # A new request has begun (after any answered just now: the time spent
                # deciding those is not the client's).
                deadline = loop.time() + self.settings.policyd.request_timeout

    def _touch(self, task: asyncio.Task[None]) -> None:
        """Move a connection that just finished a request to the recent end."""
        connection = self._connections.pop(task, None)
        if connection is not None:
            self._connections[task] = connection

    async def _handle(self, events: list[PolicyRequest | ProtocolError], peer: str
                      ) -> tuple[list[bytes], bool]:
        """Answer each complete request in order; stop at a fatal protocol error."""
        replies = []
        for event in events:
            if isinstance(event, PolicyRequest):
                replies.append(encode_response((await self._answer(event)).action))
                continue
            self._report(event, peer)
            if event.fatal:
                return replies, True
            replies.append(encode_response(DUNNO.action))
        return replies, False

    async def _answer(self, request: PolicyRequest) -> PolicyAnswer:
        started = time.perf_counter()
        in_use = self._current
        in_use.users += 1
        try:
            answer = await self._decide(in_use.engine, request.attributes)
        except Exception:
            log.exception("policy decision failed for %s", _describe(request))
            metrics.ERRORS.labels("policyd").inc()
            answer = PolicyAnswer("DUNNO", reason="internal error")
        finally:
            in_use.users -= 1
            if in_use.retired and in_use.users == 0:
                self._close(in_use)
        metrics.POLICYD_REQUEST_SECONDS.observe(time.perf_counter() - started)
        _requests_counter(request.protocol_state or "UNKNOWN", answer.label).inc()
        # What refuses (defer, reject) or could not be evaluated is logged; what lets the
        # mail go on (DUNNO, a PREPENDed header) only at debug: one line per recipient
        # of every message would drown the log.  Metrics count everything.
        quiet = answer.label in ("DUNNO", "PREPEND") and not (
            answer.action == "DUNNO" and answer.reason
        )
        level = logging.DEBUG if quiet else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "%s: action=%s%s", _describe(request), answer.action,
                    f" ({answer.reason})" if answer.reason else "")
        return answer

    async def _decide(self, engine: PolicyEngine, attributes: Mapping[str, str]) -> PolicyAnswer:
        """Run the engine; its blocking steps go to the thread pool, one after another.

        An engine without policies only validates (or is a test double): it is asked
        directly, as `decide()`."""
        if not engine.policies:
            return engine.decide(attributes)
        steps = engine.evaluate(attributes)
        loop = asyncio.get_running_loop()
        try:
            step = next(steps)
            while True:
                await loop.run_in_executor(self._executor, step.run)
                step = steps.send(None)
        except StopIteration as done:
            answer: PolicyAnswer = done.value
            return answer

    def _retire(self, in_use: _EngineInUse) -> None:
        in_use.retired = True
        if in_use.users == 0:
            self._close(in_use)

    @staticmethod
    def _close(in_use: _EngineInUse) -> None:
        if in_use.closed:
            return
        in_use.closed = True
        try:
            in_use.engine.close()
        except Exception:
            log.exception("closing the replaced policy engine failed")
            metrics.ERRORS.labels("policyd").inc()

    def _report(self, problem: ProtocolError, peer: str) -> None:
        metrics.POLICYD_PROTOCOL_ERRORS.labels(problem.kind.value).inc()
        outcome = "closing the connection" if problem.fatal else "answered DUNNO"
        log.warning("malformed policy request from %s: %s; %s", peer, problem.detail, outcome)


_REQUEST_COUNTERS: dict[tuple[str, str], Any] = {}


def _requests_counter(state: str, label: str) -> Any:
    """The requests counter's child for (state, action label), looked up once for the
    states Postfix uses (labels() costs more than the increment itself)."""
    key = (state, label)
    child = _REQUEST_COUNTERS.get(key)
    if child is None:
        child = metrics.POLICYD_REQUESTS.labels(state.lower(), label)
        if state in PROTOCOL_STATES and len(_REQUEST_COUNTERS) < 1000:
            _REQUEST_COUNTERS[key] = child
    return child


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
    """Run until SIGTERM/SIGINT; SIGHUP reloads.

    With `[policyd] workers` above 1 (and a configuration file the workers can read),
    this process becomes their supervisor instead of serving (see `Supervisor`)."""
    if (server.settings.policyd.workers > 1 and server.listening is None
            and server.config_path is not None):
        return await _supervise(server)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, sdnotify.reload_with(server.reload))
    try:
        await server.start()
    except (OSError, KeyError) as exc:
        log.error("cannot listen on %s: %s", server.settings.policyd.socket, exc)
        return 1
    sdnotify.ready()
    await stop.wait()
    sdnotify.stopping()
    log.info("stopping: finishing requests in progress")
    await server.stop()
    log.info("mailward policyd stopped")
    return 0


# --------------------------------------------------------------------------- workers

#: How a worker process starts: a fresh interpreter (no state inherited from the
#: supervisor but the listening socket), so that its metrics can be written to the
#: shared multiprocess directory from the first import on.
_WORKER_BOOT = (
    "import sys; from policyd.server import worker_main; sys.exit(worker_main(sys.argv[1:]))"
)
async def _supervise(server: PolicyServer) -> int:
    """`[policyd] workers` processes on one socket (mailward.supervisor): this process
    serves nothing itself, so the engine the caller built is retired unused."""
    assert server.config_path is not None
    server._retire(server._current)  # its engine (and state store) stays unused
    server._executor.shutdown(wait=False)
    settings = server.settings
    pool = WorkerPool(
        service="policyd",
        worker_name="policy worker",
        worker_boot=_WORKER_BOOT,
        config_path=server.config_path,
        factory_spec=f"{server.factory.__module__}:{server.factory.__qualname__}",
        workers=settings.policyd.workers,
        address=settings.policyd.socket,
        permissions=settings.policyd.socket_permissions,
        restart_keys=lambda old, new: {
            f"policyd.{key}": (getattr(old.policyd, key), getattr(new.policyd, key))
            for key in ("socket", "workers", "threads")},
    )
    return await WorkerSupervisor(pool, settings).run()


def worker_main(argv: list[str]) -> int:
    """A worker process: serve the supervisor's socket (`--listen-fd`) until SIGTERM."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(prog="mailward policyd worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--factory", required=True, help="module:function building the engine")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    runtime.configure_logging("policyd", settings.general.log_level)
    module_name, _, function = args.factory.partition(":")
    factory: EngineFactory = getattr(importlib.import_module(module_name), function)
    listening = socket.socket(fileno=args.listen_fd)
    server = PolicyServer(args.config, settings, factory, listening=listening)
    return asyncio.run(serve_forever(server))
