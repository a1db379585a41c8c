"""The scoring checks' shortcuts give what the long way gives (issue 10's speed work):
white space normalising, letter counting, the toll-free pre-test, base64 cleaning."""

from __future__ import annotations

import random
import re

from mailward import mime
from mailward.checks import phrases

_WHITE = [chr(code) for code in range(0x3001) if chr(code).isspace()]
_PIECES = [*_WHITE, "a", "B", "\u0130", "\xdf", "x y", "\r\n", "800", "1-888-555-1212",
           "(877) 555 1212", "$5", "!", "\u200b", "Z"]


def _texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 14)))
            for _ in range(count)]


def test_normalise_is_the_regular_expression_substitution() -> None:
    spaces = re.compile(r"\s+")
    for text in _texts(1, 20000):
        assert phrases.normalise(text) == spaces.sub(" ", text.lower()), repr(text)


def test_style_symbols_count_ascii_letters_and_toll_free_numbers_as_regexes_do() -> None:
    capitals, small = re.compile(r"[A-Z]"), re.compile(r"[a-z]")
    for text in _texts(2, 5000):
        long = text * 30  # past the 200 letters the caps rule needs
        upper = len(capitals.findall(long))
        letters = upper + len(small.findall(long))
        expected_caps = letters >= 200 and 3 * upper >= letters
        names = {symbol.name for symbol in phrases.style_symbols(long)}
        assert ("BODY_CAPS_HEAVY" in names) == expected_caps
        assert ("BODY_TOLL_FREE" in names) == (phrases._TOLL_FREE.search(long) is not None)


def test_base64_cleaning_is_the_regular_expression_one() -> None:
    rng = random.Random(3)
    pools = [bytes(range(256)), mime._BASE64_ALPHABET + b"=\r\n \t",
             b"AZaz09+/=\x0b\x0c\x1c\x1d\xa0\x85 "]
    for _ in range(20000):
        pool = rng.choice(pools)
        cut = bytes(rng.choice(pool) for _ in range(rng.randint(0, 60)))
        assert cut.translate(None, mime._NOT_BASE64) == re.sub(rb"[^A-Za-z0-9+/]", b"", cut)
        assert bool(cut.translate(None, mime._BASE64_PADDING_SPACE)) == \
            bool(re.search(rb"[^A-Za-z0-9+/=\s]", cut))
