"""AnswerTally: answers counted in memory end up in the metrics exactly as if each had
been observed on its own (it writes prometheus_client's histogram buckets directly, so
this also catches a prometheus_client release that changes them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from mailward.tlspolicy.tally import AnswerTally

BUCKETS = (0.0005, 0.001, 0.01, 0.1)
SECONDS = [0.0001, 0.0005, 0.0007, 0.001, 0.002, 0.05, 0.5, 3.0, 0.0001]


def metrics() -> tuple[CollectorRegistry, Counter, Counter, Histogram]:
    registry = CollectorRegistry()
    answers = Counter("answers_total", "answers", ["kind"], registry=registry)
    memory = Counter("memory_total", "memory", registry=registry)
    seconds = Histogram("answer_seconds", "seconds", buckets=BUCKETS, registry=registry)
    return registry, answers, memory, seconds


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): round(s.value, 9)
            for family in registry.collect() for s in family.samples
            if not s.name.endswith("_created")}


def test_flush_equals_observing_each_answer() -> None:
    one_by_one, answers, memory, seconds = metrics()
    for index, value in enumerate(SECONDS):
        answers.labels("secure" if index % 3 else "notfound").inc()
        memory.inc()
        seconds.observe(value)

    tallied, answers2, memory2, seconds2 = metrics()
    tally = AnswerTally({kind: answers2.labels(kind) for kind in ("secure", "notfound")},
                        memory2, seconds2)
    for index, value in enumerate(SECONDS[:4]):
        tally.count("secure" if index % 3 else "notfound", value)
    assert samples(tallied)[("memory_total", ())] == 0.0  # nothing before a flush
    tally.flush()
    for index, value in enumerate(SECONDS[4:], start=4):
        tally.count("secure" if index % 3 else "notfound", value)
    tally.flush()
    tally.flush()  # nothing new: changes nothing
    assert samples(tallied) == samples(one_by_one)
