"""IMAPSieve training through a real Dovecot 2.3: IMAP MOVE/APPEND -> pipe program ->
spool -> `mailward learner --once` -> the token database, read with `mailward learn
--stats`.

Dovecot runs with the shipped snippet deploy/dovecot/91-mailward-bayes.conf (only its
paths rewritten to this test's directories), the shipped scripts sieve/imapsieve/*.sieve
and the shipped pipe program sieve/bin/mailward-learn, reached through a wrapper that
names this test's spool.  No Postfix needed: messages enter by IMAP APPEND.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.dovecot import DovecotInstance

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "deploy" / "dovecot" / "91-mailward-bayes.conf"


class Bayes:
    """The Mailward side: configuration, spool, the learner and --stats as commands."""

    def __init__(self, base: Path) -> None:
        self.spool = base / "spool"
        self.config = base / "mailward.toml"
        self.config.write_text(
            f'[bayes]\nenabled = true\npath = "{base}/bayes.db"\nspool = "{self.spool}"\n'
            f'[state]\npath = "{base}/state.db"\n')
        for sub in ("", "tmp", "new", "failed"):
            (self.spool / sub).mkdir(exist_ok=True)
            shutil.chown(self.spool / sub, "mail", "mail")

    def mailward(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "mailward", *args, "-c", str(self.config)],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def learn_spooled(self) -> tuple[int, int]:
        """Run the learner over what the spool holds; the learned (spam, ham) counts."""
        self.mailward("learner", "--once")
        assert list((self.spool / "new").iterdir()) == []
        stats = self.mailward("learn", "--stats")
        spam = re.search(r"^spam: (\d+)$", stats, re.M)
        ham = re.search(r"^ham: (\d+)$", stats, re.M)
        assert spam and ham, stats
        return int(spam.group(1)), int(ham.group(1))

    def waiting(self) -> list[str]:
        return sorted(entry.name.partition(".")[0] for entry in (self.spool / "new").iterdir())


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    # The mail user (the pipe program, Sieve) must reach these files: not pytest's 0700.
    with tempfile.TemporaryDirectory(prefix="mailward-imapsieve-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


@pytest.fixture(scope="module")
def bayes(base: Path) -> Bayes:
    return Bayes(base)


@pytest.fixture(scope="module")
def dovecot(base: Path, bayes: Bayes) -> Iterator[DovecotInstance]:
    scripts = base / "imapsieve"
    pipe_bin = base / "pipe-bin"
    for directory in (scripts, pipe_bin):
        directory.mkdir()
        directory.chmod(0o755)
    for script in (REPO / "sieve" / "imapsieve").glob("*.sieve"):
        shutil.copyfile(script, scripts / script.name)
    wrapper = pipe_bin / "mailward-learn"
    wrapper.write_text(f'#!/bin/sh\nexec {REPO}/sieve/bin/mailward-learn "$1" {bayes.spool}\n')
    wrapper.chmod(0o755)
    snippet = (SNIPPET.read_text()
               .replace("/etc/dovecot/sieve/", f"{scripts}/")
               .replace("/usr/lib/dovecot/sieve-pipe", str(pipe_bin)))
    instance = DovecotInstance(base / "dovecot", extra_config=snippet)
    instance.start()
    try:
        for script in scripts.glob("*.sieve"):
            instance.compile_sieve(script)
        yield instance
    finally:
        instance.stop()
    instance.check_log()


def message(n: int) -> bytes:
    return (f"From: sender{n}@example.org\r\nTo: user@example.net\r\n"
            f"Subject: message number {n}\r\nMessage-ID: <m{n}@example.org>\r\n\r\n"
            f"Body of message {n} with some words to learn.\r\n").encode()


def append(connection: imaplib.IMAP4, mailbox: str, raw: bytes) -> None:
    status, data = connection.append(mailbox, None, None, raw)
    assert status == "OK", data


def move(connection: imaplib.IMAP4, source: str, target: str) -> None:
    """MOVE every message of `source` to `target` (one IMAP MOVE command)."""
    assert connection.select(source)[0] == "OK"
    status, data = connection.uid("MOVE", "1:*", target)
    assert status == "OK", data


def test_moving_in_and_out_of_junk_trains_and_trash_does_not(
        dovecot: DovecotInstance, bayes: Bayes) -> None:
    with dovecot.imap("alice@example.net") as imap:
        for mailbox in ("Junk", "Trash"):
            imap.create(mailbox)
        append(imap, "INBOX", message(1))
        assert bayes.waiting() == []  # a delivery to INBOX is not a lesson

        move(imap, "INBOX", "Junk")
        assert bayes.waiting() == ["spam"]  # spooled by the time MOVE returned
        assert bayes.learn_spooled() == (1, 0)

        move(imap, "Junk", "INBOX")
        assert bayes.waiting() == ["ham"]
        assert bayes.learn_spooled() == (0, 1)  # moved to ham, not counted twice

        append(imap, "Junk", message(2))  # mbsync-style: APPEND into Junk is spam too
        assert bayes.waiting() == ["spam"]
        assert bayes.learn_spooled() == (1, 1)

        move(imap, "Junk", "Trash")  # deleting spam teaches nothing
        assert bayes.waiting() == []
        assert bayes.learn_spooled() == (1, 1)


def test_a_large_move_is_spooled_not_learned_inline(
        dovecot: DovecotInstance, bayes: Bayes) -> None:
    with dovecot.imap("bob@example.net") as imap:
        imap.create("Junk")
        for n in range(100, 150):
            append(imap, "INBOX", message(n))
        before = bayes.learn_spooled()
        move(imap, "INBOX", "Junk")
        assert bayes.waiting() == ["spam"] * 50  # all handed over, none learned yet
        assert bayes.learn_spooled() == (before[0] + 50, before[1])
