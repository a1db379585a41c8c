"""The `[bayes]` section: read here, next to the code that uses it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailward.bayes.store import BayesStore, StoreLimits
from mailward.bayes.tokenizer import TokenizerSettings
from mailward.configreader import Table


@dataclass(frozen=True)
class BayesSettings:
    enabled: bool = False
    path: Path = Path("/var/lib/mailward/bayes.db")  # SQLite; Redis uses [state] url
    min_spam: int = 200
    min_ham: int = 200
    token_expiry_days: float = 180.0
    max_tokens: int = 2_000_000
    max_message_tokens: int = 1000
    word_pairs: bool = False
    spool: Path = Path("/var/spool/mailward/learn")
    learner_interval: float = 2.0
    autolearn: bool = False  # mailward/bayes/autolearn.py
    autolearn_spam: float = 12.0  # score without BAYES_* symbols at or above: learn spam
    autolearn_ham: float = -1.0  # ... at or below: learn ham

    @property
    def limits(self) -> StoreLimits:
        return StoreLimits(self.token_expiry_days * 86400.0, self.max_tokens)

    @property
    def tokenizer(self) -> TokenizerSettings:
        return TokenizerSettings(max_tokens=self.max_message_tokens, word_pairs=self.word_pairs)


def read_bayes(table: Table) -> BayesSettings:
    d = BayesSettings()
    settings = BayesSettings(
        enabled=table.scalar("enabled", bool, d.enabled),
        path=table.parsed("path", Path, d.path),
        min_spam=table.number("min_spam", int, d.min_spam, 0, 10_000_000),
        min_ham=table.number("min_ham", int, d.min_ham, 0, 10_000_000),
        token_expiry_days=table.number("token_expiry_days", float, d.token_expiry_days,
                                       1, 36500),
        max_tokens=table.number("max_tokens", int, d.max_tokens, 1000, 1_000_000_000),
        max_message_tokens=table.number("max_message_tokens", int, d.max_message_tokens,
                                         10, 100_000),
        word_pairs=table.scalar("word_pairs", bool, d.word_pairs),
        spool=table.parsed("spool", Path, d.spool),
        learner_interval=table.number("learner_interval", float, d.learner_interval,
                                      0.1, 3600),
        autolearn=table.scalar("autolearn", bool, d.autolearn),
        autolearn_spam=table.number("autolearn_spam", float, d.autolearn_spam, -1000, 1000),
        autolearn_ham=table.number("autolearn_ham", float, d.autolearn_ham, -1000, 1000),
    )
    if settings.autolearn_ham >= settings.autolearn_spam:
        table.error("autolearn_ham", f"must be below autolearn_spam ({settings.autolearn_spam})"
                                     f", got {settings.autolearn_ham}")
    for key in ("path", "spool"):
        if not getattr(settings, key).is_absolute():
            table.error(key, f"must be an absolute path, got {str(getattr(settings, key))!r}")
    table.finish()
    return settings


def open_bayes_store(settings: BayesSettings, backend: str, url: str) -> BayesStore:
    """The token store on the configured state backend (`[state] backend`).

    SQLite uses `[bayes] path`; Redis uses `[state] url`, so that several MX hosts that
    share greylisting also share what their users taught.  No I/O happens here.
    """
    if backend == "redis":
        from mailward.bayes.redis_store import RedisBayesStore

        return RedisBayesStore(url, settings.limits)
    from mailward.bayes.sqlite_store import SqliteBayesStore

    return SqliteBayesStore(settings.path, settings.limits)
