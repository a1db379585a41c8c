"""This machine's own Postfix and Dovecot, set up as an admin's mail server, and put back.

The system tests change /etc/postfix, /etc/dovecot and install Mailward for real, so
everything here is about leaving the machine as it was found:

- `check_untouched_host` refuses to start when the system Postfix or Dovecot runs, the
  system queue holds mail, or Mailward is installed already (the test would destroy it);
- `SystemBackup` copies /etc/postfix, /etc/dovecot and /etc/aliases first and puts them
  back afterwards;
- `uninstall_mailward` removes what `make install` (or the Ansible role) created.

The "existing mail server" (`write_baseline`) is what an admin has before Mailward:
Postfix for example.com with a restriction of its own, delivering to Dovecot's LDA
(Debian's local(8) + `mailbox_command`), Dovecot with Debian's configuration.  Two
settings are the test's, not the admin's: `smtpd_authorized_xclient_hosts` (the test
speaks as remote clients via XCLIENT) and Dovecot's `protocols = none` (no IMAP
listener: the test reads mailboxes with doveadm and binds no port but 25).
Postfix listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.nameserver import AuthoritativeDns
from tests.harness.process import HarnessError, unix_accepts, wait_until

#: The mail domain of the admin's server, as in the README's configuration.
DOMAIN = "example.com"
HOSTNAME = "mx.example.com"
#: The local user whose mailbox the tests read (created and removed by the test).
MAILBOX_USER = "mwreadme"
#: The restriction the admin had before: the README's commands must keep it.
EXISTING_RESTRICTION = "reject_non_fqdn_recipient"
LOG_DIR = Path("/var/log/mailward-system-test")
SAVED_PATHS = (Path("/etc/postfix"), Path("/etc/dovecot"), Path("/etc/aliases"))
QUEUE_DIRS = ("maildrop", "incoming", "active", "deferred", "hold")
SPOOL = Path("/var/spool/postfix")

#: What `make install` and the Ansible role create (removed by `uninstall_mailward`).
INSTALLED_PATHS = (
    Path("/opt/mailward"), Path("/usr/local/bin/mailward"), Path("/etc/mailward"),
    Path("/var/lib/mailward"), Path("/run/mailward"),
    Path("/usr/lib/sysusers.d/mailward.conf"), Path("/usr/lib/tmpfiles.d/mailward.conf"),
)

BASELINE_MAIN_CF = f"""\
# The admin's Postfix before Mailward (written by tests/system/host.py).
compatibility_level = 3.6
myhostname = {HOSTNAME}
mydomain = {DOMAIN}
myorigin = $mydomain
mydestination = $myhostname, $mydomain, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps = hash:/etc/aliases
alias_database = hash:/etc/aliases
mailbox_command = /usr/lib/dovecot/dovecot-lda -f "$SENDER" -a "$RECIPIENT"
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination
smtpd_recipient_restrictions = {EXISTING_RESTRICTION}
maillog_file = {LOG_DIR}/postfix.log
# The test's, not the admin's: XCLIENT lets the test speak as a remote client.
smtpd_authorized_xclient_hosts = 127.0.0.1
"""

BASELINE_DOVECOT_LOCAL = """\
# The test's: no IMAP/POP listener (mail is read with doveadm; no port but 25 is bound).
protocols = none
# The admin's: Maildirs in the homes.  (Debian's default, mbox in /var/mail, needs a
# setgid-mail LDA or pre-created spool files; not Mailward's business.)
mail_location = maildir:~/Maildir
# The admin's: Dovecot 2.3's LDA runs as the recipient and reports to the stats service;
# without this every LDA delivery fails with "net_connect_unix(/run/dovecot/stats-writer)
# failed: Permission denied" (a working LDA setup has it before Mailward comes along).
service stats {
  unix_listener stats-writer {
    mode = 0666
  }
}
"""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell); with `check`, fail with its output."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            check=False, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
    return result  # type: ignore[no-any-return]


def postfix_running() -> bool:
    return run(["postfix", "-c", "/etc/postfix", "status"], check=False).returncode == 0


def dovecot_running() -> bool:
    return Path("/run/dovecot/master.pid").exists() and run(
        ["doveadm", "service", "status"], check=False).returncode == 0


def queued_files() -> list[Path]:
    return [path for name in QUEUE_DIRS if (SPOOL / name).is_dir()
            for path in (SPOOL / name).rglob("*") if path.is_file()]


def check_untouched_host() -> None:
    """Refuse to run where the test would break something real."""
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (the test installs Mailward and edits /etc/postfix)")
    if postfix_running():
        problems.append("the system Postfix runs: stop it first (postfix stop)")
    if Path("/run/dovecot/master.pid").exists():
        problems.append("the system Dovecot runs (or left /run/dovecot/master.pid)")
    if queued_files():
        problems.append(f"the system queue holds mail ({SPOOL}): the test would delete it")
    present = [str(path) for path in INSTALLED_PATHS if path.exists()]
    if present or run(["getent", "passwd", "mailward"], check=False).returncode == 0:
        problems.append("Mailward is installed already (" + (", ".join(present) or
                        "user mailward") + "): the test installs and removes it")
    if problems:
        raise HarnessError("not a machine for the system tests:\n- " + "\n- ".join(problems))


class SystemBackup:
    """/etc/postfix, /etc/dovecot and /etc/aliases as they were, put back by `restore`."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mailward-system-backup-"))
        self._existed: dict[Path, bool] = {}
        for path in SAVED_PATHS:
            self._existed[path] = path.exists()
            if path.exists():
                run(["cp", "-a", str(path), str(self.directory / path.name)])

    def restore(self) -> None:
        for path, existed in self._existed.items():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            if existed:
                run(["cp", "-a", str(self.directory / path.name), str(path)])
        with contextlib.suppress(FileNotFoundError):
            Path("/etc/aliases.db").unlink()
        shutil.rmtree(self.directory)


