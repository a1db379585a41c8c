"""Socket strings in Postfix syntax, and connecting to them the way an MTA would.

The admin writes one string (``unix:/run/mailward/milter.sock``, ``inet:127.0.0.1:8891``,
``inet:[::1]:8891``) into both main.cf and mailward.toml; the bench tools accept the same
strings so that a benchmark command line can be pasted from a real configuration.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

SocketKind = Literal["unix", "inet"]


@dataclass(frozen=True)
class SocketSpec:
    """A parsed endpoint: a unix socket path, or an IP host and TCP port."""

    kind: SocketKind
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> SocketSpec:
        """Parse ``unix:/path``, ``local:/path``, ``inet:HOST:PORT``, ``inet:[V6]:PORT``.

        ``inet6:[V6]:PORT`` is accepted too, because DESIGN.md allows it in mailward.toml.
        """
        scheme, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ValueError(f"{text!r}: expected unix:/path or inet:HOST:PORT")
        scheme = scheme.lower()
        if scheme in ("unix", "local"):
            return cls("unix", path=rest)
        if scheme not in ("inet", "inet6"):
            raise ValueError(f"{text!r}: unknown socket type {scheme!r} (unix or inet)")
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket or not tail.startswith(":"):
                raise ValueError(f"{text!r}: expected inet:[ADDRESS]:PORT")
            port_text = tail[1:]
        else:
            host, sep, port_text = rest.rpartition(":")
            if not sep or not host:
                raise ValueError(f"{text!r}: expected inet:HOST:PORT")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: port must be 1-65535")
        return cls("inet", host=host, port=int(port_text))

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"

    @property
    def family(self) -> socket.AddressFamily:
        if self.kind == "unix":
            return socket.AF_UNIX
        try:
            return (
                socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
            )
        except ValueError:  # a host name: let getaddrinfo decide at connect time
            return socket.AF_UNSPEC

    def libmilter(self) -> str:
        """The same endpoint in libmilter's syntax (``inet:PORT@HOST``), for pymilter peers."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        scheme = "inet6" if self.family == socket.AF_INET6 else "inet"
        return f"{scheme}:{self.port}@{self.host}"


def connect(spec: SocketSpec, timeout: float | None = 10.0) -> socket.socket:
    """Open a blocking stream socket to `spec`.

    TCP_NODELAY is set on inet sockets: the milter protocol sends small packets in both
    directions, and Nagle plus delayed ACK would add ~40 ms to every message that needs
    two writes in a row (DESIGN.md, "Notes for the real stack").
    """
    if spec.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(spec.path)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((spec.host, spec.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just considered free on `host`, for services we start ourselves.

    There is an unavoidable window between closing this probe and the service binding
    the port; on a loopback test box nobody else races for it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class NotReady(RuntimeError):
    """A service did not start answering on its socket in time."""


def wait_until_ready(
    probe: Callable[[], None],
    *,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    what: str = "service",
) -> float:
    """Call `probe` until it stops raising OSError; return how long that took.

    Readiness is polled, never slept for: a fixed sleep is either too short on a loaded
    machine or wasted time on an idle one.  The poll interval grows from 2 ms to 50 ms so
    a fast service is seen quickly and a slow one does not cost a busy loop.  `alive`
    lets the caller fail fast when the process died instead of waiting out the timeout.
    """
    start = time.monotonic()
    deadline = start + timeout
    interval = 0.002
    last_error: OSError | None = None
    while True:
        if not alive():
            raise NotReady(f"{what} exited before it was ready")
        try:
            probe()
            return time.monotonic() - start
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise NotReady(f"{what} not ready after {timeout:.0f} s: {last_error}")
        time.sleep(interval)  # poll interval, not a readiness guess
        interval = min(interval * 2, 0.05)


def connect_probe(spec: SocketSpec) -> Callable[[], None]:
    """A readiness probe that succeeds once `spec` accepts a connection."""

    def probe() -> None:
        with connect(spec, timeout=1.0):
            pass

    return probe


def remove_stale_unix_socket(spec: SocketSpec) -> None:
    """Remove a leftover socket file so a readiness probe cannot hit a dead one."""
    if spec.kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.path)
