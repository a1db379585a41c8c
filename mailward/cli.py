"""`mailward ...`: the composition root.

This is the only engine module that knows the services exist: it reads the
configuration, builds the engine (resolver, pipeline, policy engine) and hands it to the
milter or policy service.  Heavy imports happen inside the subcommands, because the
milter's metrics must be switched to multiprocess mode before prometheus_client is
first imported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mailward import __version__
from mailward.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from mailward.pipeline import Pipeline
    from mailward.policy import PolicyEngine


def build_pipeline(settings: Settings) -> Pipeline:
    from mailward.dns import DnsResolver
    from mailward.pipeline import Pipeline, build_inbound_checks
    from mailward.signing.arc import build_sealer
    from mailward.signing.dkim import build_signer

    resolver = DnsResolver(settings.dns)
    return Pipeline(
        settings=settings,
        resolver=resolver,
        inbound=build_inbound_checks(settings, resolver),
        # Keys are read here: a reload re-reads them, and a broken key file fails the
        # reload (KeyLoadError is a ConfigError) instead of signing with nothing.
        signer=build_signer(settings),
        sealer=build_sealer(settings),
    )


def build_policy_engine(settings: Settings) -> PolicyEngine:
    from mailward.dns import DnsResolver
    from mailward.policy import PolicyEngine

    # The state store ([state]) is opened only if greylisting or rate limits are on,
    # and lazily: a Redis that is down at startup is an outage, not a startup failure.
    return PolicyEngine.from_settings(settings, DnsResolver(settings.dns))


def _load_or_report(path: Path) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load_or_report(args.config)
    if settings is None:
        return 1
    # The files the configuration names must load too: a key that the milter would
    # refuse at start (or on reload) is a configuration error.
    try:
        build_pipeline(settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


def cmd_milter(args: argparse.Namespace) -> int:
    settings = _load_or_report(args.config)
    if settings is None:
        return 1
    # Worker processes report metrics through files the supervisor aggregates.
    metrics_dir = tempfile.mkdtemp(prefix="mailward-milter-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from mailward import runtime
        from milters.service import MilterService

        runtime.configure_logging("milter", settings.general.log_level)
        return MilterService(args.config, settings, build_pipeline).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def cmd_policyd(args: argparse.Namespace) -> int:
    settings = _load_or_report(args.config)
    if settings is None:
        return 1
    from mailward import runtime
    from policyd.server import PolicyServer, serve_forever

    runtime.configure_logging("policyd", settings.general.log_level)
    try:
        runtime.start_metrics_endpoint(settings.metrics.policyd_listen)
    except OSError as exc:
        print(f"cannot serve metrics on {settings.metrics.policyd_listen}: {exc}", file=sys.stderr)
        return 1
    server = PolicyServer(args.config, settings, build_policy_engine)
    return asyncio.run(serve_forever(server))


def cmd_keys(args: argparse.Namespace) -> int:
    from mailward import keys

    return keys.run(args, DEFAULT_CONFIG_PATH)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailward",
        description="Milter and policy services for Postfix: SPF, DKIM, DMARC, ARC, spam.",
    )
    parser.add_argument("--version", action="version", version=f"mailward {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
            help=f"configuration file (default: {DEFAULT_CONFIG_PATH})",
        )
        return sub

    with_config("milter", "run the milter service (Postfix smtpd_milters)").set_defaults(
        handler=cmd_milter
    )
    with_config("policyd", "run the policy service (Postfix check_policy_service)").set_defaults(
        handler=cmd_policyd
    )
    with_config("check-config", "validate a configuration file and list every error").set_defaults(
        handler=cmd_check_config
    )
    from mailward.keys import add_subcommands

    keys_help = "DKIM key lifecycle: generate a key, show its DNS record, check what is published"
    keys_parser = commands.add_parser("keys", help=keys_help, description=keys_help)
    add_subcommands(keys_parser, DEFAULT_CONFIG_PATH)
    keys_parser.set_defaults(handler=cmd_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
