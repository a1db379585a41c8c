"""docs/METRICS.md is the generated catalogue of mailward/metrics.py, never stale."""

from __future__ import annotations

import re

from mailward import metricsdoc
from mailward.metricsdoc import DEFAULT_PATH, MetricEntry, catalogue, render


def test_committed_catalogue_matches_the_code() -> None:
    expected = render(catalogue())
    assert DEFAULT_PATH.read_text() == expected, (
        "docs/METRICS.md is stale: run `python -m mailward.metricsdoc --write`"
    )


def test_every_metric_is_listed_once_with_its_exported_name() -> None:
    names = [entry.name for entry in catalogue()]
    assert len(names) == len(set(names))
    assert "mailward_milter_messages_total" in names  # a counter gets its _total
    assert "mailward_milter_message_duration_seconds" in names
    documented = re.findall(r"^\| `(mailward_\w+)` \|", DEFAULT_PATH.read_text(), re.M)
    assert documented == names


def test_render_groups_by_family_and_escapes_table_cells() -> None:
    text = render([
        MetricEntry("mailward_dns_queries_total", "counter", ("outcome",), "a | b"),
        MetricEntry("mailward_milter_sessions_total", "counter", (), "sessions"),
    ])
    assert "## dns" in text and "## milter" in text
    assert "| `mailward_dns_queries_total` | counter | `outcome` | a \\| b |" in text
    assert "| `mailward_milter_sessions_total` | counter | - | sessions |" in text


def test_main_prints_the_catalogue(capsys) -> None:
    assert metricsdoc.main([]) == 0
    assert capsys.readouterr().out == render(catalogue())
