"""The Mailward services (milter, policyd) from the working tree, as the stack runs them.

Each service is `python -m mailward <service> -c CONFIG`, in the foreground, logging to
stderr (captured into a file in the temp dir).  The config file is the DESIGN.md keys
with defaults that point at the test's name server and at free loopback ports, merged
with whatever the test passes.  Ready means: the service socket accepts connections, and
so does its metrics listener if it has one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tomllib
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import toml
from tests.harness.process import (
    HarnessError,
    ManagedProcess,
    free_port,
    tail,
    tcp_accepts,
    unix_accepts,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVICES = ("milter", "policyd")

#: Mailward with every check and policy switched off: only what the foundation does
#: (our Authentication-Results header, forged-header removal, DUNNO).  For tests of the
#: service itself rather than of a check.
CHECKS_OFF: dict[str, Any] = {
    "spf": {"enabled": False},
    "iprev": {"enabled": False},
    "dkim": {"verify": False},
    "arc": {"verify": False},
    "dmarc": {"enabled": False},
    "policyd": {"spf": {"enabled": False}},
}

#: Builds the command line of one service from its name and the config path.
CommandFactory = Callable[[str, Path], Sequence[str]]


def mailward_command(service: str, config_path: Path) -> list[str]:
    """The real thing: the CLI of the working tree, with the interpreter running the tests."""
    return [sys.executable, "-m", "mailward", service, "-c", str(config_path)]


def fake_service_command(service: str, config_path: Path) -> list[str]:
    """A stand-in honouring the same contract (tests/harness/fake_service.py), for testing
    the harness itself while the real CLI is being written."""
    return [sys.executable, "-m", "tests.harness.fake_service", service, "-c", str(config_path)]


def parse_socket(spec: str) -> tuple[str, str]:
    """Split a Postfix-style socket string into ("unix", path) or ("inet", "host:port")."""
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        return "unix", rest
    if kind in ("inet", "inet6"):
        return "inet", rest
    raise ValueError(f"unsupported socket string {spec!r}")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _accepts(spec: str) -> bool:
    kind, address = parse_socket(spec)
    if kind == "unix":
        return unix_accepts(address)
    host, port = _host_port(address)
    return tcp_accepts(host, port)


class MailwardServices:
    """The milter and/or policy service, configured for the test stack.

    `config` (a dict or TOML text) is merged over the defaults, table by table, so a
    test writes only what it cares about: `{"dmarc": {"enforce": False}}`.  The
    resulting sockets are available as `milter_socket` and `policyd_socket`, written as
    main.cf wants them.
    """

    def __init__(
        self,
        base_dir: Path,
        dns_port: int | None = None,
        config: Mapping[str, Any] | str | None = None,
        services: Sequence[str] = SERVICES,
        milter_transport: str = "inet",
        metrics: bool = True,
        command: CommandFactory = mailward_command,
        env: Mapping[str, str] | None = None,
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {SERVICES}")
        self.base_dir = base_dir
        self.services = list(services)
        self.config_path = base_dir / "mailward.toml"
        self.command = command
        base_dir.mkdir(parents=True, exist_ok=True)
        base_dir.chmod(0o755)
        (base_dir / "state").mkdir(exist_ok=True)
        self.config = toml.deep_merge(
            self.default_config(dns_port, milter_transport, metrics),
            tomllib.loads(config) if isinstance(config, str) else (config or {}),
        )
        self._env = dict(os.environ)
        self._env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), self._env.get("PYTHONPATH")])
        )
        self._env.update(env or {})
        self._processes: dict[str, ManagedProcess] = {}
        self.write_config()

    def default_config(self, dns_port: int | None, milter_transport: str,
                       metrics: bool) -> dict[str, Any]:
        """The fixed DESIGN.md keys, pointed at the test stack."""
        if milter_transport == "unix":
            milter_socket = f"unix:{self.base_dir / 'milter.sock'}"
        elif milter_transport == "inet":
            milter_socket = f"inet:127.0.0.1:{free_port()}"
        else:
            raise ValueError(f"milter_transport must be 'unix' or 'inet', not {milter_transport!r}")
        config: dict[str, Any] = {
            "general": {
                "authserv_id": "mx.example.net",
                "trusted_networks": ["127.0.0.0/8", "::1/128"],
                "on_internal_error": "tempfail",
            },
            "dns": {"nameservers": ["127.0.0.1"], "port": dns_port or 53, "timeout": 1.0},
            "milter": {"socket": milter_socket, "workers": 1},
            "policyd": {"socket": f"inet:127.0.0.1:{free_port()}"},
            "metrics": {
                "listen": f"127.0.0.1:{free_port()}" if metrics else "",
                "policyd_listen": f"127.0.0.1:{free_port()}" if metrics else "",
            },
            "state": {"backend": "sqlite", "path": str(self.base_dir / "state" / "state.db")},
        }
        if milter_transport == "unix":
            # Postfix's smtpd runs as user postfix: let its group reach the socket.
            config["milter"]["socket_group"] = "postfix"
        if not dns_port:
            del config["dns"]["nameservers"]
            del config["dns"]["port"]
        return config

    def write_config(self) -> None:
        self.config_path.write_text(toml.dumps(self.config))

    def update_config(self, overrides: Mapping[str, Any] | str) -> None:
        """Merge `overrides` into the config file (then `reload()` or `restart()`)."""
        extra = tomllib.loads(overrides) if isinstance(overrides, str) else overrides
        self.config = toml.deep_merge(self.config, extra)
        self.write_config()

    # ------------------------------------------------------------------ addresses

    @property
    def milter_socket(self) -> str:
        """For `smtpd_milters`: "inet:127.0.0.1:PORT" or "unix:/path"."""
        return str(self.config["milter"]["socket"])

    @property
    def policyd_socket(self) -> str:
        """For `check_policy_service`: "inet:127.0.0.1:PORT" or "unix:/path"."""
        return str(self.config["policyd"]["socket"])

    def metrics_listen(self, service: str = "milter") -> str | None:
        key = "listen" if service == "milter" else "policyd_listen"
        value = str(self.config.get("metrics", {}).get(key, ""))
        return value or None

    def service_socket(self, service: str) -> str:
        return self.milter_socket if service == "milter" else self.policyd_socket

    # ------------------------------------------------------------------ lifecycle

    def running(self, service: str) -> bool:
        process = self._processes.get(service)
        return process is not None and process.running()

    def pids(self) -> dict[str, int]:
        """{service: pid} of the running services."""
        return {name: process.pid for name, process in self._processes.items()
                if process.running() and process.pid is not None}

    def start(self, timeout: float = 30.0) -> None:
        """Start every configured service; wait for its socket (and metrics) to accept."""
        for service in self.services:
            self._start_one(service)
        for service in self.services:
            self._wait_ready(service, timeout)

    def _start_one(self, service: str) -> None:
        kind, address = parse_socket(self.service_socket(service))
        if kind == "unix":
            Path(address).unlink(missing_ok=True)  # a stale socket would look "ready"
        process = self._processes.get(service)
        if process is None:
            process = ManagedProcess(
                f"mailward-{service}",
                list(self.command(service, self.config_path)),
                self.base_dir / f"{service}.log",
                env=self._env,
                cwd=self.base_dir,
            )
            self._processes[service] = process
        process.start()

    def _wait_ready(self, service: str, timeout: float) -> None:
        process = self._processes[service]
        endpoints = [self.service_socket(service)]
        listen = self.metrics_listen(service)
        if listen:
            endpoints.append(f"inet:{listen}")

        def ready() -> bool:
            if not process.running():
                raise HarnessError(
                    f"mailward {service} exited with status {process.returncode()}:\n"
                    + tail(process.output())
                )
            return all(_accepts(endpoint) for endpoint in endpoints)

        wait_until(ready, timeout, f"mailward {service} on {', '.join(endpoints)}",
                   diagnostics=lambda: f"{service} log:\n" + tail(process.output()))

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every service (all at once) and wait; return {service: exit status}."""
        for process in self._processes.values():
            process.terminate()
        return {service: process.stop(timeout) for service, process in self._processes.items()}

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def reload(self, wait_for: str | None = None, timeout: float = 10.0) -> None:
        """SIGHUP every running service; optionally wait for a log line (regex) from each."""
        marks = {service: len(self.log_text(service)) for service in self._processes}
        for process in self._processes.values():
            if process.running():
                process.signal(signal.SIGHUP)
        if wait_for is not None:
            for service in self._processes:
                self.wait_for_log(wait_for, service=service, timeout=timeout,
                                  since=marks[service])

    # ------------------------------------------------------------------ observation

    def log_text(self, service: str | None = None) -> str:
        """stderr of one service, or of all of them, each under a "== name ==" line."""
        if service is not None:
            process = self._processes.get(service)
            return process.output() if process is not None else ""
        return "".join(f"== {name} ==\n{process.output()}"
                       for name, process in self._processes.items())

    def wait_for_log(self, pattern: str, service: str = "milter", timeout: float = 10.0,
                     since: int = 0) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)
        return wait_until(
            lambda: regex.search(self.log_text(service)[since:]),
            timeout,
            f"mailward {service} log line matching {pattern!r}",
            diagnostics=lambda: tail(self.log_text(service)),
        )

    def metrics_text(self, service: str = "milter", timeout: float = 5.0) -> str:
        """GET /metrics from the service's metrics listener."""
        listen = self.metrics_listen(service)
        if listen is None:
            raise HarnessError(f"metrics are disabled for {service}")
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=timeout) as response:
            body: bytes = response.read()
        return body.decode()

    def metric_value(self, name: str, labels: Mapping[str, str] | None = None,
                     service: str = "milter") -> float | None:
        """The value of one sample (exact name, e.g. "mailward_x_total"), or None.

        With `labels`, the sample must carry at least those label values; several
        matching samples are summed (e.g. over a `result` label the test ignores).
        """
        wanted = dict(labels or {})
        total: float | None = None
        for family in text_string_to_metric_families(self.metrics_text(service)):
            for sample in family.samples:
                if sample.name != name:
                    continue
                if all(sample.labels.get(k) == v for k, v in wanted.items()):
                    total = (total or 0.0) + float(sample.value)
        return total

    def close(self) -> None:
        """Stop everything; used by teardown, never raises for an already stopped service."""
        for process in self._processes.values():
            process.terminate()
        for process in self._processes.values():
            with contextlib.suppress(HarnessError, OSError):
                process.stop()

    def __repr__(self) -> str:
        state = {service: self.running(service) for service in self.services}
        return f"<MailwardServices {state} milter={self.milter_socket}>"
