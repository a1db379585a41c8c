"""Authentication-Results (RFC 8601): the one parser and builder of it in Mailward.

Build ours (`format_result`, `format_header`), find forged ones (`authserv_id_of`,
`forged_headers`), split a header into its resinfos as written (`split_resinfo`, for
ARC's AR consolidation), and read one into typed results (`parse_results`, for the
ARC-Authentication-Results a policy consults).  Named `authresults` so that it does
not shadow the PyPI `authres` package, which `parse_results` uses.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import authres

from mailward.model import AuthProperty, AuthResult, Header, RemoveHeader

HEADER_NAME = "Authentication-Results"

# RFC 2045 token characters (no tspecials): a reason made only of these needs no quoting.
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+")
# A pvalue may also be written bare as an address, local-part@domain (RFC 8601 2.2).
_PVALUE = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~/@=]+")
# ... but only with a domain after the "@": a bare "@" or "user@" is no pvalue, and a
# consumer (the authres package) then rejects the whole header, every result in it.
_BARE_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~/=]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_FOLD = re.compile(r"\r?\n[ \t]+")
# An authserv-id written as a bare value, and line breaks a quoted value must lose.
_BARE_ID = re.compile(r"[^\s;()\"]+")
_LINE_BREAKS = re.compile(r"[\r\n]+")


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
        match = _BARE_ID.match(text, position)
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
    if bare.fullmatch(value) and ("@" not in value or _BARE_ADDRESS.fullmatch(value)):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = _LINE_BREAKS.sub(" ", escaped)
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


# --------------------------------------------------------------------------- parsing


def split_resinfo(text: str) -> list[str]:
    """An A-R value split at the semicolons outside quotes and comments, parts stripped
    and kept as written (comments too): authserv-id first, then each resinfo."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"':
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == ";" and not depth:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


@dataclass(frozen=True)
class ParsedResults:
    """One Authentication-Results payload, parsed (RFC 8601; an AAR's after `i=N;`).

    `results` are the resinfos the header records, as our own `AuthResult` values with
    method, result, ptype and property names lower-cased (they are case-insensitive)
    and values as written.  A payload that does not parse leaves `results` empty and
    says why in `error` (all or nothing: guessing at a broken header could invent a
    "pass" that its author never wrote).  Parsing is the PyPI authres package's
    (non-strict): properties of unknown ptypes are skipped.
    """

    authserv_id: str | None
    results: tuple[AuthResult, ...] = ()
    error: str = ""

    def results_for(self, method: str) -> tuple[AuthResult, ...]:
        wanted = method.lower()
        return tuple(result for result in self.results if result.method == wanted)

    def says(
        self, method: str, result: str = "pass", properties: Mapping[str, str] | None = None
    ) -> bool:
        """Did the sealer record `method=result` with these `ptype.name` properties?

        E.g. `says("dkim", "pass", {"header.d": "example.com"})` or
        `says("spf", "pass", {"smtp.mailfrom": "user@example.com"})`.  Keys, methods
        and results are compared case-insensitively, and so are values (they are
        domains and addresses here; the policy that asks decides what to trust).
        """
        wanted = {key.lower(): value.lower() for key, value in (properties or {}).items()}
        for candidate in self.results_for(method):
            if candidate.result != result.lower():
                continue
            have = {
                f"{prop.ptype}.{prop.name}": prop.value.lower() for prop in candidate.properties
            }
            if all(have.get(key) == value for key, value in wanted.items()):
                return True
        return False


def parse_results(payload: str) -> ParsedResults:
    """An A-R payload (an AAR's after `i=N;`) as typed results; never raises."""
    try:
        header = authres.AuthenticationResultsHeader.parse_value(payload)
    except authres.AuthResError as exc:
        return ParsedResults(_authserv_id_guess(payload), (), _error_text(exc))
    results = []
    for item in header.results:
        method = getattr(item, "method", None)
        if not method:
            continue  # "none": the sealer had no results to record
        properties = tuple(
            AuthProperty(str(prop.type).lower(), str(prop.name).lower(), str(prop.value or ""))
            for prop in item.properties
        )
        reason = str(item.reason) if item.reason else None
        results.append(
            AuthResult(str(method).lower(), str(item.result or "").lower(), reason, properties)
        )
    authserv_id = str(header.authserv_id) if header.authserv_id else None
    return ParsedResults(authserv_id, tuple(results))


def _authserv_id_guess(payload: str) -> str | None:
    first = payload.split(";", 1)[0].strip()
    return first or None


def _error_text(exc: BaseException, limit: int = 200) -> str:
    message = str(exc) or type(exc).__name__
    text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in message)
    return text if len(text) <= limit else text[: limit - 3] + "..."
