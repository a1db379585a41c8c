"""URL-form heuristics: links built to track, redirect or disguise where they go.

Reads the URLs of the shared bounded parse: `href`s of the HTML parts and http(s) URLs
written in the text parts, at most `MAX_URLS` per message.  Symbols are names only:

* URL_USERINFO: `http://www.bank.example@evil.test/`: the part before `@` is shown to
  the reader, the host after it is where the browser goes.
* URL_OBFUSCATED_HOST: a host written with %-escapes, or as one decimal or hex number.
* URL_REDIRECT: a URL that carries another URL in its path or query (open redirectors).
* URL_ODD_PORT: an explicit port other than 80 and 443.
* URL_UNSUBSCRIBE: a link to remove/unsubscribe/opt out (bulk mail; wanted newsletters
  have them too, so on its own it weighs little).
* URL_MAILTO_REMOVE: a mailto: link to a remove/unsubscribe address or subject.
* URL_LONG_QUERY: a query string of `LONG_QUERY` characters or more (per-recipient
  tracking).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from mailward.casefold import folded_matches, written
from mailward.checks import mime as mime_check
from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.checks.rulebase import RuleCheck, RuleFindings
from mailward.mime import ParsedMessage

MAX_URLS = 500
MAX_URL_CHARS = 2048
LONG_QUERY = 60

_HREF_SOURCE = r"""href\s*=\s*(?:"([^"]{0,2048})"|'([^']{0,2048})'|([^\s"'>]{1,2048}))"""
_TEXT_URL_SOURCE = r"https?://[^\s<>\"'()]{1,2048}"
_HREF = re.compile(_HREF_SOURCE, re.I)
_TEXT_URL = re.compile(_TEXT_URL_SOURCE, re.I)
# The same without re.I, for lower-cased ASCII text: case folding keeps the engine from
# skipping ahead to the next "h" (mailward/casefold.py: 18 us per bench message, now 5).
_HREF_IN_LOWER_ASCII = re.compile(_HREF_SOURCE)
_TEXT_URL_IN_LOWER_ASCII = re.compile(_TEXT_URL_SOURCE)
_REMOVE_WORD = re.compile(r"remove|unsub|opt-?out|opt_out", re.I)
_EMBEDDED_URL = re.compile(r"(?:https?:|https?%3a|www\.|%2f%2f)", re.I)


def message_urls(parsed: ParsedMessage) -> Iterator[str]:
    """Hrefs of the HTML parts, then URLs in the text parts, at most MAX_URLS."""
    count = 0
    for part in parsed.html_parts:
        text = part.text
        for match in folded_matches(_HREF, _HREF_IN_LOWER_ASCII, text):
            if count >= MAX_URLS:
                return
            count += 1
            yield (written(text, match, 1) or written(text, match, 2)
                   or written(text, match, 3)).strip()
    for part in parsed.plain_parts:
        text = part.text
        for match in folded_matches(_TEXT_URL, _TEXT_URL_IN_LOWER_ASCII, text):
            if count >= MAX_URLS:
                return
            count += 1
            yield written(text, match, 0)


def url_names(url: str) -> set[str]:
    """The URL-form symbol names one URL fires."""
    text = url[:MAX_URL_CHARS]
    lowered = text.lower()
    if lowered.startswith("mailto:"):
        return {"URL_MAILTO_REMOVE"} if _REMOVE_WORD.search(unquote(lowered)) else set()
    if not lowered.startswith(("http://", "https://")):
        return set()
    names: set[str] = set()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return {"URL_OBFUSCATED_HOST"}
    host = (parts.hostname or "").lower()
    if "@" in parts.netloc:
        names.add("URL_USERINFO")
    if "%" in parts.netloc or re.fullmatch(r"\d{6,}|0x[0-9a-f]{6,}", host):
        names.add("URL_OBFUSCATED_HOST")
    if port is not None and port not in (80, 443):
        names.add("URL_ODD_PORT")
    rest = f"{parts.path}?{parts.query}"
    if _EMBEDDED_URL.search(rest):
        names.add("URL_REDIRECT")
    if _REMOVE_WORD.search(rest):
        names.add("URL_UNSUBSCRIBE")
    if len(parts.query) >= LONG_QUERY:
        names.add("URL_LONG_QUERY")
    return names


def url_form_symbols(parsed: ParsedMessage) -> tuple[Symbol, ...]:
    names: set[str] = set()
    for url in message_urls(parsed):
        names |= url_names(url)
    return tuple(Symbol(name) for name in sorted(names))


RESULT: ResultKey[RuleFindings] = ResultKey("url_forms")


class UrlFormHeuristics(RuleCheck):
    """The URL-form rules above, on the shared parse."""

    name = "url_forms"
    produces = RESULT
    requires = (mime_check.RESULT,)

    def evaluate(self, check_input: CheckInput) -> RuleFindings:
        view = check_input.results.get(mime_check.RESULT)
        if view is None:
            return RuleFindings()
        return RuleFindings(url_form_symbols(view.parsed))


def _build(context: BuildContext[None]) -> UrlFormHeuristics | None:
    return UrlFormHeuristics() if context.settings.scoring.enabled else None


SPEC: CheckSpec[None] = CheckSpec("url_forms", _build)
