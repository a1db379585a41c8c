"""`mailward dmarc-report preview|send` as an admin runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mailward.dmarc_enforcement import ACCEPT
from mailward.reports.recorder import DmarcRecorder
from mailward.reports.store import ReportStore
from tests.unit.reports_helpers import dkim, dmarc, spf, validate


def _config(tmp_path: Path, enabled: bool = True) -> Path:
    path = tmp_path / "mailward.toml"
    path.write_text(f"""
[dmarc_reports]
enabled = {str(enabled).lower()}
path = "{tmp_path / 'r.db'}"
org_name = "Example Net"
sender = "dmarc@example.net"
""")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailward", "dmarc-report", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_preview_prints_the_day_so_far_as_valid_xml(tmp_path: Path):
    config = _config(tmp_path)
    store = ReportStore(tmp_path / "r.db")
    recorder = DmarcRecorder(store, clock=time.time)
    for _ in range(2):
        recorder.record("192.0.2.10", dmarc(), spf(), [dkim()], ACCEPT)
    store.close()
    done = _run("preview", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert "<count>2</count>" in done.stdout
    validate(done.stdout.encode(), tmp_path)


def test_disabled_reports_and_a_bad_period_are_clear_errors(tmp_path: Path):
    done = _run("send", "-c", str(_config(tmp_path, enabled=False)))
    assert done.returncode == 2 and "enabled is false" in done.stderr
    bad = _run("preview", "-c", str(_config(tmp_path)), "--period", "someday")
    assert bad.returncode == 2 and "someday" in bad.stderr
