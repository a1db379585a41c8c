"""The Ansible role applied to THIS machine (`connection: local`), twice.

The sample playbook deploy/ansible/site.yml, with the role's variables for this
machine given as extra vars: a wheel built from this checkout (Mailward is not on PyPI;
its dependencies come from there), unix sockets with the chroot turned off, the test's
nsd as resolver, free metrics ports.  `ansible_become=false`: the test already runs as
root and the machine has no sudo.  Ansible and ansible-lint are Debian 12's packages
(ansible-core 2.14, ansible-lint 6.13; deploy/scripts/install-system-deps.sh).

Asserted: `ansible-lint --profile production` is clean; the first run converges (no
failure) to the state the README test reaches (A-R stored for inbound mail through the
system Postfix, sendmail mail signed, a DMARC spoof refused); the second run reports
changed=0 in its PLAY RECAP.  Runs on the machine the README test restored, and
restores it in turn.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import AuthoritativeDns, free_port
from tests.harness.process import unix_accepts, wait_until
from tests.system import endstate, host

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "deploy" / "ansible"
PYTHON = REPO / ".venv" / "bin" / "python"
pytestmark = pytest.mark.timeout(1500)
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
                   r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Recap:
    """The PLAY RECAP line of one host."""

    ok: int
    changed: int
    unreachable: int
    failed: int


@dataclass(frozen=True)
class Converged:
    nameserver: AuthoritativeDns
    first: Recap
    second: Recap
    second_output: str


def parse_recap(output: str) -> Recap:
    matches = list(RECAP.finditer(output))
    assert len(matches) == 1, f"one PLAY RECAP line expected:\n{output[-3000:]}"
    found = matches[0]
    return Recap(int(found["ok"]), int(found["changed"]), int(found["unreachable"]),
                 int(found["failed"]))


def ansible_env() -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
            "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0"}


def playbook(extra_vars: Path) -> str:
    result = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e", f"@{extra_vars}",
         "-e", "ansible_become=false", str(ANSIBLE / "site.yml")],
        capture_output=True, text=True, timeout=900, check=False, env=ansible_env(), cwd=REPO,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:] + host.service_logs()
    return result.stdout


def build_wheel(directory: Path) -> Path:
    subprocess.run([str(PYTHON), "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(directory), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheels = sorted(directory.glob("mailward-*.whl"))
    assert len(wheels) == 1, wheels
    wheels[0].chmod(0o644)
    return wheels[0]


@pytest.fixture(scope="module")
def converged() -> Iterator[Converged]:
    work = Path(tempfile.mkdtemp(prefix="mailward-ansible-"))
    work.chmod(0o755)
    try:
        yield from converge(work)
    finally:
        shutil.rmtree(work)


def converge(work: Path) -> Iterator[Converged]:
    wheel = build_wheel(work)
    with host.existing_mail_server() as nameserver:
        extra_vars = work / "vars.json"
        extra_vars.write_text(json.dumps({
            "mailward_package": str(wheel),
            "mailward_authserv_id": host.HOSTNAME,
            "mailward_trusted_networks": ["127.0.0.1/32", "::1/128"],
            "mailward_dns_nameservers": [nameserver.host],
            "mailward_dns_port": nameserver.port,
            "mailward_milter_socket": "unix:/run/mailward/milter.sock",
            "mailward_policyd_socket": "unix:/run/mailward/policyd.sock",
            "mailward_metrics_listen": f"127.0.0.1:{free_port()}",
            "mailward_policyd_metrics_listen": f"127.0.0.1:{free_port()}",
            "mailward_postfix_disable_chroot": True,
            "mailward_dkim_keys": [{"domain": host.DOMAIN, "selector": "s2026r"}],
        }))
        first = parse_recap(playbook(extra_vars))
        show_dns = host.run(["mailward", "keys", "show-dns", "-c", "/etc/mailward/mailward.toml"])
        endstate.publish_zones(nameserver, endstate.dkim_records(show_dns.stdout))
        second_output = playbook(extra_vars)
        wait_until(lambda: unix_accepts("/run/mailward/milter.sock")
                   and unix_accepts("/run/mailward/policyd.sock"), 60,
                   "the Mailward sockets", diagnostics=host.service_logs)
        yield Converged(nameserver, first, parse_recap(second_output), second_output)


def test_the_role_is_lint_clean_in_the_production_profile():
    result = subprocess.run(["ansible-lint", "--nocolor", "--profile", "production",
                             str(ANSIBLE)], capture_output=True, text=True, timeout=600,
                            check=False, env=ansible_env(), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_first_run_converges(converged: Converged):
    assert converged.first.failed == 0 and converged.first.unreachable == 0
    assert converged.first.changed > 0  # it did install something
    assert os.readlink("/usr/local/bin/mailward") == "/opt/mailward/bin/mailward"
    restrictions = host.run(["postconf", "-h", "smtpd_recipient_restrictions"]).stdout
    assert host.EXISTING_RESTRICTION in restrictions
    assert "check_policy_service unix:/run/mailward/policyd.sock" in restrictions


def test_the_second_run_changes_nothing(converged: Converged):
    assert converged.second.failed == 0
    changed = [line for line in converged.second_output.splitlines() if line.startswith("changed:")]
    assert converged.second.changed == 0, changed


def test_inbound_mail_is_stored_with_our_authentication_results(converged: Converged):
    endstate.assert_inbound_mail_gets_our_results()


def test_mail_from_the_sendmail_command_is_dkim_signed(converged: Converged):
    endstate.assert_sendmail_mail_is_signed(converged.nameserver)


def test_a_dmarc_reject_spoof_is_refused(converged: Converged):
    endstate.assert_dmarc_spoof_is_refused()
