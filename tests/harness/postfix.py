"""A private Postfix instance on a loopback high port, delivering over LMTP to Dovecot.

Nothing of the system's /etc/postfix is used except the read-only meta files: the instance
has its own config directory (main.cf, master.cf), queue directory and data directory,
runs `master -c DIR -d` in the foreground, and logs to its own `maillog_file` (through
`postlogd`), which the tests read.  All services run unchrooted (`chroot n`), so that
paths in the temp dir work as they are written.

The policy is shaped for the tests:

* smtpd listens on 127.0.0.1:`smtp_port` only; `smtpd_authorized_xclient_hosts` lets a
  test claim any client address with XCLIENT, which is how mail "from the internet"
  enters the stack.
* `check_policy_service` (when given) comes first in `smtpd_recipient_restrictions`, so
  the policy service sees every recipient, also from `mynetworks`.
* Mail for the virtual domains goes to Dovecot over LMTP; by default so does mail for
  every other domain (`capture_outbound`): there is no internet to relay to, and a test
  of outbound signing wants to read what would have left.
* Short queue timings, so a deferred message is retried within seconds.
"""

from __future__ import annotations

import enum
import json
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tests.harness.process import (
    HarnessError,
    LogProblems,
    ManagedProcess,
    free_port,
    read_banner,
    run,
    tail,
    wait_until,
)

SBIN = "/usr/sbin"
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin"
META_DIRECTORY = "/etc/postfix"
SHLIB_DIRECTORY = "/usr/lib/postfix"



class _Keep(enum.Enum):
    KEEP = "keep"


#: Pass as `milter=` or `policy_service=` to `PostfixInstance.reconfigure` (or omit them)
#: to keep the current value; None removes it.
KEEP = _Keep.KEEP

#: Log lines that mean Postfix is broken, not that a test's message was rejected.
PROBLEM_PATTERN = re.compile(r"\b(fatal|panic):")

