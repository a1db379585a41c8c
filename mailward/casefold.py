"""Case-insensitive scans of message text at the speed of case-sensitive ones.

With re.I, Python's engine cannot skip ahead to the next occurrence of a pattern's first
letter and tries a match at every position of the text: several times slower on the 2-4
KB parts the content checks scan.  On ASCII text the same matches are found without it:
lower() keeps the text's length and every character's class there, and re.I matches an
ASCII pattern on ASCII text as the lower-case pattern matches the lower-cased text.
Other text keeps re.I (it lets "s" match the long s, which lower() keeps).
"""

from __future__ import annotations

import re
from collections.abc import Iterator


def folded_matches(folding: re.Pattern[str], in_lower_ascii: re.Pattern[str],
                   text: str) -> Iterator[re.Match[str]]:
    """The matches of `folding` (an re.I pattern) in `text`.  On ASCII text they are
    found by `in_lower_ascii` (the same pattern for lower-cased text, without re.I) in
    the lower-cased copy: the spans are the same, and what they cover as written is
    `written`'s."""
    if text.isascii():
        return in_lower_ascii.finditer(text.lower())
    return folding.finditer(text)


def written(text: str, match: re.Match[str], group: int) -> str:
    """What `group` of `match` covers in `text`, as written; "" if it took no part."""
    start, end = match.span(group)
    return text[start:end] if start >= 0 else ""
