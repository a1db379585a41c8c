"""The scoring checks' shortcuts give what the long way gives (issue 10's speed work):
white space normalising, letter counting, the toll-free and phrase pre-tests, base64
cleaning, the HTML tag-in-word and comment-in-word searches, URL scanning."""

from __future__ import annotations

import email.utils
import random
import re

from mailward import casefold, mime
from mailward.checks import headerforms, headers, htmlstyle, phrases, urilist, urlforms

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


_PHRASE_PIECES = ["make money", "order now", "risk-free", "risk free", "congratulations",
                  "refinancing", "50% off", "5 million dollars", "you've been selected",
                  "expires today", "dear friend", "click here to unsubscribe", "usd5",
                  "pre-approved", "e-mail marketing", "us$ 9", "no fees", "prize", "dont wait",
                  "optin list", "email marketing", "antiaging", "millions of dollars",
                  "reply to be removed", "reduce your payment", "late husband", "thousands of",
                  " ", " ",
                  ".", "_", "\u2019", "\u2014", "\xe9", "re", "x", "0", "'", "-", "$"]


def _reference_phrase_counts(text: str) -> dict[str, int]:
    """Every phrase's regular expression on the whole text: no pre-tests."""
    counts: dict[str, int] = {}
    for phrase in phrases._PHRASES:
        if phrases._found(phrase.pattern, text):
            counts[phrase.category] = counts.get(phrase.category, 0) + 1
    return counts


def test_phrase_pre_tests_never_rule_out_a_phrase_that_matches() -> None:
    rng = random.Random(3)
    found_any = 0
    for _ in range(4000):
        text = "".join(rng.choice(_PHRASE_PIECES) for _ in range(rng.randint(1, 8)))
        expected = _reference_phrase_counts(text)
        found_any += bool(expected)
        assert phrases.phrase_counts(text) == expected, repr(text)
    assert found_any > 1000  # the pieces do make phrases


def test_phrase_words_are_the_words_a_match_must_start_with() -> None:
    def words(fragment: str) -> frozenset[str]:
        return phrases._compile("X", fragment).words

    assert words("make money") == {"make"}
    assert words("(?:lower|reduce) your payments") == {"lower", "reduce"}
    assert words("risk[- ]free") == {"risk"}
    assert words("congratulations") == {"congratulations"}  # with the (?!\w) tail
    assert words(r"earn (?:up to )?\$") == {"earn"}
    for unsure in (r"refinanc\w*", "expires? soon", "don'?t wait", "opt[- ]?in list",
                   "you(?:'ve| have) been", r"\$\d+ per week", "prescriptions?"):
        assert words(unsure) == frozenset(), unsure


def test_a_phrase_led_by_plain_branches_is_searched_branch_by_branch() -> None:
    def searches(fragment: str) -> list[str]:
        return [pattern.pattern for pattern in phrases._compile("X", fragment).searches]

    assert searches("(?:thousands|millions) of dollars") == [
        r"thousands of dollars(?!\w)", r"millions of dollars(?!\w)"]
    assert searches(r"(?:usd|us\$) ?\d") == [r"usd ?\d", r"us\$ ?\d"]
    # An optional group or a group without a plain start: the pattern as it is.
    assert searches(r"(?:\d+ )?million dollars") == [r"(?:\d+ )?million dollars(?!\w)"]
    assert searches("make money") == [r"make money(?!\w)"]


def test_required_text_is_the_longest_plain_run_every_match_holds() -> None:
    required = phrases._required_text
    assert required(r"s\.? ?1618") == "1618"
    assert required(r"\d{2,3} ?% off") == "% off"
    assert required(r"(?:\d+(?:\.\d+)? )?million (?:us )?dollars") == "million "
    assert required("e-?mail marketing") == "mail marketing"
    assert required(r"earn (?:up to )?\$") == "earn "
    assert required("risk[- ]free") == "risk"
    assert required("a|b") == ""  # an alternation: no text is in every match
    for phrase in phrases._PHRASES:  # what every match holds, on a sample of each
        sample = phrase.pattern.search(_SAMPLES.get(phrase.pattern.pattern, ""))
        if sample is not None:
            assert phrase.required in sample.group(), phrase.pattern.pattern


_SAMPLES = {pattern.pattern: text for pattern, text in (
    (phrases._compile("X", r"s\.? ?1618").pattern, "bill s. 1618 says"),
    (phrases._compile("X", "pre-?approved").pattern, "you are preapproved"),
    (phrases._compile("X", "opt[- ]?in list").pattern, "our opt-in list"),
    (phrases._compile("X", r"\d\d ?% (?:of the (?:total )?(?:sum|fund)|for you)").pattern,
     "30% for you"),
)}