def write_baseline() -> None:
    """Postfix and Dovecot as the admin had them, running (see the module docstring)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    Path("/etc/postfix/main.cf").write_text(BASELINE_MAIN_CF)
    if not Path("/etc/aliases").exists():
        Path("/etc/aliases").write_text("postmaster: root\n")
    run(["postalias", "/etc/aliases"])
    Path("/etc/dovecot/local.conf").write_text(BASELINE_DOVECOT_LOCAL)
    make_dovecot_certificate()
    if run(["getent", "passwd", MAILBOX_USER], check=False).returncode != 0:
        run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", MAILBOX_USER])
    run(["postfix", "check"])
    start_daemon(["dovecot"], "dovecot")
    wait_until(lambda: unix_accepts("/run/dovecot/auth-userdb"), 20, "system Dovecot")
    start_daemon(["postfix", "-c", "/etc/postfix", "start"], "postfix-start")
    wait_until(postfix_running, 20, "system Postfix")


def start_daemon(argv: Sequence[str], name: str) -> None:
    """Start a daemon that forks away: its output to a file, as a pipe would stay open
    in the daemon (and a `run` waiting for end-of-file would hang)."""
    with (LOG_DIR / f"{name}.out").open("w") as output:
        returncode = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=output,
                                    stderr=subprocess.STDOUT, timeout=60, check=False).returncode
    if returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {returncode}:\n"
                           + (LOG_DIR / f"{name}.out").read_text(errors="replace"))


def make_dovecot_certificate() -> None:
    """The self-signed certificate Debian's dovecot-core postinst makes, if it is missing
    (a CI image may have skipped it; 10-ssl.conf reads the file even with no listener)."""
    private = Path("/etc/dovecot/private")
    if (private / "dovecot.pem").exists():
        return
    private.mkdir(mode=0o700, exist_ok=True)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={HOSTNAME}", "-keyout", str(private / "dovecot.key"),
         "-out", str(private / "dovecot.pem")])


def stop_mail_servers() -> None:
    """Stop the system Postfix and Dovecot (only those: other Postfix instances run)."""
    if postfix_running():
        run(["postfix", "-c", "/etc/postfix", "stop"], check=False)
    if Path("/run/dovecot/master.pid").exists():
        run(["doveadm", "stop"], check=False)
    # Mail the test left queued (the precondition was an empty queue): not the admin's.
    if queued_files():
        run(["postsuper", "-d", "ALL"], check=False)


def stop_mailward_services() -> None:
    """Stop the services started the README's way without systemd (their pid files)."""
    for pidfile in Path("/run").glob("mailward-*.pid"):
        run(["start-stop-daemon", "--stop", "--retry", "TERM/30/KILL/5", "--pidfile",
             str(pidfile), "--remove-pidfile"], check=False)


