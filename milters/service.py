"""The milter service: one listening socket, N worker processes, a supervisor.

Why this shape:
- Each worker serves its MTA connections from one event loop, with ends of message on
  threads (milters/connections.py; libmilter's thread per connection with
  `[milter] engine = "libmilter"`), pinned to one CPU (`pin_cpus`, mailward/cpus.py);
  Python's GIL caps a process at one core.  The
  supervisor opens the socket once and forks `workers` processes that all accept on
  it, so the kernel spreads connections across cores.
- Only the supervisor handles signals (libmilter owns SIGHUP/SIGTERM inside its
  workers; ours ignore SIGHUP and treat SIGTERM as "stop accepting").  SIGTERM sets a
  stop flag the workers read: they stop accepting and finish their open sessions
  (bounded by `shutdown_timeout`); SIGHUP
  makes the supervisor validate the configuration and bump a shared generation
  counter, and each worker picks the new configuration up at its next connection.
  Sessions in flight finish with the configuration they started with, and the socket
  is never closed, so a reload drops nothing.
- A worker that dies unexpectedly is logged and replaced.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import Milter
import milter

from mailward import cpus, gctune, metrics, runtime, sdnotify
from mailward.config import ConfigError, MilterEngine, Settings, SocketAddress, SocketKind
from mailward.pipeline import Pipeline
from milters import connections
from milters.connections import SessionCounter
from milters.session import MilterSession

log = logging.getLogger("mailward.milter")

PipelineFactory = Callable[[Settings], Pipeline]

_RESPAWN_WINDOW = 10.0  # seconds: a worker dying sooner than this counts as a crash loop
_MAX_QUICK_DEATHS = 5


class SharedControl:
    """Anonymous shared memory through which the supervisor steers its workers.

    Two words: the configuration generation (bumped on reload, read by workers at each
    new connection) and a stop flag.  libmilter notices SIGTERM only when its accept
    loop wakes up (every few seconds); the flag lets a worker exit as soon as its own
    sessions are done instead.
    """

    _GENERATION = 0
    _STOPPING = 8

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 16)

    def get(self) -> int:
        return int(struct.unpack_from("Q", self._map, self._GENERATION)[0])

    def bump(self) -> int:
        value = self.get() + 1
        struct.pack_into("Q", self._map, self._GENERATION, value)
        return value

    @property
    def stopping(self) -> bool:
        return bool(struct.unpack_from("Q", self._map, self._STOPPING)[0])

    def request_stop(self) -> None:
        struct.pack_into("Q", self._map, self._STOPPING, 1)


@dataclass
class ReloadingPipelineSource:
    """A worker's engine; rebuilt from the config file when the generation moves on."""

    config_path: Path
    generation: SharedControl
    factory: PipelineFactory
    pipeline: Pipeline
    seen_generation: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> Pipeline:
        wanted = self.generation.get()
        if wanted == self.seen_generation:
            return self.pipeline
        with self._lock:
            if wanted != self.seen_generation:
                self._reload(wanted)
        return self.pipeline

    def _reload(self, wanted: int) -> None:
        self.seen_generation = wanted  # even on failure: do not retry on every connection
        loaded = runtime.load_and_build(self.config_path, self.factory,
                                        "worker keeps its configuration")
        if loaded is None:
            return
        settings, self.pipeline = loaded
        runtime.set_log_level(settings.general.log_level)
        log.info("worker reloaded configuration (generation %d)", wanted)


