"""Services started by the benchmark: start, wait until ready, watch, stop.

Each service runs in its own session (process group), so that stopping it also stops
the workers it forked, and so that its resource use can be attributed: RSS and CPU
are summed over the process tree read from /proc, because prefork services (Mailward
with ``workers = 2``, the empty milter with ``--workers``) spread both over children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.sockets import NotReady, wait_until_ready

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (by parent pid, scanning /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def rss_bytes(pids: Iterable[int]) -> int:
    """Sum of resident set sizes (shared pages of forked workers count once per process,
    as `ps` and most dashboards count them)."""
    total = 0
    for pid in pids:
        try:
            resident = Path(f"/proc/{pid}/statm").read_text().split()[1]
        except (OSError, IndexError):
            continue  # exited between listing and reading
        total += int(resident) * _PAGE
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of the given processes (live ones only)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


@dataclass
class ServiceProcess:
    """A foreground service we started; logs go to a file, stop is SIGTERM to its group."""

    name: str
    argv: list[str]
    log: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None

    def __post_init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0
        self.exit_code: int | None = None
        self.killed = False
        self._tree: list[int] = []
        self._tree_at = 0.0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() reaches its workers
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, probe: Callable[[], None], timeout: float = 30.0) -> float:
        """Poll `probe` until it succeeds; on failure include the log tail."""
        try:
            return wait_until_ready(probe, timeout=timeout, alive=self.alive, what=self.name)
        except NotReady as exc:
            raise NotReady(f"{exc}\n--- {self.log} (tail) ---\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def tree(self) -> list[int]:
        return process_tree(self.pid) if self.alive() else []

    def sample(self, tree_max_age: float = 2.0) -> int:
        """Current RSS of the tree; also updates the peak.

        The tree is re-read from /proc at most every `tree_max_age` seconds: a full /proc
        scan costs milliseconds, and the sampler shares a core with the load client.
        """
        now = time.monotonic()
        if now - self._tree_at > tree_max_age or not self._tree:
            self._tree, self._tree_at = self.tree(), now
        rss = rss_bytes(self._tree)
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL if it does not exit in `timeout`."""
        if self.proc is None or self.exit_code is not None:
            return self.exit_code
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Workers that outlived their parent (same process group) are ours too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.exit_code = self.proc.returncode
        return self.exit_code


class RssSampler:
    """Samples the RSS of services in the background, keeping each one's peak.

    Every 0.25 s is often enough to see a steady-state peak and cheap enough (a few
    statm reads) not to disturb a 2-core measurement.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self._services: list[ServiceProcess] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, service: ServiceProcess) -> None:
        with self._lock:
            self._services.append(service)

    def forget(self, service: ServiceProcess) -> None:
        with self._lock:
            if service in self._services:
                self._services.remove(service)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                services = list(self._services)
            for service in services:
                service.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class CpuWindow:
    """CPU used during a measurement: by the service tree, and by the whole machine."""

    service: float = 0.0  # cores
    machine: float = 0.0  # cores, everything (service + load client + anything else)

    @classmethod
    def measure(
        cls, service: ServiceProcess, run: Callable[[], object]
    ) -> tuple[CpuWindow, object]:
        pids = service.tree()
        s0, m0, t0 = cpu_seconds(pids), machine_busy_seconds(), time.monotonic()
        result = run()
        pids = service.tree() or pids
        s1, m1, t1 = cpu_seconds(pids), machine_busy_seconds(), time.monotonic()
        wall = max(t1 - t0, 1e-9)
        return cls(service=(s1 - s0) / wall, machine=(m1 - m0) / wall), result
