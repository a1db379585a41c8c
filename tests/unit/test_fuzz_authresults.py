"""Fuzzing the Authentication-Results parser (issue 9): any header value a sender can
write gives a defined answer (`parse_results` never raises, it says why in `error`), and
what `format_header` builds reads back as the same typed results."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.authresults import (
    authserv_id_of,
    format_header,
    parse_results,
    split_resinfo,
)
from mailward.model import AuthProperty, AuthResult

FUZZ = settings(max_examples=300, deadline=None)

_PIECES = st.sampled_from(
    [";", "(", ")", '"', "\\", "=", ".", " ", "\t", "\r\n ", "\n", "dkim", "pass",
     "header.d", "smtp.mailfrom", "reason=", "mx.example.net", "none", "i=1", "@", "\x00",
     "\u00e9", "\udcff"]
)
_HOSTILE = st.one_of(
    st.text(max_size=300),
    st.lists(_PIECES, max_size=60).map("".join),
)


@FUZZ
@given(_HOSTILE)
def test_any_value_gives_a_defined_answer(value: str) -> None:
    identifier = authserv_id_of(value)
    assert identifier is None or (identifier and identifier == identifier.lower())
    parts = split_resinfo(value)
    assert parts and all(part == part.strip() for part in parts)
    parsed = parse_results(value)
    assert isinstance(parsed.error, str)
    if parsed.error:
        assert parsed.results == ()
        assert "\n" not in parsed.error and len(parsed.error) <= 200
    for result in parsed.results:
        assert result.method == result.method.lower() and result.method
        assert result.result == result.result.lower()
    assert isinstance(parsed.says("dkim"), bool)


_TOKEN = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True)
_LABEL = r"[a-z](?:[a-z0-9-]{0,9}[a-z0-9])?"
_ID = st.from_regex(rf"{_LABEL}(?:\.{_LABEL}){{0,3}}", fullmatch=True)
# Values as our checks write them: tokens, domains, addresses (bare pvalues).  A quoted
# pvalue followed by another property is dropped by the authres package (an upstream
# limitation, see the report of issue 9), so quoting is not part of the round trip.
_VALUE = st.one_of(_ID, st.builds(lambda local, domain: f"{local}@{domain}", _TOKEN, _ID))
# authres keeps a quoted-pair as written (reason="\\"" reads back as \\"), so no \\ or ".
_REASON = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='\\"'),
    min_size=1, max_size=30,
)
_PROPERTY = st.builds(
    AuthProperty, st.sampled_from(["smtp", "header", "body", "policy"]), _TOKEN, _VALUE
)
_RESULT = st.builds(
    AuthResult,
    st.sampled_from(["spf", "dkim", "dmarc", "arc", "iprev", "auth"]),
    st.sampled_from(["pass", "fail", "none", "neutral", "softfail", "temperror", "permerror"]),
    st.none() | _REASON,
    st.lists(_PROPERTY, max_size=3).map(tuple),
)


@FUZZ
@given(_ID, st.lists(_RESULT, max_size=4))
def test_format_header_round_trips(authserv_id: str, results: list[AuthResult]) -> None:
    header = format_header(authserv_id, results)
    assert authserv_id_of(header) == authserv_id.lower()
    assert len(split_resinfo(header)) == max(2, len(results) + 1)
    parsed = parse_results(header)
    assert parsed.error == ""
    assert parsed.authserv_id == authserv_id
    assert parsed.results == tuple(results)


def test_a_lone_at_sign_is_quoted_so_the_header_still_parses() -> None:
    """Regression (found by the fuzz test): `smtp.mailfrom=@` was written bare, which is
    no pvalue; the authres parser then rejected the whole header, every result in it."""
    header = format_header("mx.example.net", [
        AuthResult("spf", "pass", None, (AuthProperty("smtp", "mailfrom", "@"),)),
        AuthResult("dkim", "pass", None, (AuthProperty("header", "d", "example.com"),)),
    ])
    assert 'smtp.mailfrom="@"' in header
    parsed = parse_results(header)
    assert parsed.error == ""
    assert parsed.says("dkim", "pass", {"header.d": "example.com"})