class SessionRegistry:
    """libmilter's callbacks: a MilterSession per MTA connection, the open ones counted.

    The count lets a stopping worker wait for sessions in flight instead of cutting
    them off mid-message.
    """

    def __init__(self, sessions: SessionCounter) -> None:
        self.source: ReloadingPipelineSource | None = None
        self.sessions = sessions

    def _new_session(self, ctx: Any) -> MilterSession:
        assert self.source is not None, "worker started without an engine"
        session = MilterSession(self.source)
        session._setctx(ctx)
        self.sessions.opened()
        return session

    def negotiate(self, ctx: Any, opts: list[int]) -> int:
        return int(self._new_session(ctx).negotiate(opts))

    def connect(self, ctx: Any, hostname: str, family: int, hostaddr: Any) -> int:
        session = ctx.getpriv() or self._new_session(ctx)
        return int(session.connect(hostname, family, hostaddr))

    def close(self, ctx: Any) -> int:
        session = ctx.getpriv()
        if session is None:
            return int(Milter.CONTINUE)
        try:
            return int(session.close())
        finally:
            session._setctx(None)
            self.sessions.closed()

    def register(self, settings: Settings) -> None:
        """Hand libmilter our callbacks; inherited by every forked worker."""
        milter.set_flags(milter.ADDHDRS | milter.CHGHDRS | milter.QUARANTINE)
        milter.set_connect_callback(self.connect)
        milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
        milter.set_envfrom_callback(lambda ctx, *args: ctx.getpriv().envfrom_bytes(*args))
        milter.set_envrcpt_callback(lambda ctx, *args: ctx.getpriv().envrcpt_bytes(*args))
        milter.set_header_callback(lambda ctx, name, value: ctx.getpriv().header_bytes(name, value))
        milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
        milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
        milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
        milter.set_close_callback(self.close)
        milter.setconn(settings.milter.socket.libmilter_spec())
        milter.settimeout(settings.milter.mta_timeout)
        milter.register("mailward", negotiate=self.negotiate)


