"""Fit the rule heuristics' weights on the tuning parts of the corpus, print them.

    python -m bench.tune_weights [--corpus DIR] [--limit N]

Reads easy-ham-1 and spam-1 ONLY (the held-out parts easy-ham-2, hard-ham-1 and spam-2
are never opened here), runs the rules-only checks of bench/rules_accuracy.py, and fits
one weight per symbol so that the sum of weights crosses `required` for spam and stays
below it for ham.  The model is logistic regression with the threshold fixed:

    p(spam) = sigmoid((sum of the weights of the message's symbols - required) / TEMPERATURE)

so the fitted weights are scores, ready for mailward/scoring.py.  Constraints and
choices, all made before any held-out result was seen:

* weights are >= 0: a heuristic only ever adds evidence (a spammer must not be able to
  buy points back by adding a header), and <= `CAP` (4.0, less than `required`): no
  single heuristic flags a message on its own, two independent ones must agree;
* the advertising family (mailward/checks/advertising.py: HTML-only, unsubscribe links,
  phrases, offers, big fonts...) weighs 0 symbol by symbol; its cumulative grades
  ADVERTISING_3/6/9/12 are fitted with a cap of (required - 1) / 4 each, so advertising
  alone stays a point under `required` and needs a sign of deception to flag: wanted
  newsletters and shop mail share the family, and the tuning ham (personal and
  mailing-list mail) has almost none of it, so an unconstrained fit would make it
  decisive;
* a symbol fires at least `MIN_SUPPORT` times in the tuning parts to be fitted; rarer
  ones (attachments, GTUBE, authentication, lists) keep the hand-set weight;
* ham errors cost `ham_cost` times a spam error, with `ham_cost` chosen by 5-fold
  cross-validation inside the tuning parts: the smallest cost whose cross-validated
  ham false-positive rate is <= `FP_TARGET` (0.3%, under a third of the goal, for margin);
* L2 regularisation (`L2`) keeps weights of rare, correlated symbols small.

Prints the tuning-part accuracy of the fitted weights and the weights as a Python
mapping to paste into DEFAULT_WEIGHTS (rounded to 0.1).
"""

from __future__ import annotations

import argparse
import collections
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.bayes.accuracy import corpus_dir, messages
from bench.rules_accuracy import symbol_names
from mailward.checks.advertising import GRADE_SYMBOLS, in_family
from mailward.scoring import DEFAULT_WEIGHTS, ScoringSettings

