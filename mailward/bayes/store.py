"""The Bayes token database: what the classifier reads and the learner writes.

Tokens are stored as 64-bit hashes (BLAKE2b), not as words: rows stay small and fixed,
lookups are integer keys, and the database holds no readable text of anybody's mail.
A learned message is remembered by the SHA-256 of its bytes with its class, which makes
learning idempotent (the same message twice under one class counts once) and lets a
message learned under the other class be *moved* (its earlier counts are undone).

Every operation is atomic in the backend (one SQLite transaction, one Redis script),
so the milter reading while a learner writes always sees consistent counts.  The clock
is an argument (`now`), as in mailward/state/.  Failures raise `StateUnavailable`.

Bounded size: a token not seen in a learned message for `token_expiry` seconds is
removed, and past `max_tokens` rows the least recently learned tokens go first.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import ClassVar, Self

from mailward.bayes.classifier import TokenCounts


class MessageClass(StrEnum):
    SPAM = "spam"
    HAM = "ham"

    @property
    def other(self) -> MessageClass:
        return MessageClass.HAM if self is MessageClass.SPAM else MessageClass.SPAM


class LearnResult(StrEnum):
    LEARNED = "learned"      # new message, counted
    MOVED = "moved"          # was learned under the other class: undone, then counted
    ALREADY = "already"      # already learned under this class: nothing changed
    FORGOTTEN = "forgotten"  # --forget: its counts were undone
    UNKNOWN = "unknown"      # --forget of a message never learned


@dataclass(frozen=True)
class Totals:
    """How many messages of each class the database has learned."""

    spam: int
    ham: int


@dataclass(frozen=True)
class StoreLimits:
    token_expiry: float = 180 * 86400.0
    max_tokens: int = 2_000_000


DEFAULT_LIMITS = StoreLimits()


def token_hash(token: str) -> int:
    """The signed 64-bit key of a token (SQLite INTEGER range)."""
    digest = hashlib.blake2b(token.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def hash_tokens(tokens: Iterable[str]) -> dict[int, str]:
    return {token_hash(token): token for token in tokens}


def message_digest(raw: bytes) -> str:
    """The identity of a learned message: SHA-256 of its bytes with LF line ends.

    Line ends are normalised because the same message arrives with CRLF from IMAP and
    with LF from a Maildir file.
    """
    return hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()


class BayesStore(abc.ABC):
    backend: ClassVar[str]

    @abc.abstractmethod
    def totals(self) -> Totals:
        """Learned message counts (and token rows) as of now."""

    def token_rows(self) -> int | None:
        """How many tokens the database holds (for --stats; None if it cannot tell
        cheaply).  Not on the per-message path: in SQLite it is a table scan."""
        return None

    @abc.abstractmethod
    def token_counts(self, tokens: Collection[str]) -> Mapping[str, TokenCounts]:
        """The counts of the tokens the database knows (unknown ones are left out)."""

    def learn(self, digest: str, message_class: MessageClass, tokens: Collection[str],
              now: float) -> LearnResult:
        """Count `tokens` for one message under `message_class` (see LearnResult)."""
        return self._step(digest, message_class, tokens, now)

    def forget(self, digest: str, tokens: Collection[str], now: float) -> LearnResult:
        """Undo what learning this message counted (FORGOTTEN or UNKNOWN)."""
        return self._step(digest, None, tokens, now)

    @abc.abstractmethod
    def _step(self, digest: str, wanted: MessageClass | None, tokens: Collection[str],
              now: float) -> LearnResult:
        """Move one message to class `wanted` (None: forget it), in one transaction."""

    @abc.abstractmethod
    def expire(self, now: float) -> int:
        """Remove expired tokens and trim to `max_tokens`; returns rows removed."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StateUnavailable unless the backend answers."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class LearnPlan:
    """What one learn or forget step changes: counts to undo, counts to add."""

    result: LearnResult
    undo: MessageClass | None
    add: MessageClass | None


def plan_learning(previous: MessageClass | None, wanted: MessageClass | None) -> LearnPlan:
    """The rule every backend applies; `wanted` None means forget."""
    if wanted is None:
        if previous is None:
            return LearnPlan(LearnResult.UNKNOWN, None, None)
        return LearnPlan(LearnResult.FORGOTTEN, previous, None)
    if previous is wanted:
        return LearnPlan(LearnResult.ALREADY, None, None)
    if previous is None:
        return LearnPlan(LearnResult.LEARNED, None, wanted)
    return LearnPlan(LearnResult.MOVED, previous, wanted)
