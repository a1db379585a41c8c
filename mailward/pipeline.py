"""The engine's entry point: one Connection + Transaction in, one Verdict out.

The pipeline decides the path (inbound mail is verified; mail from trusted networks,
authenticated users and local submission is outbound and may be signed), runs the
checks that path needs in dependency order, and turns their typed outcomes into header
edits and an action.  It never talks to an MTA: adapters hand it values and translate
the Verdict back.

Checks are composed explicitly rather than through a generic plug-in list, because
later checks consume earlier ones' typed outcomes (DMARC reads the SPF and DKIM
outcomes, never their A-R text).  A check that raises is a bug, not a verdict about
the sender: the exception is logged with its traceback, counted, and the method is
reported as `temperror`, so the message is neither rejected for our mistake nor let
through as if it had passed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from mailward import authres, enforcement, metrics
from mailward.checks import arc as arc_check
from mailward.checks import dkim as dkim_check
from mailward.checks import dmarc as dmarc_check
from mailward.checks import iprev as iprev_check
from mailward.checks import spf as spf_check
from mailward.config import Settings
from mailward.dns import Resolver
from mailward.model import (
    Action,
    AuthResult,
    Connection,
    Direction,
    HeaderEdit,
    InsertHeader,
    IPAddress,
    SmtpReply,
    Transaction,
    Verdict,
)
from mailward.signing.dkim import SigningError

log = logging.getLogger(__name__)

SIGNING_DEFERRED = SmtpReply("451", "4.7.0", "Message could not be signed, try again later")

T = TypeVar("T")


class OutboundSigner(Protocol):
    """Signs outbound mail: returns the header edits (DKIM-Signature, ...) to add.

    Raising is allowed only for failures that must not let the message go out as if
    signed; the adapter then answers with `on_internal_error`.
    """

    def sign(self, connection: Connection, transaction: Transaction) -> Sequence[HeaderEdit]: ...


@dataclass(frozen=True)
class InboundChecks:
    """The checks of the inbound path; the composition root builds them from settings."""

    spf: spf_check.SpfCheck | None = None
    iprev: bool = False
    dkim: dkim_check.DkimVerifier | None = None
    arc: arc_check.ArcVerifier | None = None
    dmarc: dmarc_check.DmarcEvaluator | None = None


class ArcSealer(Protocol):
    """Adds our ARC Set to inbound mail we pass on as an intermediary (RFC 8617)."""

    def applies(self, connection: Connection, transaction: Transaction) -> bool: ...

    def seal(
        self, transaction: Transaction, aar_results: Sequence[AuthResult], chain_status: str
    ) -> Sequence[HeaderEdit]: ...


@dataclass(frozen=True)
class InboundReport:
    """What the inbound checks established about one message, as typed outcomes."""

    iprev: iprev_check.IprevOutcome | None = None
    spf: tuple[spf_check.SpfOutcome, ...] = ()
    dkim: tuple[dkim_check.DkimOutcome, ...] | None = None  # None: not checked
    arc: arc_check.ArcOutcome | None = None
    dmarc: dmarc_check.DmarcOutcome | None = None
    client_ip: IPAddress | None = None
    failed: tuple[str, ...] = ()  # methods whose check raised: reported as temperror

    def auth_results(
        self, decision: enforcement.Enforcement = enforcement.ACCEPT
    ) -> tuple[AuthResult, ...]:
        """A-R results in the conventional order: iprev, spf, dkim, arc, dmarc; a check
        that raised is reported as temperror in its place."""
        produced: dict[str, list[AuthResult]] = {
            iprev_check.METHOD: [iprev_check.auth_result(self.iprev)] if self.iprev else [],
            spf_check.METHOD: [spf_check.auth_result(outcome) for outcome in self.spf],
            dkim_check.METHOD: (
                list(dkim_check.auth_results(self.dkim)) if self.dkim is not None else []),
            arc_check.METHOD: (
                [arc_check.auth_result(self.arc, self.client_ip)] if self.arc else []),
            dmarc_check.METHOD: (
                [enforcement.annotate(dmarc_check.auth_result(self.dmarc), decision)]
                if self.dmarc else []),
        }
        for method in self.failed:
            produced[method] = [AuthResult(method, "temperror", reason="internal error")]
        results = [result for method_results in produced.values() for result in method_results]
        return tuple(results)


@dataclass(frozen=True)
class Pipeline:
    """Evaluates messages with one immutable configuration; replaced whole on reload."""

    settings: Settings
    resolver: Resolver
    inbound: InboundChecks = field(default_factory=InboundChecks)
    signer: OutboundSigner | None = None
    sealer: ArcSealer | None = None

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
        if direction is Direction.INBOUND:
            return self._evaluate_inbound(connection, transaction)
        return self._evaluate_outbound(connection, transaction)

    # ------------------------------------------------------------------ inbound

    def _evaluate_inbound(self, connection: Connection, transaction: Transaction) -> Verdict:
        authserv_id = self.settings.general.authserv_id
        # Only mail we did not originate can carry a forgery of our own results;
        # trusted and authenticated clients keep theirs.
        edits: list[HeaderEdit] = list(authres.forged_headers(transaction.headers, authserv_id))
        if edits:
            metrics.MILTER_FORGED_AR_REMOVED.inc(len(edits))
            log.info("%s: removing %d forged Authentication-Results claiming %s",
                     transaction.log_id, len(edits), authserv_id)
        report = self.inbound_report(connection, transaction)
        decision = enforcement.enforce(
            self.settings, report.dmarc, report.dkim or (), report.arc,
            inputs_failed=bool({spf_check.METHOD, dkim_check.METHOD} & set(report.failed)),
        )
        results = report.auth_results(decision)
        edits.append(InsertHeader(authres.HEADER_NAME, authres.format_header(authserv_id, results)))
        if self.settings.spf.received_spf and report.spf:
            value = spf_check.received_spf(report.spf[0], authserv_id)
            edits.append(InsertHeader(spf_check.RECEIVED_SPF, value))
        edits.extend(decision.header_edits)
        if (self.sealer is not None and decision.action in (Action.ACCEPT, Action.QUARANTINE)
                and self.sealer.applies(connection, transaction)):
            # Our ARC Set records our own results, and the chain's status as we found it
            # (a failed chain is sealed cv=fail, never extended as if valid).
            status = report.arc.result.value if report.arc is not None else "none"
            edits.extend(self.sealer.seal(transaction, results, status))
        return Verdict(decision.action, reply=decision.reply, header_edits=tuple(edits),
                       results=results, direction=Direction.INBOUND, reason=decision.reason)

    def inbound_report(self, connection: Connection, transaction: Transaction) -> InboundReport:
        """Run the inbound checks in dependency order; each failure is contained."""
        checks = self.inbound
        failed: list[str] = []
        client_ip = connection.client_ip
        iprev = None
        if checks.iprev and client_ip is not None:
            iprev = self._attempt(
                iprev_check.METHOD, transaction, failed,
                lambda: iprev_check.evaluate_iprev(self.resolver, client_ip),
            )
        spf: tuple[spf_check.SpfOutcome, ...] = ()
        if checks.spf is not None and client_ip is not None:
            spf_checker = checks.spf
            spf = self._attempt(
                spf_check.METHOD, transaction, failed,
                lambda: spf_checker.evaluate(client_ip, connection.helo, transaction.mail_from),
            ) or ()
        dkim = None
        if checks.dkim is not None:
            verifier = checks.dkim
            dkim = self._attempt(dkim_check.METHOD, transaction, failed,
                                 lambda: verifier.verify(transaction))
        arc = None
        if checks.arc is not None:
            arc_verifier = checks.arc
            arc = self._attempt(arc_check.METHOD, transaction, failed,
                                lambda: arc_verifier.verify(transaction))
        dmarc = None
        if checks.dmarc is not None:
            evaluator = checks.dmarc
            # DMARC reads the MAIL FROM outcome (HELO's for a null sender), never the
            # separate HELO check, and every signature's domain and result.
            dmarc = self._attempt(
                dmarc_check.METHOD, transaction, failed,
                lambda: evaluator.evaluate_transaction(
                    transaction, spf[0] if spf else None, dkim or ()),
            )
            if dmarc is not None:
                metrics.DMARC_RESULTS.labels(
                    dmarc.result.value, dmarc.requested_disposition.value).inc()
        return InboundReport(iprev=iprev, spf=spf, dkim=dkim, arc=arc, dmarc=dmarc,
                             client_ip=client_ip, failed=tuple(failed))

    @staticmethod
    def _attempt(
        method: str, transaction: Transaction, failed: list[str], run: Callable[[], T]
    ) -> T | None:
        try:
            return run()
        except Exception:
            # A bug in one check must not decide the message: log it, count it, and
            # report temperror so DMARC and policy treat it as "could not tell".
            log.exception("%s: check %s failed", transaction.log_id, method)
            metrics.ERRORS.labels(f"check_{method}").inc()
            failed.append(method)
            return None

    # ------------------------------------------------------------------ outbound

    def _evaluate_outbound(self, connection: Connection, transaction: Transaction) -> Verdict:
        authserv_id = self.settings.general.authserv_id
        edits: list[HeaderEdit] = [
            InsertHeader(authres.HEADER_NAME, authres.format_header(authserv_id, ()))
        ]
        if self.signer is not None:
            try:
                edits.extend(self.signer.sign(connection, transaction))
            except SigningError as exc:
                # [dkim.sign] on_error / on_oversized = "tempfail": the message must not
                # leave unsigned, whatever general.on_internal_error says.
                log.warning("%s: not signed, deferred: %s", transaction.log_id, exc)
                return Verdict(Action.TEMPFAIL, reply=SIGNING_DEFERRED,
                               direction=Direction.OUTBOUND, reason=f"signing failed: {exc}")
        return Verdict(Action.ACCEPT, header_edits=tuple(edits), direction=Direction.OUTBOUND)


def build_inbound_checks(settings: Settings, resolver: Resolver) -> InboundChecks:
    """The inbound checks the configuration asks for."""
    spf = None
    if settings.spf.enabled:
        spf = spf_check.SpfCheck(
            resolver, check_helo=settings.spf.helo, receiver=settings.general.authserv_id
        )
    # One parsed-key cache for DKIM and ARC: a sender's key serves both.
    keys = dkim_check.KeyFetcher(resolver)
    dkim = dkim_check.DkimVerifier(resolver, settings.dkim.verify, keys=keys) if (
        settings.dkim.verify.verify) else None
    arc = arc_check.ArcVerifier(resolver, keys=keys) if settings.arc.verify else None
    dmarc = dmarc_check.DmarcEvaluator(resolver, settings.dmarc) if settings.dmarc.enabled else None
    return InboundChecks(spf=spf, iprev=settings.iprev.enabled, dkim=dkim, arc=arc, dmarc=dmarc)
