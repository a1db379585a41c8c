"""Fuzzing the MIME walker (issue 9): any message bytes, read the way Postfix hands them
to the milter, give a `ParsedMessage` within its limits, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.messagefile import transaction_from_bytes
from mailward.mime import MimeLimits, ParsedMessage, parse_message

FUZZ = settings(max_examples=300, deadline=None)
LIMITS = MimeLimits(max_depth=5, max_parts=20, max_part_bytes=512, max_total_bytes=2048)

_LINES = st.sampled_from(
    [b"Subject: =?UTF-8?B?w6k=?=", b"Subject: =?x-unknown?q?=FF?=", b"From: a@b.example",
     b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: multipart/alternative",
     b"Content-Type: text/html; charset=\"bogus-charset\"", b"Content-Type: message/rfc822",
     b"Content-Type: text/plain; charset=utf-7", b"Content-Type: text/html; charset=base64",
     b"Content-Transfer-Encoding: base64",
     b"Content-Transfer-Encoding: quoted-printable", b"Content-Transfer-Encoding: x-uuencode",
     b"Content-Disposition: attachment; filename*=utf-8''%FF%FE.exe",
     b"Content-Disposition: attachment\x83",
     b"Content-Disposition: attachment; filename=\"=?UTF-8?B?/w==?=\"",
     b"", b"--b", b"--b--", b" folded", b"<html><script>x</script><p>hi", b"=FF=\r",
     b"AAAA====", b"begin 644 x", b"\xff\xfe\x00", b"From mbox line"]
)
_MESSAGE = st.one_of(
    st.binary(max_size=1024),
    st.lists(st.one_of(_LINES, st.binary(max_size=12)), max_size=60).map(b"\r\n".join),
)


def _nested(depth: int) -> bytes:
    heads = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
        for level in range(depth)
    )
    return heads + b"Content-Type: text/plain\r\n\r\nhi\r\n"


@FUZZ
@given(_MESSAGE)
def test_any_message_gives_a_bounded_parse(raw: bytes) -> None:
    transaction = transaction_from_bytes(raw)
    parsed = parse_message(transaction, LIMITS)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.depth <= LIMITS.max_depth + 1
    assert parsed.part_count <= LIMITS.max_parts + 1
    assert len(parsed.defects) <= 33
    assert isinstance(parsed.visible_text(), str)


@FUZZ
@given(st.integers(min_value=0, max_value=200))
def test_deep_nesting_stops_at_the_limit(depth: int) -> None:
    parsed = parse_message(transaction_from_bytes(_nested(depth)), LIMITS)
    assert parsed.depth <= LIMITS.max_depth + 1
    assert parsed.limits_hit == (depth > LIMITS.max_depth)


def test_a_content_disposition_with_8bit_bytes_is_read() -> None:
    """Regression (found by bench/fuzz.py): compat32 returns a header with 8-bit bytes
    as an email.header.Header, and `.split` on it raised AttributeError."""
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Disposition: attachment; filename=\x83x.exe\r\n\r\nMZ\r\n--b--\r\n")
    parsed = parse_message(transaction_from_bytes(raw), LIMITS)
    assert len(parsed.attachments) == 1
    assert parsed.attachments[0].head == b"MZ"


def test_a_bytes_to_bytes_codec_as_charset_is_an_unknown_charset() -> None:
    """Regression (found by bench/fuzz.py): charset=base64 named a codec that decodes to
    bytes, and the HTML text extraction raised TypeError on them."""
    raw = b"Content-Type: text/html; charset=base64\r\n\r\nPGI+aGk8L2I+\r\n"
    parsed = parse_message(transaction_from_bytes(raw), LIMITS)
    assert len(parsed.text_parts) == 1
    part = parsed.text_parts[0]
    assert part.charset_known is False and part.text == "PGI+aGk8L2I+\r\n"


def test_a_charset_with_a_nul_and_an_8bit_base64_body_is_a_broken_part() -> None:
    """Regression (found by bench/fuzz.py): the email package re-decodes an 8-bit body
    with the part's charset, and a NUL in it raised ValueError out of the walker."""
    raw = (b"Content-Type: text/html; charset=ut\x00f-8\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\xf0\r\n")
    parsed = parse_message(transaction_from_bytes(raw), LIMITS)
    assert len(parsed.text_parts) == 1
    assert parsed.text_parts[0].text == ""
