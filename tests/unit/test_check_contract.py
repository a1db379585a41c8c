"""The Check contract: ordering by requirements, containment of a raising check,
symbols in the Verdict, per-check metrics."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from mailward.checks import registry
from mailward.checks.base import Check, CheckInput, CheckSpec, ResultKey, Results, Symbol
from mailward.config import ConfigError, GeneralSettings, Settings, SpfSettings
from mailward.dns import InMemoryResolver
from mailward.model import AuthResult, Connection, Header, Transaction
from mailward.pipeline import Pipeline, build_inbound_checks

ALPHA: ResultKey[str] = ResultKey("alpha")
BETA: ResultKey[str] = ResultKey("beta")
GAMMA: ResultKey[str] = ResultKey("gamma")


class Fake(Check[str]):
    """A check that records the results it saw and may raise."""

    auth_methods = ("fake",)

    def __init__(self, name: str, produces: ResultKey[str],
                 requires: Sequence[ResultKey[str]] = (), uses: Sequence[ResultKey[str]] = (),
                 explode: bool = False) -> None:
        self.name = name  # type: ignore[misc]
        self.produces = produces  # type: ignore[misc]
        self.requires = tuple(requires)  # type: ignore[misc]
        self.uses = tuple(uses)  # type: ignore[misc]
        self.explode = explode
        self.seen: list[Results] = []

    def evaluate(self, check_input: CheckInput) -> str:
        self.seen.append(check_input.results)
        if self.explode:
            raise RuntimeError("bug in the check")
        return f"{self.name}-result"

    def auth_results(self, result: str, connection: Connection) -> Sequence[AuthResult]:
        return (AuthResult("fake", "pass", reason=result),)

    def symbols(self, result: str) -> Sequence[Symbol]:
        return (Symbol(f"{self.name.upper()}_SEEN", result),)

    def metric_result(self, result: str) -> str:
        return "pass"


def names(checks: Sequence[Check[object]]) -> list[str]:
    return [check.name for check in checks]


def test_order_puts_requirements_first_and_keeps_listed_order_otherwise() -> None:
    gamma = Fake("gamma", GAMMA, requires=[ALPHA, BETA])
    alpha = Fake("alpha", ALPHA)
    beta = Fake("beta", BETA, uses=[ALPHA])
    assert names(registry.order_checks([gamma, beta, alpha])) == ["alpha", "beta", "gamma"]
    assert names(registry.order_checks([beta, alpha])) == ["alpha", "beta"]
    # `uses` of a check that is not configured is fine: ordering only.
    assert names(registry.order_checks([beta])) == ["beta"]


def test_missing_requirement_is_a_configuration_error_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        registry.order_checks([Fake("gamma", GAMMA, requires=[ALPHA])], "test.toml")
    assert "gamma: requires alpha, which is not enabled" in str(caught.value)


def test_cycle_is_a_configuration_error_naming_the_checks() -> None:
    with pytest.raises(ConfigError) as caught:
        registry.order_checks([Fake("alpha", ALPHA, requires=[BETA]),
                               Fake("beta", BETA, requires=[ALPHA]),
                               Fake("gamma", GAMMA)])
    assert "checks require each other: alpha, beta" in str(caught.value)


def test_dmarc_without_dkim_verification_is_refused_at_start() -> None:
    settings = Settings()
    settings = replace(settings, dkim=replace(settings.dkim, verify=replace(
        settings.dkim.verify, verify=False)))
    with pytest.raises(ConfigError, match="dmarc: requires dkim"):
        build_inbound_checks(settings, InMemoryResolver())


def test_shipped_registry_order_is_the_a_r_order() -> None:
    checks = build_inbound_checks(Settings(), InMemoryResolver())
    assert names(checks) == ["iprev", "spf", "dkim", "arc", "dmarc", "mime", "gtube",
                            "headers", "content", "received", "header_forms", "mime_form",
                            "html_style", "url_forms", "phrases", "advertising"]


def test_registry_names_and_result_keys_are_unique() -> None:
    spec_names = [spec.name for spec in registry.SPECS]
    assert len(spec_names) == len(set(spec_names))


def test_spec_needs_section_and_reader_together() -> None:
    with pytest.raises(ValueError, match="section and read_settings"):
        CheckSpec("x", lambda context: None, section="x")


def test_symbol_names_are_upper_snake() -> None:
    assert str(Symbol("SPF_FAIL", "example.org")) == "SPF_FAIL(example.org)"
    assert str(Symbol("IPREV_PASS")) == "IPREV_PASS"
    with pytest.raises(ValueError):
        Symbol("spf fail")


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


MESSAGE = Transaction(queue_id="Q1", mail_from="a@example.org", recipients=("b@example.net",),
                      headers=(Header("From", " a@example.org"),))
CLIENT = Connection(client_ip=ipaddress.ip_address("203.0.113.9"))


def fake_pipeline(*checks: Fake) -> Pipeline:
    settings = Settings(general=GeneralSettings(authserv_id="mx.example.net"))
    return Pipeline(settings=settings, resolver=InMemoryResolver(),
                    inbound=registry.order_checks(checks))


def test_later_check_sees_earlier_typed_result() -> None:
    alpha, beta = Fake("alpha", ALPHA), Fake("beta", BETA, requires=[ALPHA])
    verdict = fake_pipeline(alpha, beta).evaluate(CLIENT, MESSAGE)
    assert beta.seen[0].get(ALPHA) == "alpha-result"
    assert alpha.seen[0].get(BETA) is None
    assert [str(symbol) for symbol in verdict.symbols] == [
        "ALPHA_SEEN(alpha-result)", "BETA_SEEN(beta-result)"]


def test_raising_check_is_temperror_counted_and_the_rest_still_run() -> None:
    before_errors = sample("mailward_check_results_total", {"check": "alpha", "result": "error"})
    before_beta = sample("mailward_check_results_total", {"check": "beta", "result": "pass"})
    alpha = Fake("alpha", ALPHA, explode=True)
    beta = Fake("beta", BETA, uses=[ALPHA])
    verdict = fake_pipeline(alpha, beta).evaluate(CLIENT, MESSAGE)
    assert [(r.method, r.result) for r in verdict.results] == [
        ("fake", "temperror"), ("fake", "pass")]
    assert beta.seen[0].get(ALPHA) is None
    assert str(verdict.symbols[0]) == "CHECK_ERROR(alpha)"
    assert sample("mailward_check_results_total",
                  {"check": "alpha", "result": "error"}) == before_errors + 1
    assert sample("mailward_check_results_total",
                  {"check": "beta", "result": "pass"}) == before_beta + 1


def test_real_checks_emit_symbols_and_are_counted() -> None:
    resolver = InMemoryResolver()
    resolver.add_zone("example.org", '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n')
    settings = Settings(general=GeneralSettings(authserv_id="mx.example.net"),
                        spf=SpfSettings(helo=False))
    pipeline = Pipeline(settings=settings, resolver=resolver,
                        inbound=build_inbound_checks(settings, resolver))
    before = sample("mailward_check_results_total", {"check": "spf", "result": "fail"})
    verdict = pipeline.evaluate(CLIENT, MESSAGE)
    shown = [str(symbol) for symbol in verdict.symbols]
    assert "SPF_FAIL(example.org)" in shown
    assert "DKIM_NONE" in shown
    assert "DMARC_FAIL(example.org)" in shown
    assert "DMARC_POLICY_REJECT(example.org)" in shown
    assert any(name.startswith("IPREV_") for name in shown)
    assert sample("mailward_check_results_total", {"check": "spf", "result": "fail"}) == before + 1
    assert (REGISTRY.get_sample_value("mailward_check_duration_seconds_count",
                                      {"check": "spf"}) or 0) >= 1
