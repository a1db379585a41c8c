"""The policy engine: Postfix's attribute list in, an access(5) action out.

The policy service's protocol code lives in policyd/; this module only decides.  It
validates what Postfix sent, so that a request the engine cannot make sense of is
answered `DUNNO` ("no opinion, go on with the other restrictions"): a policy service
that cannot decide must never reject mail, and never permit it either.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from mailward.config import Settings

log = logging.getLogger("mailward.policyd")

# The states Postfix can be in when it asks (SMTPD_POLICY_README, protocol_state).
PROTOCOL_STATES = frozenset(
    {"CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN"}
)


@dataclass(frozen=True)
class PolicyAnswer:
    """An access(5) action, e.g. `DUNNO`, `DEFER_IF_PERMIT ...`, `550 5.7.23 ...`."""

    action: str
    reason: str = ""  # for the log, not for the client

    @property
    def label(self) -> str:
        """The action's first word, a bounded value for metrics."""
        word = self.action.split(None, 1)[0].upper()
        if word[:1] in "45" and word.isdigit():
            return f"{word[0]}xx"
        return word


DUNNO = PolicyAnswer("DUNNO")


@dataclass(frozen=True)
class PolicyEngine:
    settings: Settings

    def decide(self, attributes: Mapping[str, str]) -> PolicyAnswer:
        problem = self.validate(attributes)
        if problem:
            return PolicyAnswer("DUNNO", reason=f"invalid request: {problem}")
        return DUNNO

    @staticmethod
    def validate(attributes: Mapping[str, str]) -> str:
        """Why this request cannot be evaluated, or "" if it can."""
        request = attributes.get("request", "")
        if request != "smtpd_access_policy":
            return f"request={request!r}, expected 'smtpd_access_policy'"
        state = attributes.get("protocol_state", "").upper()
        if state not in PROTOCOL_STATES:
            return f"unknown protocol_state {state!r}"
        address = attributes.get("client_address", "")
        if address:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                return f"client_address {address!r} is not an IP address"
        return ""
