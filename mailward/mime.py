"""A bounded MIME parse of one message: the decoded text a content check reads.

Content heuristics, URL lists and Bayes all read the same thing: the text and HTML
parts decoded from their transfer encoding and charset, the attachments' names, types
and first bytes, and what was wrong with the structure.  This module produces that
once per message (through the `mime` check, mailward/checks/mime.py), with limits on
everything a hostile sender controls:

* nesting depth and number of parts (a message of 10,000 nested multiparts is walked
  to `max_depth` and `max_parts`, then the rest is counted as a limit hit);
* bytes decoded per part and in total (a 20 MB HTML part yields its first
  `max_part_bytes` of text; the encoded payload is cut *before* decoding, so memory
  stays bounded too);
* a broken base64 or quoted-printable payload decodes as far as it can and is noted as
  a defect, an unknown charset is decoded as Latin-1 (every byte maps to a character)
  and noted; nothing here raises for bad input.

The parse runs on the Transaction the milter built (headers as received, body capped
by `milter.max_body_size`), with the standard library's `email` package.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import quopri
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailward import htmlevents
from mailward import message as message_bytes
from mailward.model import Transaction

_MAX_DEFECTS = 32
_MAX_HEADER_TEXT = 998 * 4
_ATTACHMENT_HEAD = 64 * 1024
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: Every byte that is no base64 letter (deleted before decoding), and the bytes a
#: base64 body may hold besides its letters (padding, and what \s is in a bytes regex).
_NOT_BASE64 = bytes(byte for byte in range(256) if byte not in _BASE64_ALPHABET)
_BASE64_PADDING_SPACE = _BASE64_ALPHABET + b"= \t\n\r\f\v"


@dataclass(frozen=True)
class MimeLimits:
    """How much of a message the parse looks at; past a limit, it stops and says so."""

    max_depth: int = 20
    max_parts: int = 500
    max_part_bytes: int = 1024 * 1024
    max_total_bytes: int = 8 * 1024 * 1024


DEFAULT_LIMITS = MimeLimits()


@dataclass(frozen=True)
class TextPart:
    """One text/plain or text/html part, decoded.

    `text` is the decoded content (HTML as markup; `plain` is its visible text, the
    same as `text` for text/plain).  `charset` is what the part declared ("" if none);
    `charset_known` is False when Python does not know it (decoded as Latin-1 then).
    `truncated` says the part was longer than `max_part_bytes`.
    """

    content_type: str
    text: str
    plain: str
    charset: str = ""
    charset_known: bool = True
    decode_errors: bool = False
    truncated: bool = False
    is_html: bool = False
    #: The part's Content-Transfer-Encoding, lower case ("" when none was given).
    transfer_encoding: str = ""
    #: html.parser's events for `text` (HTML parts up to htmlevents.MAX_RECORDED_CHARS),
    #: so the checks that read the markup replay one tokenisation instead of each parsing
    #: again; None: not recorded (the readers parse `text` themselves).
    html_events: tuple[htmlevents.Event, ...] | None = field(
        default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Attachment:
    """A part that is not text for reading: a file, an image, an archive.

    `filename` is the decoded name ("" when none was given); `size` is the decoded size
    as far as it was decoded (bounded); `head` is the first bytes of the decoded content,
    enough to recognise file types and archive directories.
    """

    content_type: str
    filename: str
    size: int
    head: bytes
    inline: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class ParsedMessage:
    """What the bounded parse found.  `defects` are short names, bounded in number."""

    subject: str
    text_parts: tuple[TextPart, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    defects: tuple[str, ...] = ()
    part_count: int = 0
    depth: int = 0
    limits_hit: bool = False

    @property
    def html_parts(self) -> tuple[TextPart, ...]:
        return tuple(part for part in self.text_parts if part.is_html)

    @property
    def plain_parts(self) -> tuple[TextPart, ...]:
        return tuple(part for part in self.text_parts if not part.is_html)

    def visible_text(self) -> str:
        """The readable text of every text part, joined (HTML as its visible text)."""
        return "\n".join(part.plain for part in self.text_parts)


def decode_header_text(value: str) -> str:
    """A header value as a person reads it: RFC 2047 encoded words decoded, unfolded.

    Undecodable words are kept as written; the result is bounded.
    """
    unfolded = re.sub(r"\r?\n[ \t]+", " ", value[:_MAX_HEADER_TEXT]).strip()
    try:
        words = email.header.decode_header(unfolded)
    except (ValueError, email.errors.HeaderParseError):
        return unfolded
    if all(isinstance(chunk, str) for chunk, _ in words):
        return unfolded  # no encoded words
    pieces: list[str] = []
    for chunk, charset in words:
        if isinstance(chunk, str):
            pieces.append(chunk)
        else:
            pieces.append(_decode_text(chunk, charset or "us-ascii")[0])
    return "".join(pieces)


def parse_message(transaction: Transaction, limits: MimeLimits = DEFAULT_LIMITS) -> ParsedMessage:
    """The bounded parse of one message (never raises for anything the sender wrote)."""
    raw = message_bytes.raw_message(transaction)
    subject = ""
    for _, header in transaction.headers_named("Subject"):
        subject = decode_header_text(header.value)
        break
    try:
        root = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    except RecursionError:
        return ParsedMessage(subject, defects=("nesting_too_deep",), limits_hit=True)
    walker = _Walker(limits)
    walker.walk(root, depth=0)
    return ParsedMessage(
        subject=subject,
        text_parts=tuple(walker.text_parts),
        attachments=tuple(walker.attachments),
        defects=tuple(walker.defects),
        part_count=walker.parts,
        depth=walker.deepest,
        limits_hit=walker.limits_hit,
    )


class _Walker:
    """Depth-first walk with budgets; collects parts in document order."""

    def __init__(self, limits: MimeLimits) -> None:
        self.limits = limits
        self.text_parts: list[TextPart] = []
        self.attachments: list[Attachment] = []
        self.defects: list[str] = []
        self.parts = 0
        self.deepest = 0
        self.limits_hit = False
        self.budget = limits.max_total_bytes

    def note(self, defect: str) -> None:
        if len(self.defects) < _MAX_DEFECTS and defect not in self.defects:
            self.defects.append(defect)

    def walk(self, part: email.message.Message, depth: int) -> None:
        if depth > self.limits.max_depth:
            self.limits_hit = True
            self.note("nesting_too_deep")
            return
        if self.parts >= self.limits.max_parts:
            self.limits_hit = True
            self.note("too_many_parts")
            return
        self.parts += 1
        self.deepest = max(self.deepest, depth)
        for defect in getattr(part, "defects", ()):
            self.note(_defect_name(defect))
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                for child in payload:
                    if isinstance(child, email.message.Message):
                        self.walk(child, depth + 1)
            return
        self.leaf(part)

    def leaf(self, part: email.message.Message) -> None:
        content_type = part.get_content_type()
        # str(): compat32 hands a header with 8-bit bytes over as an email.header.Header.
        disposition = str(part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        filename = _filename(part)
        is_text = content_type in ("text/plain", "text/html")
        if is_text and disposition != "attachment" and not filename:
            self.text(part, content_type)
        else:
            self.attachment(part, content_type, filename, disposition == "inline")

    def decoded(self, part: email.message.Message, limit: int) -> tuple[bytes, bool, bool]:
        """(bytes, truncated, broken): at most `limit` decoded bytes, within the budget."""
        limit = min(limit, self.budget)
        if limit <= 0:
            self.limits_hit = True
            self.note("decode_budget_exhausted")
            return b"", True, False
        data, truncated, broken = _decode_payload(part, limit)
        self.budget -= len(data)
        if broken:
            self.note("bad_transfer_encoding")
        return data, truncated, broken

    def text(self, part: email.message.Message, content_type: str) -> None:
        data, truncated, _ = self.decoded(part, self.limits.max_part_bytes)
        charset = part.get_content_charset() or ""
        text, known, errors = _decode_text(data, charset or "us-ascii")
        if not known:
            self.note("unknown_charset")
        is_html = content_type == "text/html"
        events = htmlevents.record(text) if is_html else None
        self.text_parts.append(TextPart(
            content_type=content_type, text=text,
            plain=html_visible_text(text, events) if is_html else text,
            html_events=events,
            charset=charset, charset_known=known, decode_errors=errors,
            truncated=truncated, is_html=is_html,
            transfer_encoding=str(part.get("Content-Transfer-Encoding", "")).strip().lower()[:40],
        ))

    def attachment(self, part: email.message.Message, content_type: str, filename: str,
                   inline: bool) -> None:
        data, truncated, _ = self.decoded(part, _ATTACHMENT_HEAD)
        self.attachments.append(Attachment(
            content_type=content_type, filename=filename, size=len(data), head=data,
            inline=inline, truncated=truncated,
        ))


def _defect_name(defect: object) -> str:
    name = type(defect).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Defect")).lower() or "defect"


def _filename(part: email.message.Message) -> str:
    # Both places a name can be given (Content-Disposition filename=, Content-Type name=,
    # RFC 2231 forms included) spell "name" in the header get_param reads; without it,
    # skip the email package's parameter parsing, the walk's costliest step per part.
    declared = f"{part.get('Content-Disposition', '')}{part.get('Content-Type', '')}"
    if "name" not in declared.lower():
        return ""
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except (ValueError, LookupError, TypeError):
        return ""
    if isinstance(name, tuple):  # RFC 2231 (charset, language, value)
        name = email.utils.collapse_rfc2231_value(name)
    return decode_header_text(str(name))[:255]


def _decode_payload(part: email.message.Message, limit: int) -> tuple[bytes, bool, bool]:
    """Decode the transfer encoding of a leaf part, cutting the input before decoding."""
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding not in ("base64", "quoted-printable"):
        # 7bit/8bit/binary: the bytes as sent (decode=True returns them unchanged;
        # decode=False would re-decode 8-bit text with "replace").
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            return b"", False, True
        return data[:limit], len(data) > limit, False
    try:
        payload = part.get_payload(decode=False)
    except ValueError:
        # 8-bit bytes in a part whose charset holds a NUL (found by fuzzing): the email
        # package's re-decoding raises; the part is as broken as its header.
        return b"", False, True
    if not isinstance(payload, str):
        return b"", False, True
    raw = payload.encode("ascii", "replace")
    if encoding == "base64":
        cut = raw[: (limit // 3 + 2) * 4 * 2]  # line breaks: room for up to 2x
        # bytes.translate deletes in one C pass what a regex substitution matched and
        # copied piece by piece (an attachment is up to a megabyte of base64).
        cleaned = cut.translate(None, _NOT_BASE64)
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
        broken = bool(cut.translate(None, _BASE64_PADDING_SPACE))  # [^A-Za-z0-9+/=\s]
        try:
            data = base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            data, broken = b"", True
        truncated = len(cut) < len(raw) or len(data) > limit
        return data[:limit], truncated, broken
    cut = raw[: limit * 3]
    data = quopri.decodestring(cut)
    broken = bool(re.search(rb"=(?![0-9A-Fa-f]{2}|\r?\n)", cut))
    return data[:limit], len(cut) < len(raw) or len(data) > limit, broken


def _decode_text(data: bytes, charset: str) -> tuple[str, bool, bool]:
    """(text, charset known, had undecodable bytes)."""
    try:
        codec = codecs.lookup(charset.strip().strip('"').lower())
        # A bytes-to-bytes codec (charset=base64, found by fuzzing) is no charset: it
        # decodes to bytes.  str.encode() refuses those with LookupError.
        "".encode(codec.name)
    except (LookupError, ValueError):
        return data.decode("latin-1"), False, False
    try:
        return codec.decode(data)[0], True, False
    except (UnicodeDecodeError, ValueError):
        return data.decode(codec.name, errors="replace"), True, True


class _VisibleText:
    """Collects the text a browser would show: no script/style/head, tags as spaces."""

    _HIDDEN = frozenset({"script", "style", "head", "title", "template"})
    _BREAKS = frozenset({"br", "p", "div", "tr", "li", "td", "h1", "h2", "h3", "table"})

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self._hidden_depth = 0

    def start(self, tag: str, attrs: htmlevents.Attributes, raw: str) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1
        elif tag in self._BREAKS:
            self.pieces.append(" ")

    def end(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden_depth:
            self._hidden_depth -= 1

    def data(self, text: str) -> None:
        if not self._hidden_depth:
            self.pieces.append(text)


def html_visible_text(html: str, events: Sequence[htmlevents.Event] | None = None) -> str:
    """The visible text of an HTML document (tolerant of any markup, never raises).

    `events`: html.parser's record of `html` (htmlevents.record), when the caller has it.
    """
    reader = _VisibleText()
    # No close(): an unterminated tag at the end stays unparsed instead of being shown
    # as text, as a browser would.  html.parser rarely complains; then keep what it has.
    htmlevents.read(html, events, reader)
    # White space runs collapsed to one space, ends stripped: split() and re's \s agree
    # on what white space is (str.isspace), and the join is three times faster.
    return " ".join("".join(reader.pieces).split())
