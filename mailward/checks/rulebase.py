"""What the rule-style heuristic checks share: a result that is only the symbols found.

The header, Received, MIME-form, HTML-style and phrase checks each look at one aspect of
a message and name what they found; none of them has a verdict of its own (the weights in
mailward/scoring.py decide).  They differ in what they read, so each is its own module;
the result type, the symbols and the bounded metric label are the same for all of them
and live here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailward.checks.base import Check, Symbol


@dataclass(frozen=True)
class RuleFindings:
    """The symbols one rule check found (empty: nothing unusual)."""

    symbols: tuple[Symbol, ...] = ()


class RuleCheck(Check[RuleFindings]):
    """A heuristic check whose result is the symbols it found; subclasses `evaluate`."""

    def symbols(self, result: RuleFindings) -> Sequence[Symbol]:
        return result.symbols

    def metric_result(self, result: RuleFindings) -> str:
        return "hit" if result.symbols else "clean"
