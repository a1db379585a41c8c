"""The README's install section as data: the steps a test runs exactly as written.

The section lies between `<!-- readme-install:begin -->` and `<!-- readme-install:end -->`.
Inside it, a fenced block counts only when the line before it (blank lines aside) is a
marker comment:

    <!-- readme-install:step NAME [(why the test does not run it)] -->   a shell block
    <!-- readme-install:file PATH -->                                      a file to write

so prose, examples and alternatives can sit between the steps without being run, and a
step cannot be added, dropped or renamed without the test noticing (it knows the names).
Pure parsing, no I/O: `parse_install_section(text)` from the README's text.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

BEGIN = "<!-- readme-install:begin -->"
END = "<!-- readme-install:end -->"
_MARKER = re.compile(
    r"^<!--\s*readme-install:(?P<kind>step|file)\s+(?P<name>\S+)"
    r"(?:\s+\((?P<note>[^)]*)\))?\s*-->$"
)
_FENCE = re.compile(r"^(?P<fence>```+)\s*(?P<info>\S*)\s*$")


class StepKind(Enum):
    """What a step is: shell commands to run as root, or a file's content to write."""

    SHELL = "step"
    FILE = "file"


@dataclass(frozen=True)
class Step:
    """One marked block of the install section, in README order."""

    kind: StepKind
    name: str  # the step name, or the path of the file to write
    text: str  # the block's content, dedented (list items indent their blocks)
    note: str | None  # "(...)" of the marker: why a test does not run this step
    line: int  # 1-based line of the marker in the README, for error messages

    @property
    def runs_in_the_test(self) -> bool:
        """A step whose marker gives a reason (a note) is documented, not run."""
        return self.note is None


class ReadmeError(ValueError):
    """The install section is malformed: a marker without its block, no section, ..."""


def install_section(text: str) -> tuple[int, list[str]]:
    """The lines between the begin and end markers, and the line number of the first."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ReadmeError(f"expected one {BEGIN} ... {END} section, found "
                          f"{len(starts)} begin and {len(ends)} end markers")
    return starts[0] + 2, lines[starts[0] + 1 : ends[0]]


def parse_install_section(text: str) -> list[Step]:
    """Every marked block of the install section, in order."""
    first_line, lines = install_section(text)
    steps: list[Step] = []
    index = 0
    while index < len(lines):
        match = _MARKER.match(lines[index].strip())
        if match is None:
            if "readme-install:" in lines[index]:
                raise ReadmeError(f"README line {first_line + index}: malformed marker "
                                  f"{lines[index].strip()!r}")
            index += 1
            continue
        marker_line = first_line + index
        index += 1
        while index < len(lines) and not lines[index].strip():
            index += 1
        fence = _FENCE.match(lines[index].strip()) if index < len(lines) else None
        if fence is None:
            raise ReadmeError(f"README line {marker_line}: marker not followed by a fenced block")
        kind = StepKind(match["kind"])
        if kind is StepKind.SHELL and fence["info"] != "sh":
            raise ReadmeError(f"README line {marker_line}: a step's block must be ```sh, "
                              f"not ```{fence['info']}")
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence["fence"]:
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise ReadmeError(f"README line {marker_line}: the fenced block never ends")
        index += 1
        steps.append(Step(kind, match["name"], textwrap.dedent("\n".join(body)) + "\n",
                          match["note"], marker_line))
    names = [step.name for step in steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ReadmeError(f"install steps named twice: {', '.join(duplicates)}")
    return steps


def readme_steps(readme: Path) -> list[Step]:
    return parse_install_section(readme.read_text(encoding="utf-8"))
