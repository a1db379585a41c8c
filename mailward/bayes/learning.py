"""Learning one message: bytes -> digest and tokens -> one atomic store step.

The same path for `mailward learn`, the learner service draining the IMAPSieve spool,
and the benchmark, so that what is learned is tokenized exactly as the milter's check
tokenizes what it classifies (both go through mailward/mime.py).
"""

from __future__ import annotations

import mailbox
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailward.bayes.store import BayesStore, LearnResult, MessageClass, message_digest
from mailward.bayes.tokenizer import DEFAULT_TOKENIZER, TokenizerSettings, tokenize
from mailward.messagefile import transaction_from_bytes
from mailward.mime import DEFAULT_LIMITS, MimeLimits, parse_message

#: A message larger than this is learned from its first bytes only (as the milter sees
#: only `milter.max_body_size`).
MAX_LEARN_BYTES = 4 * 1024 * 1024


def message_tokens(raw: bytes, settings: TokenizerSettings = DEFAULT_TOKENIZER,
                   limits: MimeLimits = DEFAULT_LIMITS) -> frozenset[str]:
    transaction = transaction_from_bytes(raw[:MAX_LEARN_BYTES])
    return tokenize(transaction, parse_message(transaction, limits), settings)


def learn_message(store: BayesStore, raw: bytes, message_class: MessageClass | None,
                  now: float, settings: TokenizerSettings = DEFAULT_TOKENIZER
                  ) -> LearnResult:
    """Learn `raw` as `message_class` (None: forget it)."""
    digest = message_digest(raw)
    tokens = message_tokens(raw, settings)
    if message_class is None:
        return store.forget(digest, tokens, now)
    return store.learn(digest, message_class, tokens, now)


@dataclass(frozen=True)
class SourceMessage:
    """One message read from a command-line source, named for error messages."""

    origin: str
    raw: bytes


class SourceError(Exception):
    """A source that is not a message, a Maildir or an mbox file (or cannot be read)."""


def read_sources(sources: list[str]) -> Iterator[SourceMessage]:
    """Messages from files, Maildir folders, directories of files, mbox files and `-`.

    A Maildir is a directory with cur/ and new/; any other directory is read file by
    file (sorted, recursively: MH folders, corpus directories).  A file starting with
    "From " is an mbox.
    """
    for source in sources:
        if source == "-":
            yield SourceMessage("<stdin>", sys.stdin.buffer.read())
            continue
        path = Path(source)
        if path.is_dir():
            yield from _read_directory(path)
        elif path.is_file():
            yield from _read_file(path)
        else:
            raise SourceError(f"{source}: no such file or directory")


def _read_directory(path: Path) -> Iterator[SourceMessage]:
    if (path / "cur").is_dir() and (path / "new").is_dir():
        for sub in ("cur", "new"):
            for entry in sorted((path / sub).iterdir()):
                if entry.is_file():
                    yield SourceMessage(str(entry), entry.read_bytes())
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                yield from _read_file(Path(root) / name)


def _read_file(path: Path) -> Iterator[SourceMessage]:
    try:
        with path.open("rb") as handle:
            head = handle.read(5)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror}") from exc
    if head != b"From ":
        yield SourceMessage(str(path), path.read_bytes())
        return
    box = mailbox.mbox(path, create=False)
    try:
        for index, key in enumerate(box.iterkeys()):
            yield SourceMessage(f"{path}[{index}]", box.get_bytes(key))
    finally:
        box.close()
