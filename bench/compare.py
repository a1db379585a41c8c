"""Alternating A/B comparison: the way to compare two services on a shared machine.

Throughput on the project's machines drifts 10-20% between runs (DESIGN.md,
"Performance"), more than many differences worth knowing.  Measuring A then B then
A then B... and taking the median of the per-pair ratios cancels drift that is slow
compared with one pair, and the median ignores a pair hit by a burst of other load.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass
class Comparison(Generic[R]):
    """Results of an alternating run; ratios are B / A for each adjacent pair."""

    a_name: str
    b_name: str
    a: list[R] = field(default_factory=list)
    b: list[R] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")

    @property
    def spread(self) -> tuple[float, float]:
        """Smallest and largest pair ratio: how much to trust the median."""
        return (min(self.ratios), max(self.ratios)) if self.ratios else (float("nan"),) * 2

    def describe(self, what: str = "throughput") -> str:
        low, high = self.spread
        return (
            f"{self.b_name} / {self.a_name} {what}: median {self.median_ratio:.2f} "
            f"over {len(self.ratios)} pairs (range {low:.2f}-{high:.2f})"
        )


def alternate(
    a_name: str,
    run_a: Callable[[], R],
    b_name: str,
    run_b: Callable[[], R],
    *,
    rounds: int,
    metric: Callable[[R], float],
) -> Comparison[R]:
    """Run A, B, A, B, ... `rounds` pairs; keep every result and the pair ratios.

    `metric` extracts the number compared (requests/s, say); a pair where A's metric is
    zero has no ratio and is left out rather than reported as infinite.
    """
    comparison: Comparison[R] = Comparison(a_name, b_name)
    for _ in range(rounds):
        result_a = run_a()
        result_b = run_b()
        comparison.a.append(result_a)
        comparison.b.append(result_b)
        base = metric(result_a)
        if base > 0:
            comparison.ratios.append(metric(result_b) / base)
    return comparison
