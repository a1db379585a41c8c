"""Can the service account read a file?  Answered from modes, without becoming that user.

`check-config` usually runs as root, who reads everything; the milter runs as `mailward`.
A key generated with `--owner mailward` inside a directory only root may enter loads fine
for root and fails at the milter's start.  This walks the path the way the kernel would
for the service account (search permission on every directory, read on the file) so the
admin hears about it before the reload.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Account:
    """The identity a service runs as: uid, primary gid and supplementary groups."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def lookup(cls, name: str) -> Account:
        """The account from the system's user and group databases (KeyError if unknown)."""
        entry = pwd.getpwnam(name)
        groups = {group.gr_gid for group in grp.getgrall() if name in group.gr_mem}
        return cls(name, entry.pw_uid, frozenset({entry.pw_gid, *groups}))


def _allows(info: os.stat_result, account: Account, owner_bit: int, group_bit: int,
            other_bit: int) -> bool:
    if account.uid == 0:
        return True
    if info.st_uid == account.uid:
        wanted = owner_bit
    elif info.st_gid in account.gids:
        wanted = group_bit
    else:
        wanted = other_bit
    return info.st_mode & wanted == wanted  # every bit asked for, of the account's class


def unreadable_reason(path: Path, account: Account) -> str | None:
    """Why `account` cannot read `path`, or None when it can (ACLs are not consulted)."""
    path = path.absolute()
    for directory in reversed(path.parents):
        try:
            info = directory.stat()
        except OSError as exc:
            return f"{directory}: {exc.strerror}"
        if not _allows(info, account, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return f"user {account.name} cannot enter directory {directory}"
    try:
        info = path.stat()
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not _allows(info, account, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
        return f"user {account.name} cannot read {path}"
    return None


#: Where the shipped systemd units let a service write (RuntimeDirectory=mailward,
#: StateDirectory=mailward; ReadWritePaths in deploy/systemd/): under ProtectSystem=strict
#: a socket anywhere else cannot be created, whatever the file modes say.
UNIT_WRITABLE_DIRECTORIES = (Path("/run/mailward"), Path("/var/lib/mailward"))


def socket_directory_problem(socket_path: Path, account: Account) -> str | None:
    """Why the service could not create a unix socket at `socket_path`, or None.

    Under the units' writable directories: fine (systemd creates them for the service).
    Elsewhere, the directory must exist and be writable by the account -- and then the
    admin must also have added it to the unit's ReadWritePaths (a drop-in), which is
    said, not checked: the unit may not be installed where check-config runs.
    """
    directory = socket_path.absolute().parent
    if any(directory == root or root in directory.parents for root in UNIT_WRITABLE_DIRECTORIES):
        return None
    try:
        info = directory.stat()
    except OSError as exc:
        return (f"{directory}: {exc.strerror}; the service cannot create its socket there "
                f"(the units let it write only under "
                f"{', '.join(map(str, UNIT_WRITABLE_DIRECTORIES))})")
    if not _allows(info, account, stat.S_IWUSR | stat.S_IXUSR, stat.S_IWGRP | stat.S_IXGRP,
                   stat.S_IWOTH | stat.S_IXOTH):
        return (f"user {account.name} cannot create files in {directory} (use a socket under "
                f"/run/mailward, or give the account that directory and add it to the unit's "
                f"ReadWritePaths)")
    return None
