"""Fuzzing the SPAMC codec: whatever a peer sends, decoding either gives a response or
raises SpamdProtocolError (never another exception), how the bytes are split into reads
does not change the outcome, and every answer spamd could write decodes to what it says."""

from __future__ import annotations

import contextlib
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.spamc_protocol import (
    Command,
    ResponseDecoder,
    SpamdProtocolError,
    SpamdResponse,
    SpamVerdict,
    encode_request,
    spam_verdict,
)

FUZZ = settings(max_examples=300, deadline=None)

_PIECES = st.sampled_from([
    b"SPAMD/1.1 0 EX_OK", b"SPAMD/1.0 76 Bad", b"\r\n", b"\r\n\r\n", b"\n", b"\r",
    b"Content-length: ", b"Content-length: 5", b"Spam: True ; 5.0 / 5.0", b"Spam: ",
    b"True", b" ; ", b" / ", b"-0.0", b"1000", b",", b"GTUBE", b"\x00", b"\xff", b":",
    b"9" * 12, b" ",
])
_STREAM = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(_PIECES, st.binary(max_size=6)), max_size=50).map(b"".join),
)


def _outcome(chunks: list[bytes], max_header: int, max_body: int) -> object:
    """The response, or "error": every chunk is fed, then the end of the stream."""
    decoder = ResponseDecoder(max_header_bytes=max_header, max_body_bytes=max_body)
    try:
        for chunk in chunks:
            if chunk:
                decoder.feed(chunk)
        response = decoder.feed(b"")
    except SpamdProtocolError:
        return "error"
    assert isinstance(response, SpamdResponse)
    # A valid answer may carry no verdict (PONG, an error answer): that is an error too.
    with contextlib.suppress(SpamdProtocolError):
        spam_verdict(response)
    return response


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@FUZZ
@given(_STREAM, st.lists(st.integers(min_value=0), max_size=12),
       st.sampled_from([16, 64, 16 * 1024]), st.sampled_from([8, 256, 256 * 1024]))
def test_any_stream_gives_a_response_or_a_protocol_error_whatever_the_reads(
    data: bytes, cuts: list[int], max_header: int, max_body: int
) -> None:
    whole = _outcome([data], max_header, max_body)
    assert _outcome(_split(data, cuts), max_header, max_body) == whole
    assert _outcome([bytes([b]) for b in data], max_header, max_body) == whole


_RULES = st.lists(st.from_regex(r"[A-Za-z0-9_]{1,30}", fullmatch=True), max_size=40,
                  unique=True)
#: Scores as spamd prints them: one decimal (`%.1f`), negative ones too.
_SCORE = st.integers(min_value=-9999, max_value=99999).map(lambda tenths: f"{tenths / 10:.1f}")


@FUZZ
@given(st.booleans(), _SCORE, _SCORE, _RULES, st.booleans(),
       st.lists(st.integers(min_value=0), max_size=8))
def test_every_symbols_answer_spamd_could_write_decodes_to_what_it_says(
    is_spam: bool, score: str, threshold: str, rules: list[str], with_length: bool,
    cuts: list[int],
) -> None:
    body = ",".join(rules).encode()
    head = [b"SPAMD/1.1 0 EX_OK"]
    if with_length:
        head.append(b"Content-length: %d" % len(body))
    head.append(f"Spam: {is_spam} ; {score} / {threshold}".encode())
    data = b"\r\n".join(head) + b"\r\n\r\n" + body
    response = _outcome(_split(data, cuts), 16 * 1024, 256 * 1024)
    assert isinstance(response, SpamdResponse)
    assert spam_verdict(response) == SpamVerdict(is_spam, float(score), float(threshold),
                                                 tuple(rules))


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(list(Command)))
def test_requests_announce_exactly_the_message_they_carry(message: bytes,
                                                          command: Command) -> None:
    if command is Command.PING:
        message = b""
    request = encode_request(command, message)
    head, _, rest = request.partition(b"\r\n\r\n")
    assert rest == message
    lines = head.split(b"\r\n")
    assert lines[0] == f"{command.value} SPAMC/1.5".encode()
    if command is not Command.PING:
        assert lines[1] == b"Content-length: %d" % len(message)
