"""Bayes: classifier arithmetic, tokenizer, stores (memory and SQLite), spool, check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.bayes.classifier import DEFAULT_CLASSIFIER as SETTINGS
from mailward.bayes.classifier import TokenCounts, chi2q, classify, token_probability
from mailward.bayes.learning import learn_message, message_tokens, read_sources
from mailward.bayes.memory_store import MemoryBayesStore
from mailward.bayes.settings import BayesSettings
from mailward.bayes.spool import drain_spool, ensure_spool, spool_message
from mailward.bayes.sqlite_store import SqliteBayesStore
from mailward.bayes.store import BayesStore, LearnResult, MessageClass, StoreLimits
from mailward.checks import mime
from mailward.checks.base import CheckInput, Results
from mailward.checks.bayes import BayesCheck, BayesStatus, grade
from mailward.checks.mime import MimeView
from mailward.messagefile import transaction_from_bytes
from mailward.model import Connection
from mailward.state.base import StateUnavailable


def make(subject: str, body: str, sender: str = "a@example.org") -> bytes:
    return (f"From: {sender}\nTo: b@example.net\nSubject: {subject}\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}\n").encode()


SPAMMY = ["cheap viagra pills online pharmacy discount http://pills.example.biz/buy",
          "win lottery prize money claim now http://prize.example.biz/claim casino",
          "casino bonus free money deposit pharmacy http://casino.example.biz/x"]
HAMMY = ["meeting agenda for the release planning kernel patch review",
         "the build failed on the kernel patch, please review the logs",
         "minutes of the planning meeting and release schedule for review"]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BayesStore]:
    made: BayesStore = (MemoryBayesStore(StoreLimits(100.0, 50)) if request.param == "memory"
                        else SqliteBayesStore(tmp_path / "b.db", StoreLimits(100.0, 50)))
    with made:
        yield made


# --------------------------------------------------------------------------- classifier

def test_chi2q_matches_known_values() -> None:
    assert chi2q(0.0, 2) == pytest.approx(1.0)
    assert chi2q(2.0, 2) == pytest.approx(0.36788, abs=1e-4)  # exp(-1)
    assert chi2q(10.0, 4) == pytest.approx(0.04043, abs=1e-4)


def test_rare_tokens_are_pulled_towards_unknown() -> None:
    once = token_probability(TokenCounts(1, 0), 100, 100, SETTINGS)
    often = token_probability(TokenCounts(50, 0), 100, 100, SETTINGS)
    assert 0.5 < once < often < 1.0


def test_classify_spam_ham_and_unsure() -> None:
    counts = {"spamword": TokenCounts(90, 1), "hamword": TokenCounts(1, 90)}
    assert classify(["spamword"] * 1, counts, 100, 100).probability > 0.9
    assert classify(["hamword"], counts, 100, 100).probability < 0.1
    mixed = classify(["spamword", "hamword"], counts, 100, 100)
    assert 0.2 < mixed.probability < 0.8
    assert classify(["unknown"], counts, 100, 100).clues == 0


def test_grades() -> None:
    assert grade(0.995) == "BAYES_SPAM_99"
    assert grade(0.96) == "BAYES_SPAM_95"
    assert grade(0.85) == "BAYES_SPAM_80"
    assert grade(0.5) is None
    assert grade(0.15) == "BAYES_HAM_80"
    assert grade(0.001) == "BAYES_HAM_99"


# --------------------------------------------------------------------------- tokenizer

def test_tokens_from_headers_decoded_text_html_and_urls() -> None:
    raw = (b"From: Shop <deals@shop.example.biz>\nSubject: =?utf-8?b?R3JlYXQgT2ZmZXI=?=\n"
           b"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b\n\n--b\n"
           b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
           b"Q2hlYXAgd2F0Y2hlcyBoZXJl\n--b\nContent-Type: text/html\n\n"
           b"<p>Visit <a href=\"http://www.shop.example.biz/x\">our store</a></p>\n--b--\n")
    tokens = message_tokens(raw)
    assert {"subject:great", "subject:offer", "cheap", "watches", "visit", "store",
            "from:addr:shop.example.biz", "url:example.biz", "url:shop.example.biz",
            "html:part"} <= tokens
    assert not any("Q2hl" in token for token in tokens)  # decoded, not base64


def test_tokens_are_bounded() -> None:
    body = " ".join(f"word{i:05d}" for i in range(20000))
    assert len(message_tokens(make("s", body))) <= 1000


# --------------------------------------------------------------------------- stores

def test_learning_twice_counts_once_and_the_other_class_moves(store: BayesStore) -> None:
    raw = make("hello", "unique words here")
    assert learn_message(store, raw, MessageClass.SPAM, 1.0) is LearnResult.LEARNED
    assert learn_message(store, raw, MessageClass.SPAM, 2.0) is LearnResult.ALREADY
    assert (store.totals().spam, store.totals().ham) == (1, 0)
    assert store.token_counts(["unique"]) == {"unique": TokenCounts(1, 0)}
    # CRLF from IMAP is the same message as LF from a Maildir file.
    crlf = raw.replace(b"\n", b"\r\n")
    assert learn_message(store, crlf, MessageClass.HAM, 3.0) is LearnResult.MOVED
    assert (store.totals().spam, store.totals().ham) == (0, 1)
    assert store.token_counts(["unique"]) == {"unique": TokenCounts(0, 1)}
    assert learn_message(store, raw, None, 4.0) is LearnResult.FORGOTTEN
    assert learn_message(store, raw, None, 4.0) is LearnResult.UNKNOWN
    assert store.totals().ham == 0
    assert store.token_counts(["unique"]) == {}


def test_expiry_and_size_bound(store: BayesStore) -> None:
    learn_message(store, make("old", "ancient"), MessageClass.SPAM, 1.0)
    for i in range(10):
        words = " ".join(f"tok{i}x{j}" for j in range(10))
        learn_message(store, make("new", words), MessageClass.HAM, 500.0 + i)
    store.expire(550.0)  # expiry 100 s: the first message's tokens are gone
    assert store.token_counts(["ancient"]) == {}
    rows = store.token_rows()
    assert rows is not None and rows <= 50
    assert store.token_counts(["tok9x0"])  # the most recent survive the trim


def test_sqlite_store_is_shared_between_instances(tmp_path: Path) -> None:
    with SqliteBayesStore(tmp_path / "b.db") as writer, \
            SqliteBayesStore(tmp_path / "b.db") as reader:
        learn_message(writer, make("x", "shared token"), MessageClass.SPAM, 1.0)
        assert reader.totals().spam == 1
        assert (tmp_path / "b.db").stat().st_mode & 0o777 == 0o600


def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    made = SqliteBayesStore(tmp_path / "b.db")
    made.close()
    with pytest.raises(StateUnavailable):
        made.totals()


# --------------------------------------------------------------------------- sources, spool

def test_read_sources_maildir_mbox_and_files(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1:2,S").write_bytes(make("one", "a"))
    (maildir / "new" / "2").write_bytes(make("two", "b"))
    mbox = tmp_path / "box.mbox"
    mbox.write_bytes(b"From x@y Thu Jan  1 00:00:00 2026\n" + make("three", "c")
                     + b"\nFrom x@y Thu Jan  1 00:00:00 2026\n" + make("four", "d"))
    single = tmp_path / "single.eml"
    single.write_bytes(make("five", "e"))
    found = list(read_sources([str(maildir), str(mbox), str(single)]))
    assert len(found) == 5
    assert b"Subject: four" in found[3].raw


def test_spool_drains_and_keeps_files_when_the_store_is_down(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ensure_spool(spool)
    spool_message(spool, MessageClass.SPAM, make("a", "spam body"), "1")
    spool_message(spool, MessageClass.HAM, make("b", "ham body"), "2")
    (spool / "new" / "junk.3").write_bytes(b"x")

    def down(raw: bytes, cls: MessageClass) -> LearnResult:
        raise StateUnavailable("sqlite", "locked")

    report = drain_spool(spool, down)
    assert report.deferred >= 2 and not report.results
    assert {"spam.1", "ham.2"} <= {entry.name for entry in (spool / "new").iterdir()}
    learned = MemoryBayesStore()
    report = drain_spool(spool, lambda raw, cls: learn_message(learned, raw, cls, 1.0))
    assert report.results == {"learned": 2}
    assert list((spool / "new").iterdir()) == []
    assert (spool / "failed" / "junk.3").exists()  # kept for the admin, not learned
    assert (learned.totals().spam, learned.totals().ham) == (1, 1)


# --------------------------------------------------------------------------- the check

def _check_input(raw: bytes) -> CheckInput:
    transaction = transaction_from_bytes(raw)
    return CheckInput(Connection(None), transaction,
                      Results().with_result(mime.RESULT, MimeView(transaction)))


def test_check_is_inactive_until_the_minimum_then_grades() -> None:
    store = MemoryBayesStore()
    check = BayesCheck(store, BayesSettings(enabled=True, min_spam=3, min_ham=3))
    assert check.evaluate(_check_input(make("x", SPAMMY[0]))).status is BayesStatus.INACTIVE
    for i, (spam_text, ham_text) in enumerate(zip(SPAMMY, HAMMY, strict=True)):
        learn_message(store, make(f"s{i}", spam_text), MessageClass.SPAM, 1.0)
        learn_message(store, make(f"h{i}", ham_text), MessageClass.HAM, 1.0)
    spam = check.evaluate(_check_input(make("new", "cheap pharmacy casino money prize")))
    ham = check.evaluate(_check_input(make("new", "kernel patch review planning meeting")))
    assert spam.status is BayesStatus.CLASSIFIED and spam.probability > 0.8
    (spam_symbol,) = check.symbols(spam)
    assert spam_symbol.name.startswith("BAYES_SPAM")
    (ham_symbol,) = check.symbols(ham)
    assert ham_symbol.name.startswith("BAYES_HAM")
    assert check.metric_result(spam) == "spam"


def test_check_with_unreadable_store_says_unavailable_and_scores_nothing() -> None:
    store = MemoryBayesStore()
    store.close()
    check = BayesCheck(store, BayesSettings(enabled=True))
    outcome = check.evaluate(_check_input(make("x", "y")))
    assert outcome.status is BayesStatus.UNAVAILABLE
    assert check.symbols(outcome) == ()


def _learn_many(path: str) -> None:
    with SqliteBayesStore(Path(path)) as writer:
        for i in range(150):
            learn_message(writer, make(f"m{i}", f"word{i} shared"), MessageClass.SPAM, 1.0)


def test_a_reader_sees_whole_messages_while_another_process_learns(tmp_path: Path) -> None:
    """The milter reads while the learner writes: every read is consistent (the
    `shared` token's count always equals the learned spam count) and never fails."""
    import multiprocessing

    path = tmp_path / "b.db"
    with SqliteBayesStore(path) as reader:
        reader.ping()  # create the schema before the writer starts
        child = multiprocessing.get_context("fork").Process(target=_learn_many,
                                                             args=(str(path),))
        child.start()
        seen: set[int] = set()
        while child.is_alive() or not seen or max(seen) < 150:
            before = reader.totals().spam
            counts = reader.token_counts(["shared"])
            now = reader.totals().spam
            shared = counts["shared"].spam if counts else 0
            assert before <= shared <= now  # learned atomically: never a half message
            seen.add(now)
            if not child.is_alive() and max(seen) < 150:
                break
        child.join()
        assert child.exitcode == 0
        assert reader.totals().spam == 150


def test_spool_keeps_a_message_whose_learning_raises(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ensure_spool(spool)
    spool_message(spool, MessageClass.SPAM, make("a", "x"), "1")

    def broken(raw: bytes, cls: MessageClass) -> LearnResult:
        raise RuntimeError("bug")

    report = drain_spool(spool, broken)
    assert report.failed == 1
    assert (spool / "failed" / "spam.1").read_bytes() == make("a", "x")
