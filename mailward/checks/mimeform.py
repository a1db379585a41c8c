"""MIME-form heuristics: how the message was encoded, where bulk mailers differ from clients.

Reads the shared bounded parse (mailward/mime.py through the `mime` check) and the top
header section; symbols are names only:

* MIME_TEXT_BASE64: a readable text part sent in base64 (mail clients send text as
  7bit, 8bit or quoted-printable; base64 hides the words from simple filters).
* MIME_NO_VERSION: a MIME Content-Type (multipart or HTML) without the MIME-Version
  header every MIME client writes.
* MIME_ALT_TEXT_STUB: a text/plain alternative that is nearly empty next to its HTML
  (a placeholder so the message "has" a text part).
* CHARSET_CJK: text declared in a Chinese, Japanese or Korean charset (parts or Subject).
  A strong hint for a site whose users never write in those languages, meaningless for
  one that does: set its weight to 0 in [scoring.weights] there.
"""

from __future__ import annotations

import re

from mailward.checks import mime as mime_check
from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.checks.rulebase import RuleCheck, RuleFindings
from mailward.mime import ParsedMessage
from mailward.model import Transaction

CJK_CHARSETS = frozenset({
    "gb2312", "gbk", "gb18030", "hz-gb-2312", "big5", "big5-hkscs", "euc-tw", "euc-kr",
    "ks_c_5601-1987", "ks_c_5601", "iso-2022-kr", "johab", "iso-2022-jp", "euc-jp",
    "shift_jis", "shift-jis", "sjis", "cp932", "cp936", "cp949", "cp950", "windows-936",
    "windows-949", "windows-950",
})
STUB_TEXT_CHARS = 40
STUB_HTML_CHARS = 400

_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*\s]{1,40})(?:\*[^?]*)?\?[bBqQ]\?")


def _first(transaction: Transaction, name: str) -> str | None:
    for _, header in transaction.headers_named(name):
        return header.value[:4000]
    return None


def structure_symbols(parsed: ParsedMessage) -> list[Symbol]:
    symbols: list[Symbol] = []
    if any(part.transfer_encoding == "base64" for part in parsed.text_parts):
        symbols.append(Symbol("MIME_TEXT_BASE64"))
    plain_chars = sum(len(part.plain.strip()) for part in parsed.plain_parts)
    html_chars = sum(len(part.plain) for part in parsed.html_parts)
    if parsed.plain_parts and plain_chars < STUB_TEXT_CHARS and html_chars > STUB_HTML_CHARS:
        symbols.append(Symbol("MIME_ALT_TEXT_STUB"))
    return symbols


def charset_symbols(parsed: ParsedMessage, subject: str | None) -> list[Symbol]:
    charsets = {part.charset.strip().strip('"').lower() for part in parsed.text_parts}
    if subject is not None:
        charsets.update(match.group(1).lower()
                        for match in _ENCODED_WORD_CHARSET.finditer(subject))
    return [Symbol("CHARSET_CJK")] if charsets & CJK_CHARSETS else []


def version_symbols(transaction: Transaction) -> list[Symbol]:
    content_type = (_first(transaction, "Content-Type") or "").strip().lower()
    mime_like = content_type.startswith(("multipart/", "text/html"))
    if mime_like and _first(transaction, "MIME-Version") is None:
        return [Symbol("MIME_NO_VERSION")]
    return []


RESULT: ResultKey[RuleFindings] = ResultKey("mime_form")


class MimeFormHeuristics(RuleCheck):
    """The MIME-form rules above, on the shared parse."""

    name = "mime_form"
    produces = RESULT
    requires = (mime_check.RESULT,)

    def evaluate(self, check_input: CheckInput) -> RuleFindings:
        view = check_input.results.get(mime_check.RESULT)
        transaction = check_input.transaction
        if view is None:
            return RuleFindings(tuple(version_symbols(transaction)))
        parsed = view.parsed
        return RuleFindings(tuple([
            *structure_symbols(parsed),
            *charset_symbols(parsed, _first(transaction, "Subject")),
            *version_symbols(transaction),
        ]))


def _build(context: BuildContext[None]) -> MimeFormHeuristics | None:
    return MimeFormHeuristics() if context.settings.scoring.enabled else None


SPEC: CheckSpec[None] = CheckSpec("mime_form", _build)
