"""The `mailward` subcommands, one module each.

Every module here exposes `register(commands, config_default)`, which adds its
subparser(s) and sets `handler` to a function `(argparse.Namespace) -> int` (the exit
status).  Modules keep their top-level imports light (no prometheus_client, no DNS):
the parser is built for every invocation, and the milter must set up multiprocess
metrics before prometheus_client is first imported.

Adding a command: write `mailward/commands/NAME.py` with `register`, and list it in
`COMMAND_MODULES`; cli.py needs no change.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Protocol

# The order is the order `mailward --help` lists them in.
COMMAND_MODULES: tuple[str, ...] = (
    "services",
    "keys",
    "audit",
    "explain",
    "reports",
    "learn",
    "tlspolicy",
)


class CommandModule(Protocol):
    """What a module in this package provides."""

    def register(self, commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 config_default: Path) -> None: ...


def add_config_option(parser: argparse.ArgumentParser, config_default: Path) -> None:
    """The `-c/--config` option every command that reads the configuration takes."""
    parser.add_argument(
        "-c", "--config", type=Path, default=config_default,
        help=f"configuration file (default: {config_default})",
    )


def register_all(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 config_default: Path) -> None:
    """Add every command's subparser, in COMMAND_MODULES order."""
    for name in COMMAND_MODULES:
        module: CommandModule = importlib.import_module(f"{__name__}.{name}")
        module.register(commands, config_default)
