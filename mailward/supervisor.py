"""Several worker processes of one asyncio service on one socket (policyd, tlspolicy).

One asyncio process uses one core.  With `workers` above 1 the service's process opens
the socket and becomes a supervisor: it starts `workers` fresh interpreters that accept
on that socket (the kernel spreads Postfix's connections over them), passes SIGHUP on
after checking the configuration (each worker reloads it itself), replaces a worker
that dies and gives up on a crash loop, and on SIGTERM stops them, each finishing what
it has started.  Its /metrics endpoint sums the workers' (prometheus_client's
multiprocess mode).  systemd hears READY/RELOADING/STOPPING from the supervisor only.

The milter's supervisor (milters/service.py) forks instead: libmilter owns its socket.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailward import metrics, runtime, sdnotify
from mailward.config import (
    ConfigError,
    Settings,
    SocketAddress,
    SocketPermissions,
    load_settings,
)

log = logging.getLogger("mailward.supervisor")

RESPAWN_WINDOW = 10.0  # seconds: a worker dying sooner than this counts toward a crash loop
MAX_QUICK_DEATHS = 5
WORKER_STOP_TIMEOUT = 20.0
_ROOT = str(Path(__file__).resolve().parent.parent)  # so a worker imports this checkout


def collect_from_workers(directory: str) -> None:
    """Make this process's /metrics the sum of its workers' (written to `directory`); its
    own copies of Mailward's metrics are withdrawn, or each name would appear twice."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            with contextlib.suppress(KeyError):  # not registered (already withdrawn)
                REGISTRY.unregister(value)
    runtime.SettledFilesCollector(REGISTRY, path=directory)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class WorkerPool:
    """What a supervisor needs to know about the service it runs workers of."""

    service: str  # "policyd", "tlspolicy": log lines and the metrics directory
    worker_name: str  # "policy worker": log lines about one worker
    worker_boot: str  # `python -c` source that runs the worker's main on sys.argv[1:]
    config_path: Path
    factory_spec: str  # "module:function" building the engine, passed to each worker
    workers: int
    address: SocketAddress
    permissions: SocketPermissions
    #: {key: (running, reloaded)} of the settings a reload cannot apply.
    restart_keys: Callable[[Settings, Settings], Mapping[str, tuple[Any, Any]]]


class WorkerSupervisor:
    """Runs `pool.workers` processes on the pool's socket until SIGTERM (module docstring)."""

    def __init__(self, pool: WorkerPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self._workers: dict[asyncio.subprocess.Process, float] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._quick_deaths = 0
        self._failed = False
        self._stop = asyncio.Event()
        self._metrics_dir = ""
        self._socket: socket.socket | None = None

    @property
    def worker_pids(self) -> list[int]:
        return [process.pid for process in self._workers if process.returncode is None]

    async def run(self) -> int:
        pool = self.pool
        if "<" in pool.factory_spec:
            log.error("%s.workers needs an importable engine factory, not %s",
                      pool.service, pool.factory_spec)
            return 1
        try:
            self._socket = runtime.open_service_socket(pool.address, pool.permissions,
                                                        inheritable=True)
        except (OSError, KeyError) as exc:
            log.error("cannot listen on %s: %s", pool.address, exc)
            return 1
        self._metrics_dir = tempfile.mkdtemp(prefix=f"mailward-{pool.service}-metrics-")
        collect_from_workers(self._metrics_dir)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, sdnotify.reload_with(self._reload))
        try:
            log.info("mailward %s listening on %s with %d workers",
                     pool.service, pool.address, pool.workers)
            for _ in range(pool.workers):
                await self._spawn()
            sdnotify.ready()
            await self._stop.wait()
            sdnotify.stopping()
            log.info("stopping: the workers finish what they have started")
            await self._stop_workers()
        finally:
            self._socket.close()
            runtime.remove_unix_socket(pool.address)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("mailward %s stopped", pool.service)
        return 1 if self._failed else 0

    async def _spawn(self) -> None:
        assert self._socket is not None
        pool = self.pool
        env = dict(os.environ)
        env[runtime.MULTIPROC_ENV] = self._metrics_dir
        env.pop(sdnotify.NOTIFY_SOCKET_ENV, None)  # only the supervisor notifies systemd
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        fd = self._socket.fileno()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", pool.worker_boot, "--listen-fd", str(fd),
            "--config", str(pool.config_path), "--factory", pool.factory_spec,
            pass_fds=(fd,), env=env, stdin=asyncio.subprocess.DEVNULL,
        )
        self._workers[process] = time.monotonic()
        log.info("%s %d started", pool.worker_name, process.pid)
        watcher = asyncio.create_task(self._watch(process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        status = await process.wait()
        started = self._workers.pop(process, time.monotonic())
        from prometheus_client import multiprocess as prometheus_multiprocess

        prometheus_multiprocess.mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        if self._stopping:
            return
        name = self.pool.worker_name
        log.error("%s %d exited unexpectedly (status %s); starting a new one",
                  name, process.pid, status)
        if time.monotonic() - started < RESPAWN_WINDOW:
            self._quick_deaths += 1
        if self._quick_deaths >= MAX_QUICK_DEATHS:
            log.critical("%ss keep dying; giving up", name)
            self._failed = True
            self._stop.set()
            return
        await self._spawn()

    def _reload(self) -> None:
        """Check the file, then let each worker reload (and validate) it itself."""
        try:
            settings = load_settings(self.pool.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        runtime.warn_about_restart_keys(self.pool.restart_keys(self.settings, settings))
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
        _, late = await asyncio.wait(waiting, timeout=WORKER_STOP_TIMEOUT)
        if late:
            for process in self._workers:
                if process.returncode is None:
                    log.warning("%s %d did not stop in time; killing it",
                                self.pool.worker_name, process.pid)
                    process.kill()
            await asyncio.wait(late, timeout=5.0)
