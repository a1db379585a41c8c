"""The engine's entry point: one Connection + Transaction in, one Verdict out.

The pipeline decides the path (inbound mail is verified; mail from trusted networks,
authenticated users and local submission is outbound and may be signed), runs the
inbound checks in the order their declared requirements give (mailward/checks/base.py,
ordered once by mailward/checks/registry.py), and turns their typed results into header
edits, symbols and an action.  It never talks to an MTA: adapters hand it values and
translate the Verdict back.

A check that raises is a bug, not a verdict about the sender: the exception is logged
with its traceback, counted, and the check's methods are reported as `temperror`, so
the message is neither rejected for our mistake nor let through as if it had passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from mailward import authresults, dmarc_enforcement, dnsbudget, forgery, metrics, scoring
from mailward.bayes.autolearn import Autolearner
from mailward.checks import arc as arc_check
from mailward.checks import dkim as dkim_check
from mailward.checks import dmarc as dmarc_check
from mailward.checks import spf as spf_check
from mailward.checks.base import Check, CheckInput, Results, Symbol
from mailward.checks.registry import build_checks
from mailward.config import Settings
from mailward.dkimcore.view import message_scope
from mailward.dns import Resolver
from mailward.model import (
    Action,
    AppendHeader,
    AuthResult,
    Connection,
    Direction,
    HeaderEdit,
    InsertHeader,
    SmtpReply,
    Transaction,
    Verdict,
)
from mailward.reports.recorder import Recorder
from mailward.signing.dkim import SigningError
from mailward.spam_greylist import SpamGreylister
from mailward.state.base import StateUnavailable

log = logging.getLogger(__name__)

SIGNING_DEFERRED = SmtpReply("451", "4.7.0", "Message could not be signed, try again later")


class OutboundSigner(Protocol):
    """Signs outbound mail: returns the header edits (DKIM-Signature, ...) to add.

    Raising is allowed only for failures that must not let the message go out as if
    signed; the adapter then answers with `on_internal_error`.
    """

    def sign(self, connection: Connection, transaction: Transaction) -> Sequence[HeaderEdit]: ...


class ArcSealer(Protocol):
    """Adds our ARC Set to inbound mail we pass on as an intermediary (RFC 8617)."""

    def applies(self, connection: Connection, transaction: Transaction) -> bool: ...

    def seal(
        self, transaction: Transaction, aar_results: Sequence[AuthResult], chain_status: str
    ) -> Sequence[HeaderEdit]: ...


class CheckMeter:
    """One check's metric children, looked up once: `labels()` costs more than the
    `observe()`/`inc()` it precedes, and the pipeline counts every check of every message."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = metrics.CHECK_SECONDS.labels(name)
        self._results: dict[str, Any] = {}

    def result(self, label: str) -> Any:
        """The mailward_check_results_total child for (this check, `label`)."""
        child = self._results.get(label)
        if child is None:
            # Labels are the check's bounded result values, so this dict stays small.
            child = self._results[label] = metrics.CHECK_RESULTS.labels(self.name, label)
        return child


_METERS: dict[str, CheckMeter] = {}


def check_meter(name: str) -> CheckMeter:
    """The CheckMeter of the check called `name` (made on first use, kept: check names
    are the registry's fixed set)."""
    meter = _METERS.get(name)
    if meter is None:
        meter = _METERS[name] = CheckMeter(name)
    return meter


class LabelChildren:
    """A labelled metric's children, each looked up once (`labels()` costs about three
    times the `inc()` after it; scoring counts a symbol per weighted hit per message).
    Only for bounded label values: the dict keeps one child per value seen."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[str, Any] = {}

    def child(self, label: str) -> Any:
        found = self._children.get(label)
        if found is None:
            found = self._children[label] = self._metric.labels(label)
        return found


_SPAM_ACTIONS = LabelChildren(metrics.SPAM_ACTIONS)  # the scoring actions
_SPAM_SYMBOLS = LabelChildren(metrics.SPAM_SYMBOLS)  # the registry's symbol names


@dataclass(frozen=True)
class CheckRun:
    """One check's part in one message: its result, or that it raised."""

    check: Check[Any]
    result: Any = None
    failed: bool = False

    def auth_results(self, connection: Connection) -> tuple[AuthResult, ...]:
        if self.failed:
            return tuple(AuthResult(method, "temperror", reason="internal error")
                         for method in self.check.auth_methods)
        return tuple(self.check.auth_results(self.result, connection))

    def symbols(self) -> tuple[Symbol, ...]:
        if self.failed:
            return (Symbol("CHECK_ERROR", self.check.name),)
        return tuple(self.check.symbols(self.result))


