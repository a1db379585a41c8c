"""Forged trace headers: sender-written Received-SPF and ARC-Authentication-Results
that claim to be ours.

Downstream tools trust these the way they trust Authentication-Results: OpenDMARC and
some Sieve scripts believe a `Received-SPF` whose `receiver=` names the receiving
host, and an `ARC-Authentication-Results` (AAR) naming our authserv-id reads as a
result we recorded.  A spammer can write either into the message.  So, for mail from
untrusted clients, we remove:

* a `Received-SPF` whose `receiver=` key, or the leading "(host: ...)" comment RFC 7208
  9.1 recommends, names one of our names;
* an AAR that names our authserv-id and belongs to no ARC set, i.e. its `i=` has no
  matching ARC-Seal and ARC-Message-Signature.  An AAR inside a complete set is left to
  ARC validation: its seal either verifies or the chain fails.

Pure: headers in, removal edits out (the milter protocol addresses a header by name and
1-based occurrence; edits are listed last-first so one removal never shifts the next).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from mailward.authresults import authserv_id_of
from mailward.model import Header, RemoveHeader

RECEIVED_SPF = "Received-SPF"
ARC_AUTHENTICATION_RESULTS = "ARC-Authentication-Results"
ARC_SEAL = "ARC-Seal"
ARC_MESSAGE_SIGNATURE = "ARC-Message-Signature"

_FOLD = re.compile(r"\r?\n[ \t]+")
_INSTANCE = re.compile(r"(?:^|;)\s*i\s*=\s*(\d{1,3})\s*(?:;|$)", re.IGNORECASE)
_LEADING_INSTANCE = re.compile(r"\s*i\s*=\s*(\d{1,3})\s*;", re.IGNORECASE)
_RECEIVER = re.compile(r"(?:^|[\s;])receiver\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s;]+)",
                       re.IGNORECASE)
_COMMENT_HOST = re.compile(r"\(\s*([^\s():]+)\s*:")


@dataclass(frozen=True)
class ForgedTraceHeaders:
    """What to remove, by kind, so the caller can count each kind."""

    received_spf: tuple[RemoveHeader, ...] = ()
    arc_authentication_results: tuple[RemoveHeader, ...] = ()

    @property
    def removals(self) -> tuple[RemoveHeader, ...]:
        return self.received_spf + self.arc_authentication_results


def find_forged(
    headers: Sequence[Header], our_names: Collection[str], *, policy_prepends_spf: bool = False
) -> ForgedTraceHeaders:
    """The Received-SPF and orphan AAR headers in `headers` that claim one of `our_names`.

    `policy_prepends_spf`: our policy service adds a Received-SPF at the top, keep it.
    """
    names = {_host(name) for name in our_names if name}
    return ForgedTraceHeaders(
        received_spf=forged_received_spf(headers, names, first_is_ours=policy_prepends_spf),
        arc_authentication_results=orphan_aar_claiming(headers, names),
    )


def forged_received_spf(
    headers: Sequence[Header], our_names: Collection[str], *, first_is_ours: bool = False
) -> tuple[RemoveHeader, ...]:
    """Removals for every sender-written Received-SPF naming one of `our_names`.

    Our own policy service PREPENDs a Received-SPF (smtpd access restrictions) that
    names us as receiver, and Postfix shows it to the milter as the very first header,
    above everything the client wrote.  `first_is_ours` (the policy service is
    configured to prepend) keeps a Received-SPF in that first position.
    """
    names = {_host(name) for name in our_names}
    removals = []
    for occurrence, header in _numbered(headers, RECEIVED_SPF):
        if first_is_ours and headers and header is headers[0]:
            continue
        if received_spf_receivers(header.value) & names:
            removals.append(RemoveHeader(RECEIVED_SPF, occurrence))
    return tuple(reversed(removals))


def received_spf_receivers(value: str) -> set[str]:
    """The host names a Received-SPF value names as receiver, lower-cased.

    Both the `receiver=` key and the host that opens the comment ("(mx.example.net:
    domain of ...)") count: a lenient consumer may read either.
    """
    text = _FOLD.sub(" ", value)
    found = set()
    comment = _COMMENT_HOST.search(text)
    if comment is not None and text[: comment.start()].strip().isalpha():
        found.add(_host(comment.group(1)))
    for match in _RECEIVER.finditer(_without_comments(text)):
        raw = match.group(1)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        found.add(_host(raw))
    found.discard("")
    return found


def orphan_aar_claiming(
    headers: Sequence[Header], our_names: Collection[str]
) -> tuple[RemoveHeader, ...]:
    """Removals for every AAR that names one of `our_names` and has no complete ARC set."""
    names = {_host(name) for name in our_names}
    sealed: set[int] | None = None  # complete sets' instances, read only if an AAR claims us
    removals = []
    for occurrence, header in _numbered(headers, ARC_AUTHENTICATION_RESULTS):
        text = _FOLD.sub(" ", header.value)
        leading = _LEADING_INSTANCE.match(text)
        instance = int(leading.group(1)) if leading else None
        claimed = authserv_id_of(text[leading.end():]) if leading else None
        if claimed not in names:
            continue
        if sealed is None:
            sealed = _instances(headers, ARC_SEAL) & _instances(headers, ARC_MESSAGE_SIGNATURE)
        if instance not in sealed:
            removals.append(RemoveHeader(ARC_AUTHENTICATION_RESULTS, occurrence))
    return tuple(reversed(removals))


def _instances(headers: Iterable[Header], name: str) -> set[int]:
    found = set()
    for _, header in _numbered(headers, name):
        match = _INSTANCE.search(_FOLD.sub(" ", header.value))
        if match is not None:
            found.add(int(match.group(1)))
    return found


def _numbered(headers: Iterable[Header], name: str) -> Iterable[tuple[int, Header]]:
    """(occurrence, header) for headers called `name` (any case), 1-based."""
    wanted = name.lower()
    occurrence = 0
    for header in headers:
        if header.name.lower() == wanted:
            occurrence += 1
            yield occurrence, header


def _host(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _without_comments(text: str) -> str:
    """`text` with (possibly nested) comments replaced by a space, quotes respected."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            escaped = False
            if not depth:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if not depth:
                out.append(char)
        elif quoted:
            quoted = char != '"'
            out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
            if not depth:
                out.append(" ")
        elif not depth:
            quoted = char == '"'
            out.append(char)
    return "".join(out)
