"""deploy/prometheus and deploy/grafana against the metrics Mailward really exports:
promtool checks and unit-tests the alert rules, the exposition passes `promtool check
metrics`, and every dashboard query parses (promtool) and names only metrics and labels
defined in mailward/metrics.py, through a datasource variable."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

import mailward.metrics  # noqa: F401  (registers every metric)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "mailward.json"
#: Labels Prometheus adds at scrape time, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: bash deploy/scripts/install-system-deps.sh")
    return path


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=120, check=False)


def labels_by_sample_name() -> dict[str, set[str]]:
    """Every exportable sample name (with _total, _bucket, ...) -> its label names."""
    names: dict[str, set[str]] = {}
    for name, collector in REGISTRY._names_to_collectors.items():
        names[name] = set(getattr(collector, "_labelnames", ()))
    return names


def dashboard_targets() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target for panel in dashboard["panels"] for target in panel["targets"]]


def test_alert_rules_pass_promtool_check():
    result = run(promtool(), "check", "rules", str(DEPLOY / "prometheus" / "mailward-rules.yml"))
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_alert_rules_unit_tests_pass():
    result = run(promtool(), "test", "rules",
                 str(DEPLOY / "prometheus" / "mailward-rules.test.yml"))
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_every_alert_has_a_unit_test():
    rules = (DEPLOY / "prometheus" / "mailward-rules.yml").read_text()
    tests = (DEPLOY / "prometheus" / "mailward-rules.test.yml").read_text()
    alerts = set(re.findall(r"- alert: (\w+)", rules))
    tested = set(re.findall(r"alertname: (\w+)", tests))
    assert alerts - tested == set(), f"alerts without a promtool test: {alerts - tested}"


def test_exposition_passes_promtool_check_metrics():
    result = run(promtool(), "check", "metrics", stdin=generate_latest(REGISTRY))
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_dashboard_uses_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_name_only_defined_metrics_and_labels():
    defined = labels_by_sample_name()
    seen = set()
    for target in dashboard_targets():
        expr = target["expr"]
        for name in re.findall(r"\bmailward_[a-z_]+", expr):
            assert name in defined, f"{name} is not defined in mailward/metrics.py"
            seen.add(name)
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            for label in (part.strip() for part in grouping.split(",")):
                metric_labels = set().union(*(defined[n] for n in
                                             re.findall(r"\bmailward_[a-z_]+", expr)))
                assert label in metric_labels | SCRAPE_LABELS, f"{label} in {expr}"
    assert len(seen) >= 10, "the dashboard should cover the main metric families"


def test_dashboard_queries_parse(tmp_path: Path):
    """promtool parses each query as a recording rule (Grafana's variables substituted)."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}",
         "expr": t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, t in enumerate(dashboard_targets())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = run(promtool(), "check", "rules", str(path))
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
