"""Fuzzing From parsing (issue 9): any From value gives addresses or a reason (a str),
never an exception; any set of values gives an `AuthorDomains`; a simple address built
from parts reads back as its domain."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.fromheader import AuthorDomains, FromAddress, author_domains, parse_from

FUZZ = settings(max_examples=300, deadline=None)

_PIECES = st.sampled_from(
    ["<", ">", "@", "\"", "(", ")", "\\", ",", ":", ";", ".", " ", "\r\n ", "\n", "=?",
     "?=", "=?UTF-8?B?QmVk?=", "=?x?q?=FF?=", "joe", "example.com", "[127.0.0.1]",
     "\u00e9", "\udcff", "\x00", "((((((((((", "xn--", "Bed Bath"]
)
_HOSTILE = st.one_of(st.text(max_size=300), st.lists(_PIECES, max_size=60).map("".join))


@FUZZ
@given(_HOSTILE)
def test_any_from_value_gives_addresses_or_a_reason(value: str) -> None:
    parsed = parse_from(value)
    if isinstance(parsed, str):
        assert parsed
    else:
        assert parsed and all(isinstance(address, FromAddress) for address in parsed)
        assert all("." in address.domain for address in parsed)


@FUZZ
@given(st.lists(_HOSTILE, max_size=4))
def test_any_from_values_give_author_domains(values: list[str]) -> None:
    authors = author_domains(values)
    assert isinstance(authors, AuthorDomains)
    assert authors.headers == len(values)
    assert (authors.problem is None) == (len(values) == 1 and len(authors.domains) == 1)


_LABEL = r"[a-z](?:[a-z0-9-]{0,9}[a-z0-9])?"
_DOMAIN = st.from_regex(rf"{_LABEL}(?:\.{_LABEL}){{0,2}}\.[a-z]{{2,6}}", fullmatch=True)
_LOCAL = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(?:\.[A-Za-z0-9_-]{1,5}){0,2}",
                       fullmatch=True)


@FUZZ
@given(_LOCAL, _DOMAIN, st.sampled_from(["", "Joe ", '"Joe, Q." ', "=?UTF-8?B?QmVk?="]))
def test_built_from_round_trips(local: str, domain: str, display: str) -> None:
    value = f" {display}<{local}@{domain}>" if display else f" {local}@{domain}"
    parsed = parse_from(value)
    assert parsed == [FromAddress(local, domain, domain)]
