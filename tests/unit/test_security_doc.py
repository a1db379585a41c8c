"""docs/SECURITY.md cites module paths as evidence: each must still exist.

The review is only worth something while the code it quotes is there; a renamed or
removed module makes this test fail, so the doc is revised instead of rotting silently.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SECURITY.md"

# A repository path inside backticks: starts at a top-level source/deploy directory.
_CITED = re.compile(
    r"`((?:mailward|milters|policyd|sieve|deploy|tests)/[A-Za-z0-9_./-]+)`"
)


def cited_paths(text: str) -> list[str]:
    """Every backticked repository path in the doc, in order, without duplicates."""
    return list(dict.fromkeys(match.group(1).rstrip("/.") for match in _CITED.finditer(text)))


def test_doc_cites_paths() -> None:
    paths = cited_paths(DOC.read_text(encoding="utf-8"))
    # The review covers units, keys, config, runtime, forgery, DNS and milter session.
    for expected in ("mailward/forgery.py", "mailward/signing/keys.py",
                     "milters/session.py", "mailward/dns.py", "deploy/systemd/"):
        assert any(path.startswith(expected.rstrip("/")) for path in paths), expected


def test_every_cited_path_exists() -> None:
    missing = [path for path in cited_paths(DOC.read_text(encoding="utf-8"))
               if not (ROOT / path).exists()]
    assert missing == [], f"docs/SECURITY.md cites paths that do not exist: {missing}"


def test_cited_paths_finds_backticked_paths_only() -> None:
    text = "see `mailward/dns.py`, `/run/mailward` and mailward/x.py and `deploy/systemd/`."
    assert cited_paths(text) == ["mailward/dns.py", "deploy/systemd"]
