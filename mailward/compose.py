"""The composition root: configuration in, engine objects out.

This is the only engine module that knows how the parts fit together: it builds the
resolver, the pipeline (checks, signer, sealer) and the policy engine from one
immutable Settings.  The services call these builders at start and again on reload,
so a reload replaces the engine whole.  Imports happen inside the builders, because
the milter's metrics must be switched to multiprocess mode before prometheus_client
is first imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailward.config import Settings

if TYPE_CHECKING:
    from mailward.bayes.settings import BayesSettings
    from mailward.pipeline import Pipeline
    from mailward.policies.engine import PolicyEngine


def build_pipeline(settings: Settings) -> Pipeline:
    """The milter's engine: inbound checks, outbound signer and ARC sealer."""
    from mailward.bayes.autolearn import build_autolearner
    from mailward.dns import DnsResolver
    from mailward.pipeline import Pipeline, build_inbound_checks
    from mailward.reports.recorder import build_recorder
    from mailward.signing.arc import build_sealer
    from mailward.signing.dkim import build_signer
    from mailward.spam_greylist import build_greylister

    resolver = DnsResolver(settings.dns)
    return Pipeline(
        settings=settings,
        resolver=resolver,
        inbound=build_inbound_checks(settings, resolver),
        # Keys are read here: a reload re-reads them, and a broken key file fails the
        # reload (KeyLoadError is a ConfigError) instead of signing with nothing.
        signer=build_signer(settings),
        sealer=build_sealer(settings),
        recorder=build_recorder(settings),
        greylister=build_greylister(settings.scoring, settings.state),
        autolearner=build_autolearner(_bayes_settings(settings), settings.scoring),
    )


def _bayes_settings(settings: Settings) -> BayesSettings | None:
    from mailward.bayes.settings import BayesSettings

    section = settings.checks.get("bayes")
    return section if isinstance(section, BayesSettings) else None


def build_policy_engine(settings: Settings) -> PolicyEngine:
    """The policy service's engine: the policies `[policyd] order` names."""
    from mailward.dns import DnsResolver
    from mailward.policies.engine import PolicyEngine

    # The state store ([state]) is opened only if greylisting or rate limits are on,
    # and lazily: a Redis that is down at startup is an outage, not a startup failure.
    return PolicyEngine.from_settings(settings, DnsResolver(settings.dns))
