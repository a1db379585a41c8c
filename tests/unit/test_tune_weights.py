"""bench/tune_weights.py's fit: weights follow the evidence, within their bounds."""

from __future__ import annotations

from bench.tune_weights import fit_rows, rates


def test_fit_weighs_spam_signs_and_leaves_ham_signs_at_zero() -> None:
    # Symbol 0 fires on spam only, symbol 1 on ham only, symbol 2 on both.
    rows = ([((0, 2), True)] * 40 + [((0,), True)] * 40 + [((1, 2), False)] * 40
            + [((1,), False)] * 40 + [((), False)] * 40)
    fixed = [0.0] * len(rows)
    weights = fit_rows(rows, fixed, [4.0, 4.0, 4.0], ham_cost=1.0, required=6.0)
    assert weights[0] == 4.0  # at its cap: the cap, not the data, stops it
    assert weights[1] == 0.0  # never negative
    # Symbol 2 lifts half the spam over required; on ham it stays under (capped at 4).
    recall, false_positives = rates(rows, fixed, weights, 6.0)
    assert recall == 0.5 and false_positives == 0.0


def test_caps_bound_each_weight() -> None:
    rows = [((0,), True)] * 50 + [((), False)] * 50
    weights = fit_rows(rows, [0.0] * len(rows), [1.25], ham_cost=1.0, required=6.0)
    assert weights == [1.25]
