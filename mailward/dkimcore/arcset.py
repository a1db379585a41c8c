"""What makes up an ARC Set (RFC 8617 4.1): its three fields and their instance numbers.

Shared by the chain validator (`mailward.checks.arc`, strict: a field whose instance
cannot be read fails the chain) and the sealer (`mailward.signing.arc`, lenient: it
only needs to know how long the chain is and whether it already ended).
"""

from __future__ import annotations

import re

from mailward import message
from mailward.dkimcore.taglist import lenient_tags

AAR = "arc-authentication-results"
AMS = "arc-message-signature"
AS = "arc-seal"
#: The fields of one set in the order the seal covers them (RFC 8617 5.1.1).
KINDS = (AAR, AMS, AS)
DISPLAY = {AAR: "ARC-Authentication-Results", AMS: "ARC-Message-Signature", AS: "ARC-Seal"}

#: RFC 8617 4.2.1 and 5.2: "The maximum number of ARC Sets that can be attached to a
#: message is 50."  Fixed by the RFC, so not configurable.
MAX_INSTANCES = 50

# An AAR is not a tag list: `i=N;` then an Authentication-Results payload (4.1.1).
_AAR_INSTANCE = re.compile(r"\s*i\s*=\s*([0-9]+)\s*;")
# RFC 8617 4.2.1: instance-val = 1*2DIGIT, 1..50.
_INSTANCE = re.compile(r"[0-9]{1,2}")


def kind_of(name: str) -> str | None:
    """AAR, AMS or AS for an ARC field name (any case), None for any other field."""
    kind = name.strip(" \t").lower()
    return kind if kind in DISPLAY else None


def split_aar(value: str) -> tuple[str, str] | None:
    """An AAR value as (its i= digits, the A-R payload after `i=N;`); None without i=."""
    text = message.unfold(value)
    match = _AAR_INSTANCE.match(text)
    if match is None:
        return None
    return match.group(1), text[match.end() :]


def aar_payload(value: str) -> str:
    """The A-R payload of an AAR value (all of it when there is no `i=N;` in front)."""
    split = split_aar(value)
    return split[1] if split is not None else message.unfold(value)


def instance_number(text: str) -> int | None:
    """An instance value written as RFC 8617 4.2.1 allows (1 or 2 digits, not 0), else
    None.  Whether it is within `MAX_INSTANCES` is the caller's to judge."""
    if not _INSTANCE.fullmatch(text) or int(text) < 1:
        return None
    return int(text)


def lenient_instance(kind: str, value: bytes) -> int:
    """The instance a field claims, read leniently (0 when it names none).

    For the sealer, which only has to know the length of a chain the validator has
    already judged: an AAR's leading `i=N;`, an AMS's or AS's first i= tag.
    """
    if kind == AAR:
        split = split_aar(value.decode("ascii", "replace"))
        digits = split[0] if split is not None else ""
    else:
        digits = lenient_tags(value).get("i", b"").decode("ascii", "replace")
    if not (digits.isascii() and digits.isdigit()):
        return 0
    # More digits than any chain can have: int() of thousands of them raises ValueError
    # (found by fuzzing), and a huge instance must not size anything downstream.
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 3 else MAX_INSTANCES + 1


def seal_cv(value: bytes) -> str:
    """The cv= of an ARC-Seal value, lower-cased ("" when it has none)."""
    return lenient_tags(value).get("cv", b"").decode("ascii", "replace").lower()
