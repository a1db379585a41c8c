"""Content heuristics on the bounded MIME parse: what the body and attachments give away.

Reads the shared parse (`mime.RESULT`, mailward/mime.py): decoded text and HTML, the
attachments' names, types and first bytes.  Each rule emits one symbol; the shipped
weights are in mailward/scoring.py's DEFAULT_WEIGHTS.

* HTML_ONLY: HTML without a text alternative (bulk mailers; real clients send both).
* MOSTLY_IMAGES: images and almost no text (text-as-picture defeats text filters).
* HTML_HIDDEN_TEXT: `display:none`, `visibility:hidden`, zero font size: text for filters,
  not for readers.
* LINK_TEXT_MISMATCH: a link whose visible text is a domain or URL other than where it
  points (`<a href="http://evil.test">www.bank.example</a>`).
* URL_IP_LITERAL: a link to a bare IP address.
* ATTACH_EXECUTABLE, ATTACH_DOUBLE_EXT, ATTACH_OFFICE_MACRO, ATTACH_ARCHIVE_EXECUTABLE:
  files that run when opened, names that hide it (invoice.pdf.exe), Office documents
  with macros, archives that carry an executable.

Every rule works on bounded input (the parse's limits, a cap on links examined).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailward import htmlevents
from mailward.checks import mime as mime_check
from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.mime import Attachment, ParsedMessage

MAX_LINKS = 500

EXECUTABLE_EXTENSIONS = frozenset({
    "exe", "scr", "com", "pif", "bat", "cmd", "cpl", "js", "jse", "vbs", "vbe", "wsf",
    "wsh", "hta", "jar", "msi", "msp", "ps1", "lnk", "reg", "iso", "img", "vhd", "dll",
})
MACRO_EXTENSIONS = frozenset({"docm", "dotm", "xlsm", "xltm", "xlam", "pptm", "potm", "ppam"})
DOCUMENT_EXTENSIONS = frozenset({"pdf", "doc", "docx", "xls", "xlsx", "txt", "jpg", "png",
                                 "zip", "rtf", "odt"})

_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0*(?:\.0+)?(?:px|pt|em)?\s*[;\"']",
    re.I)
_DOMAINISH = re.compile(r"(?:https?://)?((?:[a-z0-9-]+\.)+[a-z]{2,24})(?:[/:?#]\S*)?", re.I)
_IP_HOST = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\[?[0-9a-f:]+:[0-9a-f:]*\]?", re.I)


@dataclass(frozen=True)
class ContentFindings:
    symbols: tuple[Symbol, ...] = ()


RESULT: ResultKey[ContentFindings] = ResultKey("content")


class _LinkReader:
    """Collects (href, visible text) of <a> elements, bounded (an htmlevents reader)."""

    def __init__(self) -> None:
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def start(self, tag: str, attrs: htmlevents.Attributes, raw: str) -> None:
        if tag == "a" and len(self.links) < MAX_LINKS:
            self._href = dict(attrs).get("href") or ""
            self._text = []

    def end(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None

    def data(self, text: str) -> None:
        if self._href is not None and len(self._text) < 50:
            self._text.append(text)


class _Links(htmlevents.ReaderParser):
    """The link reader as an HTMLParser of its own (`feed`, then `links`)."""

    def __init__(self) -> None:
        self._links = _LinkReader()
        super().__init__(self._links)

    @property
    def links(self) -> list[tuple[str, str]]:
        return self._links.links


def links(html: str, events: Sequence[htmlevents.Event] | None = None) -> list[tuple[str, str]]:
    """The links of `html`; `events` is html.parser's record of it, when there is one."""
    if "<a" not in html and "<A" not in html:
        return []  # html.parser only opens a tag at "<" + ASCII letter: no <a, no link
    reader = _LinkReader()
    htmlevents.read(html, events, reader)  # keeps what was found before a parse error
    return reader.links


