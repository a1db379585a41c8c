"""The optional SpamAssassin backend: ask a running spamd, merge its score as a symbol.

Off by default (`[spamd] enabled = false`): Mailward's own checks are meant to be
enough, and a site that already runs spamd and trusts its tuned rules can add its
opinion.  The check sends the message (as the milter holds it) with SYMBOLS over the
configured socket and turns the answer into symbols:

- `SPAMASSASSIN(7.4/5.0)`: SpamAssassin's total score (and its own threshold), with the
  score as the symbol's value.  Scoring multiplies it by the weight of `SPAMASSASSIN`
  (`[scoring.weights]`, default 1.0): 0.5 halves SA's say, 0 ignores it.  One symbol for
  the total, because SA's per-rule scores depend on its version, its rule updates and
  the site's local.cf: copying them into our weights table would go stale.
- `SA_<RULE>` for each rule that hit (`SA_HTML_MESSAGE`), weight 0: they show in
  X-Spam-Status and the log why SA scored as it did, without counting twice.  At most
  `MAX_RULE_SYMBOLS`; rule names never become metric labels (SA has thousands, and
  sites add their own): mailward_spam_symbols_total counts only weighted symbols.

The message goes to spamd with one `Received:` line on top that says what Postfix does
not hand to a milter: its own hop (`from HELO (NAME [IP]) by authserv_id`), as
spamass-milter writes it.  Without it SA sees no relay at all (NO_RELAYS), and its
HELO, client and date-versus-Received rules have nothing to read.  The HELO and name
are the client's words: only host-name characters survive, so nothing can be injected.

Nothing here can make a message fail: a timeout, a refused connection, spamd's own
error answer or a garbage answer gives a result without symbols, a warning in the log
and a count in `mailward_spamd_requests_total{outcome}`; messages over `max_size` (or
that the milter kept only in part) are not sent at all, and counted as `too_large`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate
from enum import StrEnum
from typing import Protocol

from mailward import metrics
from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol
from mailward.config import SocketAddress
from mailward.configreader import Table
from mailward.message import CRLF, header_block
from mailward.model import Connection, Transaction
from mailward.spamc_protocol import SpamdErrorAnswer, SpamdProtocolError, SpamVerdict
from mailward.spamd_client import (
    SpamdClient,
    SpamdConnectionError,
    SpamdRefused,
    SpamdTimeout,
)

log = logging.getLogger(__name__)

#: SA answers rarely name more than 30 rules; past this the header would only grow.
MAX_RULE_SYMBOLS = 64
SYMBOL = "SPAMASSASSIN"
RULE_PREFIX = "SA_"
DEFAULT_SOCKET = "inet:127.0.0.1:783"
#: spamc's own default size limit (500 KB): larger mail is nearly never spam.
DEFAULT_MAX_SIZE = 512_000
_DEFAULT_ADDRESS = SocketAddress.parse(DEFAULT_SOCKET)


class SpamdStatus(StrEnum):
    """The bounded outcome of one message's request (metric label `outcome`)."""

    SCORED = "scored"
    TOO_LARGE = "too_large"          # not sent: over max_size, or the milter kept a prefix
    TIMEOUT = "timeout"              # no complete answer within `timeout`
    REFUSED = "refused"              # nobody listens at `socket` (spamd stopped)
    CONNECTION_ERROR = "connection_error"  # reset, unreachable, broken pipe
    SPAMD_ERROR = "spamd_error"      # spamd answered with its own error code
    BAD_ANSWER = "bad_answer"        # the bytes that came back are not a SPAMD answer


@dataclass(frozen=True)
class SpamdSettings:
    """`[spamd]`: off unless enabled; where spamd listens and how long we wait."""

    enabled: bool = False
    socket: SocketAddress = _DEFAULT_ADDRESS
    timeout: float = 10.0
    max_size: int = DEFAULT_MAX_SIZE
    #: spamd's per-user preferences (`User:` header); "" lets spamd pick its default.
    user: str = ""


def read_spamd(table: Table) -> SpamdSettings:
    defaults = SpamdSettings()
    user = table.scalar("user", str, defaults.user)
    if user and not re.fullmatch(r"[!-~]{1,128}", user):
        table.error("user", "must be 1-128 printable characters without spaces")
        user = defaults.user
    settings = SpamdSettings(
        enabled=table.scalar("enabled", bool, defaults.enabled),
        socket=table.parsed("socket", SocketAddress.parse, defaults.socket),
        timeout=table.number("timeout", float, defaults.timeout, 0.1, 120.0),
        max_size=table.number("max_size", int, defaults.max_size, 1024, 64 * 1024 * 1024),
        user=user,
    )
    table.finish()
    return settings


@dataclass(frozen=True)
class SpamdOutcome:
    """What asking spamd gave for one message (`verdict` only when SCORED)."""

    status: SpamdStatus
    verdict: SpamVerdict | None = None
    size: int = 0
    #: What went wrong, for the log (never a metric label).
    problem: str = ""


RESULT: ResultKey[SpamdOutcome] = ResultKey("spamd")


