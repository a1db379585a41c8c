"""`[tlspolicy] workers = 2` for real: a supervisor and two worker processes on one unix
socket, asked by Postfix's own socketmap client (`postmap -q`); nsd serves `_mta-sts`
TXT, an HTTPS server on loopback (test CA) serves the policies.

Which worker answers is the kernel's choice; to see each of them answer, the test stops
the other one (SIGSTOP: it cannot accept) while it asks.  Each worker has its own
memory cache, so each decides (and logs, with its pid) the first lookup it gets.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import AuthoritativeDns, free_port, mailward_command, wait_until
from tests.harness.process import ManagedProcess, unix_accepts
from tests.harness.toml import dumps
from tests.support.mtasts import Site, TestCa, https_server

DOMAINS = ["one.example", "two.example", "three.example", "four.example"]
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.{domain}\nmax_age: 86400\n"


@dataclass
class Workers:
    service: ManagedProcess
    socket_path: Path
    config: Path
    settings: dict[str, object]
    metrics_port: int
    postfix_dir: Path

    def postmap(self, key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postmap", "-c", str(self.postfix_dir), "-q", key,
             f"socketmap:unix:{self.socket_path}:postfix"],
            capture_output=True, text=True, timeout=30, check=False)

    def started_workers(self) -> list[int]:
        return [int(pid) for pid in
                re.findall(r"tlspolicy worker (\d+) started", self.service.output())]

    def live_workers(self) -> list[int]:
        return [pid for pid in self.started_workers() if _alive(pid)]

    def answered_by(self, domain: str) -> set[int]:
        """Pids of the workers that logged a decision for `domain`."""
        return {int(pid) for pid in re.findall(
            rf"mailward-tlspolicy\[(\d+)\] INFO {re.escape(domain)}: OK secure",
            self.service.output())}

    def metric(self, name: str, labels: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.split()[-1])
        return 0.0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    ca = TestCa(tmp_path)
    site = Site()
    for domain in DOMAINS:
        site.policy(domain, ENFORCE.format(domain=domain))
    server = https_server(ca.issue("policy-host", [f"mta-sts.{d}" for d in DOMAINS]), site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    nsd = AuthoritativeDns(tmp_path / "nsd")
    nsd.start()
    for domain in DOMAINS:
        nsd.set_zone(domain, [("_mta-sts", 0, "TXT", "v=STSv1; id=1"),
                              ("mta-sts", "A", "127.0.0.1"), ("@", "MX", f"10 mx.{domain}.")])
    socket_path = tmp_path / "run" / "tlspolicy.sock"
    metrics_port = free_port()
    settings: dict[str, object] = {
        "dns": {"nameservers": ["127.0.0.1"], "port": nsd.port, "timeout": 2.0},
        "tlspolicy": {
            "socket": f"unix:{socket_path}",
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "ca_file": str(ca.ca_file),
            "policy_port": server.server_address[1],
            "cache": "memory",
            "workers": 2,
        },
    }
    config = tmp_path / "mailward.toml"
    config.write_text(dumps(settings))
    service = ManagedProcess("mailward-tlspolicy", mailward_command("tlspolicy", config),
                             tmp_path / "tlspolicy.log")
    postfix_dir = tmp_path / "postfix"
    postfix_dir.mkdir()
    (postfix_dir / "main.cf").write_text("compatibility_level = 3.6\n")
    service.start()
    result = Workers(service, socket_path, config, settings, metrics_port, postfix_dir)
    try:
        wait_until(lambda: unix_accepts(socket_path), 20.0, "mailward tlspolicy socket",
                   diagnostics=service.output)
        yield result
    finally:
        for pid in result.live_workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a failed test may leave one stopped
        service.stop()
        nsd.close()
        server.shutdown()
        server.server_close()


def _serving(world: Workers) -> set[int]:
    return {int(pid) for pid in re.findall(
        r"mailward-tlspolicy\[(\d+)\] INFO mailward tlspolicy listening on unix:",
        world.service.output())}


def reloaded(world: Workers, pid: int, mark: int) -> bool:
    return re.search(rf"mailward-tlspolicy\[{pid}\] INFO configuration reloaded",
                     world.service.output()[mark:]) is not None


def ask_while_others_stopped(world: Workers, pid: int, domain: str) -> None:
    """Look `domain` up while every worker but `pid` is stopped (it alone can accept)."""
    others = [other for other in world.live_workers() if other != pid]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        result = world.postmap(domain)
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)
    assert result.returncode == 0, result.stderr + world.service.output()
    assert result.stdout.strip() == f"secure match=mx.{domain} servername=hostname"


def test_two_workers_answer_are_replaced_and_reload(workers: Workers) -> None:
    first, second = wait_until(
        lambda: len(pids := workers.live_workers()) == 2 and pids, 20.0, "two workers",
        diagnostics=workers.service.output)
    wait_until(lambda: {first, second} <= _serving(workers), 20.0, "both workers listening",
               diagnostics=workers.service.output)
    assert "listening on unix:" in workers.service.output()
    assert "with 2 workers" in workers.service.output()

    # Each worker answers (and, with its own memory cache, decides) on its own.
    ask_while_others_stopped(workers, first, "one.example")
    ask_while_others_stopped(workers, second, "two.example")
    assert workers.answered_by("one.example") == {first}
    assert workers.answered_by("two.example") == {second}
    # The supervisor's /metrics sums both workers' decisions.
    assert wait_until(lambda: workers.metric("mailward_tlspolicy_answers_total",
                                             'kind="secure"') >= 2, 10.0,
                      "summed answer metrics")

    # A killed worker is replaced, and the new one answers.
    os.kill(first, signal.SIGKILL)
    replacement = wait_until(
        lambda: len(pids := workers.live_workers()) == 2 and first not in pids
        and next(pid for pid in pids if pid != second), 20.0, "a replacement worker",
        diagnostics=workers.service.output)
    assert f"tlspolicy worker {first} exited unexpectedly" in workers.service.output()
    wait_until(lambda: replacement in _serving(workers), 20.0, "the replacement listening",
               diagnostics=workers.service.output)
    ask_while_others_stopped(workers, replacement, "three.example")
    assert workers.answered_by("three.example") == {replacement}

    # SIGHUP: every worker reloads; a new override is answered by each of them.
    section = workers.settings["tlspolicy"]
    assert isinstance(section, dict)
    tlspolicy = dict(section)
    tlspolicy["overrides"] = {"four.example": "dane-only"}
    workers.config.write_text(dumps({**workers.settings, "tlspolicy": tlspolicy}))
    mark = len(workers.service.output())
    workers.service.signal(signal.SIGHUP)
    for pid in (second, replacement):
        wait_until(lambda pid=pid: reloaded(workers, pid, mark), 20.0, f"worker {pid} reloaded",
                   diagnostics=workers.service.output)
    for pid in (second, replacement):
        others = [other for other in workers.live_workers() if other != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            result = workers.postmap("four.example")
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)
        assert result.returncode == 0 and result.stdout.strip() == "dane-only", result.stderr

    # SIGTERM stops them all and removes the socket.
    assert workers.service.stop() == 0
    assert not workers.socket_path.exists()
    assert not any(_alive(pid) for pid in (second, replacement))
