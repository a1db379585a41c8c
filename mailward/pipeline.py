"""The engine's entry point: one Connection + Transaction in, one Verdict out.

The pipeline decides the path (inbound mail is verified, mail from trusted networks
and authenticated users is outbound), runs the checks that path needs, and turns their
typed results into header edits and an action.  It never talks to an MTA: adapters
hand it values and translate the Verdict back.

A check that raises is a bug, not a verdict about the sender: the exception is logged
with its traceback, counted, and the check reports `temperror`, so the message is
neither rejected for our mistake nor let through as if it had passed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mailward import authres, metrics
from mailward.config import Settings
from mailward.dns import Resolver
from mailward.model import (
    Action,
    AuthResult,
    Connection,
    Direction,
    HeaderEdit,
    InsertHeader,
    Transaction,
    Verdict,
)

log = logging.getLogger(__name__)


class InboundCheck(Protocol):
    """One authentication method run on inbound mail; `method` names it in A-R."""

    method: str

    def check(
        self, connection: Connection, transaction: Transaction, earlier: Sequence[AuthResult]
    ) -> Sequence[AuthResult]: ...


class OutboundSigner(Protocol):
    """Signs outbound mail: returns the header edits (DKIM-Signature, ...) to add.

    Raising is allowed only for failures that must not let the message go out as if
    signed; the pipeline then answers with `on_internal_error`.
    """

    def sign(self, connection: Connection, transaction: Transaction) -> Sequence[HeaderEdit]: ...


@dataclass(frozen=True)
class Pipeline:
    """Evaluates messages with one immutable configuration; replaced whole on reload."""

    settings: Settings
    resolver: Resolver
    inbound_checks: tuple[InboundCheck, ...] = ()
    signer: OutboundSigner | None = None

    def direction(self, connection: Connection) -> Direction:
        """Outbound: authenticated, local (sendmail command) or from a trusted network."""
        if connection.auth_user:
            return Direction.OUTBOUND
        if connection.client_ip is None:
            return Direction.OUTBOUND
        if self.settings.general.is_trusted(connection.client_ip):
            return Direction.OUTBOUND
        return Direction.INBOUND

    def evaluate(self, connection: Connection, transaction: Transaction) -> Verdict:
        direction = self.direction(connection)
        edits: list[HeaderEdit] = []
        results: list[AuthResult] = []
        authserv_id = self.settings.general.authserv_id
        if direction is Direction.INBOUND:
            # Only mail we did not originate can carry a forgery of our own results;
            # trusted and authenticated clients keep theirs.
            removals = authres.forged_headers(transaction.headers, authserv_id)
            if removals:
                metrics.MILTER_FORGED_AR_REMOVED.inc(len(removals))
                log.info(
                    "%s: removing %d forged Authentication-Results claiming %s",
                    transaction.log_id, len(removals), authserv_id,
                )
            edits.extend(removals)
            for check in self.inbound_checks:
                results.extend(self._run_check(check, connection, transaction, results))
        edits.append(
            InsertHeader(authres.HEADER_NAME, authres.format_header(authserv_id, results))
        )
        if direction is Direction.OUTBOUND and self.signer is not None:
            edits.extend(self.signer.sign(connection, transaction))
        return Verdict(
            action=Action.ACCEPT,
            header_edits=tuple(edits),
            results=tuple(results),
            direction=direction,
        )

    def _run_check(
        self,
        check: InboundCheck,
        connection: Connection,
        transaction: Transaction,
        earlier: Sequence[AuthResult],
    ) -> Sequence[AuthResult]:
        try:
            return check.check(connection, transaction, tuple(earlier))
        except Exception:
            # A bug in one check must not decide the message: log it, count it, and
            # report temperror so DMARC and policy treat it as "could not tell".
            log.exception("%s: check %s failed", transaction.log_id, check.method)
            metrics.ERRORS.labels(f"check_{check.method}").inc()
            return (AuthResult(check.method, "temperror", reason="internal error"),)
