"""What both long-running services need around the engine: logging, metrics, sockets.

Kept apart from the protocol code so that the milter and the policy service set up
their surroundings the same way, and so that neither re-implements socket permissions
or the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import grp
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client import multiprocess as prometheus_multiprocess

from mailward import metrics
from mailward.config import (
    ConfigError,
    ListenAddress,
    LogLevel,
    Settings,
    SocketAddress,
    SocketKind,
    SocketPermissions,
    load_settings,
)

T = TypeVar("T")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def configure_logging(service: str, level: LogLevel) -> None:
    """One line per event on stderr; systemd's journal (or the harness) keeps it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s mailward-{service}[%(process)d] %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_log_level(level)


def set_log_level(level: LogLevel) -> None:
    logging.getLogger().setLevel(level.value.upper())


class SettledFilesCollector(prometheus_multiprocess.MultiProcessCollector):
    """The multiprocess collector, skipping a worker's metrics file still being created.

    prometheus_client creates a worker's .db file empty and sizes it a moment later; a
    scrape in between read zero bytes, raised struct.error, and /metrics answered 500
    (seen right after start and after a worker was replaced).  Such a file holds no
    samples yet, so leaving it out for that one scrape loses nothing.
    """

    def collect(self) -> Iterable[Any]:
        files = [path for path in glob.glob(os.path.join(self._path, "*.db"))
                 if _settled(path)]
        return self.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _settled(path: str) -> bool:
    """At least the 8-byte header that says how much of the file is used."""
    try:
        return os.path.getsize(path) >= 8
    except OSError:  # removed by mark_process_dead since the glob
        return False


def start_metrics_endpoint(listen: ListenAddress | None) -> None:
    """Serve /metrics on `listen` in a daemon thread; aggregate worker processes if any."""
    if listen is None:
        return
    registry: CollectorRegistry | None = None
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        SettledFilesCollector(registry)  # type: ignore[no-untyped-call]
    if registry is None:
        start_http_server(listen.port, addr=listen.host)
    else:
        start_http_server(listen.port, addr=listen.host, registry=registry)
    logging.getLogger(__name__).info("metrics on http://%s/metrics", listen)


def mark_worker_dead(pid: int) -> None:
    """Let the multiprocess collector drop a dead worker's live gauges."""
    if os.environ.get(MULTIPROC_ENV):
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def ensure_socket_directory(address: SocketAddress) -> None:
    """Create the parent directory of a unix socket (e.g. /run/mailward) if missing."""
    if address.kind is SocketKind.UNIX:
        Path(address.path).parent.mkdir(parents=True, exist_ok=True)


def socket_in_use(address: SocketAddress) -> bool:
    """True if something already accepts connections on a unix socket path.

    Removing a live socket would silently cut off the instance that owns it; a stale
    file left by a crash is safe to replace.
    """
    if address.kind is not SocketKind.UNIX or not os.path.exists(address.path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(address.path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def apply_socket_permissions(address: SocketAddress, permissions: SocketPermissions) -> None:
    """Give a unix socket the configured mode and group so Postfix may connect."""
    if address.kind is not SocketKind.UNIX:
        return
    if permissions.group:
        gid = grp.getgrnam(permissions.group).gr_gid
        os.chown(address.path, -1, gid)
    os.chmod(address.path, permissions.mode)


def remove_unix_socket(address: SocketAddress) -> None:
    if address.kind is SocketKind.UNIX:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.path)


def open_service_socket(address: SocketAddress, permissions: SocketPermissions, *,
                        inheritable: bool = False) -> socket.socket:
    """A listening socket on a configured address (policyd, tlspolicy; raises OSError): a
    unix socket is refused if another process listens there, replaced if stale, and given
    its mode and group; TCP listens with address reuse.  Deep backlog (Postfix opens many
    connections).  `inheritable` for worker processes that share it (mailward.supervisor).
    """
    if address.kind is SocketKind.UNIX:
        ensure_socket_directory(address)
        if socket_in_use(address):
            raise OSError(f"another process already listens on {address}")
        remove_unix_socket(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address.path)
        apply_socket_permissions(address, permissions)
    else:
        family = socket.AF_INET6 if address.kind is SocketKind.INET6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
    sock.listen(1024)
    sock.set_inheritable(inheritable)
    return sock


async def start_stream_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    address: SocketAddress, permissions: SocketPermissions,
) -> asyncio.base_events.Server:
    """An asyncio stream server on a configured socket (`open_service_socket`)."""
    sock = open_service_socket(address, permissions)
    if sock.family == socket.AF_UNIX:
        return await asyncio.start_unix_server(handler, sock=sock)
    return await asyncio.start_server(handler, sock=sock)


def load_and_build(
    path: Path, build: Callable[[Settings], T], refused: str
) -> tuple[Settings, T] | None:
    """Read and validate the configuration and build what runs on it (for a reload).

    On failure, say why (prefixed by `refused`) and return None: the caller keeps
    running with what it has, which is the whole point of validating first.
    """
    try:
        settings = load_settings(path)
        return settings, build(settings)
    except ConfigError as exc:
        logging.getLogger(__name__).error("%s: %s", refused, exc)
    except Exception:
        logging.getLogger(__name__).exception("%s: building the engine failed", refused)
        metrics.ERRORS.labels("reload").inc()
    return None


def warn_about_restart_keys(changes: Mapping[str, tuple[Any, Any]]) -> None:
    """Log the settings a reload cannot apply (sockets, process counts): {key: (old, new)}."""
    for key, (old, new) in changes.items():
        if old != new:
            logging.getLogger(__name__).warning(
                "%s changed from %s to %s: takes effect after a restart", key, old, new)
