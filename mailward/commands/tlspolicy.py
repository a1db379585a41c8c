"""`mailward tlspolicy -c FILE`: the MTA-STS socketmap for `smtp_tls_policy_maps`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from mailward.commands import add_config_option


def run_tlspolicy(args: argparse.Namespace) -> int:
    from mailward.commands.services import load_or_report

    settings = load_or_report(args.config)
    if settings is None:
        return 1
    from mailward import runtime
    from mailward.tlspolicy.service import TlsPolicyServer, serve_forever

    runtime.configure_logging("tlspolicy", settings.general.log_level)
    try:
        runtime.start_metrics_endpoint(settings.tlspolicy.metrics_listen)
    except OSError as exc:
        print(f"cannot serve metrics on {settings.tlspolicy.metrics_listen}: {exc}",
              file=sys.stderr)
        return 1
    server = TlsPolicyServer(args.config, settings)
    return asyncio.run(serve_forever(server))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             config_default: Path) -> None:
    parser = commands.add_parser(
        "tlspolicy", help="serve outbound TLS policy (MTA-STS) to Postfix over socketmap")
    add_config_option(parser, config_default)
    parser.set_defaults(handler=run_tlspolicy)
