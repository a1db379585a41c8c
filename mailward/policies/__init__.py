"""The policies of the policy service, one module each: spf, greylist, ratelimit.

`base` holds what they share (the typed request, decisions, blocking steps); the
engine that runs them in the configured order is `mailward.policies.engine.PolicyEngine`.
"""

from mailward.policies.base import (
    AccessRequest,
    Blocking,
    Decision,
    Policy,
    PolicyDecision,
    Steps,
    TransactionMemo,
    run_inline,
)

__all__ = [
    "AccessRequest",
    "Blocking",
    "Decision",
    "Policy",
    "PolicyDecision",
    "Steps",
    "TransactionMemo",
    "run_inline",
]
