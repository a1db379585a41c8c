"""The `mime` check: one bounded MIME parse per message, for the checks that read content.

It decides nothing and writes no Authentication-Results; its result is a `MimeView`
that parses on first use (mailward/mime.py), so a configuration without content checks
pays nothing, and several content checks (heuristics, URL lists, Bayes) share one parse.
A content check lists `mime.RESULT` in its `requires`.

Its symbols are the structural problems everyone else would otherwise report twice:
MIME_LIMITS_HIT (the message was bigger or deeper than the parse looks at) and
MIME_BAD_ENCODING (broken base64 or quoted-printable), MIME_UNKNOWN_CHARSET.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.mime import DEFAULT_LIMITS, MimeLimits, ParsedMessage, parse_message
from mailward.model import Transaction


class MimeView:
    """The parse of one message, made when first asked for (then kept)."""

    def __init__(self, transaction: Transaction, limits: MimeLimits = DEFAULT_LIMITS) -> None:
        self._transaction = transaction
        self._limits = limits

    @cached_property
    def parsed(self) -> ParsedMessage:
        return parse_message(self._transaction, self._limits)

    @property
    def was_parsed(self) -> bool:
        return "parsed" in self.__dict__


RESULT: ResultKey[MimeView] = ResultKey("mime")

_DEFECT_SYMBOLS = {
    "bad_transfer_encoding": "MIME_BAD_ENCODING",
    "unknown_charset": "MIME_UNKNOWN_CHARSET",
}


class MimeCheck(Check[MimeView]):
    """Provides the shared parse; its symbols exist only once someone parsed."""

    name = "mime"
    produces = RESULT

    def __init__(self, limits: MimeLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits

    def evaluate(self, check_input: CheckInput) -> MimeView:
        return MimeView(check_input.transaction, self._limits)

    def symbols(self, result: MimeView) -> Sequence[Symbol]:
        if not result.was_parsed:
            return ()
        parsed = result.parsed
        symbols = [Symbol(_DEFECT_SYMBOLS[defect]) for defect in parsed.defects
                   if defect in _DEFECT_SYMBOLS]
        if parsed.limits_hit:
            symbols.append(Symbol("MIME_LIMITS_HIT"))
        return tuple(symbols)

    def metric_result(self, result: MimeView) -> str:
        return "view"


def _build(context: BuildContext[None]) -> MimeCheck:
    return MimeCheck()


SPEC: CheckSpec[None] = CheckSpec("mime", _build)
