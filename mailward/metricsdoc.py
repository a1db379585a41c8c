"""The metrics catalogue (docs/METRICS.md), generated from `mailward.metrics`.

An operator writing alerts or dashboards needs every metric's exported name, type,
labels and meaning in one page.  Written by hand, such a page drifts from the code within
a release; generated from the objects Prometheus exports, it cannot, and a unit test
fails when the committed page is stale (`python -m mailward.metricsdoc --write`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from mailward import metrics

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "METRICS.md"

_HEADER = """\
# Metrics catalogue

Generated from `mailward/metrics.py` by `python -m mailward.metricsdoc --write`; do not
edit by hand (tests/unit/test_metrics_doc.py fails when this page is stale).

Every service serves these on its `metrics_listen` address (localhost by default,
`[metrics]` in the configuration) in the Prometheus text format.  Label values are
bounded enumerations, never addresses or domains.  A histogram exports `_bucket`,
`_sum` and `_count` series under its name.  Alert rules over them:
`deploy/prometheus/mailward-rules.yml`; dashboard: `deploy/grafana/`.
"""


@dataclass(frozen=True)
class MetricEntry:
    """One exported metric as an operator queries it."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str

    @property
    def family(self) -> str:
        """The part after `mailward_`, up to the next underscore: milter, policyd, dns..."""
        return self.name.removeprefix("mailward_").split("_", 1)[0]


def catalogue() -> list[MetricEntry]:
    """Every metric defined in `mailward.metrics`, sorted by exported name."""
    entries = []
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        kind = str(value._type)
        name = value._name + ("_total" if kind == "counter" else "")
        entries.append(MetricEntry(name, kind, tuple(value._labelnames),
                                   " ".join(value._documentation.split())))
    return sorted(entries, key=lambda entry: entry.name)


def render(entries: list[MetricEntry]) -> str:
    """Markdown: one table per family, in name order."""
    lines = [_HEADER]
    family = None
    for entry in entries:
        if entry.family != family:
            family = entry.family
            lines += ["", f"## {family}", "", "| metric | type | labels | meaning |",
                      "|---|---|---|---|"]
        labels = ", ".join(f"`{label}`" for label in entry.labels) or "-"
        meaning = entry.help.replace("|", "\\|")
        lines.append(f"| `{entry.name}` | {entry.kind} | {labels} | {meaning} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help=f"write the catalogue to {DEFAULT_PATH} instead of stdout")
    args = parser.parse_args(argv)
    text = render(catalogue())
    if args.write:
        DEFAULT_PATH.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
