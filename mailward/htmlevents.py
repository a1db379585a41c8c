"""One html.parser pass per HTML part, replayed to every reader of the markup.

The visible text (mailward/mime.py), the links (checks/content.py) and the style pass
(checks/htmlstyle.py) each used to run their own `HTMLParser` over the same part: three
tokenisations of the same markup, most of the content checks' cost on large HTML.  The
bounded parse now tokenises a part once, records what html.parser reported (start tags
with their attributes and raw text, end tags, text), and each reader is replayed that
record.  The record is exactly what a reader's own parser would have reported: the same
input, the same parser settings (`convert_charrefs=True`, no `close()`, parsing stopped at
the first AssertionError/ValueError), and readers only see the events, so its findings are
the same.  Only parts up to `MAX_RECORDED_CHARS` are recorded (a bound on the record's
memory); a reader parses a longer part itself, as before.

The parse itself is html.parser's, with two short paths (`ReaderParser`): start tags
whose attributes are all quoted and bare end tags, the bulk of real markup, are read by
one strict expression each and reported exactly as html.parser reports them; all else
goes through html.parser's own code.  On the bench's advertisement the record takes
48 us instead of 84; over the corpus's 1,208 HTML parts, 0.71 s instead of 0.97.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Sequence
from html.parser import HTMLParser
from typing import NamedTuple, Protocol

#: The style pass reads at most this much of a part (checks/htmlstyle.py MAX_HTML_CHARS):
#: a record of a part that fits serves all three readers on identical input.
MAX_RECORDED_CHARS = 64 * 1024

Attributes = list[tuple[str, str | None]]


class StartTag(NamedTuple):
    tag: str
    attrs: Attributes
    raw: str  # HTMLParser.get_starttag_text() at the time of the tag


class EndTag(NamedTuple):
    tag: str


class Data(NamedTuple):
    text: str


Event = StartTag | EndTag | Data


class MarkupReader(Protocol):
    """What a reader of the markup implements (its HTMLParser's handle_* call these)."""

    def start(self, tag: str, attrs: Attributes, raw: str) -> None: ...

    def end(self, tag: str) -> None: ...

    def data(self, text: str) -> None: ...


# What the short paths take, each a strict subset of what html.parser accepts the same
# way.  Separators are the ASCII spaces its tag-name class stops at ([ \t\n\r\f]; its
# other expressions use the Unicode \s, which would let "\xa0" split a name it keeps).
_SPACE = r"[ \t\n\r\f]"
#: `<p>`, `<a href="x" class='y'>`: a name of letters and digits, attributes each a
#: name, "=" and a quoted value, then ">".  html.parser's parse_starttag reports for it
#: the lower-cased name, each attribute (lower-cased name, value without its quotes,
#: character references resolved; "" for an empty value), the tag as written.
_SIMPLE_START_TAG = re.compile(
    rf"<([a-zA-Z][a-zA-Z0-9]*)((?:{_SPACE}+[a-zA-Z][-a-zA-Z0-9_:.]*=(?:\"[^\"]*\"|'[^']*'))*)"
    rf"{_SPACE}*>")
_SIMPLE_ATTRIBUTE = re.compile(rf"{_SPACE}+([a-zA-Z][-a-zA-Z0-9_:.]*)=(?:\"([^\"]*)\"|'([^']*)')")
#: An end tag `</p>` outside script/style: html.parser's endtagfind without its spaces.
_BARE_END_TAG = re.compile(r"</([a-zA-Z][-.a-zA-Z0-9:_]*)>")


class ReaderParser(HTMLParser):
    """An HTMLParser that hands its events to a `MarkupReader` (the direct way).

    Faster than its base on what most markup is made of, with the same events: start
    tags whose attributes are all quoted (`<a href="x">`) and bare end tags (`</p>`)
    take a short path that reports what html.parser would (see `_SIMPLE_START_TAG`);
    every other construct goes to html.parser's own code, and the line and column
    bookkeeping no reader uses is skipped (`updatepos`).
    tests/unit/test_htmlevents.py holds the events to the unmodified parser's.
    """

    def __init__(self, reader: MarkupReader) -> None:
        super().__init__(convert_charrefs=True)
        self._reader = reader

    def updatepos(self, i: int, j: int) -> int:
        """Skip the line and column bookkeeping: no reader asks for positions (getpos),
        and html.parser's own use of the result is this return value, which is always
        `j`.  It counted the newlines of every piece of the markup: a tenth of a parse."""
        return j

    def parse_starttag(self, i: int) -> int:
        simple = _SIMPLE_START_TAG.match(self.rawdata, i)
        if simple is None:
            return super().parse_starttag(i)
        tag = simple.group(1).lower()
        attrs: Attributes = []
        if simple.group(2):
            for name, double, single in _SIMPLE_ATTRIBUTE.findall(simple.group(2)):
                value = double or single
                attrs.append((name.lower(), html.unescape(value) if "&" in value else value))
        self.lasttag = tag
        self._reader.start(tag, attrs, simple.group())
        if tag in self.CDATA_CONTENT_ELEMENTS:
            self.set_cdata_mode(tag)
        return simple.end()

    def parse_endtag(self, i: int) -> int:
        bare = _BARE_END_TAG.match(self.rawdata, i) if self.cdata_elem is None else None
        if bare is None:
            return super().parse_endtag(i)
        self._reader.end(bare.group(1).lower())
        self.clear_cdata_mode()
        return bare.end()

    def handle_starttag(self, tag: str, attrs: Attributes) -> None:
        self._reader.start(tag, attrs, self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        self._reader.end(tag)

    def handle_data(self, data: str) -> None:
        self._reader.data(data)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def start(self, tag: str, attrs: Attributes, raw: str) -> None:
        self.events.append(StartTag(tag, attrs, raw))

    def end(self, tag: str) -> None:
        self.events.append(EndTag(tag))

    def data(self, text: str) -> None:
        self.events.append(Data(text))


def feed(html: str, reader: MarkupReader) -> None:
    """Parse `html` for `reader` (tolerant of any markup; keeps what was seen on error)."""
    parser = ReaderParser(reader)
    with contextlib.suppress(AssertionError, ValueError):
        parser.feed(html)


def record(html: str) -> tuple[Event, ...] | None:
    """The events of `html`, or None when it is longer than `MAX_RECORDED_CHARS`."""
    if len(html) > MAX_RECORDED_CHARS:
        return None
    recorder = _Recorder()
    feed(html, recorder)
    return tuple(recorder.events)


def replay(events: Sequence[Event], reader: MarkupReader) -> None:
    """Hand recorded events to `reader`, in order, as its own parser would have."""
    start, end, data = reader.start, reader.end, reader.data
    for event in events:
        if isinstance(event, Data):
            data(event.text)
        elif isinstance(event, StartTag):
            start(event.tag, event.attrs, event.raw)
        else:
            end(event.tag)


def read(html: str, events: Sequence[Event] | None, reader: MarkupReader) -> None:
    """Replay `events` when there is a record of `html`, else parse `html` directly."""
    if events is None:
        feed(html, reader)
    else:
        replay(events, reader)
