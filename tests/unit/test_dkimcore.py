"""The shared DKIM/ARC primitives: one tag-list tokenizer for bytes and text, c= values,
ARC instance numbers as the sealer reads them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailward.dkimcore.arcset import instance_number, lenient_instance, seal_cv, split_aar
from mailward.dkimcore.canon import (
    Canon,
    parse_canonicalization,
    select_headers,
    signature_header_data,
)
from mailward.dkimcore.taglist import (
    TagListError,
    colon_list,
    lenient_from_specs,
    lenient_tags,
    parse_tag_list,
    strict_tags,
    strip_b_from_specs,
    strip_b_value,
    tag_specs,
)
from mailward.dkimcore.text import printable
from mailward.orgdomain import split_tags

_PIECES = st.sampled_from(["v", "a", "b", "bh", "=", ";", " ", "\t", "\r\n ", "1", "x-y", "é"])


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_text_and_bytes_are_split_alike(text: str):
    as_text = [(s.text, s.name, s.value, s.well_formed) for s in tag_specs(text)]
    as_bytes = [
        (s.text.decode(), s.name.decode(), s.value.decode(), s.well_formed)
        for s in tag_specs(text.encode())
    ]
    assert as_text == as_bytes


def _reference(data: bytes) -> dict[str, bytes] | None:
    """RFC 6376 3.2 written the obvious way: None where it does not parse."""
    specs = data.split(b";")
    if not specs[-1].strip(b" \t\r\n"):
        specs.pop()
    tags: dict[str, bytes] = {}
    for spec in specs:
        match = re.fullmatch(rb"[ \t\r\n]*([A-Za-z][A-Za-z0-9_]*)[ \t\r\n]*=(.*)", spec, re.S)
        if match is None or match.group(1).decode() in tags:
            return None
        tags[match.group(1).decode()] = match.group(2).strip(b" \t\r\n")
    return tags


@given(st.lists(_PIECES, max_size=30).map(lambda parts: "".join(parts).encode()))
def test_strict_reading_matches_the_rfc(data: bytes):
    expected = _reference(data)
    if expected is None:
        with pytest.raises(TagListError):
            parse_tag_list(data)
    else:
        assert parse_tag_list(data) == expected
        assert lenient_tags(data) == expected


def test_b_value_is_emptied_and_nothing_else():
    value = b" v=1; bh=abc;\r\n\tb=SIG\r\n SIG ; z=b=3D1"
    assert strip_b_value(value) == b" v=1; bh=abc;\r\n\tb=; z=b=3D1"
    assert strip_b_value(strip_b_value(value)) == strip_b_value(value)


def test_readers_share_the_tokenizer():
    assert colon_list(b" From : to::SUBJECT ") == [b"from", b"to", b"subject"]
    assert colon_list("dns/txt") == ["dns/txt"]
    dmarc = split_tags("v=DMARC1; P = Reject ; junk ;; x y=z")
    assert dmarc.tags == (("v", "DMARC1"), ("p", "Reject"))
    assert dmarc.junk == ("junk", "x y=z")


@pytest.mark.parametrize(("value", "expected"), [
    (b"relaxed/relaxed", (Canon.RELAXED, Canon.RELAXED)),
    (b"relaxed", (Canon.RELAXED, Canon.SIMPLE)),  # RFC 6376 3.5
    (b"Simple/Relaxed", (Canon.SIMPLE, Canon.RELAXED)),
    (b"relaxed/", None),
    (b"nowsp/simple", None),
])
def test_canonicalization_values(value: bytes, expected: tuple[Canon, Canon] | None):
    assert parse_canonicalization(value) == expected


def test_arc_instances_as_the_sealer_reads_them():
    assert split_aar(" i=2; mx.example; spf=pass") == ("2", " mx.example; spf=pass")
    assert split_aar(" mx.example; i=2; spf=pass") is None
    assert lenient_instance("arc-authentication-results", b" i=3;\n\tmx.example; none") == 3
    assert lenient_instance("arc-seal", b" a=rsa-sha256; cv=pass;\r\n\ti=12; b=x") == 12
    assert lenient_instance("arc-message-signature", b" i=x; a=rsa-sha256") == 0
    assert seal_cv(b" i=1; cv=Fail; b=x") == "fail"
    assert seal_cv(b" i=1; b=x") == ""
    assert [instance_number(text) for text in ("1", "50", "51", "0", "007", "٣")] == [
        1, 50, 51, None, None, None]


@given(st.lists(st.sampled_from(["v", "a", "b", "bh", "h", "=", ";", " ", "\t", "\r\n ", "1",
                                 "b=AB", "x-y", "\xff"]), max_size=30)
       .map(lambda parts: "".join(parts).encode("utf-8", "surrogateescape")))
def test_one_split_reads_like_three(value: bytes):
    """The verifier splits a DKIM-Signature once (tag_specs) and reads the specs three
    ways; each reading must equal the function that splits for itself, and the hashed
    field must be the same octets either way."""
    specs = tag_specs(value)
    try:
        expected: dict[str, bytes] | None = parse_tag_list(value)
    except TagListError:
        expected = None
    try:
        strict: dict[str, bytes] | None = strict_tags(specs)
    except TagListError:
        strict = None
    assert strict == expected
    assert lenient_from_specs(specs) == lenient_tags(value)
    stripped = strip_b_from_specs(specs)
    assert stripped == strip_b_value(value)
    for canon in (Canon.SIMPLE, Canon.RELAXED):
        assert signature_header_data(canon, b"DKIM-Signature", stripped, b_emptied=True) == (
            signature_header_data(canon, b"DKIM-Signature", value))


def test_tag_specs_are_immutable():
    spec = tag_specs(b"v=1")[0]
    with pytest.raises(AttributeError):
        spec.value = b"2"  # type: ignore[misc]


def _printable_reference(value: bytes | str, limit: int) -> str:
    """`text.printable` without its fast path, as it was written first."""
    value = value[: limit * 4 + 16]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = " ".join(text.split())
    if not (text.isascii() and text.isprintable()):
        text = "".join(char if " " <= char <= "~" else "?" for char in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPORTED_PIECES = st.sampled_from(["example.org", "a", " ", "\t", "\r\n", "\x00", "\x7f",
                                    "é", "\u2028", "~", "x" * 40, "\x1c"])


@given(st.lists(_REPORTED_PIECES, max_size=12).map("".join), st.sampled_from([20, 40, 255]))
def test_printable_fast_path_changes_nothing(text: str, limit: int):
    assert printable(text, limit) == _printable_reference(text, limit)
    raw = text.encode("utf-8")
    assert printable(raw, limit) == _printable_reference(raw, limit)


def _select_reference(keys: list[bytes], wanted: list[bytes]) -> list[int]:
    """RFC 6376 5.4.2 as first written: scan up from the last instance taken."""
    chosen = []
    last: dict[bytes, int] = {}
    for name in wanted:
        index = last.get(name, len(keys))
        while index > 0:
            index -= 1
            if keys[index] == name:
                chosen.append(index)
                break
        last[name] = index
    return chosen


_FIELD_NAMES = st.sampled_from([b"from", b"to", b"subject", b"received", b"x-a"])


@given(st.lists(_FIELD_NAMES, max_size=12), st.lists(_FIELD_NAMES, max_size=12))
def test_header_selection_takes_instances_bottom_up(keys: list[bytes], wanted: list[bytes]):
    assert select_headers(keys, wanted) == _select_reference(keys, wanted)
