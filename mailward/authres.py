"""Authentication-Results (RFC 8601): build ours, find forged ones.

Downstream filters (Sieve scripts, MUAs, Dovecot) trust an A-R header because of the
authserv-id it names.  So we add exactly one under our `authserv_id`, built from typed
check results, and remove any that arrive claiming our id from a client we do not
trust: otherwise a spammer could write `Authentication-Results: mx.example.net;
dmarc=pass` into the message and have it believed.

Parsing here is deliberately narrow: to decide whether a header claims our id we only
need its authserv-id, which we read the way a lenient consumer would (comments skipped,
folding undone, case ignored, quotes allowed), so that no variant that a downstream
parser accepts can slip past.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from mailward.model import AuthProperty, AuthResult, Header, RemoveHeader

HEADER_NAME = "Authentication-Results"

# RFC 2045 token characters (no tspecials): a reason made only of these needs no quoting.
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+")
# A pvalue may also be written bare as an address, local-part@domain (RFC 8601 2.2).
_PVALUE = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~/@=]+")
_FOLD = re.compile(r"\r?\n[ \t]+")


def authserv_id_of(value: str) -> str | None:
    """The authserv-id an A-R header value names, lower-cased; None if it has none."""
    text = _FOLD.sub(" ", value)
    position = _skip_cfws(text, 0)
    if position >= len(text):
        return None
    if text[position] == '"':
        end = text.find('"', position + 1)
        if end < 0:
            return None
        identifier = text[position + 1 : end]
    else:
        match = re.match(r"[^\s;()\"]+", text[position:])
        if match is None:
            return None
        identifier = match.group(0)
    # A trailing dot names the same host (mx.example.net. is mx.example.net).
    identifier = identifier.strip().rstrip(".").lower()
    return identifier or None


def _skip_cfws(text: str, position: int) -> int:
    """Skip white space and (possibly nested) comments, as RFC 5322 CFWS allows."""
    depth = 0
    while position < len(text):
        char = text[position]
        if depth:
            if char == "\\":
                position += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
        elif char == "(":
            depth = 1
        elif not char.isspace():
            break
        position += 1
    return position


def forged_headers(
    headers: Iterable[Header], authserv_id: str
) -> tuple[RemoveHeader, ...]:
    """Removal edits for every A-R header that claims `authserv_id`.

    Occurrence numbers count A-R headers only, 1-based, as the milter protocol's
    change-header command addresses them.  The edits are listed last-first so that
    removing one never shifts the index of the next.
    """
    ours = authserv_id.lower()
    removals = []
    occurrence = 0
    for header in headers:
        if header.name.lower() != HEADER_NAME.lower():
            continue
        occurrence += 1
        if authserv_id_of(header.value) == ours:
            removals.append(RemoveHeader(HEADER_NAME, occurrence))
    return tuple(reversed(removals))


def quote_value(value: str, bare: re.Pattern[str] = _PVALUE) -> str:
    """A pvalue or reason as RFC 8601 writes it: bare if possible, else quoted."""
    if bare.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\r\n]+", " ", escaped)
    return f'"{escaped}"'


def format_result(result: AuthResult) -> str:
    parts = [f"{result.method}={result.result}"]
    if result.reason:
        parts.append(f"reason={quote_value(result.reason, _TOKEN)}")
    parts.extend(_format_property(prop) for prop in result.properties)
    return " ".join(parts)


def _format_property(prop: AuthProperty) -> str:
    return f"{prop.ptype}.{prop.name}={quote_value(prop.value)}"


def format_header(authserv_id: str, results: Sequence[AuthResult]) -> str:
    """The value of our A-R header, one result per folded line; `none` if no results."""
    if not results:
        return f"{authserv_id}; none"
    return f"{authserv_id};" + ";".join(f"\n\t{format_result(r)}" for r in results)
