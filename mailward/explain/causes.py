"""What a result usually means, in words an administrator acts on.

These map the checks' typed reasons (mailward/checks/dkim.py's reason texts, the
DMARC evaluation's reason) to the common causes seen in practice; they never change a
result, only describe it.
"""

from __future__ import annotations

from mailward.explain.headers import DkimSignature
from mailward.model import Action


def dkim_cause(result: str, reason: str, signature: DkimSignature | None) -> str:
    lowered = reason.lower()
    if result == "pass":
        return "the signature verifies: the signed headers and body arrived unchanged"
    if "body hash" in lowered or "shorter than l=" in lowered:
        return ("the body changed after signing: usually a footer or disclaimer appended by a "
                "mailing list or a content filter, or the body re-encoded in transit")
    if "signature did not verify" in lowered:
        headers = ", ".join(signature.signed_headers) if signature else "h="
        return ("the body hash matched, so a signed header changed after signing (one of: "
                f"{headers}; a Subject tag or a rewritten From are typical), or the key "
                "published now is not the one that signed (the key was rotated)")
    if "no key" in lowered or ("key record" in lowered and "no " in lowered):
        return "the selector's key record is gone: the key was rotated or removed too early"
    if "revoked" in lowered:
        return "the key was revoked (empty p=): the signer retired this selector"
    if "expired" in lowered or "x=" in lowered:
        return "the signature expired (x=) before the message was checked"
    if result == "temperror" or "dns" in lowered:
        return "the key could not be fetched (DNS timeout or SERVFAIL): try again later"
    if result == "none":
        return "the message carries no DKIM signature"
    return reason or f"DKIM {result}"


def spf_cause(result: str) -> str:
    return {
        "pass": "the client is listed in the sender domain's SPF record",
        "fail": ("the client is not allowed to send for this domain: a forgery, or a sender "
                 "(a forwarder, a new mail provider) missing from the SPF record"),
        "softfail": "the client is not listed, and the domain asks for a soft failure (~all)",
        "neutral": "the domain's record makes no statement about this client (?all)",
        "none": "the domain publishes no SPF record",
        "permerror": "the domain's SPF record is broken (syntax or over 10 lookups)",
        "temperror": "SPF could not be evaluated because DNS failed: try again later",
    }.get(result, f"SPF {result}")


def dmarc_cause(result: str, spf_aligned: bool, dkim_aligned: bool) -> str:
    if result == "pass":
        by = " and ".join(name for name, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned))
                          if ok) or "an aligned identifier"
        return f"{by} passed for the From domain (aligned)"
    if result == "fail":
        return ("neither SPF nor DKIM passed for a domain aligned with From: typical for "
                "forwarding (SPF breaks) combined with a modified body (DKIM breaks), or a "
                "spoofed From")
    if result == "none":
        return "the From domain publishes no DMARC policy"
    if result == "temperror":
        return "the DMARC policy or a result it depends on could not be looked up"
    return f"DMARC {result}"


def deciding_key(action: Action, reason: str) -> str:
    """The configuration key that decides an action like this one."""
    lowered = reason.lower()
    if "from header" in lowered:
        return "dmarc.multiple_from / dmarc.missing_from"
    if "not enforced" in lowered and "arc" not in lowered:
        return "dmarc.enforce"
    if "arc sealer" in lowered:
        return "arc.trusted_sealers"
    if action is Action.QUARANTINE or "quarantine" in lowered:
        return "dmarc.quarantine"
    if action is Action.REJECT and "dmarc" in lowered:
        return "dmarc.enforce"
    if action is Action.TEMPFAIL:
        return "general.on_internal_error (internal error) or DNS ([dns] timeout)"
    return ""
