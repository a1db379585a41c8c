"""The tokens of one message, for the classifier.

Why these tokens: SpamBayes' and bogofilter's experience is that words of the decoded
text, a few header fields tagged with their name, and the hosts of links carry nearly all
the signal; raw MIME boilerplate and base64 carry noise.  So the tokenizer reads the
shared bounded parse (mailward/mime.py) rather than the raw bytes, tags header tokens
(`subject:free`), reduces URLs to their host and its parent domains (`url:example.com`),
and summarises what it skips (`skip:h 30` for a 30-character hex blob) instead of
storing it.  Word pairs (`w1 w2`) are optional: they help a little and double the
database.

Bounded: at most `max_tokens` distinct tokens per message (the first ones in message
order), and text beyond `max_text_chars` is not read, so a hostile message costs a
fixed amount of work.  The result is a set: a token counts once per message
(SpamBayes' finding, and what makes learning twice idempotent per message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailward.message import header_values
from mailward.mime import ParsedMessage, decode_header_text
from mailward.model import Transaction

#: Headers whose words are tokens, tagged with the lower-case name.
TOKEN_HEADERS = ("Subject", "From", "Reply-To", "To", "X-Mailer", "User-Agent",
                 "Content-Type", "Message-ID", "List-Unsubscribe", "Organization")

_WORD = re.compile(r"[^\W_][\w'$€£%.\-]*[^\W_]|[^\W_]", re.UNICODE)
_URL = re.compile(r"(?:https?|ftp)://[^\s<>\"')\]]+|www\.[^\s<>\"')\]]+", re.IGNORECASE)
_HREF = re.compile(r"""(?:href|src)\s*=\s*["']?([^"'\s>]+)""", re.IGNORECASE)
_ADDRESS = re.compile(r"[\w.+\-]+@([\w\-]+(?:\.[\w\-]+)+)")
_HEX = re.compile(r"[0-9a-f]+\Z")
_MIN_WORD = 3
_MAX_WORD = 20


@dataclass(frozen=True)
class TokenizerSettings:
    max_tokens: int = 1000
    max_text_chars: int = 200_000
    word_pairs: bool = False


class _Collector:
    """An insertion-ordered set that stops growing at its limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tokens: dict[str, None] = {}

    @property
    def full(self) -> bool:
        return len(self.tokens) >= self.limit

    def add(self, token: str) -> None:
        if not self.full:
            self.tokens[token] = None


def tokenize(transaction: Transaction, parsed: ParsedMessage,
             settings: TokenizerSettings | None = None) -> frozenset[str]:
    """The distinct tokens of one message (at most `settings.max_tokens`)."""
    settings = settings or DEFAULT_TOKENIZER
    out = _Collector(settings.max_tokens)
    for name in TOKEN_HEADERS:
        for value in header_values(transaction, name)[:4]:
            _header_tokens(out, name.lower(), value, parsed)
    budget = settings.max_text_chars
    for part in parsed.text_parts:
        if out.full or budget <= 0:
            break
        text = part.plain[:budget]
        budget -= len(text)
        _url_tokens(out, _URL.findall(text))
        if part.is_html:
            _url_tokens(out, _HREF.findall(part.text[:settings.max_text_chars]))
            out.add("html:part")
        _text_tokens(out, text, settings.word_pairs)
    for attachment in parsed.attachments[:20]:
        out.add(f"attach:type:{attachment.content_type.lower()}")
        if "." in attachment.filename:
            out.add(f"attach:ext:{attachment.filename.rsplit('.', 1)[1].lower()[:10]}")
    return frozenset(out.tokens)


def _header_tokens(out: _Collector, tag: str, value: str, parsed: ParsedMessage) -> None:
    text = parsed.subject if tag == "subject" else decode_header_text(value)
    if tag in ("from", "reply-to", "to", "message-id"):
        for domain in _ADDRESS.findall(text):
            out.add(f"{tag}:addr:{domain.lower()}")
    if tag == "message-id":
        return
    if tag == "content-type":
        out.add(f"{tag}:{text.split(';', 1)[0].strip().lower()[:40]}")
        return
    for word in _WORD.findall(text)[:50]:
        token = _word_token(word)
        if token is not None:
            out.add(f"{tag}:{token}")


def _url_tokens(out: _Collector, urls: list[str]) -> None:
    for url in urls[:100]:
        if url.lower().startswith("www."):
            url = "http://" + url
        try:
            host = (urlsplit(url).hostname or "").rstrip(".")
        except ValueError:
            out.add("url:malformed")
            continue
        if not host:
            continue
        if host.replace(".", "").isdigit():
            out.add("url:ip-address")
            continue
        labels = host.split(".")
        for start in range(max(0, len(labels) - 4), len(labels) - 1):
            out.add("url:" + ".".join(labels[start:]))


def _text_tokens(out: _Collector, text: str, word_pairs: bool) -> None:
    previous: str | None = None
    for match in _WORD.finditer(text):
        if out.full:
            return
        token = _word_token(match.group())
        if token is None:
            previous = None
            continue
        out.add(token)
        if word_pairs and previous is not None:
            out.add(f"{previous} {token}")
        previous = token


def _word_token(word: str) -> str | None:
    """A word as a token: lower-cased; short words dropped, long ones summarised."""
    word = word.strip(".'-")
    if len(word) < _MIN_WORD:
        return None
    lower = word.lower()
    if len(lower) > _MAX_WORD:
        kind = "h" if _HEX.match(lower) else "w"
        return f"skip:{kind} {len(lower) // 10 * 10}"
    if lower.replace(".", "").replace(",", "").isdigit():
        return f"num:{min(len(lower), 10)}"
    return lower


DEFAULT_TOKENIZER = TokenizerSettings()
