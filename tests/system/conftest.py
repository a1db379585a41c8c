"""System tests: they install Mailward on THIS machine and reconfigure its Postfix.

They run only from `make test-system` (which sets MAILWARD_SYSTEM_TESTS=1), never from
`make test`: they change /etc/postfix and /etc/dovecot (restored afterwards) and need
the system's port 25.  Without the variable they are deselected (the run's header says
so), not skipped: nothing about them passed.  Every test here is marked `system`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENABLE_ENV = "MAILWARD_SYSTEM_TESTS"


def _enabled() -> bool:
    return os.environ.get(ENABLE_ENV) == "1"


def pytest_report_header(config: pytest.Config) -> str | None:
    if _enabled():
        return "system tests: ON (this machine's Postfix and Dovecot are reconfigured)"
    return f"system tests (tests/system): deselected; `make test-system` runs them ({ENABLE_ENV}=1)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    for item in ours:
        item.add_marker(pytest.mark.system)
    if not _enabled() and ours:
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]
