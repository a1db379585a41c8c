"""Autolearn: feed Bayes the mail the other checks are already sure about.

Off by default (`[bayes] autolearn`).  A message whose score *without* the Bayes symbols
reaches `autolearn_spam` is learnt as spam, one at or below `autolearn_ham` as ham --
leaving Bayes' own opinion out is what keeps it from teaching itself its mistakes (as
SpamAssassin does).  Never from mail that failed DMARC (a forged sender would teach
Bayes that the real sender's mail is spam) and never from trusted or authenticated
clients (only the inbound path calls this).  Mail with a body we hold only a prefix of
is not learnt either: its tokens would not be the message's.

Learning itself is the learner service's job: the message is handed over through the
learning spool (one write and one rename, mailward/bayes/spool.py), so the milter never
waits on the token store, and a spool that cannot be written costs a log line, not mail.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from mailward import metrics
from mailward.bayes.settings import BayesSettings
from mailward.bayes.spool import spool_message
from mailward.bayes.store import MessageClass
from mailward.message import raw_message
from mailward.model import Symbol, Transaction
from mailward.scoring import ScoringSettings

BAYES_PREFIX = "BAYES_"


def autolearn_class(symbols: Sequence[Symbol], scoring: ScoringSettings,
                    settings: BayesSettings, dmarc_failed: bool) -> MessageClass | None:
    """Which class to learn the message as, or None: the decision alone, no I/O."""
    if not settings.autolearn or dmarc_failed:
        return None
    total = sum(scoring.weight(symbol.name) for symbol in symbols
                if not symbol.name.startswith(BAYES_PREFIX))
    if total >= settings.autolearn_spam:
        return MessageClass.SPAM
    if total <= settings.autolearn_ham:
        return MessageClass.HAM
    return None


@dataclass(frozen=True)
class Autolearner:
    """Hands confidently classified inbound mail to the learner through the spool."""

    settings: BayesSettings
    scoring: ScoringSettings

    def consider(self, transaction: Transaction, symbols: Sequence[Symbol],
                 dmarc_failed: bool) -> MessageClass | None:
        if transaction.body_truncated:
            return None
        message_class = autolearn_class(symbols, self.scoring, self.settings, dmarc_failed)
        if message_class is None:
            return None
        try:
            spool_message(self.settings.spool, message_class, raw_message(transaction),
                          f"auto.{uuid.uuid4().hex}")
        except OSError as exc:
            log.warning("%s: autolearn as %s skipped: cannot write the learning spool %s: %s",
                        transaction.log_id, message_class.value, self.settings.spool,
                        exc.strerror or exc)
            metrics.BAYES_AUTOLEARN.labels(message_class.value, "error").inc()
            return None
        log.info("%s: autolearn as %s", transaction.log_id, message_class.value)
        metrics.BAYES_AUTOLEARN.labels(message_class.value, "spooled").inc()
        return message_class


def build_autolearner(settings: BayesSettings | None, scoring: ScoringSettings
                      ) -> Autolearner | None:
    if (settings is None or not settings.enabled or not settings.autolearn
            or not scoring.enabled):
        return None
    return Autolearner(settings, scoring)


log = logging.getLogger(__name__)