class MilterService:
    """The supervisor process."""

    def __init__(self, config_path: Path, settings: Settings, factory: PipelineFactory) -> None:
        self.config_path = config_path
        self.settings = settings
        self.factory = factory
        self.control = SharedControl()
        self.sessions = SessionCounter()
        self.registry = SessionRegistry(self.sessions)
        self.workers: dict[int, float] = {}  # pid -> start time
        self._worker_cpus: dict[int, int] = {}  # pid -> the CPU it is pinned to
        self._cpus = cpus.allowed_cpus() if settings.milter.pin_cpus else ()
        self._stopping = False
        self._quick_deaths = 0
        self._listener: int | None = None
        self._listen_socket: socket.socket | None = None  # ours (the python engine)
        self._worker_stop = False  # in a worker: SIGTERM/SIGINT received

    # ------------------------------------------------------------------ supervisor

    def run(self) -> int:
        address = self.settings.milter.socket
        # Build the engine once here, so a broken configuration (a key file, say) fails
        # loudly at start instead of in a crash-looping worker.
        try:
            self.factory(self.settings)
        except ConfigError as exc:
            log.error("not starting: %s", exc)
            return 1
        runtime.ensure_socket_directory(address)
        if runtime.socket_in_use(address):
            log.error("another process already listens on %s", address)
            return 1
        signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        if not self._open_listener(address):
            return 1
        try:
            runtime.apply_socket_permissions(address, self.settings.milter.socket_permissions)
            runtime.start_metrics_endpoint(self.settings.metrics.listen)
        except (OSError, KeyError) as exc:
            log.error("cannot set up %s or the metrics endpoint: %s", address, exc)
            runtime.remove_unix_socket(address)
            return 1
        log.info("mailward milter listening on %s with %d worker(s) (engine %s)",
                 address, self.settings.milter.workers, self.settings.milter.engine.value)
        for _ in range(self.settings.milter.workers):
            self._spawn()
        sdnotify.ready()
        try:
            return self._supervise(signals)
        finally:
            runtime.remove_unix_socket(address)

    def _open_listener(self, address: SocketAddress) -> bool:
        """Listen on the configured socket (before the workers fork: they share it)."""
        if self.settings.milter.engine is MilterEngine.PYTHON:
            try:
                listener = runtime.open_service_socket(
                    address, self.settings.milter.socket_permissions)
            except OSError as exc:
                log.error("cannot listen on %s: %s", address, exc)
                return False
            self._listen_socket = listener
            self._listener = listener.fileno()
            if address.kind is not SocketKind.UNIX:
                _set_nodelay(self._listener)
            return True
        self.registry.register(self.settings)
        try:
            milter.opensocket(True)
        except milter.error as exc:
            log.error("cannot listen on %s: %s", address, exc)
            return False
        self._listener = _find_listener(address)
        if self._listener is None:
            log.warning("could not find libmilter's socket for %s: no TCP_NODELAY, and "
                        "stopping will wait for libmilter to notice", address)
        elif address.kind is not SocketKind.UNIX:
            _set_nodelay(self._listener)
        return True

    def _supervise(self, signals: set[signal.Signals]) -> int:
        status = 0
        deadline: float | None = None
        while self.workers:
            timeout = 1.0 if deadline is None else max(0.05, deadline - time.monotonic())
            info = signal.sigtimedwait(signals, timeout)
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self._stopping:
                    deadline = self._begin_shutdown()
                elif info.si_signo == signal.SIGHUP and not self._stopping:
                    sdnotify.reload_with(self._reload)()
            if not self._reap():
                status = 1
            if deadline is not None and time.monotonic() >= deadline:
                for pid in list(self.workers):
                    log.warning("worker %d did not stop in time; killing it", pid)
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
        log.info("mailward milter stopped")
        return status

    def _begin_shutdown(self) -> float:
        """Stop accepting, then let each worker exit once its open sessions are done.

        Workers get no SIGTERM: Debian's libmilter (built with its worker pool) stops
        serving open sessions once it sees one, which would cut messages off
        mid-transaction.  The stop flag in shared memory tells the workers instead;
        each stops listening (`_blind_listener`) and exits when its sessions are done.
        """
        self._stopping = True
        log.info("stopping: workers finish open sessions (at most %.0fs)",
                 self.settings.milter.shutdown_timeout)
        sdnotify.stopping()
        self.control.request_stop()
        if self._listen_socket is not None:
            self._listen_socket.close()  # the workers close theirs when they see the flag
        elif self._listener is not None:
            os.close(self._listener)  # the workers drop theirs when they see the flag
        else:
            for pid in self.workers:
                os.kill(pid, signal.SIGTERM)
        return time.monotonic() + self.settings.milter.shutdown_timeout + 2.0

    def _reload(self) -> None:
        loaded = runtime.load_and_build(self.config_path, self.factory,
                                        "reload refused, keeping the running configuration")
        if loaded is None:
            metrics.CONFIG_RELOADS.labels("error").inc()
            return
        new = loaded[0]
        runtime.warn_about_restart_keys({
            "milter.socket": (self.settings.milter.socket, new.milter.socket),
            "milter.workers": (self.settings.milter.workers, new.milter.workers),
            "milter.engine": (self.settings.milter.engine, new.milter.engine),
            "milter.pin_cpus": (self.settings.milter.pin_cpus, new.milter.pin_cpus),
            "metrics.listen": (self.settings.metrics.listen, new.metrics.listen),
        })
        self.settings = new
        runtime.set_log_level(new.general.log_level)
        generation = self.control.bump()
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded from %s (generation %d)", self.config_path, generation)

    def _reap(self) -> bool:
        """Collect exited workers; replace crashed ones.  False on a crash loop."""
        healthy = True
        while self.workers:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            started = self.workers.pop(pid, None)
            self._worker_cpus.pop(pid, None)
            runtime.mark_worker_dead(pid)
            if started is None or self._stopping:
                continue
            log.error("worker %d exited unexpectedly (%s); starting a new one",
                      pid, _describe_status(wait_status))
            metrics.ERRORS.labels("worker_exit").inc()
            if time.monotonic() - started < _RESPAWN_WINDOW:
                self._quick_deaths += 1
            if self._quick_deaths >= _MAX_QUICK_DEATHS:
                log.critical("workers keep dying; giving up")
                self._begin_shutdown()
                healthy = False
                continue
            self._spawn()
        return healthy

    def _spawn(self) -> None:
        cpu = cpus.least_used(self._cpus, self._worker_cpus.values()) if self._cpus else None
        pid = os.fork()
        if pid == 0:
            if cpu is not None:
                cpus.pin_to(cpu)
            self._worker()  # never returns
        self.workers[pid] = time.monotonic()
        if cpu is not None:
            self._worker_cpus[pid] = cpu

    # ------------------------------------------------------------------ worker

    def _worker(self) -> None:
        if self._listen_socket is not None:
            self._python_worker()  # never returns
        code = 0
        try:
            # SIGTERM, SIGINT and SIGHUP stay blocked in every thread of the worker:
            # libmilter's signal thread takes them with sigwait().  A thread with
            # them unblocked would let the default action kill the worker mid-message.
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGTERM, signal.SIGINT,
                                                        signal.SIGHUP})
            self.registry.source = ReloadingPipelineSource(
                config_path=self.config_path,
                generation=self.control,
                factory=self.factory,
                pipeline=self.factory(self.settings),
                seen_generation=self.control.get(),
            )
            threading.Thread(target=self._exit_when_stopped, name="stop-watcher",
                             daemon=True).start()
            milter.main()  # returns once libmilter saw SIGTERM and stopped accepting
            self._drain_and_exit(0)
        except BaseException:  # a forked child must never return into the parent's code
            log.exception("worker failed")
            code = 1
        self._drain_and_exit(code)

    def _python_worker(self) -> None:
        """A worker of Mailward's own engine: accept on the shared socket until stopped."""
        code = 0
        try:
            listener = self._listen_socket
            assert listener is not None
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._request_worker_stop)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            source = ReloadingPipelineSource(
                config_path=self.config_path,
                generation=self.control,
                factory=self.factory,
                pipeline=self.factory(self.settings),
                seen_generation=self.control.get(),
            )
            gctune.settle_after_start()
            connections.serve_forever(
                listener, lambda: MilterSession(source), float(self.settings.milter.mta_timeout),
                self.sessions, lambda: self._worker_stop or self.control.stopping)
            listener.close()
        except BaseException:  # a forked child must never return into the parent's code
            log.exception("worker failed")
            code = 1
        self._drain_and_exit(code)

    def _request_worker_stop(self, signum: int, frame: object) -> None:
        self._worker_stop = True

    def _exit_when_stopped(self) -> None:
        while not self.control.stopping:
            time.sleep(0.05)
        if self._listener is not None:
            _blind_listener(self._listener)
        self._drain_and_exit(0)

    def _drain_and_exit(self, code: int) -> None:
        """Let open sessions finish (bounded), then leave without running parent code."""
        left = self.sessions.wait_idle(self.settings.milter.shutdown_timeout)
        if left:
            log.warning("worker stopping with %d session(s) still open", left)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)


