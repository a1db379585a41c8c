"""HTML-style heuristics: markup that hides words from filters or shouts at the reader.

Mail clients write plain, predictable HTML; bulk mailers hide text from filters (colour
of the background, tiny fonts, comments and tags inside words, letters written as
numeric entities), and shout (huge fonts, many font tags, forms and scripts).  Reads the
HTML parts of the shared bounded parse; each part is examined up to `MAX_HTML_CHARS`.
Symbols are names only:

* HTML_TEXT_INVISIBLE: a text colour equal to the background it is written on.
* HTML_TINY_FONT: a font far below legible size (size 0/-3/-4, font-size under 3pt).
* HTML_BIG_FONT: a font of size 5 or more (+3), or font-size of 24pt (32px) and over.
* HTML_FONT_HEAVY: `FONT_HEAVY` or more font tags.
* HTML_UPPERCASE_TAGS: most tags written in upper case (hand-rolled bulk templates;
  HTML editors of mail clients write lower case).
* HTML_COMMENT_IN_WORD / HTML_TAG_IN_WORD: `v<!-- x -->iagra`, `v<b></b>iagra`: words
  split so that a filter does not see them.
* HTML_ENTITY_OBFUSCATION: letters and digits written as numeric entities (`&#102;`).
* HTML_LINK_CLICK_HERE: a link whose text is "click here" or just "here".
* HTML_FORM / HTML_SCRIPT: forms, scripts or event handlers in a message.
* HTML_IMAGES_LITTLE_TEXT: remote images with hardly any text: the message is a
  picture of text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailward import htmlevents
from mailward.checks import mime as mime_check
from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.checks.rulebase import RuleCheck, RuleFindings
from mailward.mime import TextPart

MAX_HTML_CHARS = 64 * 1024
MAX_TAGS = 20000
FONT_HEAVY = 15
IMAGE_TEXT_CHARS = 300

_NAMED_COLOURS = {
    "white": "ffffff", "black": "000000", "red": "ff0000", "green": "008000",
    "blue": "0000ff", "yellow": "ffff00", "silver": "c0c0c0", "gray": "808080",
    "grey": "808080", "navy": "000080", "maroon": "800000", "lime": "00ff00",
}
_STYLE_COLOUR = re.compile(r"(?:^|[;\s\"'])color\s*:\s*([#\w]+)", re.I)
_STYLE_BACKGROUND = re.compile(r"background(?:-color)?\s*:\s*([#\w]+)", re.I)
_STYLE_FONT_SIZE = re.compile(r"font-size\s*:\s*(\d+(?:\.\d+)?)\s*(px|pt)", re.I)
# A comment inside a word ("vi<!-- x -->agra"): a letter, the comment, a letter; tags
# inside a word ("vi<b></b>agra"): a letter, one or more short tags, a letter.  Written
# letter-first, `[A-Za-z]<!--.{0,80}?-->[A-Za-z]` and
# `[a-z](?:<[a-z][^<>]{0,40}>|</[a-z]{1,6}>)+[a-z]`, the engine started a match at every
# letter of the part (25 us each on a 2 KB part).  As searched, they are led by the plain
# "<" or "<!--" it finds at C speed, the letter before as a look-behind: each matches one
# character later, and only where the letter-first form does (`_tags_in_words`;
# tests/unit/test_scoring_fast_paths.py holds them to it).
_COMMENT_IN_WORD_SEARCH = re.compile(r"<!--(?<=[A-Za-z]<!--).{0,80}?-->[A-Za-z]", re.S)
_TAG_IN_WORD_SEARCH = re.compile(
    r"<(?<=[a-z]<)(?:[a-z][^<>]{0,40}>|/[a-z]{1,6}>)(?:<[a-z][^<>]{0,40}>|</[a-z]{1,6}>)*[a-z]")
_NUMERIC_ENTITY = re.compile(r"&#(?:x([0-9a-f]{1,4})|(\d{1,5}));", re.I)
_HEX3 = re.compile(r"[0-9a-f]{3}")
_HEX6 = re.compile(r"[0-9a-f]{6}")
_CLICK_HERE = re.compile(r"^\W*(?:click\b.*|here)\W*$", re.I | re.S)


def normalise_colour(value: str) -> str:
    """`#FFF`, `ffffff`, `White` -> "ffffff"; "" when it is no colour we know."""
    if not value:
        return ""  # most tags have no colour attribute: the common case, first
    text = value.strip().strip("\"'").lower()
    if text in _NAMED_COLOURS:
        return _NAMED_COLOURS[text]
    text = text.lstrip("#")
    if _HEX3.fullmatch(text):
        return "".join(char * 2 for char in text)
    return text if _HEX6.fullmatch(text) else ""


@dataclass
class _Style:
    """What one pass over an HTML part saw."""

    tags: int = 0
    uppercase_tags: int = 0
    font_tags: int = 0
    invisible: bool = False
    tiny_font: bool = False
    big_font: bool = False
    form: bool = False
    script: bool = False
    remote_images: int = 0
    click_here: bool = False
    backgrounds: list[tuple[str, str]] = field(default_factory=list)


class _StyleReader:
    """One bounded pass: tag shapes, colours against the enclosing background, fonts
    (an htmlevents reader)."""

    def __init__(self) -> None:
        self.style = _Style()
        self._link_text: list[str] | None = None

    def _background(self) -> str:
        return self.style.backgrounds[-1][1] if self.style.backgrounds else "ffffff"

    def start(self, tag: str, attrs: htmlevents.Attributes, raw: str) -> None:
        style = self.style
        if style.tags >= MAX_TAGS:
            return
        style.tags += 1
        if raw[1:2].isupper():
            style.uppercase_tags += 1
        values = {name: value or "" for name, value in attrs}
        css = values.get("style", "")
        background = normalise_colour(values.get("bgcolor", ""))
        css_background = _STYLE_BACKGROUND.search(css) if css else None  # most tags: none
        if css_background:
            background = normalise_colour(css_background.group(1)) or background
        if background and tag in ("body", "table", "tr", "td", "th", "div", "span", "p",
                                  "font", "center"):
            style.backgrounds = [*style.backgrounds[-50:], (tag, background)]
        colour = normalise_colour(values.get("color", "")) if tag == "font" else ""
        css_colour = _STYLE_COLOUR.search(css) if css else None
        if css_colour:
            colour = normalise_colour(css_colour.group(1)) or colour
        if colour and colour == self._background():
            style.invisible = True
        if tag == "font":
            style.font_tags += 1
            self._font_size(values.get("size", "").strip())
        size = _STYLE_FONT_SIZE.search(css) if css else None
        if size:
            points = float(size.group(1)) * (0.75 if size.group(2).lower() == "px" else 1.0)
            style.tiny_font |= points < 3.0
            style.big_font |= points >= 24.0
        if tag in ("form", "input", "textarea", "select"):
            style.form = True
        if tag == "script" or (values and any(name.startswith("on") for name in values)) or \
                values.get("href", "").strip().lower().startswith("javascript:"):
            style.script = True
        if tag == "img" and values.get("src", "").strip().lower().startswith(("http:", "https:")):
            style.remote_images += 1
        if tag == "a":
            self._link_text = []

    def _font_size(self, size: str) -> None:
        if size in ("0", "-3", "-4", "-5"):
            self.style.tiny_font = True
        elif size in ("+3", "+4", "+5", "+6", "5", "6", "7"):
            self.style.big_font = True

    def end(self, tag: str) -> None:
        backgrounds = self.style.backgrounds
        for index in range(len(backgrounds) - 1, -1, -1):
            if backgrounds[index][0] == tag:
                del backgrounds[index:]
                break
        if tag == "a" and self._link_text is not None:
            if _CLICK_HERE.match("".join(self._link_text)[:200]):
                self.style.click_here = True
            self._link_text = None

    def data(self, text: str) -> None:
        if self._link_text is not None and len(self._link_text) < 20:
            self._link_text.append(text)


def style_of(html: str, events: Sequence[htmlevents.Event] | None = None) -> _Style:
    """The style pass over `html[:MAX_HTML_CHARS]`; `events` is html.parser's record of
    `html` (used only when the whole of it is within MAX_HTML_CHARS: the same input)."""
    reader = _StyleReader()
    if events is not None and len(html) > MAX_HTML_CHARS:
        events = None
    htmlevents.read(html[:MAX_HTML_CHARS], events, reader)  # keeps what was seen on error
    return reader.style


def letter_entities(html: str) -> int:
    """How many ASCII letters and digits are written as numeric character references
    (a real editor writes those as themselves; only symbols need entities)."""
    count = 0
    for match in _NUMERIC_ENTITY.finditer(html):
        code = int(match.group(1), 16) if match.group(1) else int(match.group(2))
        if code < 128 and chr(code).isalnum():
            count += 1
    return count


def _tags_in_words(html: str, enough: int) -> int:
    """How many matches findall of the letter-first tag-in-word expression would return,
    counted up to `enough`.

    The letter-first form matches at p where `_TAG_IN_WORD_SEARCH` matches at p + 1 (its look-
    behind reads the letter at p), ending at the same place.  findall starts each search
    where the last match ended, so the letter of the next must be at or after that end:
    the search one character further.
    """
    count = 0
    end = 0
    while count < enough:
        match = _TAG_IN_WORD_SEARCH.search(html, end + 1)
        if match is None:
            break
        count += 1
        end = match.end()
    return count


def part_symbols(part: TextPart) -> set[str]:
    html = part.text[:MAX_HTML_CHARS]
    style = style_of(part.text, part.html_events)
    names: set[str] = set()
    flags = {
        "HTML_TEXT_INVISIBLE": style.invisible,
        "HTML_TINY_FONT": style.tiny_font,
        "HTML_BIG_FONT": style.big_font,
        "HTML_FONT_HEAVY": style.font_tags >= FONT_HEAVY,
        "HTML_UPPERCASE_TAGS": style.tags >= 10 and style.uppercase_tags * 2 > style.tags,
        "HTML_LINK_CLICK_HERE": style.click_here,
        "HTML_FORM": style.form,
        "HTML_SCRIPT": style.script,
        "HTML_IMAGES_LITTLE_TEXT": (style.remote_images > 0
                                    and len(part.plain) < IMAGE_TEXT_CHARS),
        "HTML_COMMENT_IN_WORD": _COMMENT_IN_WORD_SEARCH.search(html) is not None,
        "HTML_TAG_IN_WORD": _tags_in_words(html, enough=3) >= 3,
        "HTML_ENTITY_OBFUSCATION": letter_entities(html) >= 10,
    }
    names.update(name for name, fired in flags.items() if fired)
    return names


def html_style_symbols(parts: Sequence[TextPart]) -> tuple[Symbol, ...]:
    names: set[str] = set()
    for part in parts[:20]:
        names |= part_symbols(part)
    return tuple(Symbol(name) for name in sorted(names))


RESULT: ResultKey[RuleFindings] = ResultKey("html_style")


class HtmlStyleHeuristics(RuleCheck):
    """The HTML-style rules above, on the shared parse's HTML parts."""

    name = "html_style"
    produces = RESULT
    requires = (mime_check.RESULT,)

    def evaluate(self, check_input: CheckInput) -> RuleFindings:
        view = check_input.results.get(mime_check.RESULT)
        if view is None:
            return RuleFindings()
        return RuleFindings(html_style_symbols(view.parsed.html_parts))


def _build(context: BuildContext[None]) -> HtmlStyleHeuristics | None:
    return HtmlStyleHeuristics() if context.settings.scoring.enabled else None


SPEC: CheckSpec[None] = CheckSpec("html_style", _build)
