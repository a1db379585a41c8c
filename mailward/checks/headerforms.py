"""Header-form heuristics: addressing, subject and mailer details that bulk senders get wrong.

mailward/checks/headers.py judges the fields RFC 5322 requires (Date, Message-ID, From's
display name); this module looks at the shape of the rest (symbols are names only):

* TO_MISSING / TO_UNDISCLOSED: no To at all, or an empty / "undisclosed recipients"
  group: the message was sent to a list of strangers in Bcc.
* TO_MANY: To and Cc name more than `MANY_RECIPIENTS` addresses.
* TO_EQ_FROM: To is the From address itself (the real recipients are hidden in Bcc).
* SUBJECT_NAMES_RECIPIENT: the Subject addresses the recipient by the local part of
  their address ("bob, your account"): a mail merge over harvested addresses.
* FROM_LOCAL_DIGITS: the From local part ends in four or more digits (throw-away
  accounts: `kim20394@...`).
* SUBJECT_RE_NO_THREAD: Subject starts "Re:" but there is neither In-Reply-To nor
  References: a fake reply, made to look like a conversation.
* SUBJECT_TRAILING_ID: the Subject ends in a tracking token that the sender appends per
  recipient: a word after a run of three or more spaces, a letters-and-digits code
  (5-12 characters, two or more of each, not all hex digits: commit and ticket ids in
  notifications are hex), a number after two or more spaces, or a vowel-less random word
  of five or more letters.
* SUBJECT_MISSING: no Subject, or an empty one.
* HEADER_8BIT: raw 8-bit bytes in Subject or From instead of RFC 2047 encoded words.
* MAILER_OUTLOOK_FORGED: X-Mailer names a Windows Outlook (Express) but the Message-ID is
  not in the form it writes, or the X-MimeOLE header it adds is missing: the name is
  borrowed by a bulk mailer.
* MID_OUTLOOK_FORM_NO_OUTLOOK: a Message-ID in Outlook's form although no Microsoft
  program wrote the message (no such X-Mailer or X-MimeOLE): bulk tools copy the form.
* PRIORITY_HIGH: X-Priority 1/2, X-MSMail-Priority or Importance high: urgency.
* DATE_ODD_FORMAT: a Date that parses but is not written as RFC 5322 mail software writes
  it (two-digit or impossible year, no numeric zone or one no place on earth has,
  odd spacing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailward.checks.base import BuildContext, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.checks.rulebase import RuleCheck, RuleFindings
from mailward.fromheader import parse_from
from mailward.mime import decode_header_text
from mailward.model import Transaction

MANY_RECIPIENTS = 10
MAX_VALUE_CHARS = 4000

_UNDISCLOSED = re.compile(r"undisclosed|recipient list (?:suppressed|not shown)|^\s*:?\s*;?\s*$",
                          re.I)
_ADDRESS = re.compile(r"[^\s<>,;:\"]+@[^\s<>,;:\"]+")
_LOCAL_DIGITS = re.compile(r"\d{4,}$")
_REPLY = re.compile(r"^\s*(?:re|aw|sv)\s*(?:\[\d+\])?\s*:", re.I)
_TRAILING_ID = re.compile(
    r"(?:\S\s{3,}\S+|\s[-#(\[]?(?=(?:[A-Za-z]*\d){2})(?=(?:\d*[A-Za-z]){2})"
    r"(?![0-9A-Fa-f]+\b)[A-Za-z0-9]{5,12}\b"
    r"[)\]]?|\S\s{2,}[-#(\[]?\d{3,}(?:[.-]\d+)*[)\]]?|\s[b-df-hj-np-tv-xz]{5,})\s*$")
_FOLDING = re.compile(r"\r?\n[ \t]+")
#: The Windows Outlook versions whose Message-IDs have the `<12hex$8hex$8hex@host>` form
#: (the Macintosh editions and Outlook 2000's internet mode write other forms).
_OUTLOOK_WINDOWS = re.compile(
    r"microsoft outlook express [56]\.|microsoft outlook, build 1[01]\.|microsoft office outlook",
    re.I)
_OUTLOOK_MID = re.compile(r"\s*<[0-9A-Fa-f]{12}\$[0-9A-Fa-f]{8}\$[0-9A-Fa-f]{8}@[^<>\s]+>\s*")
_RFC5322_DATE = re.compile(
    r"(?:[A-Z][a-z]{2},\s)?\s?\d{1,2}\s[A-Z][a-z]{2}\s(?:19|20)\d\d\s\d{2}:\d{2}(?::\d{2})?"
    r"\s[+-](?:0\d|1[0-4])(?:00|15|30|45)(?:\s\([A-Za-z0-9 +:-]{1,40}\))?")
_MICROSOFT_MAILER = re.compile(r"outlook|microsoft|mimeole|exchange|cdo", re.I)


def _values(transaction: Transaction, name: str) -> list[str]:
    return [header.value[:MAX_VALUE_CHARS] for _, header in transaction.headers_named(name)]


def _first(transaction: Transaction, name: str) -> str | None:
    for _, header in transaction.headers_named(name):
        return header.value[:MAX_VALUE_CHARS]
    return None


def recipient_symbols(to_values: Sequence[str], cc_values: Sequence[str]) -> list[Symbol]:
    symbols: list[Symbol] = []
    if not to_values:
        symbols.append(Symbol("TO_MISSING"))
    elif all(_UNDISCLOSED.search(" ".join(value.split())) for value in to_values):
        symbols.append(Symbol("TO_UNDISCLOSED"))
    count = sum(len(_ADDRESS.findall(value)) for value in (*to_values, *cc_values))
    if count > MANY_RECIPIENTS:
        symbols.append(Symbol("TO_MANY"))
    return symbols


def _addresses(values: Sequence[str]) -> list[str]:
    return [address.lower() for value in values for address in _ADDRESS.findall(value)]


def addressing_symbols(to_values: Sequence[str], from_value: str | None,
                       subject_value: str | None) -> list[Symbol]:
    symbols: list[Symbol] = []
    to_addresses = _addresses(to_values)
    from_addresses = _addresses([from_value]) if from_value else []
    if len(to_addresses) == 1 and to_addresses == from_addresses:
        symbols.append(Symbol("TO_EQ_FROM"))
    if subject_value:
        subject = decode_header_text(subject_value).lower()
        locals_ = {address.partition("@")[0].strip("<>\"'") for address in to_addresses[:5]}
        if any(len(local) >= 3 and _names(subject, local) for local in locals_):
            symbols.append(Symbol("SUBJECT_NAMES_RECIPIENT"))
    return symbols


def _names(subject: str, local: str) -> bool:
    """Whether `local` is in `subject` as a name followed by a comma ("bob, your ..."):
    not after a word character, "." or "-", and before optional white space and ",".

    What `(?<![\\w.-])LOCAL\\s*,` finds (str.isalnum is re's \\w apart from "_", and
    lstrip() strips re's \\s), without compiling an expression for each recipient.
    """
    start = subject.find(local)
    while start != -1:
        before = subject[start - 1] if start else " "
        if not (before.isalnum() or before in "_.-") and \
                subject[start + len(local):].lstrip().startswith(","):
            return True
        start = subject.find(local, start + 1)
    return False


def from_symbols(from_value: str | None) -> list[Symbol]:
    if from_value is None:
        return []
    parsed = parse_from(from_value)
    if isinstance(parsed, str) or len(parsed) != 1:
        return []
    local = parsed[0].local_part
    return [Symbol("FROM_LOCAL_DIGITS")] if _LOCAL_DIGITS.search(local) else []


def subject_symbols(subject_value: str | None, threaded: bool) -> list[Symbol]:
    if subject_value is None or not subject_value.strip():
        return [Symbol("SUBJECT_MISSING")]
    subject = decode_header_text(subject_value)
    symbols: list[Symbol] = []
    if _REPLY.match(subject) and not threaded:
        symbols.append(Symbol("SUBJECT_RE_NO_THREAD"))
    if _TRAILING_ID.search(_FOLDING.sub(" ", subject_value).rstrip()):
        symbols.append(Symbol("SUBJECT_TRAILING_ID"))
    return symbols


def eight_bit_symbols(values: Sequence[str | None]) -> list[Symbol]:
    # transaction_from_bytes and the milter keep undecodable bytes as surrogate escapes;
    # a non-ASCII character that decoded as UTF-8 is raw 8-bit too.
    for value in values:
        if value is not None and any(ord(char) > 127 for char in value):
            return [Symbol("HEADER_8BIT")]
    return []


def mailer_symbols(transaction: Transaction) -> list[Symbol]:
    mailer = _first(transaction, "X-Mailer") or ""
    if not _OUTLOOK_WINDOWS.search(mailer):
        return []
    message_id = (_first(transaction, "Message-ID") or "").replace("\n", " ")
    if message_id.strip().lower().endswith(("@hotmail.com>", "@msn.com>")):
        return []  # Outlook Express over Hotmail's HTTP access: Hotmail numbers it
    has_mimeole = _first(transaction, "X-MimeOLE") is not None
    if not _OUTLOOK_MID.fullmatch(message_id) or not has_mimeole:
        return [Symbol("MAILER_OUTLOOK_FORGED")]
    return []


def message_id_form_symbols(transaction: Transaction) -> list[Symbol]:
    """MID_OUTLOOK_FORM_NO_OUTLOOK: an Outlook-form Message-ID in a message no Microsoft
    program wrote (no such X-Mailer, no X-MimeOLE): bulk tools copy the form."""
    message_id = (_first(transaction, "Message-ID") or "").replace("\n", " ")
    if not _OUTLOOK_MID.fullmatch(message_id):
        return []
    mailer = " ".join(_values(transaction, "X-Mailer") + _values(transaction, "X-MimeOLE"))
    return [] if _MICROSOFT_MAILER.search(mailer) else [Symbol("MID_OUTLOOK_FORM_NO_OUTLOOK")]


def priority_symbols(transaction: Transaction) -> list[Symbol]:
    priority = (_first(transaction, "X-Priority") or "").strip()
    ms_priority = (_first(transaction, "X-MSMail-Priority") or "").strip().lower()
    importance = (_first(transaction, "Importance") or "").strip().lower()
    if priority[:1] in ("1", "2") or ms_priority == "high" or importance == "high":
        return [Symbol("PRIORITY_HIGH")]
    return []


def date_form_symbols(date_value: str | None) -> list[Symbol]:
    if date_value is None:
        return []
    text = date_value.replace("\n", " ").strip()
    return [] if _RFC5322_DATE.fullmatch(text) else [Symbol("DATE_ODD_FORMAT")]


RESULT: ResultKey[RuleFindings] = ResultKey("header_forms")


class HeaderFormHeuristics(RuleCheck):
    """The header-form rules above; reads only the headers."""

    name = "header_forms"
    produces = RESULT

    def evaluate(self, check_input: CheckInput) -> RuleFindings:
        transaction = check_input.transaction
        from_value = _first(transaction, "From")
        subject = _first(transaction, "Subject")
        threaded = (_first(transaction, "In-Reply-To") is not None
                    or _first(transaction, "References") is not None)
        return RuleFindings(tuple([
            *recipient_symbols(_values(transaction, "To")[:20], _values(transaction, "Cc")[:20]),
            *from_symbols(from_value),
            *addressing_symbols(_values(transaction, "To")[:20], from_value, subject),
            *subject_symbols(subject, threaded),
            *eight_bit_symbols((subject, from_value)),
            *mailer_symbols(transaction),
            *message_id_form_symbols(transaction),
            *priority_symbols(transaction),
            *date_form_symbols(_first(transaction, "Date")),
        ]))


def _build(context: BuildContext[None]) -> HeaderFormHeuristics | None:
    return HeaderFormHeuristics() if context.settings.scoring.enabled else None


SPEC: CheckSpec[None] = CheckSpec("header_forms", _build)