def _host(url: str) -> str:
    try:
        return (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return ""


def _base(domain: str) -> str:
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def _hides_text(html: str) -> bool:
    """`_HIDDEN_STYLE` found in `html`, with a cheap look for its three words first.

    Only for ASCII text: re.I lets "s" and "i" match the long s and the dotless i,
    which lower() keeps, so other text goes to the expression directly.
    """
    if html.isascii():
        lowered = html.lower()
        if "display" not in lowered and "visibility" not in lowered \
                and "font-size" not in lowered:
            return False
    return _HIDDEN_STYLE.search(html) is not None


def link_symbols(parsed: ParsedMessage) -> list[Symbol]:
    symbols: dict[str, Symbol] = {}
    for part in parsed.html_parts:
        for href, text in links(part.text, part.html_events):
            host = _host(href)
            if not host:
                continue
            if _IP_HOST.fullmatch(host):
                symbols.setdefault("URL_IP_LITERAL", Symbol("URL_IP_LITERAL", host))
            shown = _DOMAINISH.fullmatch(text)
            if shown and _base(shown.group(1)) != _base(host):
                symbols.setdefault("LINK_TEXT_MISMATCH",
                                   Symbol("LINK_TEXT_MISMATCH", f"{shown.group(1)}>{host}"))
    return list(symbols.values())


def _extensions(filename: str) -> list[str]:
    return [part.lower() for part in filename.strip().rstrip(".").split(".")[1:]]


def _zip_members(head: bytes) -> list[str]:
    """File names from the local headers of a ZIP archive's first bytes (bounded)."""
    names: list[str] = []
    position = head.find(b"PK\x03\x04")
    while position >= 0 and len(names) < 100 and position + 30 <= len(head):
        try:
            (_, _, _, _, _, _, compressed, _, name_length, extra_length) = struct.unpack(
                "<HHHHHIIIHH", head[position + 4:position + 30])
        except struct.error:
            break
        name = head[position + 30:position + 30 + name_length]
        names.append(name.decode("utf-8", "replace"))
        step = position + 30 + name_length + extra_length + compressed
        position = head.find(b"PK\x03\x04", step if compressed else position + 4)
    return names


def attachment_symbols(attachments: Sequence[Attachment]) -> list[Symbol]:
    found: dict[str, Symbol] = {}
    for attachment in attachments:
        extensions = _extensions(attachment.filename)
        last = extensions[-1] if extensions else ""
        name = attachment.filename
        if last in EXECUTABLE_EXTENSIONS or attachment.head.startswith(b"MZ"):
            found.setdefault("ATTACH_EXECUTABLE", Symbol("ATTACH_EXECUTABLE", name))
            if len(extensions) >= 2 and extensions[-2] in DOCUMENT_EXTENSIONS:
                found.setdefault("ATTACH_DOUBLE_EXT", Symbol("ATTACH_DOUBLE_EXT", name))
        if last in MACRO_EXTENSIONS or (attachment.head.startswith(b"\xd0\xcf\x11\xe0")
                                        and b"V\x00B\x00A" in attachment.head):
            found.setdefault("ATTACH_OFFICE_MACRO", Symbol("ATTACH_OFFICE_MACRO", name))
        if attachment.head.startswith(b"PK\x03\x04"):
            members = _zip_members(attachment.head)
            if any(member.lower().endswith("vbaproject.bin") for member in members):
                found.setdefault("ATTACH_OFFICE_MACRO", Symbol("ATTACH_OFFICE_MACRO", name))
            if any((_extensions(member) or [""])[-1] in EXECUTABLE_EXTENSIONS
                   for member in members):
                found.setdefault("ATTACH_ARCHIVE_EXECUTABLE",
                                 Symbol("ATTACH_ARCHIVE_EXECUTABLE", name))
    return list(found.values())


def content_symbols(parsed: ParsedMessage) -> tuple[Symbol, ...]:
    symbols: list[Symbol] = []
    if parsed.html_parts and not parsed.plain_parts:
        symbols.append(Symbol("HTML_ONLY"))
    images = [a for a in parsed.attachments if a.content_type.startswith("image/")]
    if images and len(parsed.visible_text().strip()) < 200:
        symbols.append(Symbol("MOSTLY_IMAGES"))
    if any(_hides_text(part.text) for part in parsed.html_parts):
        symbols.append(Symbol("HTML_HIDDEN_TEXT"))
    symbols.extend(link_symbols(parsed))
    symbols.extend(attachment_symbols(parsed.attachments))
    return tuple(symbols)


class ContentHeuristics(Check[ContentFindings]):
    """The content rules above, on the shared parse."""

    name = "content"
    produces = RESULT
    requires = (mime_check.RESULT,)

    def evaluate(self, check_input: CheckInput) -> ContentFindings:
        view = check_input.results.get(mime_check.RESULT)
        if view is None:
            return ContentFindings()
        return ContentFindings(content_symbols(view.parsed))

    def symbols(self, result: ContentFindings) -> Sequence[Symbol]:
        return result.symbols

    def metric_result(self, result: ContentFindings) -> str:
        return "hit" if result.symbols else "clean"


def _build(context: BuildContext[None]) -> ContentHeuristics | None:
    # Symbols without scoring would only cost time (content rules parse the message).
    return ContentHeuristics() if context.settings.scoring.enabled else None


SPEC: CheckSpec[None] = CheckSpec("content", _build)
