"""Header heuristics: what a well-run sender gets right and bulk spam often does not.

Each rule looks at one thing in the header section as received and emits one symbol;
weights are the scoring step's (the shipped defaults are in mailward/scoring.py).  Nothing here
rejects on its own: a missing Message-ID is a hint, not a verdict.

Rules, and why they are there:

* MISSING_DATE / INVALID_DATE / DATE_IN_FUTURE / DATE_IN_PAST: RFC 5322 requires Date;
  spamware forgets it or writes a clock far off (> 1 day ahead, > 7 days behind; mail
  that waited in a queue for a week is rare and still only scores a little).  "Off" is
  measured against the time the message was received, as SpamAssassin does: the date of
  the topmost Received header (ours, or the last hop's), and only without a parseable one
  against the clock.  A message re-scored later (explain, a corpus) is then judged by
  when it arrived, not by how old it is now.
* MISSING_MID / INVALID_MID: RFC 5322 asks for Message-ID as `<left@right>`.
* FROM_NAME_OTHER_DOMAIN: the display name shows an address or domain that is not the
  From domain ("service@paypal.com" <x@example.test>): the classic phish.
* FROM_NAME_LOCAL_DOMAIN: the display name claims one of the recipients' domains while
  the address is elsewhere ("IT support example.net" writing to example.net users).
* REPLYTO_FREEMAIL: replies go to a freemail address although From is another domain.
* SUBJECT_ALL_CAPS / SUBJECT_EXCESS_PUNCT: shouting subjects.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.fromheader import parse_from
from mailward.mime import decode_header_text
from mailward.model import Transaction

FUTURE_SLACK = 24 * 3600.0
PAST_SLACK = 7 * 24 * 3600.0

#: Freemail providers (registrable domains) for REPLYTO_FREEMAIL: the large ones only.
FREEMAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "outlook.com", "hotmail.com",
    "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mail.com", "gmx.com",
    "gmx.net", "gmx.de", "web.de", "yandex.ru", "yandex.com", "mail.ru", "protonmail.com",
    "proton.me", "zoho.com", "qq.com", "163.com", "126.com",
})

_MESSAGE_ID = re.compile(r"\s*<[^<>@\s]+@[^<>@\s]+>\s*")
_DOMAIN_IN_TEXT = re.compile(
    r"(?:[A-Za-z0-9._%+-]+@)?((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24})\b")
_EXCESS_PUNCT = re.compile(r"[!?$]{3,}")


@dataclass(frozen=True)
class HeaderFindings:
    """The symbols the header rules found (empty: nothing unusual)."""

    symbols: tuple[Symbol, ...] = ()


RESULT: ResultKey[HeaderFindings] = ResultKey("headers")


def _first(transaction: Transaction, name: str) -> str | None:
    for _, header in transaction.headers_named(name):
        return header.value
    return None


_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
#: The form nearly every sender writes ("Tue, 03 Mar 2026 09:20:10 +0100"): parsed here,
#: in a tenth of email.utils' time; anything else goes to email.utils.  A four-digit
#: year from 1000 (email.utils moves years under 100), minutes of the zone under 60.
_CANONICAL_DATE = re.compile(
    r"(?:\S+, )?(\d{1,2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([1-9]\d{3}) "
    r"(\d\d):(\d\d):(\d\d) ([+-])(\d\d)([0-5]\d)")


def _canonical_timestamp(match: re.Match[str]) -> float | None:
    """What email.utils.parsedate_to_datetime(...).timestamp() gives for a canonical date
    (the same datetime, built from the same fields; None where it raises)."""
    day, month, year, hour, minute, second, sign, zone_hours, zone_minutes = match.groups()
    offset = int(zone_hours) * 3600 + int(zone_minutes) * 60
    try:
        zone = datetime.timezone(datetime.timedelta(seconds=-offset if sign == "-" else offset))
        return datetime.datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute),
                                 int(second), tzinfo=zone).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def parse_timestamp(value: str) -> float | None:
    """An RFC 5322 date as a POSIX timestamp, or None when it is no date."""
    text = " ".join(value.split())
    canonical = _CANONICAL_DATE.fullmatch(text)
    # "-0000" (zone unknown) is a local time to email.utils: left to it.
    if canonical is not None and not text.endswith("-0000"):
        return _canonical_timestamp(canonical)
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def received_time(transaction: Transaction) -> float | None:
    """The date of the topmost Received header (the text after its last ";"), or None
    when there is no Received header or its date does not parse."""
    for _, header in transaction.headers_named("Received"):
        _, semicolon, stamp = header.value.rpartition(";")
        return parse_timestamp(stamp) if semicolon else None
    return None


def date_symbols(value: str | None, now: float) -> list[Symbol]:
    """Date rules; `now` is when the message was received (see received_time)."""
    if value is None:
        return [Symbol("MISSING_DATE")]
    stamp = parse_timestamp(value)
    if stamp is None:
        return [Symbol("INVALID_DATE")]
    if stamp > now + FUTURE_SLACK:
        return [Symbol("DATE_IN_FUTURE")]
    if stamp < now - PAST_SLACK:
        return [Symbol("DATE_IN_PAST")]
    return []


def message_id_symbols(value: str | None) -> list[Symbol]:
    if value is None:
        return [Symbol("MISSING_MID")]
    return [] if _MESSAGE_ID.fullmatch(value.replace("\n", " ")) else [Symbol("INVALID_MID")]


def _registrable(domain: str) -> str:
    """The last two labels: enough to compare a display name's domain with the address's
    (a co.uk-style suffix only makes the comparison stricter, never looser)."""
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def display_name_symbols(from_value: str | None, local_domains: Sequence[str]) -> list[Symbol]:
    if from_value is None:
        return []
    parsed = parse_from(from_value)
    if isinstance(parsed, str) or len(parsed) != 1:
        return []
    domain = parsed[0].domain.lower()
    raw_name, _ = email.utils.parseaddr(" ".join(from_value.split()))
    name = decode_header_text(raw_name) if raw_name else ""
    symbols: list[Symbol] = []
    claimed = {_registrable(match.group(1)) for match in _DOMAIN_IN_TEXT.finditer(name)}
    if claimed and _registrable(domain) not in claimed:
        symbols.append(Symbol("FROM_NAME_OTHER_DOMAIN", sorted(claimed)[0]))
    local = {_registrable(item) for item in local_domains}
    words = {word.lower() for word in re.findall(r"[A-Za-z0-9.-]+", name)}
    if _registrable(domain) not in local and local & {_registrable(w) for w in words if "." in w}:
        symbols.append(Symbol("FROM_NAME_LOCAL_DOMAIN"))
    return symbols


def reply_to_symbols(reply_to: str | None, from_value: str | None) -> list[Symbol]:
    if reply_to is None or from_value is None:
        return []
    replies, authors = parse_from(reply_to), parse_from(from_value)
    if isinstance(replies, str) or isinstance(authors, str) or not replies or not authors:
        return []
    author = _registrable(authors[0].domain)
    for reply in replies:
        target = _registrable(reply.domain)
        if target in FREEMAIL_DOMAINS and target != author:
            return [Symbol("REPLYTO_FREEMAIL", target)]
    return []


def subject_symbols(value: str | None) -> list[Symbol]:
    if value is None:
        return []
    subject = decode_header_text(value)
    letters = [char for char in subject if char.isalpha()]
    symbols: list[Symbol] = []
    if len(letters) >= 10 and sum(char.isupper() for char in letters) / len(letters) > 0.8:
        symbols.append(Symbol("SUBJECT_ALL_CAPS"))
    if _EXCESS_PUNCT.search(subject):
        symbols.append(Symbol("SUBJECT_EXCESS_PUNCT"))
    return symbols


class HeaderHeuristics(Check[HeaderFindings]):
    """The header rules above; reads only the Transaction's headers."""

    name = "headers"
    produces = RESULT

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def evaluate(self, check_input: CheckInput) -> HeaderFindings:
        transaction = check_input.transaction
        from_value = _first(transaction, "From")
        local_domains = tuple({recipient.rpartition("@")[2].lower()
                               for recipient in transaction.recipients if "@" in recipient})
        received = received_time(transaction)
        symbols = [
            *date_symbols(_first(transaction, "Date"),
                          self._clock() if received is None else received),
            *message_id_symbols(_first(transaction, "Message-ID")),
            *display_name_symbols(from_value, local_domains),
            *reply_to_symbols(_first(transaction, "Reply-To"), from_value),
            *subject_symbols(_first(transaction, "Subject")),
        ]
        return HeaderFindings(tuple(symbols))

    def symbols(self, result: HeaderFindings) -> Sequence[Symbol]:
        return result.symbols

    def metric_result(self, result: HeaderFindings) -> str:
        return "hit" if result.symbols else "clean"


def _build(context: BuildContext[None]) -> HeaderHeuristics | None:
    # Symbols without scoring would only cost time (content rules parse the message).
    return HeaderHeuristics() if context.settings.scoring.enabled else None


SPEC: CheckSpec[None] = CheckSpec("headers", _build)
