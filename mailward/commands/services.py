"""`mailward milter`, `mailward policyd`, `mailward check-config`: run and validate."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mailward.commands import add_config_option
from mailward.config import ConfigError, Settings, load_settings


def load_or_report(path: Path) -> Settings | None:
    """The settings, or None after printing every configuration error to stderr."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def run_check_config(args: argparse.Namespace) -> int:
    from mailward.compose import build_pipeline

    settings = load_or_report(args.config)
    if settings is None:
        return 1
    # The files the configuration names must load too: a key that the milter would
    # refuse at start (or on reload) is a configuration error.
    try:
        build_pipeline(settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems = service_user_problems(settings, args.user)
    for problem in problems:
        print(f"{args.config}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.config}: OK")
    return 0


def service_user_problems(settings: Settings, user: str) -> list[str]:
    """Key files the service account could not read, though we (maybe root) can, and
    unix sockets it could not create (outside the units' writable directories).

    Nothing to say when the account does not exist (a test or a staged install).
    """
    from mailward.config import SocketKind
    from mailward.permissions import Account, socket_directory_problem, unreadable_reason

    try:
        account = Account.lookup(user)
    except KeyError:
        return []
    problems = []
    for index, key in enumerate(settings.dkim.sign.keys):
        reason = unreadable_reason(key.key, account)
        if reason is not None:
            problems.append(f"dkim.sign.keys[{index}].key: {reason} (the services run as {user})")
    sockets = {"milter.socket": settings.milter.socket, "policyd.socket": settings.policyd.socket,
               "tlspolicy.socket": settings.tlspolicy.socket}
    for setting, address in sockets.items():
        if address.kind is SocketKind.UNIX:
            reason = socket_directory_problem(Path(address.path), account)
            if reason is not None:
                problems.append(f"{setting}: {reason}")
    return problems


def run_milter(args: argparse.Namespace) -> int:
    # Worker processes report metrics through files the supervisor aggregates.  This
    # must come first: reading the configuration imports the checks, and with them
    # prometheus_client, which picks its value storage once, at import.
    metrics_dir = tempfile.mkdtemp(prefix="mailward-milter-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        settings = load_or_report(args.config)
        if settings is None:
            return 1
        from mailward import runtime
        from mailward.compose import build_pipeline
        from milters.service import MilterService

        runtime.configure_logging("milter", settings.general.log_level)
        return MilterService(args.config, settings, build_pipeline).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def run_policyd(args: argparse.Namespace) -> int:
    settings = load_or_report(args.config)
    if settings is None:
        return 1
    from mailward import runtime
    from mailward.compose import build_policy_engine
    from policyd.server import PolicyServer, serve_forever

    runtime.configure_logging("policyd", settings.general.log_level)
    try:
        runtime.start_metrics_endpoint(settings.metrics.policyd_listen)
    except OSError as exc:
        print(f"cannot serve metrics on {settings.metrics.policyd_listen}: {exc}", file=sys.stderr)
        return 1
    server = PolicyServer(args.config, settings, build_policy_engine)
    return asyncio.run(serve_forever(server))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             config_default: Path) -> None:
    for name, help_text, handler in (
        ("milter", "run the milter service (Postfix smtpd_milters)", run_milter),
        ("policyd", "run the policy service (Postfix check_policy_service)", run_policyd),
        ("check-config", "validate a configuration file and list every error", run_check_config),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_config_option(sub, config_default)
        sub.set_defaults(handler=handler)
        if name == "check-config":
            sub.add_argument(
                "--user", default="mailward",
                help="the account the services run as: key files must be readable by it "
                     "(default: mailward; not checked if the account does not exist)")