#: master.cf services besides smtpd.  Columns: service type private unpriv chroot
#: wakeup maxproc command.  chroot is "n" everywhere: the instance lives in a temp dir.
_MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
"""


class PostfixInstance:
    """A private Postfix: `start`, send mail to `smtp_port`, read `log_text`, `stop`.

    `sasl_path` is Dovecot's auth socket: with it, smtpd offers AUTH (any user, the
    Dovecot password) and XCLIENT LOGIN=user marks a session authenticated.
    `milter` is a socket string as main.cf writes it ("inet:127.0.0.1:8891",
    "unix:/path"); it becomes `smtpd_milters` and `non_smtpd_milters`.  `policy_service`
    likewise becomes `check_policy_service`.  `params` override any default main.cf
    parameter.  Both can be changed later with `reconfigure`.
    """

    def __init__(
        self,
        base_dir: Path,
        lmtp_port: int,
        domains: Sequence[str] = ("example.net",),
        milter: str | None = None,
        policy_service: str | None = None,
        mynetworks: str = "127.0.0.0/8",
        params: Mapping[str, str] | None = None,
        capture_outbound: bool = True,
        smtp_port: int | None = None,
        hostname: str = "mx.example.net",
        sasl_path: Path | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.config_dir = base_dir / "etc"
        self.queue_dir = base_dir / "queue"
        self.data_dir = base_dir / "data"
        self.log_path = base_dir / "maillog"
        self.smtp_port = smtp_port if smtp_port is not None else free_port()
        self.lmtp_port = lmtp_port
        self.domains = list(domains)
        self.milter = milter
        self.policy_service = policy_service
        self.mynetworks = mynetworks
        self.capture_outbound = capture_outbound
        self.hostname = hostname
        self.sasl_path = sasl_path
        self.extra_params: dict[str, str] = dict(params or {})
        self._problems = LogProblems("postfix", PROBLEM_PATTERN, self.log_text)
        self._installed = False
        self._process = ManagedProcess(
            "postfix-master",
            [f"{DAEMON_DIRECTORY}/master", "-c", str(self.config_dir), "-d"],
            base_dir / "master.out",
        )

    # ------------------------------------------------------------------ configuration

    def main_cf_params(self) -> dict[str, str]:
        """The main.cf this instance runs with: defaults, then the test's overrides."""
        lmtp = f"lmtp:inet:127.0.0.1:{self.lmtp_port}"
        recipient_restrictions = []
        if self.policy_service:
            recipient_restrictions.append(f"check_policy_service {self.policy_service}")
        recipient_restrictions += [
            "permit_mynetworks",
            "permit_sasl_authenticated",
            "reject_unauth_destination",
        ]
        params = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "command_directory": SBIN,
            "daemon_directory": DAEMON_DIRECTORY,
            "meta_directory": META_DIRECTORY,
            "shlib_directory": SHLIB_DIRECTORY,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": self.hostname.partition(".")[2] or self.hostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": self.mynetworks,
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.base_dir),
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            # Mail in: XCLIENT from loopback; no reverse lookups of the (fake) client
            # addresses, which would go to the system resolver and time out.
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtpd_relay_restrictions": (
                "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
            ),
            "smtpd_recipient_restrictions": ", ".join(recipient_restrictions),
            "smtpd_error_sleep_time": "0s",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "200",
            "in_flow_delay": "0s",
            # Mail out: LMTP to Dovecot, for the virtual domains and (capture) the rest.
            "virtual_mailbox_domains": " ".join(self.domains),
            "virtual_mailbox_maps": "",
            "virtual_transport": lmtp,
            "lmtp_host_lookup": "native",
            "smtp_host_lookup": "native",
            # Retry deferred mail within seconds.
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            # Milters: a missing or broken milter must not let mail through unchecked.
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
            "milter_connect_timeout": "10s",
            "milter_mail_macros": (
                "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}"
            ),
            "smtpd_milters": self.milter or "",
            "non_smtpd_milters": self.milter or "",
        }
        if self.sasl_path is not None:
            # SMTP AUTH against Dovecot; also what makes XCLIENT LOGIN= count as
            # authenticated (permit_sasl_authenticated needs SASL enabled).
            params["smtpd_sasl_auth_enable"] = "yes"
            params["smtpd_sasl_type"] = "dovecot"
            params["smtpd_sasl_path"] = str(self.sasl_path)
        # As deploy/postfix/main.cf.snippet recommends: policy service down -> 451.
        params["smtpd_policy_service_default_action"] = (
            "451 4.3.5 Policy service unavailable, try again later"
        )
        if self.capture_outbound:
            params["default_transport"] = lmtp
            params["relay_transport"] = lmtp
        params.update(self.extra_params)
        return params

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key} = {value}" for key, value in self.main_cf_params().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        smtpd = f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n"
        (self.config_dir / "master.cf").write_text(smtpd + _MASTER_SERVICES)
        # Postfix rereads a config file until its mtime is at least a second old (so as
        # not to read a half-written file): 1.8 s per start.  Backdate them instead.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))

    def _install(self) -> None:
        """Create the queue tree with the ownerships Postfix insists on (once)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)  # postlogd and friends reach paths in here
        self._write_config()
        run([
            f"{DAEMON_DIRECTORY}/post-install",
            f"config_directory={self.config_dir}",
            f"queue_directory={self.queue_dir}",
            f"data_directory={self.data_dir}",
            f"command_directory={SBIN}",
            f"daemon_directory={DAEMON_DIRECTORY}",
            f"meta_directory={META_DIRECTORY}",
            f"shlib_directory={SHLIB_DIRECTORY}",
            "create-missing",
        ], timeout=60)
        self._installed = True

    def reconfigure(
        self,
        params: Mapping[str, str] | None = None,
        *,
        milter: str | Literal[_Keep.KEEP] | None = KEEP,
        policy_service: str | Literal[_Keep.KEEP] | None = KEEP,
        replace_params: bool = False,
    ) -> None:
        """Change main.cf and make the running instance use it (restart, then wait).

        Pass `milter=` / `policy_service=` to change them (None removes them); omit
        them to keep what is set.  A restart rather than `postfix
        reload` because a reload lets idle old smtpd processes take the next connection
        with the old settings, and a test must know which settings its message met.
        The queue survives the restart.
        """
        if milter is not KEEP:
            self.milter = milter
        if policy_service is not KEEP:
            self.policy_service = policy_service
        if replace_params:
            self.extra_params = {}
        self.extra_params.update(params or {})
        if self.running:
            self.stop()
            self.start()
        elif self._installed:
            self._write_config()

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._process.running()

    @property
    def master_pid(self) -> int | None:
        """Pid of master, which is also the process group of all its children."""
        return self._process.pid if self.running else None

    def start(self, timeout: float = 30.0) -> None:
        """Start master in the foreground and wait for smtpd to greet and qmgr to run."""
        if not self._installed:
            self._install()
        else:
            self._write_config()
        run([f"{SBIN}/postconf", "-c", str(self.config_dir), "-n"])  # syntax check
        mark = self.log_mark()
        self._process.start()

        def ready() -> bool:
            if not self._process.running():
                raise HarnessError(
                    f"postfix master exited with status {self._process.returncode()}\n"
                    + self._diagnostics()
                )
            return "daemon started" in self.log_text(since=mark) and read_banner(
                "127.0.0.1", self.smtp_port
            ).startswith(b"220")

        wait_until(ready, timeout, f"postfix smtpd on 127.0.0.1:{self.smtp_port}",
                   diagnostics=self._diagnostics)

    def stop(self) -> None:
        """Stop master (it stops its children) and make sure none of them is left."""
        self._process.stop(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()

    # ------------------------------------------------------------------ logs

    def log_text(self, since: int = 0) -> str:
        """The maillog from byte offset `since` (see `log_mark`) to its end."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """The current end of the maillog; pass it as `since` to see only newer lines."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0,
                     since: int = 0) -> re.Match[str]:
        """Poll the maillog until `pattern` (a regex, MULTILINE) matches; return the match."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        return wait_until(
            lambda: regex.search(self.log_text(since)),
            timeout,
            f"postfix log line matching {regex.pattern!r}",
            diagnostics=self._diagnostics,
        )

    def problems(self) -> list[str]:
        """fatal/panic lines in the log that no test declared expected."""
        return self._problems.found()

    def allow_problem(self, pattern: str) -> None:
        """Declare a fatal/panic log line expected (a test that breaks things on purpose)."""
        self._problems.allow(pattern)

    def check_log(self) -> None:
        """Raise HarnessError listing fatal/panic lines, so teardown makes them visible."""
        self._problems.check()

    def _diagnostics(self) -> str:
        return ("postfix maillog (tail):\n" + tail(self.log_text())
                + "\nmaster output:\n" + tail(self._process.output()))

    # ------------------------------------------------------------------ queue

    def sendmail(self, message: bytes, recipients: Sequence[str], sender: str) -> None:
        """Submit through the sendmail command (pickup -> cleanup -> `non_smtpd_milters`),
        the path locally generated mail takes, e.g. for outbound signing."""
        completed = subprocess.run(
            [f"{SBIN}/sendmail", "-C", str(self.config_dir), "-i", "-f", sender, "--",
             *recipients],
            input=message, capture_output=True, timeout=30, check=False,
        )
        if completed.returncode != 0:
            raise HarnessError(f"sendmail failed ({completed.returncode}): "
                               f"{completed.stderr.decode(errors='replace')}")

    def postconf(self, key: str) -> str:
        """The effective value of a main.cf parameter (`postconf -h`)."""
        return run([f"{SBIN}/postconf", "-c", str(self.config_dir), "-h", key]).stdout.strip()

    def queue(self) -> list[dict[str, Any]]:
        """The messages in the queue, as `postqueue -j` describes them (one dict each)."""
        output = run([f"{SBIN}/postqueue", "-c", str(self.config_dir), "-j"]).stdout
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def queue_ids(self) -> list[str]:
        return [str(entry["queue_id"]) for entry in self.queue()]

    def queue_is_empty(self) -> bool:
        return not self.queue()

    def wait_for_empty_queue(self, timeout: float = 20.0) -> None:
        """Poll until every message has been delivered (or bounced)."""
        wait_until(self.queue_is_empty, timeout, "an empty postfix queue",
                   diagnostics=lambda: f"queue: {self.queue()}\n" + self._diagnostics())

    def flush(self) -> None:
        """Ask for immediate delivery of deferred mail (`postqueue -f`)."""
        run([f"{SBIN}/postqueue", "-c", str(self.config_dir), "-f"])

    def delete_all(self) -> None:
        """Empty the queue (`postsuper -d ALL`), e.g. between tests that defer mail."""
        run([f"{SBIN}/postsuper", "-c", str(self.config_dir), "-d", "ALL"])

    def __repr__(self) -> str:
        return f"<PostfixInstance smtp=127.0.0.1:{self.smtp_port} running={self.running}>"

