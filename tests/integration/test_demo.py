"""`make demo` works: the demo starts the stack, shows what happened, and `demo-stop`
ends exactly what it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "demo.py"


def run_demo(action: str, demo_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILWARD_DEMO_DIR": str(demo_dir)}
    return subprocess.run([sys.executable, str(DEMO), action], capture_output=True, text=True,
                          env=env, timeout=180, check=False)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are gone
    except FileNotFoundError:
        return False


def test_demo_starts_shows_results_and_stops_cleanly():
    demo_dir = Path("/tmp") / f"mailward-demo-test-{os.getpid()}"
    started = run_demo("start", demo_dir)
    pids: list[int] = []
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        out = started.stdout
        assert "spf=pass smtp.mailfrom=news@example.org" in out
        assert "dmarc=pass header.from=example.org" in out
        assert "SMTP: 550 5.7.1 Message rejected: it fails the DMARC policy of example.org" in out
        assert "Stored in: Junk" in out
        assert "relay.example.org; spf=pass" in out
        assert "mailward_milter_forged_authentication_results_removed_total 1.0" in out
        pids += [int(line.split("pid")[1]) for line in out.splitlines()
                 if " pid " in line and line.startswith("  ")]
        assert len(pids) == 5, out
        assert all(alive(pid) for pid in pids)
        assert run_demo("start", demo_dir).returncode == 1  # one demo at a time
    finally:
        stopped = run_demo("stop", demo_dir)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not any(alive(pid) for pid in pids)
    assert not demo_dir.exists()
