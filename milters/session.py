"""The pymilter adapter: milter callbacks in, engine values out, Verdict back to milter calls.

One `MilterSession` lives for one MTA connection (which may carry several messages).
Callbacks only record what the MTA tells us; nothing is decided before end-of-message.
Every callback is wrapped so that an exception is logged and remembered instead of
escaping into libmilter: the message then gets the configured `on_internal_error`
action at end-of-message, which is the one place where the MTA hears our answer.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import Milter

from mailward import metrics
from mailward.model import (
    Action,
    AppendHeader,
    Connection,
    Header,
    HeaderEdit,
    InsertHeader,
    IPAddress,
    RemoveHeader,
    SmtpReply,
    Transaction,
    Verdict,
    strip_angle_brackets,
)
from mailward.pipeline import Pipeline

log = logging.getLogger("mailward.milter")

INTERNAL_ERROR_REPLY = SmtpReply("451", "4.3.0", "Temporary local problem, please try again later")
HEADER_OVERFLOW_REPLY = SmtpReply("552", "5.3.4", "Message header too large")

# Macros worth keeping; Postfix sends them at the stages named in its milter_*_macros.
# Those that describe the connection keep their value for its lifetime: once seen they
# are not asked again.  Those of the message (queue id, envelope, SASL, TLS after
# STARTTLS) are asked at MAIL FROM and at end of message, as before.
_CONNECTION_MACROS = (
    "j", "_", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "{client_addr}",
    "{client_name}", "{client_ptr}", "{client_resolve}",
)
_MESSAGE_MACROS = (
    "{auth_type}", "{auth_authen}", "{tls_version}", "{cipher}", "i", "{mail_addr}",
    "{rcpt_addr}",
)
_INTERESTING_MACROS = _CONNECTION_MACROS + _MESSAGE_MACROS
_CONNECTION_SET = frozenset(_CONNECTION_MACROS)
_MACRO_KEYS = {name: name.strip("{}") for name in _INTERESTING_MACROS}  # as kept: no braces


class PipelineSource(Protocol):
    """Where a session gets the engine from; the worker swaps it on reload."""

    def current(self) -> Pipeline: ...


@dataclass
class _Envelope:
    """What one message collected so far; reset after each message (aiosmtpd's Envelope)."""

    mail_from: str = ""
    mail_params: dict[str, str | None] = field(default_factory=dict)
    recipients: list[str] = field(default_factory=list)
    headers: list[Header] = field(default_factory=list)
    # The chunks as libmilter handed them over, joined once at end of message (a single
    # chunk, the common case, is used as it is: no copy at all).
    body_chunks: list[bytes] = field(default_factory=list)
    body_kept: int = 0  # bytes in body_chunks (at most max_body_size)
    body_size: int = 0
    header_bytes: int = 0
    header_overflow: bool = False  # more than max_headers/max_header_bytes; not all kept
    failed: bool = False  # a callback raised; answer on_internal_error at end-of-message


F = TypeVar("F", bound=Callable[..., Any])

# pymilter is untyped; name what we use from it once, with types.
CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL
DISCARD: int = Milter.DISCARD


NOREPLY: int = Milter.NOREPLY


def _guarded(func: F) -> F:
    """Catch what a callback raises: log it with the queue id, never crash libmilter.

    Also pymilter's `@noreply` in the same wrapper (one Python frame per callback, not
    two: a message costs a dozen or more header callbacks): the callback is marked for
    negotiation, and when the MTA agreed not to wait for this step's reply, CONTINUE is
    answered as NOREPLY.
    """
    nr_mask: int = Milter.OPTIONAL_CALLBACKS[func.__name__][0]

    @functools.wraps(func)
    def wrapper(self: MilterSession, *args: Any) -> Any:
        try:
            rc = func(self, *args)
        except Exception:
            log.exception("%s: error in milter %s callback", self.log_id, func.__name__)
            metrics.ERRORS.labels("milter").inc()
            self._envelope.failed = True
            rc = CONTINUE
        if self._protocol & nr_mask:
            if rc != CONTINUE:
                raise RuntimeError(f"{func.__name__} return code must be CONTINUE with @noreply")
            return NOREPLY
        return rc

    wrapper.milter_protocol = nr_mask  # type: ignore[attr-defined]  # read by negotiation
    return wrapper  # type: ignore[return-value]


_MESSAGE_COUNTERS: dict[tuple[str, str], Any] = {}


def _message_counter(action: str, direction: str) -> Any:
    """The mailward_milter_messages_total child for (action, direction), looked up once:
    `labels()` costs more than the `inc()` it precedes, and every message counts."""
    key = (action, direction)
    child = _MESSAGE_COUNTERS.get(key)
    if child is None:
        # Both labels are enum values (a handful of actions, two directions): bounded.
        child = _MESSAGE_COUNTERS[key] = metrics.MILTER_MESSAGES.labels(action, direction)
    return child


def _client_ip(family: int, hostaddr: Any) -> IPAddress | None:
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(hostaddr, tuple):
        try:
            return ipaddress.ip_address(hostaddr[0])
        except ValueError:
            return None
    return None


def _milter_text(text: str) -> str:
    """SMTP reply text libmilter accepts: one line, '%' doubled (else it drops the reply)."""
    return re.sub(r"[\r\n]+", " ", text).replace("%", "%%")


@Milter.header_leading_space
class MilterSession(Milter.Base):  # type: ignore[misc]
    """One MTA connection.  Created by libmilter's negotiate callback."""

    def __init__(self, source: PipelineSource) -> None:
        super().__init__()
        self._pipeline = source.current()
        self._connection = Connection(client_ip=None)
        self._macros: dict[str, str] = {}
        self._envelope = _Envelope()
        self._session_counted = False

    @property
    def log_id(self) -> str:
        return self._macros.get("i") or "NOQUEUE"

    def _collect_macros(self, names: tuple[str, ...] = _INTERESTING_MACROS) -> None:
        """Record the values of `names` the MTA sent; connection macros only until seen."""
        macros = self._macros
        for name in names:
            key = _MACRO_KEYS[name]
            if key in macros and name in _CONNECTION_SET:
                continue  # a connection's value does not change: not asked again
            value = self._macro(name)
            if value:
                macros[key] = value

    def _macro(self, name: str) -> str | None:
        """A macro's value, decoded tolerantly.

        pymilter decodes macro values as strict UTF-8, so an 8-bit SASL user name
        (``{auth_authen}``) would raise in every callback and earn the client a 451 for each
        message it sends.  The exception still carries the MTA's bytes; undecodable bytes
        become U+FFFD, which is only ever logged or compared, never trusted.
        """
        try:
            value: str | None = self.getsymval(name)
        except UnicodeDecodeError as exc:
            log.warning("%s: macro %s is not UTF-8; decoded with replacement characters",
                        self._macros.get("i") or "NOQUEUE", name)
            return bytes(exc.object).decode("utf-8", "replace")
        return value

    # ------------------------------------------------------------------ callbacks

    @_guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        metrics.MILTER_SESSIONS.inc()
        metrics.MILTER_ACTIVE_SESSIONS.inc()
        self._session_counted = True
        self._collect_macros()
        ip = _client_ip(family, hostaddr)
        port = hostaddr[1] if ip is not None else None
        self._connection = Connection(
            client_ip=ip, client_name=hostname or "unknown", client_port=port
        )
        return CONTINUE

    @_guarded
    def hello(self, heloname: str) -> int:
        self._connection = replace(self._connection, helo=heloname)
        return CONTINUE

    @_guarded
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._envelope = _Envelope()
        self._collect_macros()
        self._envelope.mail_from = strip_angle_brackets(mailfrom) if mailfrom else ""
        self._envelope.mail_params = Milter.param2dict(params)
        return CONTINUE

    @_guarded
    def envrcpt(self, to: str, *params: str) -> int:
        self._envelope.recipients.append(strip_angle_brackets(to))
        return CONTINUE

    def header_bytes(self, fld: str, val: bytes) -> int:
        """pymilter's entry for each header field, without its per-call look-up of a
        decoding strategy: the value as UTF-8, undecodable bytes as surrogates (pymilter's
        default, which `message.header_value_bytes` turns back into the bytes sent)."""
        return self.header(fld, val.decode("utf-8", "surrogateescape"))

    @_guarded
    def header(self, name: str, value: str) -> int:
        # Leading-space mode: the value is exactly what followed the colon.  Without it
        # (sendmail, other MTAs) the MTA dropped the conventional space after the colon;
        # put that one space back, or c=simple DKIM signatures over this header fail.
        if not self._protocol & Milter.P_HDR_LEADSPC and value[:1] not in ("", " ", "\t"):
            value = " " + value
        envelope = self._envelope
        if envelope.header_overflow:
            return CONTINUE
        limits = self._pipeline.settings.milter
        envelope.header_bytes += len(name) + len(value) + 3  # ": " and the line end
        if (len(envelope.headers) >= limits.max_headers
                or envelope.header_bytes > limits.max_header_bytes):
            # Keep nothing more: memory stays bounded, and the message is refused at
            # end-of-message (a partial header block cannot be judged honestly).
            envelope.header_overflow = True
            log.warning("%s: header block exceeds %d fields or %d bytes; the message will"
                        " be rejected", self.log_id, limits.max_headers,
                        limits.max_header_bytes)
            return CONTINUE
        envelope.headers.append(Header(name, value))
        return CONTINUE

    @_guarded
    def body(self, chunk: bytes) -> int:
        envelope = self._envelope
        envelope.body_size += len(chunk)
        room = self._pipeline.settings.milter.max_body_size - envelope.body_kept
        if room > 0:
            kept = chunk if len(chunk) <= room else chunk[:room]
            envelope.body_chunks.append(kept)
            envelope.body_kept += len(kept)
        return CONTINUE

    def eom(self) -> int:
        started = time.perf_counter()
        self._collect_macros()
        try:
            transaction = self._transaction()
            verdict = self._decide(transaction)
            status = self._apply(verdict)
        except Exception:
            # Building, deciding or applying failed; the MTA still needs an answer.
            log.exception("%s: internal error at end of message", self.log_id)
            metrics.ERRORS.labels("milter").inc()
            verdict = self._internal_error_verdict()
            status = self._apply_reply_only(verdict)
        elapsed = time.perf_counter() - started
        metrics.MILTER_MESSAGE_SECONDS.observe(elapsed)
        _message_counter(verdict.action.value, verdict.direction.value).inc()
        self._log_message(verdict, elapsed)
        self._envelope = _Envelope()
        return status

    def abort(self) -> int:
        self._envelope = _Envelope()
        return CONTINUE

    def close(self) -> int:
        if self._session_counted:
            metrics.MILTER_ACTIVE_SESSIONS.dec()
            self._session_counted = False
        return CONTINUE

    # ------------------------------------------------------------------ decisions

    def _transaction(self) -> Transaction:
        envelope = self._envelope
        auth_user = self._macros.get("auth_authen") or None
        # One replace (each costs a dataclass construction); the macros are copied so
        # the Connection the checks see does not change under them with the next message.
        self._connection = replace(self._connection, auth_user=auth_user,
                                   macros=dict(self._macros))
        max_body = self._pipeline.settings.milter.max_body_size
        truncated = envelope.body_size > max_body
        if truncated:
            metrics.MILTER_BODY_TRUNCATED.inc()
        metrics.MILTER_MESSAGE_BYTES.observe(envelope.body_size)
        return Transaction(
            queue_id=self._macros.get("i"),
            mail_from=envelope.mail_from,
            recipients=tuple(envelope.recipients),
            headers=tuple(envelope.headers),
            body=b"".join(envelope.body_chunks),
            body_size=envelope.body_size,
            body_truncated=truncated,
            mail_params=dict(envelope.mail_params),
        )

    def _decide(self, transaction: Transaction) -> Verdict:
        if self._envelope.failed:
            return self._internal_error_verdict()
        if self._envelope.header_overflow:
            metrics.MILTER_HEADER_OVERFLOW.inc()
            return Verdict(Action.REJECT, reply=HEADER_OVERFLOW_REPLY,
                           reason="header block over the size limit")
        return self._pipeline.evaluate(self._connection, transaction)

    def _internal_error_verdict(self) -> Verdict:
        action = self._pipeline.settings.general.on_internal_error.as_action()
        if action is Action.TEMPFAIL:
            return Verdict(Action.TEMPFAIL, reply=INTERNAL_ERROR_REPLY, reason="internal error")
        return Verdict(Action.ACCEPT, reason="internal error (on_internal_error = accept)")

    # ------------------------------------------------------------------ actions

    def _apply(self, verdict: Verdict) -> int:
        if verdict.action in (Action.REJECT, Action.TEMPFAIL, Action.DISCARD):
            # The message will not be delivered: header edits would be wasted work.
            return self._apply_reply_only(verdict)
        for edit in verdict.header_edits:
            self._apply_edit(edit)
        if verdict.action is Action.QUARANTINE:
            self.quarantine(_milter_text(verdict.reason or "held by Mailward"))
        return CONTINUE

    def _apply_reply_only(self, verdict: Verdict) -> int:
        if verdict.reply is not None:
            reply = verdict.reply
            self.setreply(reply.code, reply.enhanced or None, _milter_text(reply.text))
        return {
            Action.REJECT: REJECT,
            Action.TEMPFAIL: TEMPFAIL,
            Action.DISCARD: DISCARD,
        }.get(verdict.action, CONTINUE)

    def _apply_edit(self, edit: HeaderEdit) -> None:
        if isinstance(edit, RemoveHeader):
            self.chgheader(edit.name, edit.occurrence, None)
        elif isinstance(edit, InsertHeader):
            self.addheader(edit.name, self._header_value(edit.value), edit.index)
        elif isinstance(edit, AppendHeader):
            self.addheader(edit.name, self._header_value(edit.value))

    def _header_value(self, value: str) -> str:
        # In leading-space mode the MTA takes our value verbatim, space after colon included.
        if self._protocol & Milter.P_HDR_LEADSPC and not value.startswith((" ", "\t")):
            return " " + value
        return value

    def _log_message(self, verdict: Verdict, elapsed: float) -> None:
        results = ", ".join(f"{r.method}={r.result}" for r in verdict.results) or "none"
        symbols = ",".join(str(symbol) for symbol in verdict.symbols) or "none"
        envelope = self._envelope
        log.info(
            "%s: client=%s from=<%s> rcpts=%d size=%d direction=%s action=%s results=%s "
            "symbols=%s%s%s duration=%.1fms",
            self.log_id, self._connection.client_label, envelope.mail_from,
            len(envelope.recipients), envelope.body_size, verdict.direction.value,
            verdict.action.value, results, symbols,
            f" reason={verdict.reason!r}" if verdict.reason else "",
            f" {verdict.spam}" if verdict.spam else "",
            elapsed * 1000,
        )

