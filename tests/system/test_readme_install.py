"""The README's "Installing into an existing Postfix + Dovecot", run as written, on THIS
machine's Postfix and Dovecot (Debian 12's postfix 3.7 and dovecot 2.3).

The steps come out of README.md (tests/system/readme.py): each marked ```sh block runs
as root with bash (`set -euo pipefail`) from the repository's top directory, in order;
the marked configuration file is written as the admin would write it.  Two departures,
both forced by the machine and both named here:
- `start-systemd` is not run (no systemd as PID 1: `ps -p 1`); `start-without-systemd`,
  the README's alternative for that case, is;
- in the configuration, `[dns] port` becomes the port of the test's nsd (the README
  says 53; the test may bind no port but Postfix's 25) and `[metrics]` gets free ports.

The end state is asserted through the system Postfix on port 25 and what Dovecot stored:
inbound mail carries our Authentication-Results, mail from the sendmail command is
DKIM-signed (verified with dkimpy against the published key), a DMARC p=reject spoof is
refused.  Afterwards Mailward is removed, Postfix and Dovecot stopped and /etc/postfix,
/etc/dovecot restored from the backup the test made first.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import AuthoritativeDns, free_port
from tests.harness.process import unix_accepts, wait_until
from tests.system import endstate, host
from tests.system.readme import Step, StepKind, readme_steps

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path("/etc/mailward/mailward.toml")
#: The README's steps, in order; the test fails when one is added, dropped or renamed.
EXPECTED_STEPS = ("install", str(CONFIG), "keys", "start-systemd", "start-without-systemd",
                  "postfix", "dovecot")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
pytestmark = pytest.mark.timeout(1200)


@dataclass(frozen=True)
class InstalledHost:
    """What the fixture leaves running: the DNS server and the step outputs."""

    nameserver: AuthoritativeDns
    outputs: dict[str, str]


def run_step(step: Step) -> str:
    """One README block as root, exactly as written; its output (fails with it)."""
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + step.text], cwd=REPO, capture_output=True,
        text=True, timeout=900, check=False,
        env={"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"README step {step.name!r} (README.md line {step.line}) exited "
        f"{result.returncode}:\n{step.text}\n--- output:\n{output}\n--- postfix log:\n"
        f"{host.postfix_log_tail()}")
    return output


def write_config(step: Step, nameserver: AuthoritativeDns) -> None:
    """The README's configuration, with the test's DNS port and free metrics ports."""
    text, replaced = re.subn(r"(?m)^port = 53$", f"port = {nameserver.port}", step.text)
    assert replaced == 1, "the README's configuration no longer has `[dns] port = 53`"
    assert "[metrics]" not in text, "the README's configuration has [metrics] now"
    text += (f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
             f'policyd_listen = "127.0.0.1:{free_port()}"\n')
    parsed = tomllib.loads(text)
    assert parsed["dns"]["nameservers"] == [nameserver.host]
    # The admin edits the file `make install` copied: its owner and mode stay.
    assert step.name == str(CONFIG) and CONFIG.exists(), "step 1 installs the example first"
    CONFIG.write_text(text)


@pytest.fixture(scope="module")
def installed() -> Iterator[InstalledHost]:
    steps = readme_steps(REPO / "README.md")
    assert tuple(step.name for step in steps) == EXPECTED_STEPS
    with host.existing_mail_server() as nameserver:
        outputs: dict[str, str] = {}
        for step in steps:
            if not step.runs_in_the_test:
                continue
            if step.kind is StepKind.FILE:
                write_config(step, nameserver)
            else:
                outputs[step.name] = run_step(step)
            if step.name == "keys":
                endstate.publish_zones(nameserver, endstate.dkim_records(outputs["keys"]))
        wait_until(lambda: unix_accepts("/run/mailward/milter.sock")
                   and unix_accepts("/run/mailward/policyd.sock"), 60,
                   "the Mailward sockets", diagnostics=host.service_logs)
        yield InstalledHost(nameserver, outputs)


def test_the_install_made_what_the_readme_says(installed: InstalledHost):
    assert os.readlink("/usr/local/bin/mailward") == "/opt/mailward/bin/mailward"
    key = Path("/etc/mailward/keys/example.com.s2026r.key")
    assert (key.stat().st_mode & 0o777) == 0o600
    assert key.owner() == "mailward"
    # check-config, run as the service user, said OK:
    assert f"{CONFIG}: OK" in installed.outputs["keys"].splitlines()
    restrictions = host.run(["postconf", "-h", "smtpd_recipient_restrictions"]).stdout
    assert host.EXISTING_RESTRICTION in restrictions  # added to, not replaced
    assert "check_policy_service unix:/run/mailward/policyd.sock" in restrictions
    master = host.run(["postconf", "-F", "smtp/inet/chroot", "cleanup/unix/chroot"]).stdout
    assert master.split() == ["smtp/inet/chroot", "=", "n", "cleanup/unix/chroot", "=", "n"]


def test_inbound_mail_is_stored_with_our_authentication_results(installed: InstalledHost):
    endstate.assert_inbound_mail_gets_our_results()


def test_mail_from_the_sendmail_command_is_dkim_signed(installed: InstalledHost):
    endstate.assert_sendmail_mail_is_signed(installed.nameserver)


def test_a_dmarc_reject_spoof_is_refused(installed: InstalledHost):
    endstate.assert_dmarc_spoof_is_refused()
