"""The single-process speed goals (issue 8), printed next to what this run measured.

Benchmarks are not tests: nothing here fails a run.  A goal names a Mailward target, its
reference, the throughput ratio it should reach and whether its p99 should be no worse
than the reference's; the run's own A/B median ratio is what is compared, so the goal
means the same on a busy machine as on an idle one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Goal:
    target: str
    reference: str
    throughput_ratio: float
    p99_no_worse: bool
    what: str


GOALS: tuple[Goal, ...] = (
    Goal("mailward-inbound", "rspamd-inbound", 1.2, True,
         "inbound SPF+DKIM+ARC+DMARC, one process each"),
    Goal("mailward-dkim-verify", "opendkim-verify", 1.0, False, "DKIM verification alone"),
    Goal("mailward-policyd", "policyd-spf", 2.0, False, "policy service, {workload} workload"),
    Goal("mailward-tlspolicy", "mta-sts-resolver", 2.0, True,
         "TLS policy socketmap, warm cache"),
    Goal("mailward-scoring", "rspamd-scoring", 1.0, True,
         "inbound with spam scoring (issue 10), one process each"),
    Goal("mailward-scoring-w2", "rspamd-scoring-w2", 1.0, True,
         "inbound with spam scoring (issue 10), two processes each"),
)


class Measured(Protocol):
    """What a goal needs from a target's report (bench.run.TargetReport)."""

    @property
    def name(self) -> str: ...
    @property
    def ratio(self) -> float: ...  # median A/B throughput ratio against its reference
    @property
    def p99(self) -> float: ...


@dataclass(frozen=True)
class MeasuredTarget:
    name: str
    ratio: float
    p99: float


def goal_lines(measured: Sequence[Measured], policy_workload: str = "mix") -> list[str]:
    """One line per goal whose target and reference both ran (`policy_workload`: what
    the policy requests were, bench.run --policy-workload)."""
    by_name = {item.name: item for item in measured}
    lines = []
    for goal in GOALS:
        target, reference = by_name.get(goal.target), by_name.get(goal.reference)
        if target is None or reference is None or math.isnan(target.ratio):
            continue
        # A reference that is itself measured against the group's baseline (the -w2
        # peers): the ratio of the two ratios, both from the same A/B baseline.
        ratio = target.ratio if math.isnan(reference.ratio) else target.ratio / reference.ratio
        met = ratio >= goal.throughput_ratio
        what = goal.what.format(workload=policy_workload)
        text = (f"{what}: {goal.target} {ratio:.2f}x {goal.reference} "
                f"(goal >= {goal.throughput_ratio:.1f}x: {'met' if met else 'not met'})")
        if goal.p99_no_worse and reference.p99 > 0:
            p99_ratio = target.p99 / reference.p99
            text += (f"; p99 {p99_ratio:.2f}x the reference's "
                     f"(goal <= 1.00x: {'met' if p99_ratio <= 1.0 else 'not met'})")
        lines.append(text)
    return lines
