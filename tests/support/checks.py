"""The A-R results of one verifier for one message, without a pipeline.

The pipeline drives checks through the Check contract (mailward/checks/base.py); these
functions give unit tests the same A-R entries straight from a verifier, so a test of
SPF, DKIM or ARC results does not have to assemble a pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailward.checks import arc, dkim, spf
from mailward.model import AuthResult, Connection, Transaction


def spf_auth_results(
    check: spf.SpfCheck, connection: Connection, transaction: Transaction
) -> Sequence[AuthResult]:
    """A-R results for the connection's client, HELO and the envelope sender."""
    if connection.client_ip is None:
        # Not received over SMTP (the pipeline does not run SPF for it at all).
        return (AuthResult(spf.METHOD, spf.SpfResult.NONE.value, reason="no client address"),)
    outcomes = check.evaluate(connection.client_ip, connection.helo, transaction.mail_from)
    return tuple(spf.auth_result(outcome) for outcome in outcomes)


def dkim_auth_results(
    verifier: dkim.DkimVerifier, transaction: Transaction
) -> Sequence[AuthResult]:
    """A-R results for the message's DKIM signatures (`dkim=none` when unsigned)."""
    return dkim.auth_results(verifier.verify(transaction))


def arc_auth_results(
    verifier: arc.ArcVerifier, connection: Connection, transaction: Transaction
) -> Sequence[AuthResult]:
    """The A-R result for the message's ARC chain, with the client address."""
    return (arc.auth_result(verifier.verify(transaction), connection.client_ip),)
