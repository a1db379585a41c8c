"""The Public Suffix List test vectors (test_psl.txt), through our PSL wrapper.

The vectors are the PSL project's own (public domain, CC0), shipped inside the
publicsuffixlist package next to the list it bundles; they are read from there so that
the list and its tests always come from the same release.  Each line
`checkPublicSuffix(domain, expected)` says which registrable domain (public suffix plus
one label) a name has, or null for none.  Our wrapper speaks A-labels, so Unicode
inputs and answers are compared in A-label form, and every vector is also checked with
its input converted to A-labels first.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest

from mailward.orgdomain import PublicSuffixes, ascii_domain

_VECTOR = re.compile(r"checkPublicSuffix\((null|'[^']*'), (null|'[^']*')\);")


def _load() -> list[tuple[int, str | None, str | None]]:
    text = (resources.files("publicsuffixlist") / "test_psl.txt").read_text("utf-8")
    vectors = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("//"):
            continue
        match = _VECTOR.fullmatch(stripped)
        assert match is not None, f"unreadable vector on line {number}: {line!r}"
        domain, expected = (None if v == "null" else v.strip("'") for v in match.groups())
        vectors.append((number, domain, expected))
    return vectors


VECTORS = _load()
PSL = PublicSuffixes.bundled()


def test_every_vector_was_read():
    text = (resources.files("publicsuffixlist") / "test_psl.txt").read_text("utf-8")
    active = [
        line for line in text.splitlines()
        if line.strip().startswith("checkPublicSuffix(")
    ]
    assert len(VECTORS) == len(active) > 70


def _expected(expected: str | None) -> str | None:
    if expected is None:
        return None
    converted = ascii_domain(expected)
    assert converted is not None, expected
    return converted


@pytest.mark.parametrize(
    ("line", "domain", "expected"), VECTORS, ids=[f"line{v[0]}" for v in VECTORS]
)
def test_vector(line: int, domain: str | None, expected: str | None):
    assert PSL.registrable_domain(domain or "") == _expected(expected), f"test_psl.txt:{line}"


@pytest.mark.parametrize(
    ("line", "domain", "expected"),
    [v for v in VECTORS if v[1] is not None and not v[1].isascii()],
    ids=lambda v: str(v) if isinstance(v, int) else None,
)
def test_vector_in_a_labels(line: int, domain: str, expected: str | None):
    a_labels = ascii_domain(domain)
    assert a_labels is not None and a_labels.isascii()
    assert PSL.registrable_domain(a_labels) == _expected(expected), f"test_psl.txt:{line}"
