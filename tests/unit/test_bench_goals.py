"""bench prints the single-process goals next to the measured ratios."""

from __future__ import annotations

from bench.goals import MeasuredTarget, goal_lines


def test_goal_lines_compare_ratio_and_p99_with_the_goal() -> None:
    lines = goal_lines([
        MeasuredTarget("rspamd-inbound", float("nan"), 0.020),
        MeasuredTarget("mailward-inbound", 0.67, 0.040),
        MeasuredTarget("opendkim-verify", float("nan"), 0.019),
        MeasuredTarget("mailward-dkim-verify", 1.05, 0.030),
    ])
    assert lines == [
        "inbound SPF+DKIM+ARC+DMARC, one process each: mailward-inbound 0.67x rspamd-inbound "
        "(goal >= 1.2x: not met); p99 2.00x the reference's (goal <= 1.00x: not met)",
        "DKIM verification alone: mailward-dkim-verify 1.05x opendkim-verify "
        "(goal >= 1.0x: met)",
    ]


def test_goal_without_its_reference_is_not_printed() -> None:
    assert goal_lines([MeasuredTarget("mailward-policyd", 3.9, 0.004)]) == []
