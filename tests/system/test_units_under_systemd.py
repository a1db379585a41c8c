"""The systemd units under a real systemd (issue 12): this machine has no systemd as
PID 1 (`ps -p 1`), so its own root boots as a throw-away container instead
(tests/system/nspawn-units.sh: systemd-nspawn on an overlay with a tmpfs upper layer,
private mount namespace, --private-network; the host's files and network stay as they
are).  Inside: `install.sh` as on a host, then systemd 252 starts both units
(Type=notify: `systemctl start` returns once READY=1 came), reloads the milter
(RELOADING=1/READY=1, same main PID), reports the live `systemd-analyze security`
exposure, and stops them cleanly.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import host

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "system" / "nspawn-units.sh"
UNITS = ("mailward-milter", "mailward-policyd")
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def result() -> Iterator[dict[str, str]]:
    # The container's lower layer is the live root: an installed Mailward would leak in.
    host.check_untouched_host()
    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn is missing: apt-get install systemd-container "
                    "(deploy/scripts/install-system-deps.sh installs it)")
    out = Path(tempfile.mkdtemp(prefix="mailward-nspawn-out-"))
    try:
        run = subprocess.run(["bash", str(SCRIPT), str(REPO), str(out)], capture_output=True,
                             text=True, timeout=800, check=False)
        logs = "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
                       for log in sorted(out.iterdir()) if log.is_file())
        assert run.returncode == 0, run.stdout + run.stderr + logs
        result_file = out / "result"
        assert result_file.exists(), "the check inside the container never ran" + logs
        values = dict(line.split("=", 1) for line in result_file.read_text().splitlines())
        assert values.get("done") == "yes", f"the check stopped half-way: {values}" + logs
        yield values
    finally:
        shutil.rmtree(out)


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_starts_enabled_and_listening(result: dict[str, str], unit: str):
    assert result[f"{unit}.start"] == "0"
    assert result[f"{unit}.active"] == "active"
    assert result[f"{unit}.enabled"] == "enabled"


def test_the_sockets_are_for_postfix_only(result: dict[str, str]):
    assert result["milter.socket"] == "660 mailward postfix"
    assert result["policyd.socket"] == "660 mailward postfix"
    assert result["milter.user"] == "mailward"


def test_reload_keeps_the_milter_running(result: dict[str, str]):
    assert result["milter.reload"] == "0"
    assert result["milter.same_pid_after_reload"] == "yes"
    assert result["milter.active_after_reload"] == "active"


@pytest.mark.parametrize("unit", UNITS)
def test_live_exposure_is_at_most_2(result: dict[str, str], unit: str):
    assert float(result[f"{unit}.exposure"]) <= 2.0


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_stops_cleanly(result: dict[str, str], unit: str):
    assert result[f"{unit}.stop"] == "0"
    assert result[f"{unit}.result"] == "success"
