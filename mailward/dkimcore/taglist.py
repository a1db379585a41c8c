"""The tag=value list (RFC 6376 3.2), the one parser of it in Mailward.

DKIM-Signature fields, DKIM key records, ARC-Message-Signature and ARC-Seal fields use
this syntax, and DMARC records borrow it (RFC 7489 6.4).  What differs between them is
only how strict a reader must be, so one tokenizer (`tag_specs`) splits a list into its
specs and the readers on top decide:

- `parse_tag_list`: the strict reading a signature or key record must pass (names
  case-sensitive, no duplicates, no empty spec but a trailing one);
- `lenient_tags`: what can be read from a list that may not parse (for reporting a
  signature's d= and s= even when it is broken);
- `strip_b_value`: the list with b='s value removed, for hashing (RFC 6376 3.7);
- `colon_list`: the colon-separated values of h=, q=, s=, t= and the like.

The tokenizer works on bytes (DKIM hashes octets) and on str (DMARC records and the
`mailward keys` checks read text) alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import AnyStr, Generic, NamedTuple

from mailward.dkimcore.text import printable

#: FWS as a tag list may contain it around names, "=", values and ";" (CR and LF of
#: folded header lines included).
WHITESPACE = " \t\r\n"


class TagListError(ValueError):
    """A tag=value list (RFC 6376 3.2) that does not parse."""


@dataclass(frozen=True)
class _Syntax(Generic[AnyStr]):
    """The separators and patterns of the syntax, as bytes or as str."""

    semicolon: AnyStr
    equals: AnyStr
    colon: AnyStr
    whitespace: AnyStr
    name: re.Pattern[AnyStr]


_BYTES = _Syntax(b";", b"=", b":", WHITESPACE.encode(), re.compile(rb"[A-Za-z][A-Za-z0-9_]*"))
_TEXT = _Syntax(";", "=", ":", WHITESPACE, re.compile(r"[A-Za-z][A-Za-z0-9_]*"))


def _syntax(data: AnyStr) -> _Syntax[AnyStr]:
    return _BYTES if isinstance(data, bytes) else _TEXT


class TagSpec(NamedTuple, Generic[AnyStr]):
    """One ";"-separated part of a tag list.

    `raw` is the part exactly as written; `text` the part without the white space
    around it ("" for an empty spec); `name` and `value` are stripped of white space,
    `value` is empty when there is no "=".  `well_formed`: a valid tag-name, then "=".

    A NamedTuple rather than a frozen dataclass: just as immutable, and a verifier
    makes a dozen per signature, where a frozen dataclass's `object.__setattr__` per
    field made splitting a DKIM-Signature cost four times what it does now.
    """

    raw: AnyStr
    text: AnyStr
    name: AnyStr
    value: AnyStr
    well_formed: bool


_new_spec = tuple.__new__


def tag_specs(data: AnyStr) -> list[TagSpec[AnyStr]]:
    """Every spec of `data` in order, empty ones included, none judged but by form."""
    syntax = _syntax(data)
    whitespace, equals_sign, name_match = syntax.whitespace, syntax.equals, syntax.name.fullmatch
    specs: list[TagSpec[AnyStr]] = []
    for raw in data.split(syntax.semicolon):
        name, equals, value = raw.partition(equals_sign)
        name = name.strip(whitespace)
        # tag-name = ALPHA *(ALPHA / DIGIT / "_"): string methods decide the usual
        # all-alphanumeric names; only a name with another character (an "_" or
        # junk) goes to the pattern, which is the definition.
        well_formed = bool(equals) and name[:1].isalpha() and name.isascii() and (
            name.isalnum() or name_match(name) is not None)
        # tuple.__new__ directly: NamedTuple's generated __new__ is one more Python
        # frame per spec, half of what making a spec costs.
        specs.append(_new_spec(TagSpec, (raw, raw.strip(whitespace), name,
                                         value.strip(whitespace), well_formed)))
    return specs


def parse_tag_list(data: bytes) -> dict[str, bytes]:
    """The strict reading (RFC 6376 3.2): names case-sensitive, values stripped of FWS.

    A trailing ";" is allowed; an empty tag-spec elsewhere, a spec without "=", a bad
    tag name or a duplicate tag raise TagListError.
    """
    return strict_tags(tag_specs(data))


def strict_tags(specs: Sequence[TagSpec[bytes]]) -> dict[str, bytes]:
    """`parse_tag_list` over specs already split by `tag_specs` (a verifier that also
    reports and hashes the field splits it once and reads it three ways)."""
    tags: dict[str, bytes] = {}
    if specs and not specs[-1].text:
        specs = specs[:-1]
    for spec in specs:
        if not spec.well_formed:
            raise TagListError(f"malformed tag {printable(spec.text, 20)!r}")
        key = spec.name.decode("ascii")
        if key in tags:
            raise TagListError(f"duplicate tag {key}=")
        tags[key] = spec.value
    return tags


def lenient_tags(data: bytes) -> dict[str, bytes]:
    """What can be read from a tag list that may not parse: first value of each name."""
    return lenient_from_specs(tag_specs(data))


def lenient_from_specs(specs: Iterable[TagSpec[bytes]]) -> dict[str, bytes]:
    """`lenient_tags` over specs already split by `tag_specs`."""
    tags: dict[str, bytes] = {}
    for spec in specs:
        if spec.well_formed:
            tags.setdefault(spec.name.decode("ascii"), spec.value)
    return tags


def strip_b_value(value: bytes) -> bytes:
    """The signature field value with b='s value (and the white space around it) removed.

    RFC 6376 3.7: the value of b= is treated as empty when hashing the header.  Tags are
    found by the tag-list syntax, not by a pattern, so no other tag is touched; the
    white space before the name is kept, as it is part of the hashed field.
    """
    return strip_b_from_specs(tag_specs(value))


def strip_b_from_specs(specs: Iterable[TagSpec[bytes]]) -> bytes:
    """`strip_b_value` over the specs `tag_specs` split the value into."""
    parts = []
    for spec in specs:
        if spec.name == b"b" and spec.well_formed:
            parts.append(spec.raw.partition(b"=")[0] + b"=")
        else:
            parts.append(spec.raw)
    return b";".join(parts)


def colon_list(value: AnyStr) -> list[AnyStr]:
    """A colon-separated tag value (h=, q=, s=, t=, ...): parts stripped and
    lower-cased, empty ones dropped ("h=from:to:" is tolerated, as other verifiers do)."""
    syntax = _syntax(value)
    stripped = (part.strip(syntax.whitespace).lower() for part in value.split(syntax.colon))
    return [part for part in stripped if part]