def test_text_words_agree_on_ascii_and_other_text() -> None:
    ascii_text = "Order now: 50% off_today, it's re-mailed!"
    assert phrases.text_words(ascii_text) == frozenset(phrases._WORD.findall(ascii_text))
    assert phrases.text_words("caf\xe9\u2019s order\u2014now") == {"caf\xe9", "s", "order", "now"}


#: The letter-first expressions of the tag- and comment-in-word rules: the reference.
_TAG_IN_WORD = re.compile(r"[a-z](?:<[a-z][^<>]{0,40}>|</[a-z]{1,6}>)+[a-z]")
_COMMENT_IN_WORD = re.compile(r"[A-Za-z]<!--.{0,80}?-->[A-Za-z]", re.S)

_MARKUP_PIECES = ["v", "Q", "ia", "x", "gr", "<b>", "</b>", "<i class=x>", "</font>", "<!-- x -->",
                  "<!--", "-->", "<", ">", "</", " ", "9", "<br/>", "</toolongtag>", "\xe9"]


def test_tag_and_comment_in_word_searches_find_what_the_letter_led_expressions_find() -> None:
    rng = random.Random(5)
    counted = commented = 0
    for _ in range(20000):
        html = "".join(rng.choice(_MARKUP_PIECES) for _ in range(rng.randint(0, 40)))
        expected = len(_TAG_IN_WORD.findall(html))
        assert htmlstyle._tags_in_words(html, enough=99) == expected, repr(html)
        assert htmlstyle._tags_in_words(html, enough=3) == min(expected, 3), repr(html)
        counted += expected >= 3
        found = _COMMENT_IN_WORD.search(html) is not None
        assert (htmlstyle._COMMENT_IN_WORD_SEARCH.search(html) is not None) == found, repr(html)
        commented += found
    assert counted > 30 and commented > 1000  # the pieces do make both


def test_url_scans_on_lower_cased_ascii_find_what_case_folding_finds() -> None:
    rng = random.Random(7)
    pieces = ["HREF", "href", "HrEf", "=", " = ", '"', "'", "HTTP://", "https://", "www.",
              "Www.", "X.Example", "/Path?Q=1", " ", ">", "<a ", "[", "]", "(", "_", "9"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        for folding, lower in ((urlforms._HREF, urlforms._HREF_IN_LOWER_ASCII),
                               (urlforms._TEXT_URL, urlforms._TEXT_URL_IN_LOWER_ASCII)):
            expected = [[match.group(group) or "" for group in range(folding.groups + 1)]
                        for match in folding.finditer(text)]
            found = [[casefold.written(text, match, group)
                      for group in range(folding.groups + 1)]
                     for match in casefold.folded_matches(folding, lower, text)]
            assert found == expected, repr(text)
        assert [match.group(0) for match in urilist._url_matches(text)] == \
            [match.group(0).lower() for match in urilist._URL.finditer(text)], repr(text)


def _email_utils_timestamp(text: str) -> float | None:
    """The long way: email.utils for every date."""
    try:
        return email.utils.parsedate_to_datetime(" ".join(text.split())).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


def test_canonical_dates_parse_as_email_utils_parses_them() -> None:
    rng = random.Random(11)
    days = ["Tue, ", "", "Xyz, ", "Mon,", "a,b, "]
    months = ["Jan", "Feb", "Mar", "Dec", "mar", "Foo"]
    zones = ["+0100", "-0500", "+0000", "-0000", "+2359", "+2400", "-0130", "+0099", "GMT"]
    canonical = 0
    for _ in range(20000):
        text = (f"{rng.choice(days)}{rng.randint(0, 32):0{rng.choice((1, 2))}d} "
                f"{rng.choice(months)} {rng.choice(('2026', '1999', '0099', '9999', '1000'))} "
                f"{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:{rng.randint(0, 61):02d} "
                f"{rng.choice(zones)}{rng.choice(('', ' ', '  (CET)'))}")
        canonical += headers._CANONICAL_DATE.fullmatch(" ".join(text.split())) is not None
        assert headers.parse_timestamp(text) == _email_utils_timestamp(text), repr(text)
    assert canonical > 3000  # the fast path was taken often


def test_recipient_name_search_finds_what_the_expression_per_recipient_finds() -> None:
    rng = random.Random(13)
    pieces = ["bob", "Bob", "bobby", " ", ",", " ,", "\u3000,", "x", "_", ".", "-", "\xe9",
              "\u0661", "hi ", ":", "bob.", "a.bob"]
    found = 0
    for _ in range(20000):
        subject = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        for local in ("bob", "a.b", "x-y"):
            expected = re.search(rf"(?<![\w.-]){re.escape(local)}\s*,", subject) is not None
            assert headerforms._names(subject, local) == expected, (subject, local)
            found += expected
    assert found > 200
