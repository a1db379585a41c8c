"""The decoder's fast path (whole lines at once) decodes exactly as the line-by-line one.

The policy service decodes every request it answers; `PolicyDecoder` takes all complete
lines of a clean buffer in one pass when no request can outgrow max_request, and falls
back to checking line by line otherwise.  These properties hold the two paths to the
same events, errors and state, whatever the bytes and however they are split.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.codec import Event, PolicyDecoder, PolicyRequest, ProtocolError

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
