"""The From header parser (mailward.fromheader): the fast reading, the email package's,
RFC 2047 encoded words, bounds on hostile values, and the author address for signing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.fromheader import (
    MAX_FROM_LENGTH,
    AddressProblem,
    FromAddress,
    FromProblem,
    _parse_from_email,
    _simple_from,
    author_address,
    author_domain,
    author_domains,
)
from mailward.model import Header, Transaction


def domains(parsed: list[FromAddress] | str | None) -> list[tuple[str, str]] | str | None:
    """(domain as written, A-label domain) per address, or what the parser said instead."""
    if isinstance(parsed, list):
        return [(address.raw_domain, address.domain) for address in parsed]
    return parsed


# --------------------------------------------------------------------------- fast From


_ATOM = st.text("abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=6)
_LABEL = st.text("abz09-_", min_size=1, max_size=6)
_SIMPLE_LIKE = st.builds(
    lambda lead, name, local, labels, form, trail: {
        0: f"{lead}{local}@{'.'.join(labels)}{trail}",
        1: f"{lead}<{local}@{'.'.join(labels)}>{trail}",
        2: f"{lead}{name} <{local}@{'.'.join(labels)}>{trail}",
        3: f'{lead}"{name}, Jr." <{local}@{".".join(labels)}>{trail}',
        4: f"{lead}{name}<{local}@{'.'.join(labels)}>{trail}",
    }[form],
    st.sampled_from(["", " ", "\t", "  "]),
    st.lists(_ATOM, min_size=1, max_size=3).map(" ".join),
    st.lists(_ATOM, min_size=1, max_size=3).map(".".join),
    st.lists(_LABEL, min_size=1, max_size=4),
    st.integers(0, 4),
    st.sampled_from(["", " ", "\t"]),
)


@given(st.one_of(_SIMPLE_LIKE, st.text(" <>@.\"a-z_(),;:\\", max_size=30)))
@settings(max_examples=500, deadline=None)
def test_fast_from_reading_agrees_with_the_email_package(value: str):
    fast = _simple_from(value)
    if fast is None:
        return
    slow = _parse_from_email(value)
    if isinstance(fast, str):
        assert isinstance(slow, str), (value, slow)
    else:
        assert fast == slow, value


def test_fast_from_reading_is_taken_for_plain_values():
    assert domains(_simple_from(' "Joe" <joe@example.com>')) == [("example.com", "example.com")]
    assert domains(_simple_from(" Joe Public <joe.public@Mail.Example.com> ")) == [
        ("Mail.Example.com", "mail.example.com")
    ]
    assert domains(_simple_from(" joe@example.com")) == [("example.com", "example.com")]
    for value in (" joe@example.com (x)", " =?utf-8?q?J?= <j@example.com>",
                  " j\u00f6e@example.com", " a@b.com, c@d.com", ' "j\\"x" <j@example.com>'):
        assert _simple_from(value) is None


def test_pathological_from_values_are_read_quickly():
    import time

    size = MAX_FROM_LENGTH // 2 - 2
    values = [" " + "a " * size + "b", " " + "a" * 2 * size, " " + "a." * size + "@x",
              " " + "(" * 2 * size, ' "' + "x" * 2 * size, " " + "a@" * size,
              " " + "a," * size, " " + "<a@b.com>" * (size // 5)]
    started = time.perf_counter()
    for value in values:
        assert len(value) <= MAX_FROM_LENGTH
        assert author_domains([value]).problem is FromProblem.INVALID
    # Many such headers at once are refused before any is parsed.
    crafted = author_domains([" " + "a," * size] * 3)
    assert crafted.problem is FromProblem.INVALID and "in all" in crafted.detail
    assert time.perf_counter() - started < 5.0


# --------------------------------------------------------------------------- encoded words

# Issue 9, finding 3: valid RFC 5322 (an encoded word, then the angle address without a
# space); the email package notes "missing trailing whitespace after encoded-word".
BED_BATH = " =?UTF-8?B?QmVkIEJhdGggJiBCZXlvbmQ=?=<BdBth&Byond@example.com>"


def test_encoded_word_right_before_the_angle_address_is_read():
    authors = author_domains([BED_BATH])
    assert authors.problem is None, authors.detail
    assert authors.domains == ("example.com",)
    assert authors.addresses == (FromAddress("BdBth&Byond", "example.com", "example.com"),)


@pytest.mark.parametrize("value", [
    " =?utf-8?q?Jo?==?utf-8?q?e?=<joe@example.com>",  # two adjacent encoded words
    ' "=?utf-8?q?Joe?="<joe@example.com>',  # an encoded word in a quoted display name
    " Joe=?utf-8?q?x?=<joe@example.com>",
])
def test_display_name_defects_do_not_hide_the_address(value: str):
    authors = author_domains([value])
    assert (authors.problem, authors.domains) == (None, ("example.com",))


@pytest.mark.parametrize("value", [
    " joe@=?utf-8?q?example?=.com",  # RFC 2047 5: never inside an addr-spec
    " =?utf-8?q?joe?=@example.com",
    " <=?utf-8?q?joe?=@example.com>",
    " =?utf-8?q?Joe?=<joe@example.com> <evil@evil.test>",  # two addresses, one field
])
def test_encoded_words_in_the_address_itself_stay_invalid(value: str):
    authors = author_domains([value])
    assert authors.problem is FromProblem.INVALID
    assert authors.detail.startswith("malformed From header")


def test_a_value_that_trips_the_stdlib_parser_is_unparseable_not_an_error():
    # Python 3.11's email parser raises UnboundLocalError on this one (bench.fuzz found it):
    # a broken From is a DMARC permerror, never a check that raised (temperror, 451).
    value = b'"a, b"\x96<a@[ '.decode("utf-8", "surrogateescape")
    assert _parse_from_email(value) == "unparseable From header (UnboundLocalError)"
    authors = author_domains([value])
    assert authors.problem is FromProblem.INVALID


# --------------------------------------------------------------------------- the author


def _with_from(*values: str) -> Transaction:
    headers = (*(Header("From", value) for value in values), Header("To", " a@b.test"))
    return Transaction(queue_id=None, mail_from="", recipients=(), headers=headers)


def test_author_address_is_the_single_from_address():
    assert author_address(_with_from(BED_BATH)) == FromAddress(
        "BdBth&Byond", "example.com", "example.com")
    assert author_address(_with_from(" J\u00f6 <jo@B\u00fccher.example>")) == FromAddress(
        "jo", "B\u00fccher.example", "xn--bcher-kva.example")
    assert author_domain(_with_from(" Joe <joe@Example.COM>")) == "example.com"


@pytest.mark.parametrize(("values", "problem"), [
    ((), AddressProblem.NO_FROM),
    ((" a@example.com", " b@example.com"), AddressProblem.MULTIPLE_FROM),
    ((" a@example.com, b@example.com",), AddressProblem.BAD_FROM),
    ((" undisclosed",), AddressProblem.BAD_FROM),
    ((" joe@=?utf-8?q?example?=.com",), AddressProblem.BAD_FROM),
])
def test_no_single_author_address(values: tuple[str, ...], problem: AddressProblem):
    assert author_address(_with_from(*values)) is problem
