"""Values taken from a message, made fit for a log line or an A-R pvalue."""

from __future__ import annotations

#: Longest value reported for d=, s=, a= or i= (a domain name has at most 253 octets).
MAX_REPORTED = 255

_VISIBLE_ASCII = bytes(range(0x21, 0x7F))


def printable(value: bytes | str, limit: int = MAX_REPORTED) -> str:
    """`value` as printable ASCII on one line, at most `limit` characters.

    Sender-written tag values end up in our logs and headers; control characters and
    line breaks there could forge log lines or header fields, and their length is the
    sender's choice, so both are bounded here (the work too, on absurd values).
    """
    if len(value) <= limit:
        # The common case (a d=, s= or a= value): visible ASCII without spaces is
        # already what the rules below would make of it.
        if isinstance(value, bytes):
            if not value.translate(None, _VISIBLE_ASCII):
                return value.decode("ascii")
        elif value.isascii() and value.isprintable() and " " not in value:
            return value
    value = value[: limit * 4 + 16]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = " ".join(text.split())
    if not (text.isascii() and text.isprintable()):
        text = "".join(char if " " <= char <= "~" else "?" for char in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(text: str, limit: int = 40) -> str:
    """`text` for a reason or log line: unprintable characters as "?", at most `limit`.

    Unlike `printable`, non-ASCII letters stay (a DMARC record or From value names
    domains and people in any script); only the length and control characters are
    the sender's to worry about here.
    """
    text = "".join(char if char.isprintable() else "?" for char in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
