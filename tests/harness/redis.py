"""A private Redis on a loopback high port, for tests of the shared-state backend.

Mailward keeps greylisting, rate limits and Bayes tokens in SQLite by default and in
Redis when several MX hosts share state (`[state] backend = "redis"`); this instance
lets the integration tests run the second configuration without any system Redis.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.harness.process import ManagedProcess, free_port, tail, wait_until


class RedisInstance:
    """`redis-server` in the foreground, no persistence, bound to 127.0.0.1:`port`."""

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = base_dir
        self.port = port if port is not None else free_port()
        base_dir.mkdir(parents=True, exist_ok=True)
        self._process = ManagedProcess(
            "redis",
            [
                "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--protected-mode", "no", "--dir", str(base_dir),
                "--unixsocket", "", "--logfile", "",
            ],
            base_dir / "redis.log",
        )

    @property
    def url(self) -> str:
        """For `[state] url`."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process.running()

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Send one command (inline protocol) and return the raw first reply line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return reply

    def start(self, timeout: float = 10.0) -> None:
        self._process.start()
        wait_until(lambda: self.command("PING") == b"+PONG\r\n", timeout,
                   f"redis on 127.0.0.1:{self.port}",
                   diagnostics=lambda: tail(self._process.output()))

    def stop(self) -> None:
        self._process.stop()

    def flushall(self) -> None:
        """Forget all keys (between tests that share the instance)."""
        self.command("FLUSHALL")

    def log_text(self) -> str:
        return self._process.output()
