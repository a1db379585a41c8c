"""A private SpamAssassin spamd on a loopback high port, for the `[spamd]` backend's tests.

Debian's `spamd` (package spamd, rules from package spamassassin) runs in the
foreground with everything of its own in one directory:

- `--siteconfigpath` is a private copy of /etc/spamassassin's `.pre` files (they load
  the plugins) plus a `local.cf` written here: no Bayes, no auto-learning, no network
  tests (`-L`, `dns_available no`, `skip_rbl_checks`), so results do not depend on the
  machine's DNS, Internet access or earlier runs; a test can add its own rules.
- `--configpath` pins the rules Debian ships (/usr/share/spamassassin), not whatever an
  `sa-update` on the machine may have put in /var/lib/spamassassin.
- spamd refuses to scan as root: as root it switches to `nobody` (`--username`), so the
  directories are world-readable and its helper home belongs to nobody.
- `-x`: no per-user configuration; `-s stderr`: its log is this process's output,
  including one `spamd: result:` line per scan, which tests read back (`results`).

Readiness is a PING answered with PONG (polled), never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.harness.process import HarnessError, ManagedProcess, free_port, tail, wait_until

SPAMD = "/usr/sbin/spamd"
SHIPPED_RULES = Path("/usr/share/spamassassin")
SITE_CONFIG = Path("/etc/spamassassin")
EXAMPLES = Path("/usr/share/doc/spamassassin/examples")

LOCAL_CF = """\
# Written by tests/harness/spamd.py: deterministic, offline.
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
use_razor2 0
use_pyzor 0
"""

_RESULT = re.compile(
    r"spamd: result: (?P<flag>[Y.]) +(?P<score>-?\d+) - (?P<rules>\S*) .*mid=(?P<mid>[^,\s]*)")


@dataclass(frozen=True)
class ScanResult:
    """One `spamd: result:` log line: spam or not, the rounded score, the rules."""

    is_spam: bool
    score: int
    rules: tuple[str, ...]
    message_id: str


class SpamdInstance:
    """`spamd` in the foreground on 127.0.0.1:`port`, with a private site config."""

    def __init__(self, base_dir: Path, port: int | None = None, local_rules: str = "",
                 user: str = "nobody") -> None:
        self.base_dir = base_dir
        self.port = port if port is not None else free_port()
        self.site_dir = base_dir / "site"
        self.home_dir = base_dir / "home"
        self.local_rules = local_rules
        self.user = user
        self._process = ManagedProcess("spamd", self._argv(), base_dir / "spamd.log")
        self._paused = False

    def _argv(self) -> list[str]:
        argv = [
            SPAMD, "--local", "--nouser-config", "--listen", f"127.0.0.1:{self.port}",
            "--allowed-ips", "127.0.0.1", f"--siteconfigpath={self.site_dir}",
            f"--configpath={SHIPPED_RULES}", f"--helper-home-dir={self.home_dir}",
            "--max-children=2", "--min-children=1", "--syslog=stderr",
        ]
        if os.geteuid() == 0:
            argv.append(f"--username={self.user}")
        return argv

    @property
    def socket(self) -> str:
        """For `[spamd] socket`."""
        return f"inet:127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process.running()

    def _write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.site_dir.mkdir(exist_ok=True)
        self.home_dir.mkdir(exist_ok=True)
        for pre in sorted(SITE_CONFIG.glob("*.pre")):
            shutil.copy(pre, self.site_dir / pre.name)
        (self.site_dir / "local.cf").write_text(LOCAL_CF + self.local_rules)
        for path in (self.base_dir, self.site_dir, *self.site_dir.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.home_dir.chmod(0o755)
        if os.geteuid() == 0:
            account = pwd.getpwnam(self.user)
            os.chown(self.home_dir, account.pw_uid, account.pw_gid)

    def ping(self, timeout: float = 2.0) -> bool:
        """True when spamd answers PING with PONG (its children are ready to scan)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(256)
                if not chunk:
                    break
                answer += chunk
            return answer.startswith(b"SPAMD/") and b" 0 PONG" in answer

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait for PONG; loading and compiling the rules takes a few seconds."""
        self._write_config()
        self._process.start()
        wait_until(self._ready, timeout, f"spamd on 127.0.0.1:{self.port}",
                   interval=0.1, diagnostics=lambda: tail(self._process.output()))

    def _ready(self) -> bool:
        if not self._process.running():
            raise HarnessError(f"spamd exited:\n{tail(self._process.output())}")
        return self.ping()

    def stop(self) -> None:
        self.resume()
        self._process.stop()

    def pause(self) -> None:
        """SIGSTOP spamd's whole process group (by its id): the kernel still accepts
        connections into the listen backlog, but nothing answers: a hung spamd."""
        pid = self._process.pid
        if pid is None or not self._process.running():
            raise HarnessError("spamd is not running")
        os.killpg(pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause` (a no-op otherwise)."""
        pid = self._process.pid
        if self._paused and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
        self._paused = False

    def log_text(self) -> str:
        return self._process.output()

    def results(self) -> list[ScanResult]:
        """Every scan spamd logged so far, oldest first."""
        found = []
        for match in _RESULT.finditer(self.log_text()):
            rules = tuple(rule for rule in match.group("rules").split(",") if rule)
            found.append(ScanResult(match.group("flag") == "Y", int(match.group("score")),
                                    rules, match.group("mid")))
        return found

    def result_for(self, message_id: str, timeout: float = 30.0) -> ScanResult:
        """The logged scan of the message with this Message-ID (waits for the log line)."""
        return wait_until(
            lambda: next((result for result in self.results()
                          if result.message_id == message_id), None),
            timeout, f"spamd's result line for {message_id}",
            diagnostics=lambda: tail(self.log_text()))
