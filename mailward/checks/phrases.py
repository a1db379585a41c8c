"""Phrase and text-style heuristics: what bulk advertising says, and how loudly.

A small weighted phrase list, grouped by what the phrases are for (money, offers,
urgency, list-footer boilerplate, calls to action, health products, home business,
impersonal greetings; and advance-fee fraud, whose symbols are ADVANCE_FEE[_MANY]),
matched as whole words in the decoded, visible text of the shared bounded parse (at
most `MAX_TEXT_CHARS`) and in the Subject.  A category fires once per message whatever
the number of phrases (`PHRASE_<CATEGORY>`), and once more at `MANY` distinct phrases
(`PHRASE_<CATEGORY>_MANY`): one "free" in a mailing-list discussion is ordinary, five
different money phrases are not.  The weights are fitted by
bench/tune_weights.py.

Text style:

* BODY_CAPS_HEAVY: a third or more of the (ASCII) letters are capitals, in 200 or more.
* BODY_EXCLAIM_MANY: "!!!" or ten or more exclamation marks.
* BODY_DOLLAR_AMOUNTS: three or more dollar amounts.
* BODY_TOLL_FREE: a North American toll-free number (call-now advertising).
* SUBJECT_ADV: the Subject starts with the "ADV" label some laws require on advertising.
* SUBJECT_SPAM_PHRASE: the Subject carries a money/offer/urgency phrase or a $ amount.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from mailward.checks import mime as mime_check
from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.checks.rulebase import RuleCheck, RuleFindings
from mailward.mime import decode_header_text

MAX_TEXT_CHARS = 32 * 1024
MANY = 3

#: Category -> phrases (regular-expression fragments, lower case, matched on word
#: boundaries in text whose white space runs are single spaces).
PHRASES: dict[str, tuple[str, ...]] = {
    "MONEY": (
        r"make money", r"extra (?:cash|income)", r"earn (?:up to )?\$", r"cash bonus",
        r"financial freedom", r"income opportunity", r"residual income",
        r"(?:lower|reduce) your (?:monthly )?payments?", r"refinanc\w*", r"mortgage rates?",
        r"interest rates? (?:as low|starting)", r"debt consolidation", r"eliminate (?:your )?debt",
        r"credit card (?:debt|offers?)", r"bad credit", r"no credit check", r"pre-?approved",
        r"(?:thousands|millions) of dollars", r"per week", r"weekly income",
        r"\$\d[\d,]* (?:per|a|every) (?:week|month|day)", r"money back", r"cash advance",
        r"investment opportunity",
    ),
    "OFFER": (
        r"100% free", r"absolutely free", r"free (?:gift|trial|offer|quote|consultation|"
        r"membership|access|sample|report)", r"no obligation", r"risk[- ]free",
        r"satisfaction guaranteed", r"money[- ]back guarantee", r"special (?:offer|promotion)",
        r"lowest prices?", r"save up to", r"\d{2,3} ?% off", r"best prices?", r"you(?:'ve| have) "
        r"been (?:selected|chosen)", r"congratulations", r"you(?:'re| are) a winner",
        r"claim your", r"prize", r"no (?:hidden )?(?:cost|fees)", r"free shipping",
        r"order (?:now|today)", r"buy (?:now|direct)", r"wholesale", r"limited offer",
        r"amazing", r"incredible (?:offer|deal)", r"guaranteed",
    ),
    "URGENCY": (
        r"act now", r"limited time", r"don'?t (?:delay|miss|wait)", r"urgent", r"hurry",
        r"today only", r"expires? (?:soon|today|tomorrow)", r"while (?:supplies|they) last",
        r"call now", r"before it'?s too late", r"once in a lifetime", r"last chance",
        r"immediately", r"respond (?:now|today|immediately)", r"time is running out",
    ),
    "BULK_FOOTER": (
        r"to be removed", r"remove in the subject", r"removal instructions",
        r"(?:click|reply) (?:here )?to (?:be )?(?:removed|unsubscribe)", r"opt[- ]?in list",
        r"you (?:are )?receiv(?:ed|ing) this (?:e-?mail|message|mailing)", r"not spam",
        r"one[- ]time (?:e-?mail|mailing|message)", r"this is not (?:an? )?(?:unsolicited|spam)",
        r"sent in compliance", r"s\.? ?1618", r"no longer (?:wish|want) to receive",
        r"remove me", r"delete this (?:e-?mail|message)", r"if you wish to be removed",
        r"opted in", r"mailing list (?:of|for) (?:people|individuals)",
        r"your e-?mail address (?:was|has been) (?:obtained|collected|submitted)",
    ),
    "CALL_TO_ACTION": (
        r"click (?:here|below|on the link)", r"visit our (?:web ?site|site)", r"call toll[- ]free",
        r"call (?:us )?(?:today|now)", r"reply (?:to this e-?mail )?with", r"fill out the form",
        r"sign up (?:now|today)", r"apply (?:now|online)", r"get started (?:now|today)",
        r"copy and paste", r"follow the link", r"go to the (?:link|url|web ?site) below",
    ),
    "HEALTH": (
        r"weight loss", r"lose weight", r"lose \d+ (?:lbs|pounds)", r"diet (?:pills?|patch)",
        r"viagra", r"herbal", r"prescriptions?", r"enlarge\w*", r"hgh", r"anti-?aging",
        r"no prescription", r"pharmacy", r"medications?", r"erection", r"cialis",
        r"burn fat", r"appetite",
    ),
    "BUSINESS": (
        r"work (?:from|at) home", r"home[- ]based business", r"be your own boss",
        r"multi-?level marketing", r"network marketing", r"mlm", r"business opportunity",
        r"no experience (?:needed|necessary|required)", r"part[- ]time", r"full[- ]time income",
        r"e-?mail marketing", r"bulk e-?mail", r"millions of (?:e-?mail )?addresses",
        r"targeted (?:e-?mail|list)s?", r"increase (?:your )?sales", r"marketing campaign",
    ),
    # Advance-fee fraud ("I am a highly placed official..."): not advertising, so not a
    # PHRASE_ category: its symbols are ADVANCE_FEE and ADVANCE_FEE_MANY.
    "ADVANCE_FEE": (
        r"next of kin", r"beneficiary", r"wire transfer", r"bank account details?",
        r"(?:usd|us\$) ?\d", r"(?:\d+(?:\.\d+)? )?million (?:united states |us )?dollars",
        r"transfer (?:of )?(?:the|this) (?:funds?|sum|money)", r"foreign (?:partner|account)",
        r"strict(?:est)? confidence", r"confidential (?:business|transaction)",
        r"government of nigeria", r"federal republic", r"central bank", r"over-?invoiced",
        r"(?:late|deceased) (?:husband|father|client)", r"legitimate (?:transaction|business)",
        r"your (?:kind )?assistance", r"dear partner", r"modalities", r"reliable partner",
        r"\d\d ?% (?:of the (?:total )?(?:sum|fund)|for you)", r"security company",
        r"diplomatic", r"trusted (?:foreign )?partner", r"god bless",
    ),
    "GREETING": (
        r"dear (?:friend|sir|madam|sir/madam|sir or madam|valued (?:customer|member))",
        r"hello friend", r"dear (?:beloved|business owner|homeowner|entrepreneur)",
        r"greetings to you",
    ),
}

#: Categories whose phrases also count in the Subject (SUBJECT_SPAM_PHRASE).
SUBJECT_CATEGORIES = ("MONEY", "OFFER", "URGENCY", "HEALTH", "BUSINESS")
SUBJECT_WORDS = re.compile(
    r"\b(?:free|cash|money|save|win|winner|offer|guarantee[ds]?|mortgage|loan|debt|rates?|"
    r"income|viagra|sale|discount|deal|lowest|cheap)\b|\$\s?\d|\d ?%", re.I)


@dataclass(frozen=True)
class _Phrase:
    """One compiled phrase; `literals` are plain-text starts of which one must be in the
    text for the phrase to match (a cheap substring test that rules most phrases out
    before the regular expression runs); empty when the phrase starts with a class.

    `words`: when every literal starts with a whole word ("make" in "make money"), those
    words; a phrase matches at the start of a word, so one of them must then be a word
    of the text, and a set lookup in the text's words (`text_words`) replaces the
    substring scans.  Empty: use `required`, else `literals`.
    `required`: the longest plain text every match holds ("million " in
    "(?:\\d+ )?million dollars", "1618" in "s\\.? ?1618"), tested as a substring: longer
    and rarer than most literal starts, so it rules out more.
    """

    category: str
    pattern: re.Pattern[str]
    literals: tuple[str, ...]
    words: frozenset[str] = frozenset()
    required: str = ""
    #: What `_found` is asked: `pattern`, or for a pattern led by a group of plain
    #: branches ("(?:thousands|millions) of dollars") one pattern per branch.  The
    #: group hides the literal start from the engine, which then tries the pattern at
    #: every position; a branch's own pattern starts with plain text, found at C speed.
    #: A match of the group is a match of one branch at the same place, so the phrase
    #: is found where one of them is.
    searches: tuple[re.Pattern[str], ...] = ()


def _literal_prefix(fragment: str) -> str:
    """The plain text a fragment starts with ("\\$" is a plain "$")."""
    prefix = ""
    index = 0
    while index < len(fragment):
        char = fragment[index]
        if fragment.startswith("\\$", index):
            prefix, index = prefix + "$", index + 2
            continue
        if not (char.isalnum() or char in " '-%/"):
            break
        prefix, index = prefix + char, index + 1
    if prefix and fragment[index:index + 1] in ("?", "*", "{"):
        prefix = prefix[:-1]  # the last character is optional or repeated
    return prefix.rstrip()


def _leading_alternatives(fragment: str) -> list[str] | None:
    """The branches of a leading "(?:a|b)" group, each followed by the rest of the
    fragment, or None when the fragment does not start with such a group."""
    if not fragment.startswith("(?:"):
        return None
    depth = 1
    branches: list[str] = []
    current = ""
    for index in range(3, len(fragment)):
        char = fragment[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                rest = fragment[index + 1:]
                if rest[:1] in ("?", "*", "{"):
                    return None  # the group itself is optional
                return [branch + rest for branch in [*branches, current]]
        elif char == "|" and depth == 1:
            branches.append(current)
            current = ""
            continue
        current += char
    return None


def _literals(fragment: str) -> tuple[str, ...]:
    branches = _leading_alternatives(fragment)
    if branches is None:
        prefix = _literal_prefix(fragment)
        return (prefix,) if prefix else ()
    prefixes = [_literal_prefix(branch) for branch in branches]
    return tuple(prefixes) if all(prefixes) else ()


_WORD = re.compile(r"[^\W_]+")  # what str.isalnum() accepts, as `_found`'s word start


def _leading_word(branch: str, whole_word_tail: bool) -> str:
    """The word a match of `branch` surely starts with, or "" when it is not sure.

    "make money" starts with the word "make": the match starts a word (`_found`) and
    the space ends it.  "congratulations" followed by the `(?!\\w)` tail is a word by
    itself.  Not sure: an unfinished word ("refinanc\\w*"), an optional last letter
    ("expires? ..."), a class or group after the word ("you(?:'ve| have)"), a sign
    first ("\\$...").
    """
    word = _WORD.match(branch)
    if word is None:
        return ""
    after = branch[word.end():]
    if not after:
        return word.group() if whole_word_tail else ""
    ender = after[0]
    if after.startswith("["):  # a class of word-ending signs only, as in "risk[- ]free"
        close = after.find("]")
        ender = after[1:close] if close > 1 else "a"
        after = after[close:]
    if all(char in " -'%/" for char in ender) and after[1:2] not in ("?", "*", "{", "+"):
        return word.group()
    return ""


def _first_words(fragment: str, whole_word_tail: bool) -> frozenset[str]:
    """The words one of which a match of `fragment` starts with (one per branch of a
    leading group), or none when any branch is not sure (see `_leading_word`)."""
    branches = _leading_alternatives(fragment) or [fragment]
    words = {_leading_word(branch, whole_word_tail) for branch in branches}
    return frozenset() if "" in words else frozenset(words)


def _plain_characters(fragment: str) -> list[str | None] | None:
    """The fragment's top-level items in order: a plain character, or None for anything
    that is not exactly one plain character in every match (a class, a group, an escape
    such as \\d, an anchor, an item made optional or repeated by ?, *, + or {m,n}).
    None when the fragment is an alternation itself ("a|b", a top-level "|")."""
    items: list[str | None] = []
    index = 0
    while index < len(fragment):
        char = fragment[index]
        if char == "\\":
            escaped = fragment[index + 1:index + 2]
            items.append(None if escaped.isalnum() else escaped)
            index += 2
        elif char == "[":
            index = fragment.index("]", index + 2) + 1
            items.append(None)
        elif char == "(":
            depth = 0
            for end in range(index, len(fragment)):
                depth += {"(": 1, ")": -1}.get(fragment[end], 0)
                if depth == 0:
                    break
            index = end + 1
            items.append(None)
        elif char in "?*+{":
            if char == "{":
                index = fragment.index("}", index)
            if items:
                items[-1] = None
            index += 1
        elif char == "|":
            return None
        elif char in ".^$":
            items.append(None)
            index += 1
        else:
            items.append(char)
            index += 1
    return items


def _required_text(fragment: str) -> str:
    """The longest plain text every match holds: the longest run of plain characters
    among the fragment's top-level items ("% off" of "\\d{2,3} ?% off", "million " of
    "(?:...)?million (?:...)?dollars", "1618" of "s\\.? ?1618"); "" when the fragment
    is an alternation (no one text is in every match)."""
    items = _plain_characters(fragment)
    if items is None:
        return ""
    return max("".join(item or "\0" for item in items).split("\0"), key=len)


def _compile(category: str, fragment: str) -> _Phrase:
    # A phrase that ends in "$" or a digit class is followed by digits ("earn $500").
    tail = "" if fragment.endswith(("$", r"\d")) else r"(?!\w)"
    literals = _literals(fragment)
    # No leading (?<!\w): the engine then scans for the literal start at C speed; the
    # word boundary before the match is checked by `_found`.
    pattern = re.compile(rf"{fragment}{tail}")
    branches = _leading_alternatives(fragment) if literals else None
    searches = tuple(re.compile(rf"{branch}{tail}") for branch in branches or ()) or (pattern,)
    return _Phrase(category, pattern, literals,
                   _first_words(fragment, whole_word_tail=bool(tail)),
                   _required_text(fragment), searches)


def _found(pattern: re.Pattern[str], text: str) -> bool:
    """Whether `pattern` matches in `text` at the start of a word."""
    match = pattern.search(text)
    while match is not None:
        start = match.start()
        if start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            return True
        match = pattern.search(text, start + 1)
    return False


_PHRASES = tuple(_compile(category, fragment)
                 for category, fragments in PHRASES.items() for fragment in fragments)


def _phrases_by_word(phrases: tuple[_Phrase, ...]) -> dict[str, tuple[int, ...]]:
    """First word -> the phrases (their indexes) a match of which starts with it (see
    `_Phrase.words`)."""
    by_word: dict[str, list[int]] = {}
    for index, phrase in enumerate(phrases):
        for word in phrase.words:
            by_word.setdefault(word, []).append(index)
    return {word: tuple(found) for word, found in by_word.items()}


#: The phrases with first words, looked up from the text's words: one set intersection
#: instead of a test per phrase (most texts hold the first words of a few phrases).
_PHRASES_BY_WORD = _phrases_by_word(_PHRASES)
_FIRST_WORDS = frozenset(_PHRASES_BY_WORD)
#: The others, tested one by one (`literals`, then `required`).
_PHRASES_WITHOUT_WORDS = tuple((index, phrase) for index, phrase in enumerate(_PHRASES)
                               if not phrase.words)
_DOLLAR_AMOUNT = re.compile(r"\$\s?\d")
_TOLL_FREE = re.compile(r"(?<!\d)(?:1[-. ]?)?\(?8(?:00|88|77|66)\)?[-. ]?\d{3}[-. ]?\d{4}(?!\d)")
_SPACES = re.compile(r"\s+")
#: Every toll-free match holds one of these (the expression has no literal start, so
#: it is tried at every position of the text: a substring test rules most texts out).
_TOLL_FREE_PREFIXES = ("800", "888", "877", "866")
#: Whether one of them is in the text, in one scan for "8" (four substring scans of the
#: text cost eight times more).
_TOLL_FREE_PREFIX = re.compile("|".join(_TOLL_FREE_PREFIXES))
_CAPITALS = string.ascii_uppercase.encode()
_SMALL_LETTERS = string.ascii_lowercase.encode()
_ADV = re.compile(r"^\s*[\[(]?adv\b", re.I)


#: ASCII signs and spaces -> space: on ASCII text, split() after this gives the runs
#: of `_WORD` three times faster than findall.
_ASCII_NON_WORD = str.maketrans({chr(code): " " for code in range(128)
                                 if not chr(code).isalnum()})


def _word_list(text: str) -> list[str]:
    """The words of `text` in order, repeats kept: runs of letters and digits
    (str.isalnum), as `_found` draws a word start."""
    if text.isascii():
        return text.translate(_ASCII_NON_WORD).split()
    return _WORD.findall(text)


def text_words(text: str) -> frozenset[str]:
    """The words of `text` (see `_word_list`)."""
    return frozenset(_word_list(text))


def phrase_counts(text: str) -> dict[str, int]:
    """Category -> number of distinct phrases of it found in `text` (lower case, white
    space runs as one space: see `normalise`)."""
    counts: dict[str, int] = {}
    # The first words among the text's: lookups in the small set of first words, not a
    # set of every word of the text built first (a third cheaper).
    candidates = {index for word in _FIRST_WORDS.intersection(_word_list(text))
                  for index in _PHRASES_BY_WORD[word]}
    for index, phrase in _PHRASES_WITHOUT_WORDS:
        if phrase.required:  # "1618" rules out more than the "s" it starts with
            if phrase.required in text:
                candidates.add(index)
        elif not phrase.literals or any(literal in text for literal in phrase.literals):
            candidates.add(index)
    for index in candidates:
        phrase = _PHRASES[index]
        if any(_found(pattern, text) for pattern in phrase.searches):
            counts[phrase.category] = counts.get(phrase.category, 0) + 1
    return counts


def normalise(text: str) -> str:
    """Lower case, every run of white space one space: what phrases are matched on."""
    lowered = text.lower()
    # What _SPACES.sub(" ", ...) gives, by str.split (the same white space: str.isspace)
    # and a join, several times faster on a long text; a run at either end stays a space.
    words = lowered.split()
    if not words:
        return " " if lowered else ""
    lead = " " if lowered[0].isspace() else ""
    trail = " " if lowered[-1].isspace() else ""
    return f"{lead}{' '.join(words)}{trail}"


def phrase_symbols(text: str) -> list[Symbol]:
    symbols: list[Symbol] = []
    for category, found in sorted(phrase_counts(normalise(text)).items()):
        name = category if category == "ADVANCE_FEE" else f"PHRASE_{category}"
        symbols.append(Symbol(name))
        if found >= MANY:
            symbols.append(Symbol(f"{name}_MANY"))
    return symbols


def style_symbols(text: str) -> list[Symbol]:
    symbols: list[Symbol] = []
    # ASCII letters only, counted by bytes.translate on the ASCII characters (findall of
    # a one-letter class built a list of every letter: 40x slower).
    ascii_text = text.encode("ascii", "ignore")
    capitals = len(ascii_text) - len(ascii_text.translate(None, _CAPITALS))
    letters = capitals + len(ascii_text) - len(ascii_text.translate(None, _SMALL_LETTERS))
    if letters >= 200 and 3 * capitals >= letters:
        symbols.append(Symbol("BODY_CAPS_HEAVY"))
    if "!!!" in text or text.count("!") >= 10:
        symbols.append(Symbol("BODY_EXCLAIM_MANY"))
    if len(_DOLLAR_AMOUNT.findall(text)) >= 3:
        symbols.append(Symbol("BODY_DOLLAR_AMOUNTS"))
    if _TOLL_FREE_PREFIX.search(text) and _TOLL_FREE.search(text):
        symbols.append(Symbol("BODY_TOLL_FREE"))
    return symbols


def subject_symbols(subject: str) -> list[Symbol]:
    symbols: list[Symbol] = []
    if _ADV.match(subject):
        symbols.append(Symbol("SUBJECT_ADV"))
    in_categories = set(phrase_counts(normalise(subject))) & set(SUBJECT_CATEGORIES)
    if in_categories or SUBJECT_WORDS.search(subject):
        symbols.append(Symbol("SUBJECT_SPAM_PHRASE"))
    return symbols


RESULT: ResultKey[RuleFindings] = ResultKey("phrases")


class PhraseHeuristics(RuleCheck):
    """The phrase and text-style rules above, on the shared parse."""

    name = "phrases"
    produces = RESULT
    requires = (mime_check.RESULT,)

    def evaluate(self, check_input: CheckInput) -> RuleFindings:
        subject = ""
        for _, header in check_input.transaction.headers_named("Subject"):
            subject = decode_header_text(header.value)[:1000]
            break
        view = check_input.results.get(mime_check.RESULT)
        text = view.parsed.visible_text()[:MAX_TEXT_CHARS] if view is not None else ""
        return RuleFindings(tuple([*phrase_symbols(f"{subject}\n{text}"),
                                   *style_symbols(text), *subject_symbols(subject)]))


def _build(context: BuildContext[None]) -> PhraseHeuristics | None:
    return PhraseHeuristics() if context.settings.scoring.enabled else None


SPEC: CheckSpec[None] = CheckSpec("phrases", _build)
