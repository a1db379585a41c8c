"""docs/ARCHITECTURE.md's "adding a check" recipe is real code that works as written."""

from __future__ import annotations

import ipaddress
import re
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from mailward.checks import registry
from mailward.config import ConfigError, GeneralSettings, Settings, SpfSettings
from mailward.configreader import Problems, Table
from mailward.dns import InMemoryResolver
from mailward.model import Connection, Header, Transaction
from mailward.pipeline import Pipeline

DOC = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"


def recipe_module() -> types.ModuleType:
    text = DOC.read_text(encoding="utf-8")
    code = re.search(r"```python\n# mailward/checks/example.py\n(.*?)```", text, re.S)
    assert code is not None, "the recipe's code block is missing"
    module = types.ModuleType("example_check_from_doc")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(code.group(1), str(DOC), "exec"), module.__dict__)
    return module


def test_recipe_check_reads_its_section_runs_after_spf_and_emits_its_symbol() -> None:
    example = recipe_module()
    problems = Problems(None)
    section = example.read_settings(Table({"enabled": True}, "example", problems))
    assert problems.items == []
    resolver = InMemoryResolver()
    resolver.add_zone("example.org", '@ IN TXT "v=spf1 -all"\n')
    settings = Settings(general=GeneralSettings(authserv_id="mx.example.net"),
                        spf=SpfSettings(helo=False))
    settings = replace(settings, checks={**settings.checks, "example": section})
    specs = (example.SPEC, *registry.SPECS)  # listed first: ordering must still put SPF first
    checks = registry.build_checks(settings, resolver, specs)
    names = [check.name for check in checks]
    assert names.index("spf") < names.index("example")
    verdict = Pipeline(settings=settings, resolver=resolver, inbound=checks).evaluate(
        Connection(client_ip=ipaddress.ip_address("203.0.113.9")),
        Transaction(queue_id="Q", mail_from="a@example.org", recipients=("b@example.net",),
                    headers=(Header("From", " a@example.org"),)))
    assert "EXAMPLE_HIT" in [symbol.name for symbol in verdict.symbols]


def test_recipe_section_rejects_unknown_keys_and_bad_values() -> None:
    example = recipe_module()
    problems = Problems(None)
    example.read_settings(Table({"enabled": True, "weight_hint": 99, "typo": 1}, "example",
                                problems))
    assert sorted(str(problem) for problem in problems.items) == [
        "example.typo: unknown key", "example.weight_hint: must be between 0 and 10, got 99"]


def test_recipe_without_spf_is_a_configuration_error() -> None:
    example = recipe_module()
    settings = Settings()
    settings = replace(settings, spf=replace(settings.spf, enabled=False),
                       dmarc=replace(settings.dmarc, enabled=False),
                       checks={**settings.checks, "example": example.ExampleSettings(True)})
    with pytest.raises(ConfigError, match="example: requires spf"):
        registry.build_checks(settings, InMemoryResolver(), (example.SPEC, *registry.SPECS))
