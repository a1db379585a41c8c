"""The README's install section parses into the steps tests/system runs (cheap, in
`make test`; the steps themselves run in `make test-system`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.readme import ReadmeError, StepKind, parse_install_section, readme_steps

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_has_the_steps_the_system_test_knows():
    from tests.system.test_readme_install import EXPECTED_STEPS

    steps = readme_steps(README)
    assert tuple(step.name for step in steps) == EXPECTED_STEPS
    assert [step.name for step in steps if not step.runs_in_the_test] == ["start-systemd"]
    assert all(step.text.strip() for step in steps)


def test_markers_blocks_and_notes():
    text = """intro
<!-- readme-install:begin -->
1. Do it:

   <!-- readme-install:step one -->
   ```sh
   echo one
     indented
   ```
   ```sh
   echo not marked, not run
   ```
   <!-- readme-install:file /etc/x.toml -->
   ```toml
   a = 1
   ```
<!-- readme-install:step two (documented only) -->
```sh
echo two
```
<!-- readme-install:end -->
"""
    steps = parse_install_section(text)
    assert [(s.kind, s.name, s.note) for s in steps] == [
        (StepKind.SHELL, "one", None), (StepKind.FILE, "/etc/x.toml", None),
        (StepKind.SHELL, "two", "documented only")]
    assert steps[0].text == "echo one\n  indented\n"
    assert steps[0].line == 5


@pytest.mark.parametrize("text", [
    "no section at all",
    "<!-- readme-install:begin -->\n<!-- readme-install:step a -->\nprose\n"
    "<!-- readme-install:end -->",
    "<!-- readme-install:begin -->\n<!-- readme-install:step a -->\n```toml\nx\n```\n"
    "<!-- readme-install:end -->",
    "<!-- readme-install:begin -->\n<!-- readme-install:step a -->\n```sh\nx\n"
    "<!-- readme-install:end -->",
    "<!-- readme-install:begin -->\n<!-- readme-install:stpe a -->\n"
    "<!-- readme-install:end -->",
])
def test_malformed_sections_are_errors(text: str):
    with pytest.raises(ReadmeError):
        parse_install_section(text)
