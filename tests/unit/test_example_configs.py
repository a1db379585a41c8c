"""deploy/examples/: the three host roles an admin starts from, each valid and as described.

Every example must load with the real configuration reader (unknown keys are errors)
and build the real pipeline via `mailward check-config`, once the key it names exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailward.cli import main as cli_main
from mailward.commands.keys import generate_private_key, write_private_key
from mailward.config import SignOrigin, load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def staged(name: str, tmp_path: Path) -> Path:
    """The example with its key directory moved under tmp_path and the keys created."""
    text = (EXAMPLES / name).read_text()
    keys = tmp_path / "keys"
    text = text.replace('key_directory = "/etc/mailward/keys"', f'key_directory = "{keys}"')
    for domain, selector in re.findall(r'key = "([\w.-]+)\.(\w+)\.key"', text):
        write_private_key(keys / f"{domain}.{selector}.key", generate_private_key("rsa-2048"))
    path = tmp_path / name
    path.write_text(text)
    return path


def test_there_are_three_examples() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == [
        "mx-only.toml", "mx-submission.toml", "submission.toml"]


def test_mx_only_checks_everything_and_signs_nothing() -> None:
    settings = load_settings(EXAMPLES / "mx-only.toml")
    assert settings.spf.enabled and settings.dkim.verify.verify and settings.dmarc.enabled
    assert settings.dmarc.enforce and settings.scoring.enabled
    assert settings.dkim.sign.origins == () and settings.dkim.sign.keys == ()


def test_submission_signs_and_checks_nothing_inbound() -> None:
    settings = load_settings(EXAMPLES / "submission.toml")
    assert not (settings.spf.enabled or settings.dkim.verify.verify or settings.dmarc.enabled
                or settings.iprev.enabled or settings.arc.verify or settings.scoring.enabled)
    assert settings.dkim.sign.origins == (SignOrigin.AUTHENTICATED, SignOrigin.LOCAL)
    assert [key.name for key in settings.dkim.sign.keys] == ["example.com:s2026r"]


def test_mx_submission_does_both() -> None:
    settings = load_settings(EXAMPLES / "mx-submission.toml")
    assert settings.spf.enabled and settings.dkim.verify.verify and settings.dmarc.enforce
    assert SignOrigin.TRUSTED_NETWORKS not in settings.dkim.sign.origins
    assert [key.name for key in settings.dkim.sign.keys] == ["example.com:s2026r"]


@pytest.mark.parametrize("name", ["mx-only.toml", "submission.toml", "mx-submission.toml"])
def test_check_config_accepts_each_example_with_its_keys(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = staged(name, tmp_path)
    assert cli_main(["check-config", "-c", str(path), "--user", "nobody-such-user"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: OK"
