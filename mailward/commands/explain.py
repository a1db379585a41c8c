"""`mailward explain MESSAGE.eml`: re-run the inbound engine on a stored message and
print why it would end up the way it does.

Exit status: 0 the message would be accepted (or, with --offline, was explained),
1 it would not be (reject, tempfail, quarantine, discard), 2 it could not be explained
(unreadable file, bad configuration, no client address known, with --offline no
Authentication-Results of ours in it).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import TextIO

from mailward.commands import add_config_option

MAX_MESSAGE = 64 * 1024 * 1024


def run(args: argparse.Namespace, config_default: Path, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from mailward.compose import build_pipeline
    from mailward.config import ConfigError, Settings, load_settings
    from mailward.explain.render import as_json, as_text
    from mailward.explain.trace import ExplainError, derive_inputs, explain, explain_recorded
    from mailward.messagefile import transaction_from_bytes
    from mailward.model import Action

    try:
        if args.config == config_default and not config_default.exists():
            settings = Settings()
        else:
            settings = load_settings(args.config)
        pipeline = None if args.offline else build_pipeline(settings)
    except ConfigError as exc:
        print(exc, file=err)
        return 2
    try:
        if str(args.message) == "-":
            raw = sys.stdin.buffer.read(MAX_MESSAGE + 1)
        else:
            with open(args.message, "rb") as handle:
                raw = handle.read(MAX_MESSAGE + 1)
    except OSError as exc:
        print(f"{args.message}: {exc}", file=err)
        return 2
    if len(raw) > MAX_MESSAGE:
        print(f"{args.message}: larger than {MAX_MESSAGE} bytes", file=err)
        return 2
    try:
        client_ip = ipaddress.ip_address(args.client_ip) if args.client_ip else None
    except ValueError as exc:
        print(f"--client-ip: {exc}", file=err)
        return 2
    transaction = transaction_from_bytes(raw, queue_id="explain")
    try:
        inputs = derive_inputs(transaction, client_ip, args.helo, args.mail_from,
                               settings.general.is_trusted, required=pipeline is not None)
        if pipeline is None:
            trace = explain_recorded(settings, transaction, inputs)
        else:
            trace = explain(pipeline, settings, transaction, inputs)
    except ExplainError as exc:
        print(f"{args.message}: {exc}", file=err)
        return 2
    out.write(as_json(trace) if args.json else as_text(trace))
    if trace.verdict is None:
        return 0
    return 0 if trace.verdict.action is Action.ACCEPT else 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             config_default: Path) -> None:
    help_text = ("re-run the inbound checks on a stored message and explain the decision "
                 "(exit 0 accepted, 1 not accepted, 2 could not explain)")
    parser = commands.add_parser("explain", help=help_text, description=help_text)
    add_config_option(parser, config_default)
    parser.add_argument("message", metavar="MESSAGE", type=Path,
                        help="the message file (RFC 5322, mbox From line allowed; - for stdin)")
    parser.add_argument("--client-ip", default=None,
                        help="the SMTP client (default: from the newest Received header)")
    parser.add_argument("--helo", default=None, help="its HELO name (default: from Received)")
    parser.add_argument("--mail-from", default=None,
                        help="the envelope sender (default: Return-Path)")
    parser.add_argument("--offline", action="store_true",
                        help="no DNS, no re-evaluation: explain the results our "
                             "Authentication-Results recorded at delivery")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=lambda args: run(args, config_default))