def rule_symbol(rule: str) -> str:
    """`SA_` + the rule's name as a symbol name (upper case, at most 64 characters).

    SA rule names are letters, digits and underscores (a few contain lower case); the
    prefix keeps them apart from our own symbols (SA's BAYES_99 is not ours).
    """
    return (RULE_PREFIX + re.sub(r"[^A-Z0-9_]", "_", rule.upper()))[:64]


_NOT_HOSTNAME = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def _host_text(value: str | None) -> str:
    cleaned = _NOT_HOSTNAME.sub("", value or "")[:255]
    return cleaned or "unknown"


def trace_header(connection: Connection, transaction: Transaction, by_host: str,
                 now: float | None = None) -> bytes:
    """The `Received:` line of the SMTP hop into us, for spamd's eyes only (b"" when the
    message did not come over SMTP)."""
    if connection.client_ip is None:
        return b""
    protocol = "ESMTPA" if connection.auth_user else "ESMTP"
    line = (f"Received: from {_host_text(connection.helo)} "
            f"({_host_text(connection.client_name)} [{connection.client_ip}])\r\n"
            f"\tby {_host_text(by_host)} (Mailward) with {protocol} id "
            f"{_host_text(transaction.queue_id)}; {formatdate(now, localtime=True)}\r\n")
    return line.encode("ascii")


class SpamdAsker(Protocol):
    """What the check needs of a client: SpamdClient, or a stand-in in unit tests."""

    def symbols(self, message: bytes) -> SpamVerdict: ...


class SpamdCheck(Check[SpamdOutcome]):
    name = "spamd"
    produces = RESULT

    def __init__(self, settings: SpamdSettings, client: SpamdAsker,
                 by_host: str = "localhost") -> None:
        self._settings = settings
        self._client = client
        self._by_host = by_host

    def evaluate(self, check_input: CheckInput) -> SpamdOutcome:
        transaction = check_input.transaction
        head = (trace_header(check_input.connection, transaction, self._by_host)
                + header_block(transaction.headers) + CRLF)
        size = len(head) + transaction.body_size
        if transaction.body_truncated or size > self._settings.max_size:
            log.info("%s: spamd: not asked, message of %d bytes is over max_size %d%s",
                     transaction.log_id, size, self._settings.max_size,
                     " (the milter kept only a prefix)" if transaction.body_truncated else "")
            outcome = SpamdOutcome(SpamdStatus.TOO_LARGE, size=size)
            metrics.SPAMD_REQUESTS.labels(outcome.status.value).inc()
            return outcome
        began = time.monotonic()
        outcome = self._ask(head + transaction.body, size)
        metrics.SPAMD_REQUEST_SECONDS.observe(time.monotonic() - began)
        metrics.SPAMD_REQUESTS.labels(outcome.status.value).inc()
        if outcome.status is not SpamdStatus.SCORED:
            log.warning("%s: spamd: %s (%s): not scored", transaction.log_id,
                        outcome.status.value, outcome.problem)
        return outcome

    def _ask(self, message: bytes, size: int) -> SpamdOutcome:
        """spamd's verdict, or the kind of failure and what it was (never raises for one)."""
        try:
            return SpamdOutcome(SpamdStatus.SCORED, self._client.symbols(message), size)
        except SpamdTimeout:
            return SpamdOutcome(SpamdStatus.TIMEOUT, size=size,
                                problem=f"no answer within {self._settings.timeout:g}s")
        except SpamdRefused as exc:
            return SpamdOutcome(SpamdStatus.REFUSED, size=size, problem=str(exc))
        except SpamdConnectionError as exc:
            return SpamdOutcome(SpamdStatus.CONNECTION_ERROR, size=size, problem=str(exc))
        except SpamdErrorAnswer as exc:
            return SpamdOutcome(SpamdStatus.SPAMD_ERROR, size=size, problem=str(exc))
        except SpamdProtocolError as exc:
            return SpamdOutcome(SpamdStatus.BAD_ANSWER, size=size, problem=str(exc))

    def symbols(self, result: SpamdOutcome) -> Sequence[Symbol]:
        verdict = result.verdict
        if result.status is not SpamdStatus.SCORED or verdict is None:
            return ()
        total = Symbol(SYMBOL, f"{verdict.score:g}/{verdict.threshold:g}", value=verdict.score)
        rules = [Symbol(rule_symbol(rule), value=0.0)
                 for rule in verdict.rules[:MAX_RULE_SYMBOLS]]
        return (total, *rules)

    def metric_result(self, result: SpamdOutcome) -> str:
        return result.status.value


def _build(context: BuildContext[SpamdSettings]) -> SpamdCheck | None:
    settings = context.section
    if not settings.enabled:
        return None
    client = SpamdClient(settings.socket, settings.timeout, settings.user or None)
    log.info("spamd: asking SpamAssassin at %s (timeout %gs, max_size %d bytes)",
             settings.socket, settings.timeout, settings.max_size)
    return SpamdCheck(settings, client, context.settings.general.authserv_id)


SPEC: CheckSpec[SpamdSettings] = CheckSpec("spamd", _build, section="spamd",
                                           read_settings=read_spamd)
