"""Every Sieve script Mailward ships compiles with `sievec` and does, under `sieve-test`,
exactly what its golden output says, for spam, ham, unscored and quarantined mail.

The configuration is the one deploy/dovecot/91-mailward-bayes.conf documents (spamtest
from X-Spam-Score, the pipe extension).  Regenerate the goldens after an intended change
with MAILWARD_UPDATE_GOLDEN=1.  report-ham.sieve needs the imapsieve
extension (for `imap.mailbox`, to skip Trash), which sieve-test refuses outside IMAP: it
is only compiled here, and tests/integration/test_imapsieve.py runs it in real Dovecot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "sieve"
SCRIPTS = {
    "file-spam": REPO / "sieve" / "file-spam.sieve",
    "file-spam-spamtest": REPO / "sieve" / "file-spam-spamtest.sieve",
    "report-spam": REPO / "sieve" / "imapsieve" / "report-spam.sieve",
    "report-ham": REPO / "sieve" / "imapsieve" / "report-ham.sieve",
}
_BASE = "From: a@example.org\nTo: b@example.net\nSubject: test\n"
MESSAGES = {
    "spam": _BASE + "X-Spam-Flag: YES\nX-Spam-Score: 9.5\nX-Spam-Level: *********\n",
    "ham": _BASE + "X-Spam-Flag: NO\nX-Spam-Score: 1.2\nX-Spam-Level: *\n",
    "low-flag-high-score": _BASE + "X-Spam-Flag: NO\nX-Spam-Score: 12.0\n",
    "unscored": _BASE,
    "quarantined": _BASE + "X-Mailward-Quarantine: yes (dmarc)\n",
}


def config(tmp: Path) -> Path:
    path = tmp / "dovecot.conf"
    path.write_text(f"""\
mail_location = maildir:{tmp}/Maildir
mail_uid = mail
mail_gid = mail
first_valid_uid = 1
plugin {{
  sieve_plugins = sieve_imapsieve sieve_extprograms
  sieve_global_extensions = +vnd.dovecot.pipe
  sieve_pipe_bin_dir = {tmp}
  sieve_extensions = +spamtest +spamtestplus
  sieve_spamtest_status_type = score
  sieve_spamtest_status_header = X-Spam-Score: (-?[[:digit:]]+\\.?[[:digit:]]*)
  sieve_spamtest_max_value = 15
}}
""")
    return path


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700, and sieve-test runs as the
    # mail user, which must reach the script and write its binary next to it.
    with tempfile.TemporaryDirectory(prefix="mailward-sieve-") as name:
        tmp = Path(name)
        tmp.chmod(0o777)
        yield tmp


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_compiles(script: str, workdir: Path) -> None:
    target = workdir / f"{script}.sieve"
    shutil.copyfile(SCRIPTS[script], target)
    done = subprocess.run(["sievec", "-c", str(config(workdir)), str(target)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (workdir / f"{script}.svbin").stat().st_size > 0


@pytest.mark.parametrize("message", sorted(MESSAGES))
@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - {"report-ham"}))
def test_sieve_test_matches_golden(script: str, message: str, workdir: Path) -> None:
    target = workdir / f"{script}.sieve"
    shutil.copyfile(SCRIPTS[script], target)
    mail = workdir / f"{message}.eml"
    mail.write_text(MESSAGES[message] + "\nbody\n")
    done = subprocess.run(["sieve-test", "-c", str(config(workdir)), str(target), str(mail)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    output = done.stdout + "".join(line + "\n" for line in done.stderr.splitlines()
                                   if "final result" in line)
    golden = GOLDEN / f"{script}.{message}.txt"
    if os.environ.get("MAILWARD_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(output)
    assert output == golden.read_text()