def _find_listener(address: SocketAddress) -> int | None:
    """The descriptor of libmilter's listening socket, found by its bound address.

    pymilter does not expose it, but the supervisor needs it twice: to turn off Nagle
    and, at shutdown, to stop new connections while open sessions finish.
    """
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            probe = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if probe.type != socket.SOCK_STREAM:
                continue
            name = probe.getsockname()
            if address.kind is SocketKind.UNIX:
                if probe.family == socket.AF_UNIX and name == address.path:
                    return fd
            elif probe.family in (socket.AF_INET, socket.AF_INET6) and name[1] == address.port:
                return fd
        except OSError:
            continue
        finally:
            probe.detach()  # the descriptor stays libmilter's
    return None


def _set_nodelay(fd: int) -> None:
    """Turn off Nagle on the listening socket; accepted sockets inherit it.

    At end-of-message the milter writes several small replies in a row (add header,
    then accept); with Nagle on, the second waits for the MTA's delayed ACK, about
    40 ms per message over TCP.  libmilter does not set TCP_NODELAY itself.
    """
    listener = socket.socket(fileno=fd)
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        listener.detach()


def _blind_listener(fd: int) -> None:
    """In a worker: put a never-readable pipe where libmilter's listening socket was.

    libmilter's accept loop keeps polling the same descriptor number and now simply
    never sees a connection, while its session threads go on serving open sessions.
    (Closing or shutting down the socket instead makes libmilter abort every session;
    sending it SIGTERM makes Debian's pooled libmilter stop serving them.)  Once every
    worker and the supervisor let go of the socket, and libmilter's select() in
    progress returns (it polls every few seconds), the kernel refuses new connections
    and the MTA answers 4xx: nothing is lost.
    """
    read_end, _write_end = os.pipe()  # the write end stays open, so never EOF
    os.dup2(read_end, fd)
    os.close(read_end)


def _describe_status(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        return f"killed by signal {os.WTERMSIG(wait_status)}"
    return f"exit status {os.waitstatus_to_exitcode(wait_status)}"
