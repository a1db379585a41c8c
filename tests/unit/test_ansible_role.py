"""deploy/ansible: the sample playbook passes `ansible-playbook --syntax-check`, and every
role variable is both defaulted and declared in meta/argument_specs.yml."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ANSIBLE = Path(__file__).resolve().parents[2] / "deploy" / "ansible"
ROLE = ANSIBLE / "roles" / "mailward"


def test_sample_playbook_passes_syntax_check():
    playbook = shutil.which("ansible-playbook")
    if playbook is None:
        pytest.fail("ansible-playbook is missing: bash deploy/scripts/install-system-deps.sh")
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ANSIBLE / "roles"))
    result = subprocess.run([playbook, "-i", "localhost,", "--syntax-check",
                             str(ANSIBLE / "site.yml")],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_default_is_declared_in_argument_specs():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, option in options.items():
        assert option.get("description"), name
