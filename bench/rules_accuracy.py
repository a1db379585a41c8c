"""Rules-only spam accuracy (no Bayes, no DNS lists) on the SpamAssassin public corpus.

    python -m bench.rules_accuracy [--corpus DIR] [--limit N]

What the shipped weights catch by themselves: the MIME, GTUBE, header and content checks
run on every message of each corpus part, their symbols are scored with the default
[scoring] weights, and a message counts as spam at `required`.  Printed per part: spam
recall or ham false-positive rate, and the symbols that fire most.  Weights may be tuned
on easy-ham-1 and spam-1 only; easy-ham-2, hard-ham-1 and spam-2 are held out and are
reported, never tuned on.  Goal on the held-out parts: recall >= 60% with ham false
positives <= 1%.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from bench.bayes.accuracy import corpus_dir, messages
from mailward.checks.base import CheckInput, Results
from mailward.checks.registry import build_checks
from mailward.config import settings_from_mapping
from mailward.dns import InMemoryResolver
from mailward.messagefile import transaction_from_bytes
from mailward.model import Connection, Symbol
from mailward.scoring import score_symbols

RULE_CHECKS = ("mime", "gtube", "headers", "content", "received", "header_forms", "mime_form",
               "html_style", "url_forms", "phrases", "advertising")
PARTS = (("easy-ham-1", False, "tuning"), ("spam-1", True, "tuning"),
         ("easy-ham-2", False, "held out"), ("hard-ham-1", False, "held out"),
         ("spam-2", True, "held out"))


def symbol_names(raws: list[bytes]) -> tuple[list[frozenset[str]], float]:
    """The names of the symbols the rule checks emit for each message, seconds spent.

    What bench/tune_weights.py fits weights to, and what score_part scores.
    """
    settings = settings_from_mapping({"scoring": {"enabled": True}})
    checks = [check for check in build_checks(settings, InMemoryResolver())
              if check.name in RULE_CHECKS]
    names: list[frozenset[str]] = []
    connection = Connection(client_ip=None)
    started = time.perf_counter()
    for raw in raws:
        transaction = transaction_from_bytes(raw, mail_from="bench@corpus.invalid",
                                             recipients=("user@example.net",))
        results = Results()
        symbols: list[Symbol] = []
        for check in checks:
            check_input = CheckInput(connection, transaction, results)
            if not check.applies(check_input):
                continue
            result = check.evaluate(check_input)
            results = results.with_result(check.produces, result)
            symbols.extend(check.symbols(result))
        names.append(frozenset(symbol.name for symbol in symbols))
    return names, time.perf_counter() - started


def score_part(raws: list[bytes]) -> tuple[list[float], collections.Counter[str], float]:
    """Each message's score, how often each symbol fired, seconds spent."""
    settings = settings_from_mapping({"scoring": {"enabled": True}}).scoring
    names, seconds = symbol_names(raws)
    fired: collections.Counter[str] = collections.Counter()
    scores: list[float] = []
    for message_names in names:
        score = score_symbols([Symbol(name) for name in sorted(message_names)], settings)
        scores.append(score.total)
        fired.update(message_names)
    return scores, fired, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="the package's data directory")
    parser.add_argument("--limit", type=int, help="messages per part (default: all)")
    args = parser.parse_args(argv)
    corpus = args.corpus or corpus_dir()
    required = settings_from_mapping({"scoring": {"enabled": True}}).scoring.required
    print(f"rules-only accuracy at required={required} (no Bayes, no DNS lists)")
    held_out = {False: [0, 0], True: [0, 0]}  # is_spam -> [flagged, messages]
    for part, is_spam, role in PARTS:
        raws = messages(corpus, part, args.limit)
        scores, fired, seconds = score_part(raws)
        flagged = sum(1 for score in scores if score >= required)
        rate = 100.0 * flagged / max(1, len(scores))
        what = "spam recall" if is_spam else "ham false positives"
        top = ", ".join(f"{name} {count}" for name, count in fired.most_common(6))
        print(f"  {part:<11} ({role:>8}) {len(scores):>5} messages: {what} {rate:5.1f}%"
              f" ({flagged}/{len(scores)})  ({1000 * seconds / max(1, len(scores)):.2f} ms/msg)"
              f"  top: {top}")
        if role == "held out":
            held_out[is_spam][0] += flagged
            held_out[is_spam][1] += len(scores)
    for is_spam, what in ((True, "spam recall"), (False, "ham false positives")):
        flagged, total = held_out[is_spam]
        print(f"  held out, all parts: {what} {100.0 * flagged / max(1, total):.2f}%"
              f" ({flagged}/{total})")
    print("  goal (held out): spam recall >= 60% with ham false positives <= 1%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
