"""Bayes in the running milter, through real Postfix and Dovecot: it says at start that it
is inactive, bulk training with `mailward learn` and a reload (SIGHUP) switch it on, and a
new spam then carries BAYES_SPAM_* in the milter's verdict and metrics.

Filing that spam into Junk needs X-Spam-Flag, which the scoring issue writes from the
symbols' weights: once scoring is in, this test should also assert the Junk folder.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import MailStack, build_message

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPAM = ("Cheap pills and casino prize money, claim your lottery winnings now at "
        "http://pills.example.biz/ discount pharmacy offer")
HAM = ("Notes from the kernel patch review meeting: release planning, the build "
       "schedule and the agenda for next week, see http://lists.example.org/")


@pytest.fixture
def bayes_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mailward-bayes-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def training_maildir(root: Path, text: str, count: int) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n in range(count):
        (root / "cur" / f"{n}:2,S").write_bytes(
            f"From: sender{n}@example.com\nSubject: message {n + 100}\n"
            f"Message-ID: <{uuid.uuid4().hex}@x>\n\n{text} {n + 100}\n".encode())
    return root


def learn(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mailward", "learn", "-c", str(config), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_bulk_training_switches_bayes_on_and_spam_gets_its_symbol(
        stack: MailStack, mailward_factory, recipient: str, bayes_dir: Path) -> None:
    services = mailward_factory(
        {"bayes": {"enabled": True, "path": str(bayes_dir / "bayes.db"),
                   "spool": str(bayes_dir / "spool"), "min_spam": 10, "min_ham": 10}},
        services=["milter"])
    services.wait_for_log(r"bayes: INACTIVE until it has learned 10 spam and 10 ham")
    assert services.metric_value("mailward_bayes_active") == 0

    learn(services.config_path, "--spam", str(training_maildir(bayes_dir / "Junk", SPAM, 12)))
    learn(services.config_path, "--ham", str(training_maildir(bayes_dir / "INBOX", HAM, 12)))
    assert "bayes: active" in learn(services.config_path, "--stats")
    services.reload(wait_for=r"bayes: active \(learned 12 spam and 12 ham\)")

    subject = f"bayes {uuid.uuid4().hex}"
    sender = "promo@spam.example.com"
    message = build_message(sender, recipient, subject=subject,
                            body="Claim the casino prize money: cheap pills, lottery "
                                 "winnings, discount pharmacy http://pills.example.biz/\r\n")
    result = stack.send(sender, recipient, message, xclient_addr="198.51.100.20",
                        helo="mail.spam.example.com")
    assert result.accepted, result
    # Scored as spam with Bayes' weight, it is filed into Junk by the global Sieve script.
    filed = stack.dovecot.wait_for_message(recipient, "Junk",
                                           lambda m: m.get("Subject") == subject, timeout=20)
    assert filed.get_all("X-Spam-Flag") == ["YES"]
    services.wait_for_log(r"symbols=[^ ]*BAYES_SPAM_(99|95|80)\(")
    assert services.metric_value("mailward_bayes_active") == 1
    assert services.metric_value("mailward_check_results_total",
                                 {"check": "bayes", "result": "spam"}) == 1
