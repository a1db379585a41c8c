"""Process plumbing shared by every daemon of the integration stack.

The daemons (nsd, Postfix's master, Dovecot, Redis, the Mailward services) all run in the
foreground as children of the test process.  Each one is started in its own session, so
that its process group id equals its pid: stopping it means signalling *that* group, by
id, and never looking processes up by name.  A module-level registry and an `atexit`
hook are the backstop for a test run that dies between start and teardown, and
`PR_SET_PDEATHSIG` is the backstop for a test process that is killed outright.

Readiness is always a polling loop with a deadline (`wait_until`), never a fixed sleep.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

#: Start/stop/readiness timings at DEBUG: `pytest --log-level=DEBUG` shows where time goes.
log = logging.getLogger("tests.harness")

#: How often polling loops look again.  Small enough that readiness costs little latency,
#: large enough not to burn a core of the 2-core test machines.
POLL_INTERVAL = 0.02


class HarnessError(RuntimeError):
    """The harness could not bring a piece of the stack into the requested state."""


def wait_until(
    predicate: Callable[[], T | bool | None],
    timeout: float,
    description: str,
    interval: float = POLL_INTERVAL,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy and return that value.

    Exceptions of type OSError raised by the predicate count as "not yet" (a socket that
    is not listening yet refuses connections); anything else propagates, because it is a
    bug in the test rather than a service that is still starting.  On timeout the error
    names what was awaited and, if given, the output of `diagnostics` (typically a log
    tail), so a failing run explains itself.
    """
    began = time.monotonic()
    deadline = began + timeout
    last_error: OSError | None = None
    while True:
        try:
            result = predicate()
        except OSError as exc:
            last_error = exc
            result = None
        if result:
            log.debug("waited %.2fs for %s", time.monotonic() - began, description)
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            extra = ""
            if diagnostics is not None:
                extra = "\n" + diagnostics()
            raise HarnessError(
                f"timed out after {timeout:.1f}s waiting for {description}{detail}{extra}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------- ports


_reserved_ports: set[int] = set()
_port_lock = threading.Lock()


def child_pids(parent: int) -> set[int]:
    """The direct children of `parent` (a supervisor's workers), from the kernel.

    Each thread has its own list (/proc/PID/task/TID/children): a child forked from a
    thread other than the main one is only in that thread's.
    """
    found: set[int] = set()
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            found.update(int(pid) for pid in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # the thread ended between listing and reading
    return found


def wait_for_children(parent: int, count: int, timeout: float = 15,
                      without: Collection[int] = ()) -> set[int]:
    """`parent`'s children once there are `count` and none of them is in `without`
    (after a kill: the victim is gone and its replacement has come)."""
    def ready() -> set[int] | None:
        pids = child_pids(parent)
        return pids if len(pids) == count and pids.isdisjoint(without) else None
    return wait_until(ready, timeout, f"{count} children of {parent}")


def _port_is_free(port: int, host: str) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a high port that is currently free for both TCP and UDP on `host`.

    The kernel picks it (bind to port 0), so parallel runs do not collide on a fixed
    number.  Ports handed out by this process are remembered and never handed out twice,
    because several daemons are configured before any of them binds its port.  UDP is
    checked too, because nsd needs the same number for both.
    """
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port in _reserved_ports or not _port_is_free(port, host):
                continue
            _reserved_ports.add(port)
            return port
    raise HarnessError("could not find a free port")


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.create_connection((host, port), timeout=timeout):
        return True


def unix_accepts(path: str | Path, timeout: float = 0.5) -> bool:
    """True when something accepts connections on the unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        return True


def read_banner(host: str, port: int, timeout: float = 2.0) -> bytes:
    """Connect and return the first line the server sends (SMTP/LMTP/IMAP greeting).

    Connecting alone is not proof of readiness for Postfix: master owns the listening
    socket long before a smtpd process exists to answer on it.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        return data


# --------------------------------------------------------------------------- processes


_PR_SET_PDEATHSIG = 1
_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name, use_errno=True) if _libc_name else None


_bound_to_test_process = True


def detach_from_test_process() -> None:
    """Let daemons started from now on outlive this Python process.

    For a demo that starts the stack and exits: no PR_SET_PDEATHSIG, no atexit stop.
    Record the pids (`MailStack.process_ids()`) and end them later with `stop_pid`.
    """
    global _bound_to_test_process
    _bound_to_test_process = False
    atexit.unregister(stop_all)


def _child_setup() -> None:
    """Runs in the child between fork and exec: die with the test process.

    If pytest is killed with SIGKILL no teardown runs; the kernel then sends SIGTERM to
    the daemon, which takes its own children down with it.  (The signal follows the
    *thread* that forked: `ManagedProcess.start` sets it only from the main thread, or a
    daemon restarted by a test's helper thread would die when that thread ends.)
    """
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


_live: dict[int, ManagedProcess] = {}
_live_lock = threading.Lock()


def process_group_members(pgid: int) -> list[int]:
    """Pids of all live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry.name))
    return members


class ManagedProcess:
    """One foreground daemon: started in its own process group, stopped by that id.

    Output (stdout and stderr together) goes to `output_path`, appended, so a restarted
    service keeps the history of earlier runs in one file.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        output_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        umask: int = -1,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.output_path = output_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.umask = umask
        self._popen: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        if self.running():
            raise HarnessError(f"{self.name} is already running (pid {self.pid})")
        executable = shutil.which(self.argv[0]) or self.argv[0]
        if not os.path.exists(executable):
            raise HarnessError(f"{self.name}: {self.argv[0]} not found")
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        self._output = self.output_path.open("ab")
        self._popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=(_child_setup if _bound_to_test_process
                        and threading.current_thread() is threading.main_thread() else None),
            umask=self.umask,
        )
        with _live_lock:
            _live[self._popen.pid] = self
        log.debug("started %s, pid %d: %s", self.name, self._popen.pid, " ".join(self.argv))

    def running(self) -> bool:
        """True while the main process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def signal(self, signum: int) -> None:
        """Send `signum` to the main process only (e.g. SIGHUP for a reload)."""
        if not self.running() or self._popen is None:
            raise HarnessError(f"{self.name} is not running")
        self._popen.send_signal(signum)

    def terminate(self) -> None:
        """Send SIGTERM without waiting: lets several services shut down in parallel."""
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGTERM)

    def output(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the main process, wait, then make sure its whole group is gone.

        The main process gets the chance to shut its children down itself (Postfix's
        master and Dovecot do); whatever is still alive in the group after that is
        signalled by group id: SIGTERM, then SIGKILL.  A main process still running
        after `timeout` gets SIGKILL with its group.  Returns the main process's status.
        """
        popen = self._popen
        if popen is None:
            return None
        pgid = popen.pid
        began = time.monotonic()
        try:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) ignored SIGTERM for %.0fs: SIGKILL",
                                self.name, pgid, timeout)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
                    popen.wait(5)
            # Children that outlive their main process (Dovecot's auth process keeps
            # serving Postfix's open SASL connections) get SIGTERM, then SIGKILL.
            leftover = process_group_members(pgid)
            if leftover:
                log.debug("%s: %d process(es) outlived the main process", self.name,
                          len(leftover))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                reap_group(pgid, min(timeout, 5.0), self.name)
        finally:
            with _live_lock:
                _live.pop(pgid, None)
            if self._output is not None:
                self._output.close()
                self._output = None
        log.debug("stopped %s (pid %d, status %s) in %.2fs", self.name, pgid, popen.returncode,
                  time.monotonic() - began)
        return popen.returncode

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} running={self.running()}>"


def reap_group(pgid: int, timeout: float, name: str = "process group") -> None:
    """Wait for the members of process group `pgid` to exit; SIGKILL them at the deadline."""
    deadline = time.monotonic() + timeout
    while process_group_members(pgid):
        if time.monotonic() >= deadline:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
            deadline = time.monotonic() + 5
            while process_group_members(pgid):
                if time.monotonic() >= deadline:
                    raise HarnessError(
                        f"{name}: processes {process_group_members(pgid)} survive SIGKILL"
                    )
                time.sleep(POLL_INTERVAL)
            return
        time.sleep(POLL_INTERVAL)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop a daemon started by an earlier, detached run (see `detach_from_test_process`).

    `pid` must be one this harness started: it leads its own process group, and the
    whole group is stopped (SIGTERM to the leader, SIGKILL to what remains at the end).
    """
    if os.getpgid(pid) != pid:
        raise HarnessError(f"pid {pid} does not lead a process group: not one of ours")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    reap_group(pid, timeout, f"pid {pid}")


def stop_all() -> None:
    """Stop every process this module started and that is still registered."""
    with _live_lock:
        processes = list(_live.values())
    for process in processes:
        with contextlib.suppress(HarnessError, OSError, subprocess.SubprocessError):
            process.stop(timeout=5)


atexit.register(stop_all)


def run(
    argv: Sequence[str],
    timeout: float = 30.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short helper command (postconf, sievec, ...) and return its output.

    A failure raises HarnessError with the command's output, which is what one needs to
    see when, say, a Sieve script does not compile.
    """
    result = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and result.returncode != 0:
        raise HarnessError(
            f"command failed with exit status {result.returncode}: {' '.join(argv)}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


class LogProblems:
    """The lines of a daemon's log that mean something broke (fatal, panic, ...), minus
    those a test declared expected; teardown raises on what is left."""

    def __init__(self, daemon: str, pattern: re.Pattern[str], read: Callable[[], str]) -> None:
        self._daemon = daemon
        self._pattern = pattern
        self._read = read
        self._allowed: list[re.Pattern[str]] = []

    def found(self) -> list[str]:
        return [
            line for line in self._read().splitlines()
            if self._pattern.search(line)
            and not any(allowed.search(line) for allowed in self._allowed)
        ]

    def allow(self, pattern: str) -> None:
        """Declare a problem line expected (a test that breaks things on purpose)."""
        self._allowed.append(re.compile(pattern))

    def check(self) -> None:
        found = self.found()
        if found:
            raise HarnessError(f"{self._daemon} logged errors:\n" + "\n".join(found))


def tail(text: str, lines: int = 40) -> str:
    """The last `lines` lines of `text`, for error messages."""
    return "\n".join(text.splitlines()[-lines:])
