"""The socketmap codec: framing, limits and errors, fed in any split."""

from __future__ import annotations

import pytest

from mailward.tlspolicy.socketmap import (
    ErrorKind,
    Lookup,
    Reply,
    ReplyStatus,
    SocketmapDecoder,
    SocketmapError,
    decode_reply,
    encode_lookup,
    encode_reply,
)


def test_one_lookup() -> None:
    assert SocketmapDecoder().feed(b"19:postfix example.org,") == [
        Lookup("postfix", "example.org")
    ]


def test_byte_by_byte_equals_all_at_once() -> None:
    stream = encode_lookup(Lookup("postfix", "a.example")) + encode_lookup(
        Lookup("postfix", "b.example"))
    decoder = SocketmapDecoder()
    events = [event for byte in stream for event in decoder.feed(bytes([byte]))]
    assert events == SocketmapDecoder().feed(stream)
    assert [e.key for e in events if isinstance(e, Lookup)] == ["a.example", "b.example"]
    assert not decoder.pending


def test_key_keeps_spaces_after_the_first() -> None:
    assert SocketmapDecoder().feed(encode_lookup(Lookup("m", "a b"))) == [Lookup("m", "a b")]


@pytest.mark.parametrize(("stream", "kind"), [
    (b"x:postfix a,", ErrorKind.BAD_LENGTH),
    (b"12345678", ErrorKind.BAD_LENGTH),
    (b"05:ab cd,", ErrorKind.BAD_LENGTH),
    (b"5:ab cdX", ErrorKind.NO_COMMA),
    (b"7:nospace,", ErrorKind.NO_KEY),
    (b"2:\xff\xfe,", ErrorKind.BAD_ENCODING),
])
def test_malformed_streams_are_fatal(stream: bytes, kind: ErrorKind) -> None:
    decoder = SocketmapDecoder()
    events = decoder.feed(stream)
    assert len(events) == 1 and isinstance(events[0], SocketmapError)
    assert events[0].kind is kind
    assert decoder.feed(b"3:a b,") == []  # dead after a fatal error


def test_oversized_request_is_refused_before_it_arrives() -> None:
    events = SocketmapDecoder(max_request=100).feed(b"101:")
    assert isinstance(events[0], SocketmapError) and events[0].kind is ErrorKind.TOO_LARGE


def test_eof_inside_a_request_is_reported() -> None:
    decoder = SocketmapDecoder()
    assert decoder.feed(b"9:postfix") == []
    error = decoder.eof()
    assert error is not None and error.kind is ErrorKind.TRUNCATED
    assert SocketmapDecoder().eof() is None


def test_replies() -> None:
    assert encode_reply(Reply(ReplyStatus.NOTFOUND)) == b"9:NOTFOUND ,"
    assert encode_reply(Reply(ReplyStatus.OK, "secure match=mx.example")) == (
        b"26:OK secure match=mx.example,")
    assert decode_reply(b"TEMP dns timeout") == Reply(ReplyStatus.TEMP, "dns timeout")


def test_reply_must_be_one_line_and_bounded() -> None:
    with pytest.raises(ValueError, match="one line"):
        encode_reply(Reply(ReplyStatus.OK, "a\nb"))
    with pytest.raises(ValueError, match="exceeds"):
        encode_reply(Reply(ReplyStatus.OK, "x" * 100_000))
