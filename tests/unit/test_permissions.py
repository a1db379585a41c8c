"""Key readability as the service account: the walk the kernel would do, and check-config."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward import cli
from mailward.permissions import Account, unreadable_reason

SERVICE = Account("svc", uid=54321, gids=frozenset({54321}))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may enter (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="mailward-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def make_key(directory: Path, dir_mode: int, file_mode: int, group: int | None = None) -> Path:
    directory.mkdir()
    key = directory / "example.com.s1.key"
    key.write_text("key")
    key.chmod(file_mode)
    directory.chmod(dir_mode)
    if group is not None:
        os.chown(key, -1, group)
    return key


def test_a_directory_the_account_cannot_enter(open_dir: Path):
    key = make_key(open_dir / "keys", 0o700, 0o644)
    assert unreadable_reason(key, SERVICE) == f"user svc cannot enter directory {open_dir / 'keys'}"


def test_a_file_only_its_owner_reads(open_dir: Path):
    key = make_key(open_dir / "keys", 0o755, 0o600)
    assert unreadable_reason(key, SERVICE) == f"user svc cannot read {key}"


def test_readable_through_others_or_group(open_dir: Path):
    assert unreadable_reason(make_key(open_dir / "a", 0o755, 0o644), SERVICE) is None
    group_key = make_key(open_dir / "g", 0o750, 0o640)
    member = Account("member", uid=54322, gids=frozenset({group_key.stat().st_gid}))
    assert unreadable_reason(group_key, member) is None
    assert unreadable_reason(group_key, SERVICE) is not None


def test_a_missing_file_is_named(open_dir: Path):
    assert unreadable_reason(open_dir / "nope.key", SERVICE) == (
        f"{open_dir / 'nope.key'}: No such file or directory")


def test_check_config_names_a_key_the_service_user_cannot_read(
    open_dir: Path, capsys: pytest.CaptureFixture[str]
):
    keydir = open_dir / "keys"
    assert cli.main(["keys", "generate", "--domain", "example.com", "--selector", "s1",
                     "--algorithm", "ed25519", "--key-dir", str(keydir)]) == 0
    keydir.chmod(0o700)  # root's directory: root reads the key, nobody cannot enter
    config = open_dir / "mailward.toml"
    config.write_text(f'[[dkim.sign.keys]]\ndomain = "example.com"\nselector = "s1"\n'
                      f'key = "{keydir / "example.com.s1.key"}"\n')
    capsys.readouterr()
    assert cli.main(["check-config", "-c", str(config), "--user", "nobody"]) == 1
    err = capsys.readouterr().err
    assert f"dkim.sign.keys[0].key: user nobody cannot enter directory {keydir}" in err
    # An account that does not exist (a staged install, a test box) is not checked.
    assert cli.main(["check-config", "-c", str(config), "--user", "no-such-user-here"]) == 0


def test_generate_with_owner_hands_over_the_directory_it_creates(open_dir: Path):
    # Giving a file away needs root, as `make test` runs.
    keydir = open_dir / "fresh"
    assert cli.main(["keys", "generate", "--domain", "example.com", "--selector", "s1",
                     "--algorithm", "ed25519", "--key-dir", str(keydir),
                     "--owner", "nobody"]) == 0
    nobody = Account.lookup("nobody")
    assert unreadable_reason(keydir / "example.com.s1.key", nobody) is None


def test_a_socket_under_the_units_writable_directories_is_fine(open_dir: Path):
    from mailward.permissions import socket_directory_problem

    assert socket_directory_problem(Path("/run/mailward/milter.sock"), SERVICE) is None
    assert socket_directory_problem(Path("/var/lib/mailward/sub/x.sock"), SERVICE) is None


def test_a_socket_elsewhere_needs_a_directory_the_account_may_write(open_dir: Path):
    from mailward.permissions import socket_directory_problem

    spool = open_dir / "spool"
    spool.mkdir(mode=0o755)  # root's: the service may enter, not create
    assert socket_directory_problem(spool / "milter.sock", SERVICE) == (
        f"user svc cannot create files in {spool} (use a socket under /run/mailward, or give "
        f"the account that directory and add it to the unit's ReadWritePaths)")
    os.chown(spool, SERVICE.uid, -1)
    assert socket_directory_problem(spool / "milter.sock", SERVICE) is None
    missing = socket_directory_problem(open_dir / "nope" / "milter.sock", SERVICE)
    assert missing is not None and missing.startswith(f"{open_dir / 'nope'}: No such file")


def test_check_config_names_a_socket_the_service_user_cannot_create(
    open_dir: Path, capsys: pytest.CaptureFixture[str]
):
    spool = open_dir / "postfix-spool"
    spool.mkdir(mode=0o755)
    config = open_dir / "mailward.toml"
    config.write_text(f'[milter]\nsocket = "unix:{spool}/milter.sock"\n')
    assert cli.main(["check-config", "-c", str(config), "--user", "nobody"]) == 1
    err = capsys.readouterr().err
    assert f"milter.socket: user nobody cannot create files in {spool}" in err
