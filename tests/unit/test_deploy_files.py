"""The deploy/ files refer to things that exist: metrics in the alert rules, commands
and sockets in the systemd units and snippets."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import mailward.metrics  # noqa: F401  (registers every metric)
from mailward.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def exported_names() -> set[str]:
    """Every sample name the registry can export (counters with and without _total,
    histogram _bucket/_sum/_count), including labelled metrics with no child yet."""
    return set(REGISTRY._names_to_collectors)


def test_alert_rules_only_use_metrics_mailward_exports():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "mailward-rules.yml").read_text())
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            used.update(re.findall(r"\bmailward_[a-z_]+", rule["expr"]))
    assert used, "the rules should watch Mailward's own metrics"
    missing = used - exported_names()
    assert not missing, f"rules refer to metrics that do not exist: {sorted(missing)}"


def test_systemd_units_run_the_documented_commands():
    for service in ("milter", "policyd"):
        unit = (DEPLOY / "systemd" / f"mailward-{service}.service").read_text()
        assert f"mailward {service} -c /etc/mailward/mailward.toml" in unit
        assert "ExecReload=/bin/kill -HUP $MAINPID" in unit


def test_postfix_snippet_uses_the_example_config_sockets():
    settings = load_settings(DEPLOY / "mailward.example.toml")
    snippet = (DEPLOY / "postfix" / "main.cf.snippet").read_text()
    assert f"smtpd_milters = {settings.milter.socket}" in snippet
    assert f"check_policy_service {settings.policyd.socket}" in snippet
    assert "milter_default_action = tempfail" in snippet
