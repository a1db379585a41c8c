"""Answers given from memory, counted locally and added to the Prometheus metrics in bulk.

A relay asks about the same few destinations over and over, and most answers come from
memory in a few microseconds; one Prometheus update costs about as much (a lock, and
with `workers` a write into the shared metrics file), and an answer makes three.  So the
event loop adds plain integers here, and `flush()` (once a second, and at stop) adds
them to the same counters and histogram an answer would have updated one by one: the
metrics say the same, up to a second later.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import Any, Protocol


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class AnswerTally:
    """`count(label, seconds)` per answer; `flush()` moves the counts into the metrics.

    `counters`: one counter child per label; `extra`: a counter every answer also
    increments (the cache-lookups `memory` source); `histogram`: a prometheus_client
    Histogram child, whose per-bucket values are incremented directly (prometheus_client
    has no bulk observe; tests/unit/test_tlspolicy_tally.py checks the result equals
    observing one by one)."""

    def __init__(self, counters: Mapping[str, _Incrementable], extra: _Incrementable,
                 histogram: Any) -> None:
        self._counters = counters
        self._extra = extra
        self._histogram = histogram
        # Its upper bounds, +Inf last; `bisect_left` finds the first bound >= a value,
        # the bucket prometheus_client's observe() would increment.
        self._bounds: tuple[float, ...] = tuple(histogram._upper_bounds)
        self._counts: dict[str, int] = dict.fromkeys(counters, 0)
        self._buckets = [0] * len(self._bounds)
        self._sum = 0.0
        self._total = 0

    def count(self, label: str, seconds: float) -> None:
        self._counts[label] += 1
        self._buckets[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        self._total += 1

    def flush(self) -> None:
        if not self._total:
            return
        for label, number in self._counts.items():
            if number:
                self._counters[label].inc(number)
                self._counts[label] = 0
        self._extra.inc(self._total)
        values = self._histogram._buckets
        for index, number in enumerate(self._buckets):
            if number:
                values[index].inc(number)
                self._buckets[index] = 0
        self._histogram._sum.inc(self._sum)
        self._sum = 0.0
        self._total = 0
