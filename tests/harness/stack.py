"""The whole test stack in one object: DNS + Dovecot + Postfix (+ Mailward on demand).

Used by the pytest fixtures and usable as is from a demo script:

    with MailStack() as stack:
        stack.dns.set_zone("example.org", [("@", "TXT", "v=spf1 ip4:192.0.2.10 -all")])
        services = stack.start_mailward({"general": {"authserv_id": "mx.example.net"}})
        rcpt = stack.unique_address()
        result = stack.send("alice@example.org", rcpt, xclient_addr="192.0.2.10")
        message = stack.dovecot.wait_for_message(rcpt)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness.dovecot import DovecotInstance
from tests.harness.nameserver import AuthoritativeDns
from tests.harness.postfix import PostfixInstance
from tests.harness.process import HarnessError, tail
from tests.harness.services import SERVICES, CommandFactory, MailwardServices, mailward_command
from tests.harness.smtp import SmtpResult, send_smtp

#: Set to keep the temp dir of a run (configs, logs, maildirs) for a post-mortem.
KEEP_ENV = "MAILWARD_TEST_KEEP"


#: Zones the stack's DNS serves empty from the start (see MailStack.start).
INTERNET_SKELETON = ("example", "org", "net", "com", "in-addr.arpa", "ip6.arpa")


class MailStack:
    """Starts nsd, then Dovecot, then Postfix; stops them in reverse order.

    Everything lives in one temp dir under /tmp (not pytest's tmp_path: that is mode 0700
    under /tmp/pytest-of-root, and Dovecot's mail user and Postfix's daemons must reach
    their files).  The dir is removed at `stop` unless MAILWARD_TEST_KEEP is set.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        domains: Sequence[str] = ("example.net",),
        postfix_params: Mapping[str, str] | None = None,
    ) -> None:
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="mailward-it-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        self.domains = list(domains)
        self.dns = AuthoritativeDns(self.base_dir / "nsd")
        self.dovecot = DovecotInstance(
            self.base_dir / "dovecot", postmaster_address=f"postmaster@{self.domains[0]}"
        )
        self.postfix = PostfixInstance(
            self.base_dir / "postfix",
            lmtp_port=self.dovecot.lmtp_port,
            domains=self.domains,
            params=postfix_params,
            sasl_path=self.dovecot.auth_socket_path,
        )
        self.mailward_instances: list[MailwardServices] = []
        self._counter = itertools.count(1)
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the three daemons; if one fails, stop the others before raising."""
        began = time.monotonic()
        try:
            self.dns.start()
            # The test TLDs and reverse trees, empty: names the tests do not publish
            # get NXDOMAIN, as on the Internet, instead of nsd's REFUSED (which a
            # resolver reports as a temporary failure, and DMARC then defers).
            self.dns.set_zones({zone: "" for zone in INTERNET_SKELETON})
            self.dovecot.start()
            self.postfix.start()
        except BaseException:
            with contextlib.suppress(HarnessError, OSError):
                self.stop(remove=False)  # the original error is the one to see
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self, remove: bool | None = None) -> None:
        """Stop everything that runs (Mailward first), even if stopping one part fails.

        The temp dir is removed afterwards unless `remove` is False or MAILWARD_TEST_KEEP
        is set; the first error is raised after everything was attempted.
        """
        errors: list[BaseException] = []
        for services in reversed(self.mailward_instances):
            try:
                services.close()
            except (HarnessError, OSError) as exc:
                errors.append(exc)
        for stop in (self.postfix.stop, self.dovecot.stop, self.dns.close):
            try:
                stop()
            except (HarnessError, OSError) as exc:
                errors.append(exc)
        if remove is None:
            remove = not os.environ.get(KEEP_ENV)
        if remove and not errors:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if errors:
            raise errors[0]

    def __enter__(self) -> MailStack:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(remove=False if exc is not None else None)

    # ------------------------------------------------------------------ mailward

    def start_mailward(
        self,
        config: Mapping[str, Any] | str | None = None,
        *,
        services: Sequence[str] = SERVICES,
        attach: bool = True,
        milter_transport: str = "inet",
        metrics: bool = True,
        command: CommandFactory = mailward_command,
    ) -> MailwardServices:
        """Start Mailward services against this stack's DNS; point Postfix at them.

        With `attach`, Postfix is reconfigured (restarted) so that `smtpd_milters` and
        `check_policy_service` use the new services; `stop_mailward` undoes that.
        """
        instance = MailwardServices(
            self.base_dir / f"mailward-{next(self._counter)}",
            dns_port=self.dns.port,
            config=config,
            services=services,
            milter_transport=milter_transport,
            metrics=metrics,
            command=command,
        )
        self.mailward_instances.append(instance)
        instance.start()
        if attach:
            self.postfix.reconfigure(
                milter=instance.milter_socket if "milter" in services else None,
                policy_service=instance.policyd_socket if "policyd" in services else None,
            )
        return instance

    def stop_mailward(self, instance: MailwardServices, detach: bool = True) -> None:
        """Stop `instance`; with `detach`, Postfix goes back to no milter and no policy."""
        try:
            instance.close()
        finally:
            if instance in self.mailward_instances:
                self.mailward_instances.remove(instance)
            if detach and (self.postfix.milter or self.postfix.policy_service):
                self.postfix.reconfigure(milter=None, policy_service=None)

    # ------------------------------------------------------------------ mail

    def unique_address(self, prefix: str = "user", domain: str | None = None) -> str:
        """A recipient no other test uses, so tests can share one stack and one mailbox store."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}@{domain or self.domains[0]}"

    def send(self, mail_from: str, rcpt: str | Sequence[str],
             message: bytes | str | None = None, **kwargs: Any) -> SmtpResult:
        """`send_smtp` to this stack's Postfix (see there for the keyword arguments)."""
        return send_smtp(self.postfix.smtp_port, mail_from, rcpt, message, **kwargs)

    # ------------------------------------------------------------------ diagnostics

    def process_ids(self) -> dict[str, int]:
        """{name: pid} of every running daemon (each pid leads its own process group)."""
        pids = {
            "nsd": self.dns.pid,
            "dovecot": self.dovecot.pid,
            "postfix": self.postfix.master_pid,
        }
        for index, services in enumerate(self.mailward_instances, 1):
            for name, pid in services.pids().items():
                pids[f"mailward-{index}-{name}"] = pid
        return {name: pid for name, pid in pids.items() if pid is not None}

    def _log_sections(self) -> dict[str, str]:
        sections = {
            "postfix maillog": self.postfix.log_text(),
            "dovecot log": self.dovecot.log_text(),
            "nsd log": self.dns.log_text(),
        }
        for services in self.mailward_instances:
            sections[f"mailward ({services.base_dir.name})"] = services.log_text()
        return sections

    def log_marks(self) -> dict[str, int]:
        """Current length of every log; pass to `report(since=...)` to see only what follows."""
        return {title: len(text) for title, text in self._log_sections().items()}

    def report(self, lines: int = 80, since: Mapping[str, int] | None = None) -> str:
        """Tails of every log (after `since`, see `log_marks`), for a failed test's report."""
        marks = since or {}
        return "\n".join(
            f"----- {title} -----\n{tail(text[marks.get(title, 0):], lines)}"
            for title, text in self._log_sections().items()
        )

    def check_logs(self) -> None:
        """Raise if Postfix or Dovecot logged fatal/panic errors (teardown calls this)."""
        problems = self.postfix.problems() + self.dovecot.problems()
        if problems:
            raise HarnessError("daemons logged errors:\n" + "\n".join(problems))
