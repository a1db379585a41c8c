"""`[tlspolicy] workers`: several TLS policy processes on one socket.

One asyncio process uses one core.  The supervisor opens the socket, starts `workers`
fresh interpreters running `worker_main` that accept on it (the kernel spreads Postfix's
connections over them), passes SIGHUP on after checking the configuration (each worker
reloads it itself), replaces a worker that dies (and gives up on a crash loop) and on
SIGTERM stops them, each finishing the lookups it has started.  Its /metrics endpoint
sums the workers' (prometheus_client's multiprocess mode), as the policy service does
(mailward.supervisor, shared with the policy service).

Each worker has its own engine and its own copy of the policy cache: with `cache =
"memory"` each learns policies separately; with "sqlite" or "redis" they share them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path

from mailward import runtime
from mailward.config import ConfigError, load_settings
from mailward.supervisor import WorkerPool, WorkerSupervisor
from mailward.tlspolicy.service import EngineFactory, TlsPolicyServer, serve_forever

log = logging.getLogger("mailward.tlspolicy")

#: A fresh interpreter (nothing inherited but the listening socket), so that its metrics
#: go to the shared multiprocess directory from the first import on.
_WORKER_BOOT = ("import sys; from mailward.tlspolicy.workers import worker_main; "
                "sys.exit(worker_main(sys.argv[1:]))")
async def supervise(server: TlsPolicyServer) -> int:
    """`[tlspolicy] workers` processes on one socket (mailward.supervisor); this process
    serves nothing itself."""
    assert server.config_path is not None
    server.discard()
    settings = server.settings
    pool = WorkerPool(
        service="tlspolicy",
        worker_name="tlspolicy worker",
        worker_boot=_WORKER_BOOT,
        config_path=server.config_path,
        factory_spec=f"{server.factory.__module__}:{server.factory.__qualname__}",
        workers=settings.tlspolicy.workers,
        address=settings.tlspolicy.socket,
        permissions=settings.tlspolicy.socket_permissions,
        restart_keys=lambda old, new: {
            f"tlspolicy.{key}": (getattr(old.tlspolicy, key), getattr(new.tlspolicy, key))
            for key in ("socket", "workers", "threads", "cache", "cache_entries")},
    )
    return await WorkerSupervisor(pool, settings).run()


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
