"""`mailward dmarc-report send|preview`: DMARC aggregate reports (RFC 9990).

`preview` prints the XML of one day's reports (today by default: the period so far)
and sends nothing; `send` delivers every finished day's reports that are due (run it
from the systemd timer).  Exit status: 0 done, 1 something was deferred or failed,
2 configuration or store error.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from mailward.commands import add_config_option


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             config_default: Path) -> None:
    parser = commands.add_parser("dmarc-report", help="DMARC aggregate reports")
    actions = parser.add_subparsers(dest="report_action", required=True)
    for name, text in (("send", "send the due reports of finished days"),
                       ("preview", "print one day's report XML, send nothing")):
        sub = actions.add_parser(name, help=text)
        add_config_option(sub, config_default)
        sub.add_argument("--domain", help="only this policy domain")
        sub.add_argument("--now", type=float, default=None, metavar="EPOCH",
                         help="act as if it were this time (UTC seconds since the epoch): "
                              "for catching up after an outage, and for tests")
        if name == "preview":
            sub.add_argument("--period", default="today",
                             help="today (default, the day so far), yesterday or YYYY-MM-DD")
        sub.set_defaults(handler=run)


def parse_period(text: str, now: float) -> int:
    """The UTC day number of `today`, `yesterday` or an ISO date."""
    today = int(now // 86400)
    if text == "today":
        return today
    if text == "yesterday":
        return today - 1
    try:
        date = datetime.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--period: {text!r} is not today, yesterday or YYYY-MM-DD") from None
    return (date - datetime.date(1970, 1, 1)).days


def run(args: argparse.Namespace) -> int:
    from mailward.config import ConfigError, load_settings
    from mailward.dns import DnsResolver
    from mailward.reports.aggregate_xml import report_xml
    from mailward.reports.backends import open_report_store
    from mailward.reports.sender import ReportRunner
    from mailward.reports.store import ReportStoreError
    from mailward.reports.transport import SmtpTransport

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    reports = settings.dmarc_reports
    if not reports.enabled:
        print(f"{args.config}: [dmarc_reports] enabled is false", file=sys.stderr)
        return 2
    store = open_report_store(settings)
    now = args.now if args.now is not None else time.time()
    runner = ReportRunner(reports, store, DnsResolver(settings.dns),
                          SmtpTransport(reports.smtp_host, reports.smtp_port,
                                        reports.smtp_timeout),
                          clock=lambda: now)
    domain = args.domain.lower().rstrip(".") if args.domain else None
    try:
        if args.report_action == "preview":
            try:
                day = parse_period(args.period, now)
            except ValueError as exc:
                print(exc, file=sys.stderr)
                return 2
            for report in runner.preview(day, domain):
                sys.stdout.write(report_xml(report).decode())
            return 0
        summary = runner.send_due(domain)
    except ReportStoreError as exc:
        print(f"report store: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    for line in summary.lines():
        print(line)
    return 1 if summary.deferred or summary.failed else 0
