"""The `bayes` check: the learned token classifier as one more scoring input.

It reads the shared MIME parse (`mime.RESULT`), tokenizes it (mailward/bayes/tokenizer),
looks the tokens up in the store and combines them (mailward/bayes/classifier).  Its
symbols are graded by name, so scoring can weigh certainty (SpamAssassin's BAYES_99 idea):

    BAYES_SPAM_99  p >= 0.99      BAYES_HAM_99  p <= 0.01
    BAYES_SPAM_95  p >= 0.95      BAYES_HAM_95  p <= 0.05
    BAYES_SPAM_80  p >= 0.80      BAYES_HAM_80  p <= 0.20

with the probability in percent as detail (`BAYES_SPAM_99(99.7%)`); between 0.2 and 0.8
there is no symbol (unsure).  Nothing is emitted until the database has learned
`min_spam` and `min_ham` messages: an untrained Bayes only adds noise.  Because users of
other filters find that "Bayes silently never switched on", the check says so at start
and on every reload (its builder runs then), `mailward learn --stats` says it, and the
metrics `mailward_bayes_learned_messages` / `mailward_bayes_active` show it.

A store that cannot be read (Redis down, SQLite locked) gives the result `unavailable`
and no symbols: a temporary failure never turns into a spam verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from mailward.bayes.classifier import DEFAULT_CLASSIFIER, ClassifierSettings, classify
from mailward.bayes.settings import BayesSettings, open_bayes_store, read_bayes
from mailward.bayes.store import BayesStore, Totals
from mailward.bayes.tokenizer import tokenize
from mailward.checks import mime
from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.state.base import StateUnavailable

log = logging.getLogger(__name__)


class BayesStatus(StrEnum):
    CLASSIFIED = "classified"
    INACTIVE = "inactive"        # not enough learned ham and spam yet
    UNAVAILABLE = "unavailable"  # the store could not be read
    NO_CONTENT = "no_content"    # no parse to read (mime result missing)


@dataclass(frozen=True)
class BayesOutcome:
    status: BayesStatus
    probability: float = 0.5
    clues: int = 0
    totals: Totals | None = None


RESULT: ResultKey[BayesOutcome] = ResultKey("bayes")

#: (threshold, name) from the most certain down; spam side compares >=, ham side <=.
SPAM_GRADES = ((0.99, "BAYES_SPAM_99"), (0.95, "BAYES_SPAM_95"), (0.80, "BAYES_SPAM_80"))
HAM_GRADES = ((0.01, "BAYES_HAM_99"), (0.05, "BAYES_HAM_95"), (0.20, "BAYES_HAM_80"))


def grade(probability: float) -> str | None:
    """The symbol name for a spam probability, or None when unsure."""
    for threshold, name in SPAM_GRADES:
        if probability >= threshold:
            return name
    for threshold, name in HAM_GRADES:
        if probability <= threshold:
            return name
    return None


def activity_line(totals: Totals, settings: BayesSettings) -> str:
    """One sentence for the log and `learn --stats`: active, or what is still missing."""
    learned = f"learned {totals.spam} spam and {totals.ham} ham"
    if is_active(totals, settings):
        return f"bayes: active ({learned})"
    return (f"bayes: INACTIVE until it has learned {settings.min_spam} spam and "
            f"{settings.min_ham} ham ({learned}); train with `mailward learn` "
            f"or by moving mail into and out of Junk")


def is_active(totals: Totals, settings: BayesSettings) -> bool:
    return totals.spam >= settings.min_spam and totals.ham >= settings.min_ham


class BayesCheck(Check[BayesOutcome]):
    name = "bayes"
    produces = RESULT
    requires = (mime.RESULT,)

    def __init__(self, store: BayesStore, settings: BayesSettings,
                 classifier: ClassifierSettings = DEFAULT_CLASSIFIER) -> None:
        self._store = store
        self._settings = settings
        self._classifier = classifier

    def evaluate(self, check_input: CheckInput) -> BayesOutcome:
        view = check_input.results.get(mime.RESULT)
        if view is None:
            return BayesOutcome(BayesStatus.NO_CONTENT)
        try:
            totals = self._store.totals()
            _record_totals(totals, self._settings)
            if not is_active(totals, self._settings):
                return BayesOutcome(BayesStatus.INACTIVE, totals=totals)
            tokens = tokenize(check_input.transaction, view.parsed, self._settings.tokenizer)
            counts = self._store.token_counts(tokens)
        except StateUnavailable as exc:
            log.warning("bayes: %s", exc)
            return BayesOutcome(BayesStatus.UNAVAILABLE)
        result = classify(tokens, counts, totals.spam, totals.ham, self._classifier)
        return BayesOutcome(BayesStatus.CLASSIFIED, result.probability, result.clues, totals)

    def symbols(self, result: BayesOutcome) -> Sequence[Symbol]:
        if result.status is not BayesStatus.CLASSIFIED:
            return ()
        name = grade(result.probability)
        if name is None:
            return ()
        return (Symbol(name, f"{result.probability * 100:.1f}%"),)

    def metric_result(self, result: BayesOutcome) -> str:
        if result.status is not BayesStatus.CLASSIFIED:
            return result.status.value
        name = grade(result.probability)
        if name is None:
            return "unsure"
        return "spam" if name.startswith("BAYES_SPAM") else "ham"


def _record_totals(totals: Totals, settings: BayesSettings) -> None:
    from mailward import metrics

    metrics.BAYES_LEARNED.labels("spam").set(totals.spam)
    metrics.BAYES_LEARNED.labels("ham").set(totals.ham)
    metrics.BAYES_ACTIVE.set(1 if is_active(totals, settings) else 0)


def _build(context: BuildContext[BayesSettings]) -> BayesCheck | None:
    settings = context.section
    if not settings.enabled:
        return None
    state = context.settings.state
    store = context.shared_object(
        "bayes_store", lambda: open_bayes_store(settings, str(state.backend), state.url))
    try:
        totals = store.totals()
    except StateUnavailable as exc:
        log.warning("bayes: cannot read the token database at start: %s", exc)
    else:
        _record_totals(totals, settings)
        log.info("%s", activity_line(totals, settings))
    return BayesCheck(store, settings)


SPEC: CheckSpec[BayesSettings] = CheckSpec("bayes", _build, section="bayes",
                                           read_settings=read_bayes)
