"""The bounded MIME parse: decoded parts, attachments, defects, and limits that hold."""

from __future__ import annotations

import base64

from mailward.checks.base import CheckInput
from mailward.checks.mime import MimeCheck, MimeView
from mailward.messagefile import transaction_from_bytes
from mailward.mime import (
    MimeLimits,
    ParsedMessage,
    decode_header_text,
    html_visible_text,
    parse_message,
)
from mailward.model import Connection


def parse(raw: bytes, limits: MimeLimits | None = None) -> ParsedMessage:
    transaction = transaction_from_bytes(raw)
    return parse_message(transaction, limits) if limits else parse_message(transaction)


MULTIPART = b"""From: a@example.org
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from us
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 au lait
--inner
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

""" + base64.encodebytes(
    b"<html><head><style>p{}</style></head><body><p>Hello <b>world</b></p>"
    b"<script>var x;</script></body></html>") + b"""
--inner--
--outer
Content-Type: application/octet-stream; name="invoice.pdf.exe"
Content-Disposition: attachment; filename="invoice.pdf.exe"
Content-Transfer-Encoding: base64

TVqQAAMAAAAEAAAA
--outer--
"""


def test_parts_are_decoded_from_transfer_encoding_and_charset() -> None:
    parsed = parse(MULTIPART)
    assert parsed.subject == "Grüße from us"
    assert [part.content_type for part in parsed.text_parts] == ["text/plain", "text/html"]
    assert parsed.plain_parts[0].text.strip() == "Café au lait"
    html = parsed.html_parts[0]
    assert "<b>world</b>" in html.text
    assert html.plain == "Hello world"
    assert parsed.attachments[0].filename == "invoice.pdf.exe"
    assert parsed.attachments[0].head.startswith(b"MZ")
    assert parsed.part_count == 5 and parsed.depth == 2
    assert not parsed.limits_hit


def test_nesting_beyond_the_limit_stops_and_says_so() -> None:
    depth = 60
    parts = [b"From: a@example.org\nMIME-Version: 1.0\n"]
    for level in range(depth):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (level, level))
    parts.append(b"Content-Type: text/plain\n\ndeep\n")
    for level in reversed(range(depth)):
        parts.append(b"--b%d--\n" % level)
    parsed = parse(b"".join(parts), MimeLimits(max_depth=10))
    assert parsed.limits_hit
    assert "nesting_too_deep" in parsed.defects
    assert parsed.text_parts == ()


def test_part_count_is_bounded() -> None:
    body = b"".join(b"--b\nContent-Type: text/plain\n\npart %d\n" % i for i in range(50))
    raw = (b'From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; '
           b'boundary="b"\n\n' + body + b"--b--\n")
    parsed = parse(raw, MimeLimits(max_parts=10))
    assert parsed.part_count == 10
    assert len(parsed.text_parts) == 9
    assert "too_many_parts" in parsed.defects


def test_large_part_is_cut_before_decoding_and_total_budget_holds() -> None:
    html = b"<p>" + b"x" * 3_000_000 + b"</p>"
    raw = (b"From: a@example.org\nMIME-Version: 1.0\nContent-Type: text/html\n"
           b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(html))
    parsed = parse(raw, MimeLimits(max_part_bytes=100_000, max_total_bytes=150_000))
    part = parsed.text_parts[0]
    assert part.truncated
    assert len(part.text) == 100_000


def test_broken_encodings_and_unknown_charsets_are_defects_not_errors() -> None:
    raw = (b"From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
           b"--b\nContent-Type: text/plain; charset=x-no-such-charset\n\n\xe9t\xe9\n"
           b"--b\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
           b"SGVsbG8*** not base64 ###\n--b--\n")
    parsed = parse(raw)
    assert "unknown_charset" in parsed.defects
    assert "bad_transfer_encoding" in parsed.defects
    assert parsed.text_parts[0].text == "\xe9t\xe9"  # the CRLF before --b is the boundary's
    assert not parsed.text_parts[0].charset_known


def test_binary_garbage_body_parses_to_something() -> None:
    raw = (b"From: a@example.org\nContent-Type: text/plain; charset=utf-8\n\n"
           + bytes(range(256)) * 40)
    parsed = parse(raw)
    assert parsed.text_parts[0].decode_errors


def test_header_text_decoding() -> None:
    assert decode_header_text("=?iso-8859-1?q?caf=E9?=") == "café"
    assert decode_header_text("plain\n words") == "plain words"
    assert decode_header_text("=?bogus-cs?q?abc?=") == "abc"
    assert decode_header_text("=?utf-8?b?broken") == "=?utf-8?b?broken"


def test_html_visible_text_survives_broken_markup() -> None:
    assert html_visible_text("<p>a<script>hidden</script>b</p>") == "ab"
    assert html_visible_text("<p>a<script>hidden") == "a"
    assert html_visible_text("<div>one</div><div>two &amp; three</div>") == "one two & three"
    # Unterminated markup: whatever the parser makes of it, it returns text, no error.
    assert html_visible_text("text <a href='x") == "text"


def test_mime_check_parses_lazily_and_shares_one_parse() -> None:
    transaction = transaction_from_bytes(MULTIPART)
    view = MimeCheck().evaluate(CheckInput(Connection(client_ip=None), transaction))
    assert isinstance(view, MimeView)
    assert not view.was_parsed
    assert MimeCheck().symbols(view) == ()
    first = view.parsed
    assert view.parsed is first and view.was_parsed