@dataclass(frozen=True)
class ScoredDecision:
    """The action after DMARC enforcement and spam scoring, and the spam headers."""

    action: Action
    reply: SmtpReply | None
    header_edits: tuple[HeaderEdit, ...]
    reason: str
    spam: str = ""  # scoring.log_summary, for the message's log line


@dataclass(frozen=True)
class InboundReport:
    """What the inbound checks established about one message.

    `runs` are in the order the checks ran (which is the order of their A-R entries);
    a check that did not apply to the message has no run.  `results` holds the typed
    results by key for whoever decides next (enforcement, the sealer, scoring).
    """

    connection: Connection
    runs: tuple[CheckRun, ...] = ()
    results: Results = field(default_factory=Results)

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the checks that raised (reported as temperror)."""
        return tuple(run.check.name for run in self.runs if run.failed)

    @cached_property
    def symbols(self) -> tuple[Symbol, ...]:
        """Every run's symbols in check order (made once: scoring, autolearn and the
        Verdict all read them)."""
        return tuple(symbol for run in self.runs for symbol in run.symbols())

    def auth_results(
        self, decision: dmarc_enforcement.Enforcement = dmarc_enforcement.ACCEPT
    ) -> tuple[AuthResult, ...]:
        """A-R results in check order; DMARC's carries what enforcement did with it."""
        results: list[AuthResult] = []
        for run in self.runs:
            for result in run.auth_results(self.connection):
                if result.method == dmarc_check.METHOD and not run.failed:
                    result = dmarc_enforcement.annotate(result, decision)
                results.append(result)
        return tuple(results)

    def header_edits(self, authserv_id: str) -> tuple[HeaderEdit, ...]:
        """The checks' own headers (Received-SPF), after Authentication-Results."""
        return tuple(edit for run in self.runs if not run.failed
                     for edit in run.check.header_edits(run.result, authserv_id))


