"""`mailward audit DOMAIN`: is this domain set up right for mail?

Exit status: 0 nothing failed, 1 at least one finding failed, 2 nothing failed but
some checks could not be done (DNS timeout or SERVFAIL, a server that did not answer)
or the command could not run (bad configuration, bad arguments).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mailward.commands import add_config_option

if TYPE_CHECKING:
    from mailward.config import Settings
    from mailward.dns import Resolver


def _settings(args: argparse.Namespace, config_default: Path) -> Settings:
    """The configuration the services use; its defaults if the default file is absent."""
    from mailward.config import Settings, load_settings

    if args.config == config_default and not config_default.exists():
        return Settings()
    return load_settings(args.config)


def run(args: argparse.Namespace, config_default: Path, out: TextIO | None = None,
        err: TextIO | None = None, resolver: Resolver | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from mailward.audit.context import AuditContext, AuditOptions
    from mailward.audit.findings import ExitStatus
    from mailward.audit.render import as_json, as_text
    from mailward.audit.runner import run_audit
    from mailward.config import ConfigError
    from mailward.orgdomain import ascii_domain

    try:
        settings = _settings(args, config_default)
    except ConfigError as exc:
        print(exc, file=err)
        return ExitStatus.COULD_NOT_CHECK
    domain = ascii_domain(args.domain)
    if domain is None:
        print(f"{args.domain!r} is not a domain name", file=err)
        return ExitStatus.COULD_NOT_CHECK
    try:
        ips = tuple(ipaddress.ip_address(text) for text in args.ip)
    except ValueError as exc:
        print(f"--ip: {exc}", file=err)
        return ExitStatus.COULD_NOT_CHECK
    if resolver is None:
        from mailward.dns import DnsResolver

        resolver = DnsResolver(settings.dns)
    options = AuditOptions(
        selectors=tuple(args.selector), sending_ips=ips, connect=not args.no_connect,
        smtp_port=args.smtp_port, https_port=args.https_port, ca_file=args.ca_file,
        timeout=args.timeout, ehlo_name=args.ehlo or settings.general.authserv_id,
        dnsbl_zones=tuple(args.dnsbl),
    )
    report = run_audit(AuditContext(domain, resolver, settings, options))
    out.write(as_json(report) if args.json else as_text(report))
    return report.exit_status


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             config_default: Path) -> None:
    help_text = ("check a domain's mail setup: MX, reverse DNS, STARTTLS, SPF, DKIM, DMARC, "
                 "MTA-STS, TLS-RPT, DANE (exit 0 fine, 1 problems found, 2 could not check)")
    parser = commands.add_parser("audit", help=help_text, description=help_text)
    add_config_option(parser, config_default)
    parser.add_argument("domain", metavar="DOMAIN")
    parser.add_argument("--selector", action="append", default=[], metavar="S",
                        help="DKIM selector to check (repeatable; configured keys of DOMAIN "
                             "are checked too)")
    parser.add_argument("--ip", action="append", default=[], metavar="IP",
                        help="a sending address to evaluate against SPF (repeatable)")
    parser.add_argument("--no-connect", action="store_true",
                        help="DNS only: no SMTP connections, no MTA-STS policy fetch")
    parser.add_argument("--dnsbl", action="append", default=[], metavar="ZONE",
                        help="a DNS blocklist zone to look up each --ip and MX address in "
                             "(repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds per SMTP/HTTPS connection (default 5)")
    parser.add_argument("--smtp-port", type=int, default=25,
                        help="port of the SMTP probe (default 25)")
    parser.add_argument("--https-port", type=int, default=443,
                        help="port of the MTA-STS policy fetch (default 443)")
    parser.add_argument("--ca-file", type=Path, default=None,
                        help="CA bundle for certificate checks (default: the system's)")
    parser.add_argument("--ehlo", default=None,
                        help="our EHLO name (default: general.authserv_id)")
    parser.set_defaults(handler=lambda args: run(args, config_default))
