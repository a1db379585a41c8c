"""Fuzzing the DKIM/ARC tag-list parser (issue 9): any field value gives a dict or
`TagListError` (strict reading) and a dict (lenient readings), never another exception;
a list built from valid tags parses back to those tags; the ARC readers on top of it
always answer an int or a string."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.dkimcore.arcset import MAX_INSTANCES, lenient_instance, seal_cv, split_aar
from mailward.dkimcore.taglist import (
    TagListError,
    colon_list,
    lenient_tags,
    parse_tag_list,
    strip_b_value,
    tag_specs,
)

FUZZ = settings(max_examples=300, deadline=None)

_PIECES = st.sampled_from(
    [b";", b"=", b":", b" ", b"\t", b"\r\n ", b"v", b"a", b"b", b"i", b"d", b"cv", b"1",
     b"rsa-sha256", b"\x00", b"\xff", b"\xc3\xa9", b"9" * 5000]
)
_HOSTILE = st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=40).map(b"".join))


@FUZZ
@given(_HOSTILE)
def test_any_field_value_gives_tags_or_taglisterror(value: bytes) -> None:
    try:
        tags = parse_tag_list(value)
    except TagListError:
        tags = None
    lenient = lenient_tags(value)
    if tags is not None:
        assert tags == lenient  # a list that parses strictly reads the same leniently
    assert b";".join(spec.raw for spec in tag_specs(value)) == value
    stripped = strip_b_value(value)
    assert len(stripped) <= len(value)
    assert all(isinstance(part, bytes) for part in colon_list(value))
    for kind in ("AAR", "AMS", "AS"):
        assert lenient_instance(kind, value) >= 0
    assert isinstance(seal_cv(value), str)
    text = value.decode("utf-8", "surrogateescape")
    assert split_aar(text) is None or isinstance(split_aar(text), tuple)


_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True)
_VALUE = st.binary(max_size=30).filter(lambda v: b";" not in v).map(
    lambda v: v.strip(b" \t\r\n")
)


@FUZZ
@given(st.dictionaries(_NAME, _VALUE, max_size=8), st.booleans(),
       st.sampled_from([b"", b" ", b"\r\n\t"]))
def test_built_tag_list_round_trips(tags: dict[str, bytes], trailing: bool, fws: bytes) -> None:
    specs = [fws + name.encode() + fws + b"=" + fws + value + fws for name, value in tags.items()]
    data = b";".join(specs) + (b";" if trailing else b"")
    if not tags and not trailing:
        data = b""
    if data == b";":
        with pytest.raises(TagListError):
            parse_tag_list(data)
        return
    assert parse_tag_list(data) == tags
    assert lenient_tags(data) == tags
    if "b" in tags:
        assert parse_tag_list(strip_b_value(data))["b"] == b""


@pytest.mark.parametrize("kind", ["AAR", "AMS", "AS"])
def test_an_instance_of_thousands_of_digits_is_beyond_any_chain(kind: str) -> None:
    """Regression (found by fuzzing): `i=` with 5000 digits made int() raise ValueError
    in the sealer's reading of existing ARC sets."""
    value = b"i=" + b"9" * 5000 + b"; cv=none"
    assert lenient_instance(kind, value) == MAX_INSTANCES + 1
    assert lenient_instance(kind, b"i=007; cv=none") == 7
