"""The policy-delegation codec: bytes in, events out, whatever the chunking."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.codec import (
    ErrorKind,
    Event,
    PolicyDecoder,
    PolicyRequest,
    ProtocolError,
    encode_request,
    encode_response,
)

CHUNK_SIZES = [1, 16, 4096]


Decoded = tuple[list[Event], ProtocolError | None]


def decode(data: bytes, chunk: int, max_request: int = 64 * 1024) -> Decoded:
    decoder = PolicyDecoder(max_request)
    events: list[Event] = []
    for start in range(0, len(data), chunk):
        events.extend(decoder.feed(data[start : start + chunk]))
    return events, decoder.eof()


def decode_at(data: bytes, cuts: Sequence[int], max_request: int) -> Decoded:
    decoder = PolicyDecoder(max_request)
    events: list[Event] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events.extend(decoder.feed(data[previous:cut]))
        previous = cut
    return events, decoder.eof()


def kinds(events: Sequence[Event]) -> list[str]:
    return [
        event.kind.value if isinstance(event, ProtocolError) else "request" for event in events
    ]


STREAM = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=RCPT\n"
    b"client_address=192.0.2.1\n"
    b"sender=a@example.org\n"
    b"\n"
    # CRLF line ends, an attribute we do not know, a value containing '='
    b"request=smtpd_access_policy\r\n"
    b"protocol_state=MAIL\r\n"
    b"x_future_attribute=whatever\r\n"
    b"ccert_fingerprint=AB:CD=EF==\r\n"
    b"empty_value=\r\n"
    b"\r\n"
    # a line without '=': non-fatal, answered on its own
    b"request=smtpd_access_policy\n"
    b"this line has no equals sign\n"
    b"protocol_state=RCPT\n"
    b"\n"
    # an empty request
    b"\n"
    # a bad attribute name
    b"bad-name=1\n"
    b"\n"
    # and the stream is still in sync
    b"request=smtpd_access_policy\n"
    b"protocol_state=END-OF-MESSAGE\n"
    b"size=12345\n"
    b"\n"
)

EXPECTED = [
    PolicyRequest({
        "request": "smtpd_access_policy", "protocol_state": "RCPT",
        "client_address": "192.0.2.1", "sender": "a@example.org",
    }),
    PolicyRequest({
        "request": "smtpd_access_policy", "protocol_state": "MAIL",
        "x_future_attribute": "whatever", "ccert_fingerprint": "AB:CD=EF==", "empty_value": "",
    }),
    ProtocolError(ErrorKind.NO_EQUALS, "line without '=': 'this line has no equals sign'", False),
    ProtocolError(ErrorKind.EMPTY_REQUEST, "empty request", False),
    ProtocolError(ErrorKind.BAD_NAME, "bad attribute name 'bad-name'", False),
    PolicyRequest({
        "request": "smtpd_access_policy", "protocol_state": "END-OF-MESSAGE", "size": "12345",
    }),
]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_stream_decodes_the_same_at_any_chunk_size(chunk: int):
    events, eof = decode(STREAM, chunk)
    assert events == EXPECTED
    assert eof is None


def test_request_accessors():
    request = EXPECTED[5]
    assert isinstance(request, PolicyRequest)
    assert request.request_type == "smtpd_access_policy"
    assert request.protocol_state == "END-OF-MESSAGE"
    assert request.get("missing") == ""
    assert request.get("missing", "x") == "x"
    assert PolicyRequest({"protocol_state": "rcpt"}).protocol_state == "RCPT"


def test_duplicate_attribute_keeps_the_last():
    assert decode(b"a=1\na=2\n\n", 4096)[0] == [PolicyRequest({"a": "2"})]


def test_first_problem_of_a_request_is_reported():
    events, _ = decode(b"no equals\nbad-name=1\nx=1\n\nok=1\n\n", 4096)
    assert kinds(events) == ["no_equals", "request"]
    assert events[1] == PolicyRequest({"ok": "1"})


def test_pending_tracks_partial_requests():
    decoder = PolicyDecoder()
    assert not decoder.pending
    decoder.feed(b"req")
    assert decoder.pending
    decoder.feed(b"uest=x\n")
    assert decoder.pending
    assert decoder.feed(b"\n") == [PolicyRequest({"request": "x"})]
    assert not decoder.pending
    decoder.feed(b"oops\n")
    assert decoder.pending


# --------------------------------------------------------------------------- fatal errors


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_over_long_line_is_fatal(chunk: int):
    data = b"request=smtpd_access_policy\n\n" + b"sender=" + b"x" * 3000
    events, eof = decode(data + b"\nprotocol_state=RCPT\n\nfoo=bar\n\n", chunk, max_request=1024)
    assert events[0] == PolicyRequest({"request": "smtpd_access_policy"})
    assert events[1:] == [
        ProtocolError(ErrorKind.LINE_TOO_LONG, "line longer than 1024 bytes", True)
    ]
    assert eof is None


def test_over_long_line_detected_before_its_end():
    decoder = PolicyDecoder(1024)
    assert decoder.feed(b"x" * 1024) == []
    events = decoder.feed(b"x")
    assert kinds(events) == ["line_too_long"]
    assert decoder.feed(b"\nrequest=x\n\n") == []
    assert decoder.eof() is None


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_request_over_max_size_is_fatal(chunk: int):
    lines = b"".join(b"attribute_%03d=%s\n" % (i, b"v" * 40) for i in range(40))  # ~2.2 KB
    data = b"request=first\n\n" + lines + b"\n" + b"request=after\n\n"
    events, eof = decode(data, chunk, max_request=1024)
    assert events == [
        PolicyRequest({"request": "first"}),
        ProtocolError(ErrorKind.REQUEST_TOO_LARGE, "request larger than 1024 bytes", True),
    ]
    assert eof is None


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_request_of_exactly_max_size_is_accepted(chunk: int):
    line = b"a=" + b"v" * 1020 + b"\n"  # 1023 bytes, plus the empty line: 1024
    assert len(line) + 1 == 1024
    events, _ = decode(line + b"\n" + b"b=1\n\n", chunk, max_request=1024)
    assert events == [PolicyRequest({"a": "v" * 1020}), PolicyRequest({"b": "1"})]
    # One byte more: the line fits, the request with its empty line does not.
    longer = b"a=" + b"v" * 1021 + b"\n\n"
    events, _ = decode(longer + b"b=1\n\n", chunk, max_request=1024)
    assert kinds(events) == ["request_too_large"]
    # A first line that alone is longer than the limit.
    longest = b"a=" + b"v" * 1022 + b"\n\n"
    events, _ = decode(longest + b"b=1\n\n", chunk, max_request=1024)
    assert kinds(events) == ["line_too_long"]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
@pytest.mark.parametrize("garbage", [b"\x00", b"\x16\x03\x01", b"\x7f", b"\x1b[2J", b"\x0c"])
def test_binary_is_fatal(chunk: int, garbage: bytes):
    data = b"request=ok\n\nrequest=smtpd" + garbage + b"_access_policy\n\nrequest=after\n\n"
    events, eof = decode(data, chunk)
    assert events == [
        PolicyRequest({"request": "ok"}),
        ProtocolError(ErrorKind.BINARY, "control characters in a request", True),
    ]
    assert eof is None


def test_tab_is_not_binary():
    assert decode(b"sender=a\tb\n\n", 4096)[0] == [PolicyRequest({"sender": "a\tb"})]


def test_tls_client_hello_is_rejected_at_once():
    # Someone speaking TLS to the policy port: fatal on the first line.
    hello = bytes.fromhex("1603010200010001fc0303") + b"\n"
    assert kinds(decode(hello, 4096)[0]) == ["binary"]


def test_nothing_is_decoded_after_a_fatal_error():
    decoder = PolicyDecoder()
    assert kinds(decoder.feed(b"\x00\n")) == ["binary"]
    assert decoder.feed(b"request=x\n\n") == []
    assert decoder.eof() is None


def test_non_utf8_bytes_survive():
    events, _ = decode(b"sender=caf\xe9@example.org\n\n", 4096)
    assert events == [PolicyRequest({"sender": "caf\udce9@example.org"})]


# --------------------------------------------------------------------------- eof


def test_eof_inside_a_request_is_truncated():
    decoder = PolicyDecoder()
    decoder.feed(b"request=smtpd_access_policy\nprotocol_state=RCPT\n")
    assert decoder.eof() == ProtocolError(
        ErrorKind.TRUNCATED, "connection closed inside a request", True
    )
    assert decoder.eof() is None  # reported once


def test_eof_inside_a_line_is_truncated():
    decoder = PolicyDecoder()
    decoder.feed(b"request=smtpd_acc")
    problem = decoder.eof()
    assert problem is not None and problem.kind is ErrorKind.TRUNCATED and problem.fatal


def test_eof_at_a_boundary_is_clean():
    decoder = PolicyDecoder()
    assert decoder.eof() is None
    decoder = PolicyDecoder()
    assert decoder.feed(b"request=x\n\n") == [PolicyRequest({"request": "x"})]
    assert decoder.eof() is None


# --------------------------------------------------------------------------- encoding


def test_encode_response():
    assert encode_response("DUNNO") == b"action=DUNNO\n\n"
    assert encode_response("550 5.7.23 SPF fail") == b"action=550 5.7.23 SPF fail\n\n"
    assert encode_response("PREPEND X: caf\u00e9") == "action=PREPEND X: caf\u00e9\n\n".encode()


@pytest.mark.parametrize("bad", ["DUNNO\n", "REJECT\nfoo=bar", "a\rb", "", "   "])
def test_encode_response_rejects_bad_actions(bad: str):
    with pytest.raises(ValueError):
        encode_response(bad)


def test_encode_request_round_trip():
    attributes = {"request": "smtpd_access_policy", "sender": "a=b@example.org", "x": ""}
    data = encode_request(attributes)
    assert data == b"request=smtpd_access_policy\nsender=a=b@example.org\nx=\n\n"
    assert decode(data, 1)[0] == [PolicyRequest(attributes)]


@pytest.mark.parametrize("bad", [{"bad-name": "x"}, {"": "x"}, {"a b": "x"}, {"ok": "line\nbreak"}])
def test_encode_request_rejects_what_cannot_be_sent(bad: dict[str, str]):
    with pytest.raises(ValueError):
        encode_request(bad)


def test_response_decodes_as_a_request():
    # Postfix parses answers with the same attribute syntax.
    assert decode(encode_response("DEFER_IF_PERMIT try=later"), 3)[0] == [
        PolicyRequest({"action": "DEFER_IF_PERMIT try=later"})
    ]


# --------------------------------------------------------------------------- properties

NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
names = st.text(NAME_CHARS, min_size=1, max_size=30)
values = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=60)
attribute_dicts = st.dictionaries(names, values, min_size=1, max_size=8)


@given(
    requests=st.lists(attribute_dicts, min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_encode_then_decode_round_trips_at_any_split(
    requests: list[dict[str, str]], cuts: list[int]
):
    data = b"".join(encode_request(attributes) for attributes in requests)
    events, eof = decode_at(data, [cut % (len(data) + 1) for cut in cuts], 64 * 1024)
    assert events == [PolicyRequest(attributes) for attributes in requests]
    assert eof is None


STREAM_ALPHABET = st.sampled_from(
    [b"a", b"=", b"\n", b"\r\n", b"\x00", b"\xff", b"x=1\n", b"request=smtpd_access_policy\n",
     b"\n\n", b"-", b"\t", b"long_value=" + b"v" * 20]
)
streams = st.one_of(
    st.binary(max_size=300),
    st.lists(STREAM_ALPHABET, max_size=40).map(b"".join),
)


@given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=20))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]):
    events, eof = decode_at(data, [cut % (len(data) + 1) for cut in cuts], 64)
    assert all(isinstance(event, PolicyRequest | ProtocolError) for event in events)
    fatal = [
        i for i, event in enumerate(events) if isinstance(event, ProtocolError) and event.fatal
    ]
    assert fatal in ([], [len(events) - 1])  # at most one fatal error, and nothing after it
    if fatal:
        assert eof is None


@given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=20))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_events_do_not_depend_on_chunking(data: bytes, cuts: list[int]):
    whole = decode_at(data, [], 64)
    split = decode_at(data, [cut % (len(data) + 1) for cut in cuts], 64)
    assert split == whole
    assert decode(data, 1, 64) == whole


# --------------------------------------------------------------------------- fast path
#
# The decoder's fast path (whole lines at once) decodes exactly as the line-by-line one.
#
# The policy service decodes every request it answers; `PolicyDecoder` takes all complete
# lines of a clean buffer in one pass when no request can outgrow max_request, and falls
# back to checking line by line otherwise.  These properties hold the two paths to the
# same events, errors and state, whatever the bytes and however they are split.

Trace = list[object]


class LineByLine(PolicyDecoder):
    """The decoder with its fast path switched off."""

    def _complete_lines(self, buffer: bytearray, events: list[Event]) -> int:
        return 0


def trace(decoder: PolicyDecoder, data: bytes, cuts: Sequence[int]) -> Trace:
    out: Trace = []
    previous = 0
    for cut in [*sorted({c for c in cuts if c <= len(data)}), len(data)]:
        for event in decoder.feed(data[previous:cut]):
            if isinstance(event, PolicyRequest):
                out.append(("request", dict(event.attributes)))
            else:
                assert isinstance(event, ProtocolError)
                out.append((event.kind.value, event.detail, event.fatal))
        out.append(("pending", decoder.pending))
        previous = cut
    final = decoder.eof()
    out.append(None if final is None else (final.kind.value, final.fatal))
    return out


PIECES = st.sampled_from([
    b"request=smtpd_access_policy\n", b"protocol_state=RCPT\n", b"x=1\n", b"\n", b"\r\n",
    b"a", b"=", b"-", b"\t", b"\r", b"\x00", b"\x1f", b"\xc3\xa9", b"\xff", b"no equals\n",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, max_size=60).map(b"".join),
       st.lists(st.integers(0, 300), max_size=6),
       st.sampled_from([12, 40, 100, 64 * 1024]))
def test_fast_path_agrees_with_line_by_line(data: bytes, cuts: list[int], limit: int):
    assert trace(PolicyDecoder(limit), data, cuts) == trace(LineByLine(limit), data, cuts)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=160), st.lists(st.integers(0, 160), max_size=5),
       st.sampled_from([8, 30, 64 * 1024]))
def test_fast_path_agrees_on_arbitrary_bytes(data: bytes, cuts: list[int], limit: int):
    assert trace(PolicyDecoder(limit), data, cuts) == trace(LineByLine(limit), data, cuts)


@pytest.mark.parametrize("limit", [40, 64 * 1024])
def test_a_request_split_anywhere_decodes_once(limit: int):
    data = b"request=smtpd_access_policy\r\nsize=1\r\n\r\n"
    whole = trace(PolicyDecoder(limit), data, [])
    assert whole[0] == ("request", {"request": "smtpd_access_policy", "size": "1"})
    for cut in range(len(data) + 1):
        events = [e for e in trace(PolicyDecoder(limit), data, [cut])
                  if isinstance(e, tuple) and e[0] != "pending"]
        assert events == [e for e in whole if isinstance(e, tuple) and e[0] != "pending"]
