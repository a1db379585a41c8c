"""`make install` (deploy/scripts/install.sh) run for real into a staged root.

The stage stands in for a Debian 12 host with Postfix: it starts with this machine's
/etc/passwd, group, shadow, gshadow (so group postfix exists, as Postfix's package
creates it) and systemd's own units (so `systemd-analyze verify --root` finds
multi-user.target).  Everything else is what the installer writes: the virtualenv,
the mailward user (systemd-sysusers), owners and modes (systemd-tmpfiles), the
configuration and the enabled units.  The host's own /etc, /opt and /run are untouched.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = ("mailward-milter.service", "mailward-policyd.service")
#: Every unit shipped: each verifies clean and is hardened the same way.
ALL_UNITS = (*UNITS, "mailward-learner.service", "mailward-tlspolicy.service",
             "mailward-dmarc-report.service")


def passwd_entry(root: Path, name: str) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"no user {name} in {root}/etc/passwd")


def group_id(root: Path, name: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        if line.split(":")[0] == name:
            return int(line.split(":")[2])
    raise AssertionError(f"no group {name} in {root}/etc/group")


def run_install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", "install", f"DESTDIR={root}"],
        capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.fixture(scope="module")
def staged() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("the install test runs as root (the installer creates a system user)")
    # Under /tmp with a world-traversable top, so the service user can reach the stage.
    top = Path(tempfile.mkdtemp(prefix="mailward-install-", dir="/tmp"))
    top.chmod(0o755)
    root = top / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy2(f"/etc/{name}", root / "etc" / name)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")  # ExecReload=/bin/kill
    (root / "bin").symlink_to("usr/bin")  # Debian's merged /usr
    result = run_install(root)
    assert result.returncode == 0, result.stdout + result.stderr
    yield root
    shutil.rmtree(top)


def test_mailward_is_a_system_user_without_a_shell(staged: Path):
    entry = passwd_entry(staged, "mailward")
    assert int(entry[2]) < 1000
    assert entry[5] == "/var/lib/mailward"
    assert entry[6] == "/usr/sbin/nologin"
    assert (staged / "usr/lib/sysusers.d/mailward.conf").is_file()


@pytest.mark.parametrize(("path", "mode", "owner", "group"), [
    ("etc/mailward", 0o750, "root", "mailward"),
    ("etc/mailward/mailward.toml", 0o640, "root", "mailward"),
    ("etc/mailward/keys", 0o700, "mailward", "mailward"),
    ("var/lib/mailward", 0o750, "mailward", "mailward"),
    ("run/mailward", 0o750, "mailward", "postfix"),
])
def test_owners_and_modes(staged: Path, path: str, mode: int, owner: str, group: str):
    info = (staged / path).stat()
    assert stat.S_IMODE(info.st_mode) == mode, f"{path}: {oct(stat.S_IMODE(info.st_mode))}"
    uid = 0 if owner == "root" else int(passwd_entry(staged, owner)[2])
    assert info.st_uid == uid, path
    assert info.st_gid == group_id(staged, group), path


def test_command_on_path_where_the_units_expect_it(staged: Path):
    assert os.readlink(staged / "usr/local/bin/mailward") == "/opt/mailward/bin/mailward"
    assert os.access(staged / "opt/mailward/bin/mailward", os.X_OK)
    assert (staged / "opt/mailward/share/doc/mailward/README.md").is_file()  # Documentation=
    for unit in ALL_UNITS:
        text = (staged / "etc/systemd/system" / unit).read_text()
        assert "ExecStart=/opt/mailward/bin/mailward " in text
        assert "/usr/local/bin" not in text
    for unit in UNITS:
        assert (staged / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()


def test_installed_command_accepts_the_installed_config_as_the_service_user(staged: Path):
    """As root it would read anything: the service user is what counts."""
    uid = passwd_entry(staged, "mailward")[2]
    groups = f"{group_id(staged, 'postfix')},{group_id(staged, 'mailward')}"
    command = [str(staged / "opt/mailward/bin/mailward"), "check-config",
               "-c", str(staged / "etc/mailward/mailward.toml")]
    result = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={group_id(staged, 'postfix')}",
         f"--groups={groups}", "--", *command],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")
    # ...and a user outside group mailward cannot read it (the file is not world-readable).
    denied = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "--", *command], capture_output=True, text=True, timeout=120,
                            check=False)
    assert denied.returncode != 0


def test_units_verify_clean_and_are_hardened(staged: Path):
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={staged}", *ALL_UNITS],
                            capture_output=True, text=True, timeout=120, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={staged}",
         "--threshold=20", *ALL_UNITS],  # exposure at most 2.0 (the scale is 0-100 here)
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert security.returncode == 0, security.stdout + security.stderr


def test_a_second_install_keeps_the_admins_config(staged: Path):
    config = staged / "etc/mailward/mailward.toml"
    edited = config.read_text().replace('authserv_id = "', 'authserv_id = "edited.', 1)
    config.write_text(edited)
    uid_before = passwd_entry(staged, "mailward")[2]
    result = run_install(staged)
    assert result.returncode == 0, result.stdout + result.stderr
    assert config.read_text() == edited
    assert passwd_entry(staged, "mailward")[2] == uid_before
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
