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


def test_policy_goal_names_the_workload_it_was_measured_on() -> None:
    measured = [MeasuredTarget("policyd-spf", float("nan"), 0.004),
                MeasuredTarget("mailward-policyd", 2.5, 0.002)]
    assert goal_lines(measured, "one-lookup") == [
        "policy service, one-lookup workload: mailward-policyd 2.50x policyd-spf "
        "(goal >= 2.0x: met)",
    ]
    assert goal_lines(measured)[0].startswith("policy service, mix workload:")