def uninstall_mailward() -> None:
    """Remove what `make install` or the role created, the users the test made too."""
    stop_mailward_services()
    units = Path("/etc/systemd/system")
    for unit in [*units.glob("mailward-*"), *units.glob("*.wants/mailward-*")]:
        unit.unlink()
    for path in INSTALLED_PATHS:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for log in Path("/var/log").glob("mailward-*.log"):
        log.unlink()
    for user in ("mailward", MAILBOX_USER):
        if run(["getent", "passwd", user], check=False).returncode == 0:
            run(["userdel", "--remove", user], check=False)
    if run(["getent", "group", "mailward"], check=False).returncode == 0:
        run(["groupdel", "mailward"], check=False)
    with contextlib.suppress(FileNotFoundError):
        Path(f"/var/mail/{MAILBOX_USER}").unlink()
    shutil.rmtree(LOG_DIR, ignore_errors=True)


@dataclass(frozen=True)
class StoredMessage:
    """A message as Dovecot stored it: its bytes (for DKIM) and parsed (for headers)."""

    raw: bytes
    message: email.message.Message


def stored_messages(user: str = MAILBOX_USER) -> list[StoredMessage]:
    """Every message Dovecot stored in the user's INBOX, read back through doveadm
    (one fetch per UID: a fetch of several has no unambiguous separator)."""
    search = subprocess.run(["doveadm", "search", "-u", user, "mailbox", "INBOX", "ALL"],
                            capture_output=True, text=True, timeout=60, check=False)
    if search.returncode != 0:
        return []  # no mailbox yet
    messages = []
    for line in search.stdout.splitlines():
        uid = line.split()[1]
        fetch = subprocess.run(["doveadm", "fetch", "-u", user, "text", "mailbox", "INBOX",
                                "uid", uid], capture_output=True, timeout=60, check=True)
        raw = fetch.stdout.removeprefix(b"text:\n")
        messages.append(StoredMessage(raw, email.message_from_bytes(
            raw, policy=email.policy.compat32)))
    return messages


def wait_for_stored(subject: str, timeout: float = 60) -> StoredMessage:
    """The stored message with this Subject, polled for (delivery is asynchronous)."""
    found: list[StoredMessage] = []

    def delivered() -> bool:
        found[:] = [m for m in stored_messages() if m.message.get("Subject") == subject]
        return bool(found)

    def diagnostics() -> str:
        subjects = [m.message.get("Subject") for m in stored_messages()]
        return f"stored: {subjects}\n{postfix_log_tail()}"

    wait_until(delivered, timeout, f"message {subject!r} in {MAILBOX_USER}'s INBOX",
               diagnostics=diagnostics)
    return found[0]


def postfix_log_tail() -> str:
    log = LOG_DIR / "postfix.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""


@contextlib.contextmanager
def existing_mail_server() -> Iterator[AuthoritativeDns]:
    """The admin's running Postfix + Dovecot and the test's DNS server, for one test
    module; afterwards Mailward is removed and the machine restored, even on failure."""
    check_untouched_host()
    backup = SystemBackup()
    nameserver = AuthoritativeDns(backup.directory / "nsd")
    try:
        write_baseline()
        nameserver.start()
        yield nameserver
    finally:
        nameserver.close()
        stop_mailward_services()
        stop_mail_servers()
        backup.restore()
        uninstall_mailward()


def service_logs() -> str:
    """The logs of services started without systemd (for failure messages)."""
    return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}"
                     for log in sorted(Path("/var/log").glob("mailward-*.log")))
