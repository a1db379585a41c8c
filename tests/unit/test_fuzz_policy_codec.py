"""Fuzzing the policy codec (issue 9): whatever a client sends, the decoder answers with
its own events (`PolicyRequest` or `ProtocolError`) and never raises, and how the bytes
are split into reads does not change what it decides."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.codec import PolicyDecoder, PolicyRequest, ProtocolError, encode_request

FUZZ = settings(max_examples=300, deadline=None)

# Bytes biased towards the codec's syntax so that hostile-but-plausible streams are common.
_PIECES = st.sampled_from(
    [b"=", b"\n", b"\r\n", b"\n\n", b"request=smtpd_access_policy", b"\x00", b"\x7f",
     b"\xff\xfe", b"name", b"x" * 70, b"\t", b" "]
)
_STREAM = st.one_of(
    st.binary(max_size=512),
    st.lists(st.one_of(_PIECES, st.binary(max_size=8)), max_size=60).map(b"".join),
)


def _decode(chunks: list[bytes], max_request: int) -> list[object]:
    decoder = PolicyDecoder(max_request=max_request)
    events: list[object] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    end = decoder.eof()
    if end is not None:
        events.append(end)
    return events


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@FUZZ
@given(_STREAM, st.lists(st.integers(min_value=0), max_size=12),
       st.sampled_from([16, 64, 1024, 64 * 1024]))
def test_any_stream_gives_only_codec_events_and_chunking_does_not_matter(
    data: bytes, cuts: list[int], max_request: int
) -> None:
    whole = _decode([data], max_request)
    assert all(isinstance(event, PolicyRequest | ProtocolError) for event in whole)
    # At most one fatal error, and it is the last event: after it the decoder is dead.
    fatal = [i for i, event in enumerate(whole) if isinstance(event, ProtocolError) and event.fatal]
    assert fatal in ([], [len(whole) - 1])
    assert _decode(_split(data, cuts), max_request) == whole
    assert _decode([bytes([b]) for b in data], max_request) == whole


_NAMES = st.from_regex(r"[A-Za-z0-9_]{1,20}", fullmatch=True)
# What Postfix can put in a value: printable text and TAB, no other control character.
_VALUES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\t"), max_size=40
).filter(lambda value: not value.endswith("\r"))


@FUZZ
@given(st.lists(st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=8), min_size=1, max_size=4))
def test_encode_request_round_trips(requests: list[dict[str, str]]) -> None:
    stream = b"".join(encode_request(attributes) for attributes in requests)
    events = _decode([stream], 64 * 1024)
    assert events == [PolicyRequest(attributes) for attributes in requests]
