"""`[tlspolicy] workers`: several TLS policy processes on one socket.

One asyncio process uses one core.  The supervisor opens the socket, starts `workers`
fresh interpreters running `worker_main` that accept on it (the kernel spreads Postfix's
connections over them), passes SIGHUP on after checking the configuration (each worker
reloads it itself), replaces a worker that dies (and gives up on a crash loop) and on
SIGTERM stops them, each finishing the lookups it has started.  Its /metrics endpoint
sums the workers' (prometheus_client's multiprocess mode), as the policy service does
(policyd/server.py, whose supervisor this one follows).

Each worker has its own engine and its own copy of the policy cache: with `cache =
"memory"` each learns policies separately; with "sqlite" or "redis" they share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from mailward import metrics, runtime
from mailward.config import ConfigError, load_settings
from mailward.tlspolicy.service import EngineFactory, TlsPolicyServer, listen, serve_forever

log = logging.getLogger("mailward.tlspolicy")

#: A fresh interpreter (nothing inherited but the listening socket), so that its metrics
#: go to the shared multiprocess directory from the first import on.
_WORKER_BOOT = ("import sys; from mailward.tlspolicy.workers import worker_main; "
                "sys.exit(worker_main(sys.argv[1:]))")
_RESPAWN_WINDOW = 10.0  # seconds: a worker dying sooner than this counts as a crash loop
_MAX_QUICK_DEATHS = 5
_WORKER_STOP_TIMEOUT = 20.0


def _collect_from_workers(directory: str) -> None:
    """Make this process's /metrics the sum of its workers' (written to `directory`);
    its own copies of Mailward's metrics are withdrawn, or each would appear twice."""
    from prometheus_client import REGISTRY
    from prometheus_client import multiprocess as prometheus_multiprocess
    from prometheus_client.metrics import MetricWrapperBase

    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            with contextlib.suppress(KeyError):  # not registered (already withdrawn)
                REGISTRY.unregister(value)
    prometheus_multiprocess.MultiProcessCollector(REGISTRY, path=directory)  # type: ignore[no-untyped-call]


class Supervisor:
    """`[tlspolicy] workers` processes serving one socket (see the module docstring)."""

    def __init__(self, server: TlsPolicyServer) -> None:
        assert server.config_path is not None
        self.config_path = server.config_path
        self.settings = server.settings
        self.factory = server.factory
        self._unused = server  # built by the caller; this process serves nothing
        self._workers: dict[asyncio.subprocess.Process, float] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._quick_deaths = 0
        self._failed = False
        self._stop = asyncio.Event()
        self._metrics_dir = ""
        self._socket: socket.socket | None = None

    async def run(self) -> int:
        self._unused.discard()
        spec = f"{self.factory.__module__}:{self.factory.__qualname__}"
        if "<" in spec:
            log.error("tlspolicy.workers needs an importable engine factory, not %s", spec)
            return 1
        address = self.settings.tlspolicy.socket
        try:
            self._socket = listen(self.settings)
        except (OSError, KeyError) as exc:
            log.error("cannot listen on %s: %s", address, exc)
            return 1
        self._metrics_dir = tempfile.mkdtemp(prefix="mailward-tlspolicy-metrics-")
        _collect_from_workers(self._metrics_dir)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            log.info("mailward tlspolicy listening on %s with %d workers",
                     address, self.settings.tlspolicy.workers)
            for _ in range(self.settings.tlspolicy.workers):
                await self._spawn(spec)
            await self._stop.wait()
            log.info("stopping: the workers finish their lookups in progress")
            await self._stop_workers()
        finally:
            self._socket.close()
            runtime.remove_unix_socket(address)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("mailward tlspolicy stopped")
        return 1 if self._failed else 0

    @property
    def worker_pids(self) -> list[int]:
        return [process.pid for process in self._workers if process.returncode is None]

    async def _spawn(self, spec: str) -> None:
        assert self._socket is not None
        env = dict(os.environ)
        env[runtime.MULTIPROC_ENV] = self._metrics_dir
        root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        fd = self._socket.fileno()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER_BOOT, "--listen-fd", str(fd),
            "--config", str(self.config_path), "--factory", spec,
            pass_fds=(fd,), env=env, stdin=asyncio.subprocess.DEVNULL,
        )
        self._workers[process] = time.monotonic()
        log.info("tlspolicy worker %d started", process.pid)
        watcher = asyncio.create_task(self._watch(process, spec))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, process: asyncio.subprocess.Process, spec: str) -> None:
        status = await process.wait()
        started = self._workers.pop(process, time.monotonic())
        from prometheus_client import multiprocess as prometheus_multiprocess

        prometheus_multiprocess.mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        if self._stopping:
            return
        log.error("tlspolicy worker %d exited unexpectedly (status %s); starting a new one",
                  process.pid, status)
        if time.monotonic() - started < _RESPAWN_WINDOW:
            self._quick_deaths += 1
        if self._quick_deaths >= _MAX_QUICK_DEATHS:
            log.critical("tlspolicy workers keep dying; giving up")
            self._failed = True
            self._stop.set()
            return
        await self._spawn(spec)

    def _reload(self) -> None:
        """Check the file, then let each worker reload (and validate) it itself."""
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        runtime.warn_about_restart_keys({
            f"tlspolicy.{key}": (getattr(self.settings.tlspolicy, key),
                                 getattr(settings.tlspolicy, key))
            for key in ("socket", "workers", "threads", "cache", "cache_entries")})
        runtime.set_log_level(settings.general.log_level)
        for process in self._workers:
            if process.returncode is None:
                process.send_signal(signal.SIGHUP)

    async def _stop_workers(self) -> None:
        self._stopping = True
        for process in self._workers:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        waiting = [task for task in self._watchers if not task.done()]
        if not waiting:
            return
        _, late = await asyncio.wait(waiting, timeout=_WORKER_STOP_TIMEOUT)
        if late:
            for process in self._workers:
                if process.returncode is None:
                    log.warning("tlspolicy worker %d did not stop in time; killing it",
                                process.pid)
                    process.kill()
            await asyncio.wait(late, timeout=5.0)


def worker_main(argv: list[str]) -> int:
    """A worker process: serve the supervisor's socket (`--listen-fd`) until SIGTERM."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(prog="mailward tlspolicy worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--factory", required=True, help="module:function building the engine")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    runtime.configure_logging("tlspolicy", settings.general.log_level)
    module_name, _, function = args.factory.partition(":")
    factory: EngineFactory = getattr(importlib.import_module(module_name), function)
    listening = socket.socket(fileno=args.listen_fd)
    server = TlsPolicyServer(args.config, settings, factory, listening=listening)
    return asyncio.run(serve_forever(server))
