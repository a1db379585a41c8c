"""`mailward ...`: the command line.

Only the parser lives here; each subcommand is a module in mailward/commands/, and the
engine is assembled by mailward/compose.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mailward import __version__
from mailward.commands import register_all
from mailward.config import DEFAULT_CONFIG_PATH


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailward",
        description="Milter and policy services for Postfix: SPF, DKIM, DMARC, ARC, spam.",
    )
    parser.add_argument("--version", action="version", version=f"mailward {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_all(commands, DEFAULT_CONFIG_PATH)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