@dataclass(frozen=True)
class Pipeline:
    """Evaluates messages with one immutable configuration; replaced whole on reload."""

    settings: Settings
    resolver: Resolver
    inbound: tuple[Check[Any], ...] = ()
    signer: OutboundSigner | None = None
    sealer: ArcSealer | None = None
    recorder: Recorder | None = None  # DMARC report recording (mailward/reports)
    greylister: SpamGreylister | None = None  # [scoring] greylist (mailward/spam_greylist)
    autolearner: Autolearner | None = None  # Bayes autolearn (mailward/bayes/autolearn.py)

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
        # Every lookup for this message shares one DNS time budget (mailward/dnsbudget.py).
        with dnsbudget.message_budget(self.settings.dns.message_budget):
            if direction is Direction.INBOUND:
                return self._evaluate_inbound(connection, transaction)
            return self._evaluate_outbound(connection, transaction)

    # ------------------------------------------------------------------ inbound

    def _evaluate_inbound(self, connection: Connection, transaction: Transaction) -> Verdict:
        authserv_id = self.settings.general.authserv_id
        # Only mail we did not originate can carry a forgery of our own results;
        # trusted and authenticated clients keep theirs.
        edits: list[HeaderEdit] = list(
            authresults.forged_headers(transaction.headers, authserv_id))
        if edits:
            metrics.MILTER_FORGED_AR_REMOVED.inc(len(edits))
            log.info("%s: removing %d forged Authentication-Results claiming %s",
                     transaction.log_id, len(edits), authserv_id)
        edits.extend(self._forged_trace_headers(transaction))
        if self.settings.scoring.enabled:
            edits.extend(self._forged_spam_headers(transaction))
        report = self.inbound_report(connection, transaction)
        results = report.results
        decision = dmarc_enforcement.enforce(
            self.settings, results.get(dmarc_check.RESULT), results.get(dkim_check.RESULT) or (),
            results.get(arc_check.RESULT),
            inputs_failed=bool({spf_check.METHOD, dkim_check.METHOD} & set(report.failed)),
        )
        if self.recorder is not None:  # never raises: a report never costs mail
            self.recorder.record(connection.client_ip, results.get(dmarc_check.RESULT),
                                 spf_check.dmarc_identity(results.get(spf_check.RESULT)),
                                 results.get(dkim_check.RESULT) or (), decision, transaction)
        auth_results = report.auth_results(decision)
        edits.append(InsertHeader(
            authresults.HEADER_NAME, authresults.format_header(authserv_id, auth_results)))
        edits.extend(report.header_edits(authserv_id))
        edits.extend(decision.header_edits)
        outcome = self._scored(connection, transaction, report.symbols, decision)
        edits.extend(outcome.header_edits)
        if self.autolearner is not None and outcome.action is not Action.TEMPFAIL:
            dmarc = results.get(dmarc_check.RESULT)
            dmarc_failed = dmarc is not None and dmarc.result is dmarc_check.DmarcResult.FAIL
            self.autolearner.consider(transaction, report.symbols, dmarc_failed)
        if (self.sealer is not None and outcome.action in (Action.ACCEPT, Action.QUARANTINE)
                and self.sealer.applies(connection, transaction)):
            # Our ARC Set records our own results, and the chain's status as we found it
            # (a failed chain is sealed cv=fail, never extended as if valid).
            arc = results.get(arc_check.RESULT)
            status = arc.result.value if arc is not None else "none"
            edits.extend(self.sealer.seal(transaction, auth_results, status))
        return Verdict(outcome.action, reply=outcome.reply, header_edits=tuple(edits),
                       results=auth_results, direction=Direction.INBOUND,
                       reason=outcome.reason, symbols=report.symbols, spam=outcome.spam)

    def _forged_trace_headers(self, transaction: Transaction) -> tuple[HeaderEdit, ...]:
        """Sender-written Received-SPF / orphan AAR claiming our host go, counted like
        forged A-R (see mailward/forgery.py for what counts as claiming)."""
        authserv_id = self.settings.general.authserv_id
        policy_spf = self.settings.policyd_spf
        forged = forgery.find_forged(
            transaction.headers, (authserv_id,),
            policy_prepends_spf=policy_spf.enabled and policy_spf.received_spf)
        kinds = (("received_spf", forged.received_spf),
                 ("arc_authentication_results", forged.arc_authentication_results))
        for label, removals in kinds:
            if removals:
                metrics.MILTER_FORGED_TRACE_HEADERS_REMOVED.labels(label).inc(len(removals))
                log.info("%s: removing %d forged %s claiming %s", transaction.log_id,
                         len(removals), removals[0].name, authserv_id)
        return forged.removals

    def _forged_spam_headers(self, transaction: Transaction) -> tuple[HeaderEdit, ...]:
        """Sender-written X-Spam-*/X-Mailward-* headers go, counted like forged A-R."""
        removals = scoring.forged_headers(transaction.headers)
        if removals:
            metrics.SPAM_FORGED_HEADERS_REMOVED.inc(len(removals))
            log.info("%s: removing %d sender-written X-Spam-*/X-Mailward-* header(s)",
                     transaction.log_id, len(removals))
        return removals

    def _scored(self, connection: Connection, transaction: Transaction, symbols: Sequence[Symbol],
                decision: dmarc_enforcement.Enforcement) -> ScoredDecision:
        """DMARC's decision combined with the spam score's: the stronger wins."""
        unscored = ScoredDecision(decision.action, decision.reply, (), decision.reason)
        if not self.settings.scoring.enabled:
            return unscored
        score = scoring.score_symbols(symbols, self.settings.scoring)
        summary = scoring.log_summary(score)
        metrics.SPAM_SCORE.observe(score.total)
        _SPAM_ACTIONS.child(score.action.value).inc()
        for hit in score.hits:
            if hit.weight:
                _SPAM_SYMBOLS.child(hit.symbol.name).inc()
        spam_reason = f"spam score {score.total:.1f} ({score.action.value})"
        if score.forced_by:
            spam_reason += f" forced by {score.forced_by}"
        headers: tuple[HeaderEdit, ...] = scoring.spam_headers(score)
        if scoring.rewrites_subject(score, self.settings.scoring):
            headers += scoring.subject_rewrite(transaction.headers, score, self.settings.scoring)
        if score.action is scoring.ScoreAction.REJECT and decision.action is not Action.REJECT:
            if decision.action is not Action.ACCEPT:
                log.info("%s: spam reject is stronger than DMARC's %s", transaction.log_id,
                         decision.action.value)
            reply = SmtpReply("550", "5.7.1", self.settings.scoring.reject_message)
            return ScoredDecision(Action.REJECT, reply, headers, spam_reason, summary)
        if (score.action is scoring.ScoreAction.QUARANTINE
                and decision.action is Action.ACCEPT
                and not any(isinstance(edit, AppendHeader)
                            and edit.name == dmarc_enforcement.QUARANTINE_HEADER
                            for edit in decision.header_edits)):
            if self.settings.dmarc.quarantine.value == "hold":
                return ScoredDecision(Action.QUARANTINE, None, headers, spam_reason, summary)
            marker = AppendHeader(dmarc_enforcement.QUARANTINE_HEADER,
                                  f"yes (spam score {score.total:.1f})")
            return ScoredDecision(Action.ACCEPT, None, (*headers, marker), spam_reason, summary)
        if score.action is scoring.ScoreAction.GREYLIST and decision.action is Action.ACCEPT:
            deferred = self._greylisted(connection, transaction, score)
            if deferred is not None:
                return ScoredDecision(Action.TEMPFAIL, deferred, headers, spam_reason, summary)
        if decision.action is not Action.ACCEPT and score.is_spam:
            log.info("%s: DMARC's %s is stronger than spam %s", transaction.log_id,
                     decision.action.value, score.action.value)
        shown = (decision.reason, spam_reason if score.is_spam else "")
        reason = "; ".join(part for part in shown if part)
        return ScoredDecision(decision.action, decision.reply, headers, reason, summary)

    def _greylisted(self, connection: Connection, transaction: Transaction,
                    score: scoring.Score) -> SmtpReply | None:
        """The 451 for a triplet seen for the first time, or None to accept it.

        Without a store (no greylister built) and on a store outage the message is
        accepted with its headers: our own failure never defers or rejects mail.
        """
        if self.greylister is None:
            return None
        try:
            outcome = self.greylister.check(connection, transaction)
        except StateUnavailable as exc:
            metrics.SPAM_GREYLIST.labels("unavailable").inc()
            log.warning("%s: spam greylist not applied: %s", transaction.log_id, exc)
            return None
        metrics.SPAM_GREYLIST.labels(outcome.decision.value).inc()
        if outcome.passed:
            log.info("%s: spam greylist passed (score %.1f)", transaction.log_id, score.total)
            return None
        log.info("%s: spam greylist deferred for %.0fs (score %.1f)", transaction.log_id,
                 outcome.remaining, score.total)
        return SmtpReply("451", "4.7.1", "Greylisted, please try again later")

    def inbound_report(self, connection: Connection, transaction: Transaction) -> InboundReport:
        """Run the inbound checks in their order; each failure is contained.

        One `message_scope` around them: DKIM and ARC share the message's canonical
        forms and body hashes instead of each computing its own.
        """
        results = Results()
        runs: list[CheckRun] = []
        with message_scope(transaction):
            for check in self.inbound:
                check_input = CheckInput(connection, transaction, results)
                if not check.applies(check_input):
                    continue
                run = self._run(check, check_input)
                runs.append(run)
                if not run.failed:
                    results = results.with_result(check.produces, run.result)
        return InboundReport(connection, tuple(runs), results)

    @staticmethod
    def _run(check: Check[Any], check_input: CheckInput) -> CheckRun:
        meter = check_meter(check.name)
        started = time.perf_counter()
        try:
            result = check.evaluate(check_input)
            label = check.metric_result(result)
        except Exception:
            # A bug in one check must not decide the message: log it, count it, and
            # report temperror so DMARC and policy treat it as "could not tell".
            log.exception("%s: check %s failed", check_input.transaction.log_id, check.name)
            metrics.ERRORS.labels(f"check_{check.name}").inc()
            meter.result("error").inc()
            return CheckRun(check, failed=True)
        finally:
            meter.seconds.observe(time.perf_counter() - started)
        meter.result(label).inc()
        return CheckRun(check, result)

    # ------------------------------------------------------------------ outbound

    def _evaluate_outbound(self, connection: Connection, transaction: Transaction) -> Verdict:
        authserv_id = self.settings.general.authserv_id
        edits: list[HeaderEdit] = [
            InsertHeader(authresults.HEADER_NAME, authresults.format_header(authserv_id, ()))
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


def build_inbound_checks(settings: Settings, resolver: Resolver) -> tuple[Check[Any], ...]:
    """The inbound checks the configuration asks for, in the order they run."""
    return build_checks(settings, resolver)
