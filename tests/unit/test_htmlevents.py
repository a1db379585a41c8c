"""The one-pass HTML record gives every reader what its own parse gives (issue 10's
scoring speed work): the visible text, the links and the style pass, replayed from
`htmlevents.record`, against the same readers fed the markup directly."""

from __future__ import annotations

import contextlib
import random
from html.parser import HTMLParser

from mailward import htmlevents
from mailward.checks import content, htmlstyle
from mailward.mime import TextPart, html_visible_text

_PIECES = ["<a", "<A", "<a ", 'href="http://x.example/"', "href='http://192.0.2.1/'", ">",
           "</a>", "<br/>", "<p>", "</p>", "<P>", "<script>", "</script>", "<style>",
           "</style>", "<!--", "-->", "&amp;", "&#102;", "&#x41;", "<font size=7>",
           "<font color=#fff>", "</font>", '<td bgcolor="white">', "</td>", "<b>", "</b>",
           '<span style="font-size:1px;color:red">', "</span>", "click here", "www.bank.example",
           "<title>", "</title>", "<img src=http://x/i.gif>", "<![CDATA[", "]]>", "<!doctype",
           "x", "Viagra", "\n", "\t", " ", "\xa0", "\u0130", "<", "&", "<form>", "onclick=x"]


def _random_html(rng: random.Random) -> str:
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 60)))


def _html_part(html: str, events: tuple[htmlevents.Event, ...] | None) -> TextPart:
    return TextPart("text/html", html, html_visible_text(html), is_html=True,
                    html_events=events)


def test_replayed_readers_agree_with_their_own_parse() -> None:
    rng = random.Random(2026)
    for _ in range(2000):
        html = _random_html(rng)
        events = htmlevents.record(html)
        assert events is not None
        assert html_visible_text(html, events) == html_visible_text(html)
        assert content.links(html, events) == content.links(html)
        assert htmlstyle.style_of(html, events) == htmlstyle.style_of(html)
        assert htmlstyle.part_symbols(_html_part(html, events)) == \
            htmlstyle.part_symbols(_html_part(html, None))


def test_a_part_longer_than_the_record_bound_is_parsed_directly() -> None:
    html = "<p>" + "x" * htmlevents.MAX_RECORDED_CHARS + '<font size="7">big</font>'
    assert htmlevents.record(html) is None
    # The style pass reads only the first MAX_HTML_CHARS: the font is past them.
    assert htmlstyle.style_of(html, None).big_font is False
    assert html_visible_text(html, None).endswith("big")


def test_the_style_pass_ignores_a_record_of_more_than_it_reads() -> None:
    # A record of the whole part is not the record of the style pass' shorter input.
    html = "x" * (htmlstyle.MAX_HTML_CHARS - 3) + "<font size=7>big</font>"
    events = htmlevents.record(html[: htmlevents.MAX_RECORDED_CHARS])
    assert events is not None
    assert htmlstyle.style_of(html, events) == htmlstyle.style_of(html)
    assert htmlstyle.style_of(html, events).font_tags == 0


def test_the_parse_records_html_parts_only() -> None:
    from mailward.messagefile import transaction_from_bytes
    from mailward.mime import parse_message

    raw = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\n"
           b"Content-Type: text/plain\r\n\r\nplain <a href=x>\r\n--B\r\n"
           b"Content-Type: text/html\r\n\r\n<p>Hello <a href='http://x.example/'>there</a>\r\n"
           b"--B--\r\n")
    parsed = parse_message(transaction_from_bytes(raw, mail_from="a@example.org",
                                                  recipients=("b@example.net",)))
    plain, html = parsed.text_parts
    assert plain.html_events is None
    assert html.html_events is not None
    assert html.plain == "Hello there"
    assert content.links(html.text, html.html_events) == [("http://x.example/", "there")]


class _StandardParser(HTMLParser):
    """html.parser as it is, recording what ReaderParser reports: the reference."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[htmlevents.Event] = []

    def handle_starttag(self, tag: str, attrs: htmlevents.Attributes) -> None:
        self.events.append(htmlevents.StartTag(tag, attrs, self.get_starttag_text() or ""))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(htmlevents.EndTag(tag))

    def handle_data(self, data: str) -> None:
        self.events.append(htmlevents.Data(data))


def _standard_events(html: str) -> list[htmlevents.Event]:
    parser = _StandardParser()
    with contextlib.suppress(AssertionError, ValueError):
        parser.feed(html)
    return parser.events


_TAG_PIECES = ["<p>", "<P >", "</p>", "</P>", "</ p>", "</p x>", "<a", "<A", " ", "\t", "\n",
               "\xa0", "\v", "href", "HREF", "=", " = ", '"x"', "'y'", '"a&amp;b"', "'&#65;'",
               '""', "z", "/>", "/", ">", "<", "<br/>", "<script>", "</script>", "<style>",
               "</style >", "text", "&amp;", "&", "<!-- c -->", "<b1>", "<h-1>", "<a:b>",
               'data-x="1"', "<x\x00>", "\u0130", "'", '"', "</a:b>", "</1>"]


def test_the_short_paths_report_what_html_parser_reports() -> None:
    rng = random.Random(8)
    simple = 0
    for _ in range(30000):
        html = "".join(rng.choice(_TAG_PIECES) for _ in range(rng.randint(0, 24)))
        recorded = htmlevents.record(html)
        assert recorded is not None
        assert list(recorded) == _standard_events(html), repr(html)
        simple += htmlevents._SIMPLE_START_TAG.search(html) is not None
    assert simple > 10000  # the short path was taken often


def test_a_quoted_attribute_tag_on_the_short_path() -> None:
    html = '<A HREF="http://x.example/?a=1&amp;b=2" class=\'c\' title="">go</A>'
    assert htmlevents._SIMPLE_START_TAG.match(html) is not None
    assert list(htmlevents.record(html) or ()) == _standard_events(html) == [
        htmlevents.StartTag("a", [("href", "http://x.example/?a=1&b=2"), ("class", "c"),
                                  ("title", "")],
                            '<A HREF="http://x.example/?a=1&amp;b=2" class=\'c\' title="">'),
        htmlevents.Data("go"), htmlevents.EndTag("a")]
