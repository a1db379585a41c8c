"""The advertising family: how much of a message looks like advertising, as one grade.

Many rules describe the layout and language of advertising: HTML-only mail, big fonts,
calls to action, offers, unsubscribe links, shouting subjects (content.py, headers.py,
htmlstyle.py, urlforms.py, phrases.py, mimeform.py).  Spam has them, and so has every
newsletter and shop mailing people signed up for.  Summing one weight per rule would
make a busy newsletter (a dozen of them) spam by layout alone.  So the family's rules
weigh nothing on their own (they still show in X-Spam-Status, to explain), and this check
counts how many of them fired and emits cumulative grades: ADVERTISING_3, ADVERTISING_6,
ADVERTISING_9 and ADVERTISING_12 (at 3, 6, 9, 12 or more family symbols).  The grades'
weights together stay under half of `required` (bench/tune_weights.py fits them so):
advertising alone never flags a message; a sign of deception (forged headers, a botnet
hop, hidden text, a tracking token, Bcc to strangers, fraud phrases) must add to it.
This is the group limit Rspamd calls a group's `max_score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mailward.checks import content, headers, htmlstyle, mimeform, phrases, urlforms
from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.checks.rulebase import RuleCheck, RuleFindings

#: Symbols of advertising layout and language (every PHRASE_* symbol belongs too).
FAMILY = frozenset({
    "HTML_ONLY", "HTML_FONT_HEAVY", "HTML_BIG_FONT", "HTML_FORM", "HTML_SCRIPT",
    "HTML_UPPERCASE_TAGS", "HTML_LINK_CLICK_HERE", "HTML_IMAGES_LITTLE_TEXT",
    "MIME_ALT_TEXT_STUB", "URL_UNSUBSCRIBE", "URL_LONG_QUERY", "URL_REDIRECT",
    "BODY_DOLLAR_AMOUNTS", "BODY_TOLL_FREE", "BODY_EXCLAIM_MANY", "BODY_CAPS_HEAVY",
    "SUBJECT_SPAM_PHRASE", "SUBJECT_ALL_CAPS", "SUBJECT_EXCESS_PUNCT",
})
GRADES = (3, 6, 9, 12)
GRADE_SYMBOLS = tuple(f"ADVERTISING_{grade}" for grade in GRADES)


def in_family(name: str) -> bool:
    return name in FAMILY or name.startswith("PHRASE_")


class _HasSymbols(Protocol):
    @property
    def symbols(self) -> tuple[Symbol, ...]: ...


SOURCES: tuple[ResultKey[_HasSymbols], ...] = (
    headers.RESULT, content.RESULT, mimeform.RESULT, htmlstyle.RESULT, urlforms.RESULT,
    phrases.RESULT,
)


def grade_symbols(names: Sequence[str]) -> tuple[Symbol, ...]:
    """The cumulative grades for the distinct family symbols among `names`."""
    count = len({name for name in names if in_family(name)})
    return tuple(Symbol(symbol) for grade, symbol in zip(GRADES, GRADE_SYMBOLS, strict=True)
                 if count >= grade)


RESULT: ResultKey[RuleFindings] = ResultKey("advertising")


class AdvertisingGrade(RuleCheck):
    """Counts the advertising family among the other rule checks' symbols."""

    name = "advertising"
    produces = RESULT
    uses = SOURCES

    def evaluate(self, check_input: CheckInput) -> RuleFindings:
        names: list[str] = []
        for key in SOURCES:
            found = check_input.results.get(key)
            if found is not None:
                names.extend(symbol.name for symbol in found.symbols)
        return RuleFindings(grade_symbols(names))


def _build(context: BuildContext[None]) -> AdvertisingGrade | None:
    return AdvertisingGrade() if context.settings.scoring.enabled else None


SPEC: CheckSpec[None] = CheckSpec("advertising", _build)