TUNING = (("easy-ham-1", False), ("spam-1", True))
CAP = 4.0
MIN_SUPPORT = 5
FP_TARGET = 0.003
TEMPERATURE = 1.0
L2 = 0.002
HAM_COSTS = (0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
STEPS = 1500
LEARNING_RATE = 0.05
FOLDS = 5

#: Symbols whose weight is a decision, not a fit (forced actions, files that run).
HAND_SET = frozenset({
    "GTUBE", "GTUBE_QUARANTINE", "GTUBE_ADD_HEADER", "ATTACH_EXECUTABLE", "ATTACH_DOUBLE_EXT",
    "ATTACH_OFFICE_MACRO", "ATTACH_ARCHIVE_EXECUTABLE", "MIME_LIMITS_HIT",
})


@dataclass(frozen=True)
class Sample:
    """A distinct set of fitted symbols, how many ham and spam messages had it."""

    features: tuple[int, ...]
    ham: int
    spam: int


def group(rows: Sequence[tuple[tuple[int, ...], bool]]) -> list[Sample]:
    counts: dict[tuple[int, ...], list[int]] = collections.defaultdict(lambda: [0, 0])
    for features, is_spam in rows:
        counts[features][1 if is_spam else 0] += 1
    return [Sample(features, ham, spam) for features, (ham, spam) in counts.items()]


def fit(samples: Sequence[Sample], caps: Sequence[float], ham_cost: float, required: float,
        fixed: Sequence[float]) -> list[float]:
    """Projected Adam on the cost-weighted logistic loss; `fixed` holds each sample's
    score from hand-set symbols (added, never changed)."""
    size = len(caps)
    weights = [min(1.0, cap) for cap in caps]
    first = [0.0] * size
    second = [0.0] * size
    total = sum(sample.ham * ham_cost + sample.spam for sample in samples)
    for step in range(1, STEPS + 1):
        gradient = [2.0 * L2 * weight for weight in weights]
        for sample, base in zip(samples, fixed, strict=True):
            score = base + sum(weights[index] for index in sample.features)
            z = (score - required) / TEMPERATURE
            p = 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0
            # d(loss)/d(score): ham pulls down with weight ham_cost, spam pushes up.
            slope = (ham_cost * sample.ham * p - sample.spam * (1.0 - p)) / (TEMPERATURE * total)
            for index in sample.features:
                gradient[index] += slope
        for index in range(size):
            first[index] = 0.9 * first[index] + 0.1 * gradient[index]
            second[index] = 0.999 * second[index] + 0.001 * gradient[index] ** 2
            corrected = first[index] / (1 - 0.9 ** step)
            scale = math.sqrt(second[index] / (1 - 0.999 ** step)) + 1e-8
            step_to = weights[index] - LEARNING_RATE * corrected / scale
            weights[index] = min(caps[index], max(0.0, step_to))
    return weights


def rates(rows: Sequence[tuple[tuple[int, ...], bool]], fixed: Sequence[float],
          weights: Sequence[float], required: float) -> tuple[float, float]:
    """(spam recall, ham false-positive rate) of `weights` on `rows`."""
    spam = ham = caught = false_positives = 0
    for (features, is_spam), base in zip(rows, fixed, strict=True):
        flagged = base + sum(weights[index] for index in features) >= required
        if is_spam:
            spam += 1
            caught += flagged
        else:
            ham += 1
            false_positives += flagged
    return caught / max(1, spam), false_positives / max(1, ham)


def fit_rows(rows: Sequence[tuple[tuple[int, ...], bool]], fixed: Sequence[float],
             caps: Sequence[float], ham_cost: float, required: float) -> list[float]:
    keyed: dict[tuple[tuple[int, ...], float], list[int]] = collections.defaultdict(
        lambda: [0, 0])
    for (features, is_spam), base in zip(rows, fixed, strict=True):
        keyed[(features, base)][1 if is_spam else 0] += 1
    samples = [Sample(features, ham, spam) for (features, _), (ham, spam) in keyed.items()]
    bases = [base for (_, base) in keyed]
    return fit(samples, caps, ham_cost, required, bases)


def choose_ham_cost(rows: Sequence[tuple[tuple[int, ...], bool]], fixed: Sequence[float],
                    caps: Sequence[float], required: float) -> float:
    order = list(range(len(rows)))
    random.Random(20021).shuffle(order)
    folds = [order[start::FOLDS] for start in range(FOLDS)]
    for ham_cost in HAM_COSTS:
        recalls, fps = [], []
        for held in folds:
            held_set = set(held)
            train = [index for index in order if index not in held_set]
            weights = fit_rows([rows[i] for i in train], [fixed[i] for i in train], caps,
                               ham_cost, required)
            recall, fp = rates([rows[i] for i in held], [fixed[i] for i in held], weights,
                               required)
            recalls.append(recall)
            fps.append(fp)
        recall, fp = sum(recalls) / FOLDS, sum(fps) / FOLDS
        print(f"  ham_cost {ham_cost:>4g}: cross-validated recall {100 * recall:5.1f}% "
              f"ham false positives {100 * fp:4.2f}%")
        if fp <= FP_TARGET:
            return ham_cost
    return HAM_COSTS[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="the package's data directory")
    parser.add_argument("--limit", type=int, help="messages per part (default: all)")
    args = parser.parse_args(argv)
    corpus = args.corpus or corpus_dir()
    required = ScoringSettings().required
    labelled: list[tuple[frozenset[str], bool]] = []
    for part, is_spam in TUNING:
        names, _ = symbol_names(messages(corpus, part, args.limit))
        labelled.extend((message_names, is_spam) for message_names in names)
    support = collections.Counter(name for names, _ in labelled for name in names)
    fitted = sorted(name for name, count in support.items()
                    if count >= MIN_SUPPORT and name not in HAND_SET and not in_family(name))
    index = {name: position for position, name in enumerate(fitted)}
    rows = [(tuple(sorted(index[name] for name in names if name in index)), is_spam)
            for names, is_spam in labelled]
    fixed = [sum(DEFAULT_WEIGHTS.get(name, 0.0) for name in names
                 if name not in index and not in_family(name)) for names, _ in labelled]
    print(f"tuning on {', '.join(part for part, _ in TUNING)}: {len(rows)} messages, "
          f"{len(fitted)} symbols fitted (support >= {MIN_SUPPORT})")
    grade_cap = (required - 1.0) / len(GRADE_SYMBOLS)
    caps = [grade_cap if name in GRADE_SYMBOLS else CAP for name in fitted]
    ham_cost = choose_ham_cost(rows, fixed, caps, required)
    weights = [round(weight, 1) for weight in fit_rows(rows, fixed, caps, ham_cost, required)]
    recall, fp = rates(rows, fixed, weights, required)
    print(f"chosen ham_cost {ham_cost:g}; on the tuning parts: recall {100 * recall:.1f}% "
          f"ham false positives {100 * fp:.2f}%")
    print("proposed weights (name: weight  # ham/spam messages it fired in):")
    ham_support = collections.Counter(n for names, spam in labelled if not spam for n in names)
    spam_support = collections.Counter(n for names, spam in labelled if spam for n in names)
    for name, weight in zip(fitted, weights, strict=True):
        print(f'    "{name}": {weight},  # {ham_support[name]}/{spam_support[name]}')
    family = sorted(name for name in support if in_family(name))
    print("advertising family (weight 0, counted by ADVERTISING_*):", ", ".join(family))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
