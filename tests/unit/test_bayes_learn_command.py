"""`mailward learn` and `mailward learner --once` as an admin runs them, and the bayes
check inside the real pipeline (built from a configuration file)."""

from __future__ import annotations

import io
import ipaddress
import logging
from pathlib import Path

import pytest

from mailward.bayes.spool import ensure_spool, spool_message
from mailward.bayes.store import MessageClass
from mailward.cli import main
from mailward.compose import build_pipeline
from mailward.config import load_settings
from mailward.messagefile import transaction_from_bytes
from mailward.model import Connection


def make(n: int, words: str) -> bytes:
    """A message numbered n (give spam and ham numbers of one length: `num:3` is a token)."""
    return (f"From: s{n}@example.org\nSubject: note {n}\nMessage-ID: <{n}@x>\n\n"
            f"{words} {n}\n").encode()


SPAM_WORDS = "cheap pills casino prize lottery money pharmacy discount"
HAM_WORDS = "kernel patch review meeting agenda release planning build"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailward.toml"
    path.write_text(
        f'[bayes]\nenabled = true\npath = "{tmp_path}/bayes.db"\nspool = "{tmp_path}/spool"\n'
        f'min_spam = 5\nmin_ham = 5\n[state]\npath = "{tmp_path}/state.db"\n'
        '[metrics]\nlisten = ""\n')
    return path


def maildir(root: Path, words: str, start: int) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n in range(start, start + 6):
        (root / "cur" / f"{n}:2,S").write_bytes(make(n, words))
    return root


def stats(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["learn", "-c", str(config), "--stats"]) == 0
    return capsys.readouterr().out


def test_learn_stats_move_and_forget(config: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert "INACTIVE until it has learned 5 spam and 5 ham" in stats(config, capsys)
    spam = maildir(tmp_path / "Junk", SPAM_WORDS, 0)
    ham = maildir(tmp_path / "INBOX", HAM_WORDS, 100)
    assert main(["learn", "-c", str(config), "--spam", str(spam)]) == 0
    assert "spam: 6 message(s): 6 learned" in capsys.readouterr().out
    assert main(["learn", "-c", str(config), "--ham", str(ham)]) == 0
    assert main(["learn", "-c", str(config), "--ham", str(ham)]) == 0
    assert "6 already" in capsys.readouterr().out
    out = stats(config, capsys)
    assert "spam: 6\nham: 6\n" in out and "bayes: active" in out
    one = next((spam / "cur").iterdir())
    assert main(["learn", "-c", str(config), "--ham", str(one)]) == 0
    assert "1 moved" in capsys.readouterr().out
    assert "spam: 5\nham: 7\n" in stats(config, capsys)
    assert main(["learn", "-c", str(config), "--forget", str(one)]) == 0
    assert "spam: 5\nham: 6\n" in stats(config, capsys)


def test_learn_from_stdin_and_a_missing_source(config: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdin:
        buffer = io.BytesIO(make(1, SPAM_WORDS))

    monkeypatch.setattr("sys.stdin", Stdin)
    assert main(["learn", "-c", str(config), "--spam", "-"]) == 0
    assert main(["learn", "-c", str(config), "--spam", str(tmp_path / "nope")]) == 1
    assert "nope: no such file or directory" in capsys.readouterr().err
    assert "spam: 1\n" in stats(config, capsys)


def test_learner_once_drains_the_spool(config: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    spool = tmp_path / "spool"
    ensure_spool(spool)
    spool_message(spool, MessageClass.SPAM, make(1, SPAM_WORDS), "a")
    spool_message(spool, MessageClass.HAM, make(2, HAM_WORDS), "b")
    assert main(["learner", "-c", str(config), "--once"]) == 0
    assert list((spool / "new").iterdir()) == []
    assert "spam: 1\nham: 1\n" in stats(config, capsys)


def test_the_pipeline_runs_bayes_after_mime_and_logs_its_state(
        config: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level(logging.INFO, logger="mailward.checks.bayes"):
        build_pipeline(load_settings(config))
    assert "bayes: INACTIVE until it has learned 5 spam and 5 ham" in caplog.text
    assert main(["learn", "-c", str(config), "--spam",
                 str(maildir(tmp_path / "s", SPAM_WORDS, 300))]) == 0
    assert main(["learn", "-c", str(config), "--ham",
                 str(maildir(tmp_path / "h", HAM_WORDS, 400))]) == 0
    pipeline = build_pipeline(load_settings(config))
    verdict = pipeline.evaluate(
        Connection(ipaddress.ip_address("192.0.2.7"), helo="x.example"),
        transaction_from_bytes(make(999, "cheap casino pills lottery"),
                               mail_from="s@example.org", recipients=("u@example.net",)))
    assert any(symbol.name.startswith("BAYES_SPAM") for symbol in verdict.symbols), \
        verdict.symbols


def test_deploy_files_name_what_exists() -> None:
    """The learner unit runs the documented command; the Dovecot snippets name the
    shipped scripts and the pipe program the scripts call."""
    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "deploy" / "systemd" / "mailward-learner.service").read_text()
    assert "mailward learner -c /etc/mailward/mailward.toml" in unit
    writable = [line.split("=", 1)[1].split() for line in unit.splitlines()
                if line.startswith("ReadWritePaths=")]
    assert writable and "/var/spool/mailward/learn" in writable[0]
    for name in ("91-mailward-bayes.conf", "91-mailward-bayes-2.4.conf"):
        snippet = (repo / "deploy" / "dovecot" / name).read_text()
        for script in ("report-spam.sieve", "report-ham.sieve"):
            assert f"/etc/dovecot/sieve/{script}" in snippet
            assert (repo / "sieve" / "imapsieve" / script).is_file()
    for script in ("report-spam.sieve", "report-ham.sieve"):
        assert '"mailward-learn"' in (repo / "sieve" / "imapsieve" / script).read_text()
    assert (repo / "sieve" / "bin" / "mailward-learn").stat().st_mode & 0o111


PIPE = Path(__file__).resolve().parents[2] / "sieve" / "bin" / "mailward-learn"


def test_pipe_program_spools_the_message_byte_for_byte(tmp_path: Path) -> None:
    import subprocess

    ensure_spool(tmp_path)
    raw = b"Subject: $(touch /tmp/never) `x`\r\n\r\n\x00\xff body\r\n"
    done = subprocess.run([str(PIPE), "spam", str(tmp_path)], input=raw, timeout=30)
    assert done.returncode == 0
    (spooled,) = (tmp_path / "new").iterdir()
    assert spooled.name.startswith("spam.") and spooled.read_bytes() == raw
    assert list((tmp_path / "tmp").iterdir()) == []


def test_pipe_program_refuses_bad_use_and_reports_a_missing_spool(tmp_path: Path) -> None:
    import subprocess

    bad = subprocess.run([str(PIPE), "eggs", str(tmp_path)], input=b"x", capture_output=True)
    assert bad.returncode == 64 and b"usage" in bad.stderr
    missing = subprocess.run([str(PIPE), "ham", str(tmp_path / "nope")], input=b"x",
                             capture_output=True)
    assert missing.returncode != 0
