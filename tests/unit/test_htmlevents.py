"""The one-pass HTML record gives every reader what its own parse gives (issue 10's
scoring speed work): the visible text, the links and the style pass, replayed from
`htmlevents.record`, against the same readers fed the markup directly."""

from __future__ import annotations

import random

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
