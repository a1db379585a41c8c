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
"""

from __future__ import annotations

import contextlib
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


class ReaderParser(HTMLParser):
    """An HTMLParser that hands its events to a `MarkupReader` (the direct way)."""

    def __init__(self, reader: MarkupReader) -> None:
        super().__init__(convert_charrefs=True)
        self._reader = reader

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
