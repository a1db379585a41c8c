"""What every policy of the policy service shares: the request, the decision, blocking steps.

* `AccessRequest` is Postfix's attribute list (SMTPD_POLICY_README, every attribute up to
  Postfix 3.9) as typed values.  All attributes stay available in `attributes`, the ones
  we do not know too (`unknown`), so a newer Postfix never breaks us.
* A policy answers with a `PolicyDecision`: a `Decision` (skip, dunno, prepend, defer,
  reject), the access(5) action text when it has one, and a reason for the log.  The
  engine (mailward.policies.engine) combines the decisions into the one answer Postfix accepts.
* Policies never block the caller's thread on their own.  `evaluate()` is a generator
  that yields a `Blocking` step for each call that may wait (DNS, the state backend)
  and reads its result after the yield.  The driver decides where the step runs:
  `run_inline` runs it in place (tests, tools), the policy server runs it in a thread
  pool and goes on serving other connections meanwhile.  Work that does not block
  (a cached SPF result, a trusted client) costs no thread hop at all.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Generator, Hashable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from mailward import metrics
from mailward.config import StateErrorAction
from mailward.model import IPAddress, strip_angle_brackets, unmapped
from mailward.state import StateUnavailable
from mailward.ttlcache import TtlCache

log = logging.getLogger("mailward.policyd")

T = TypeVar("T")
V = TypeVar("V")


# --------------------------------------------------------------------------- blocking steps


class Blocking(Generic[T]):
    """One call that may block, yielded by a policy for its driver to run.

    `run()` never raises: an exception is kept and raised again by `result`, in the
    policy's own code, where it is handled (a StateUnavailable becomes on_state_error).
    """

    __slots__ = ("_call", "_done", "_error", "_value")

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._done = False
        self._value: T | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._call()
        except Exception as exc:  # noqa: BLE001 - handed to the policy through `result`
            self._error = exc
        self._done = True

    @property
    def result(self) -> T:
        if not self._done:
            raise RuntimeError("Blocking.result read before the step ran")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


#: A policy's evaluation: yields blocking steps, returns its value.
Steps = Generator[Blocking[Any], None, T]


def run_inline(steps: Steps[T]) -> T:
    """Drive `steps` to the end, running every blocking step in this thread."""
    try:
        step = next(steps)
        while True:
            step.run()
            step = steps.send(None)
    except StopIteration as done:
        value: T = done.value
        return value


def call(function: Callable[[], T]) -> Steps[T]:
    """`value = yield from call(f)`: one blocking call as a step."""
    step = Blocking(function)
    yield step
    return step.result


# --------------------------------------------------------------------------- the request

#: The protocol states Postfix asks in (SMTPD_POLICY_README, protocol_state).
PROTOCOL_STATES = frozenset(
    {"CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN"}
)

#: Every attribute SMTPD_POLICY_README describes (Postfix 2.1 to 3.9).
KNOWN_ATTRIBUTES = frozenset({
    "request", "protocol_state", "protocol_name", "helo_name", "queue_id", "sender",
    "recipient", "recipient_count", "client_address", "client_name", "reverse_client_name",
    "instance", "sasl_method", "sasl_username", "sasl_sender", "size", "ccert_subject",
    "ccert_issuer", "ccert_fingerprint", "ccert_pubkey_fingerprint", "encryption_protocol",
    "encryption_cipher", "encryption_keysize", "etrn_domain", "stress", "client_port",
    "policy_context", "server_address", "server_port", "compatibility_level",
    "mail_version",
})


def _number(value: str) -> int | None:
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() else None


@functools.lru_cache(maxsize=8192)
def parse_address(value: str) -> IPAddress | None:
    """An IP address; IPv4-mapped IPv6 (a dual-stack smtpd) is the IPv4 address.

    Memoized: the same clients ask again and again, and ipaddress parses slowly.
    """
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    return unmapped(address)


@dataclass(frozen=True)
class AccessRequest:
    """One `smtpd_access_policy` request, typed.  Absent attributes are "" (or None for
    numbers and addresses), as Postfix itself sends empty values for what it lacks."""

    attributes: Mapping[str, str]
    protocol_state: str = ""  # upper case: "RCPT", "END-OF-MESSAGE", ...
    protocol_name: str = ""
    helo_name: str = ""
    queue_id: str = ""
    sender: str = ""  # without angle brackets; "" is the null sender
    recipient: str = ""
    recipient_count: int | None = None
    client_address: IPAddress | None = None
    client_name: str = ""
    reverse_client_name: str = ""
    instance: str = ""
    sasl_method: str = ""
    sasl_username: str = ""
    sasl_sender: str = ""
    size: int | None = None
    ccert_subject: str = ""
    ccert_issuer: str = ""
    ccert_fingerprint: str = ""
    ccert_pubkey_fingerprint: str = ""
    encryption_protocol: str = ""
    encryption_cipher: str = ""
    encryption_keysize: int | None = None
    etrn_domain: str = ""
    stress: bool = False
    client_port: int | None = None
    policy_context: str = ""
    server_address: IPAddress | None = None
    server_port: int | None = None
    compatibility_level: str = ""
    mail_version: str = ""

    @classmethod
    def parse(cls, attributes: Mapping[str, str]) -> AccessRequest:
        """Type what Postfix sent; a value that does not parse reads as absent."""
        get = attributes.get
        return cls(
            attributes=dict(attributes),
            protocol_state=get("protocol_state", "").strip().upper(),
            protocol_name=get("protocol_name", ""),
            helo_name=get("helo_name", "").strip(),
            queue_id=get("queue_id", ""),
            sender=strip_angle_brackets(get("sender", "")),
            recipient=strip_angle_brackets(get("recipient", "")),
            recipient_count=_number(get("recipient_count", "")),
            client_address=parse_address(get("client_address", "")),
            client_name=get("client_name", ""),
            reverse_client_name=get("reverse_client_name", ""),
            instance=get("instance", ""),
            sasl_method=get("sasl_method", ""),
            sasl_username=get("sasl_username", "").strip(),
            sasl_sender=get("sasl_sender", ""),
            size=_number(get("size", "")),
            ccert_subject=get("ccert_subject", ""),
            ccert_issuer=get("ccert_issuer", ""),
            ccert_fingerprint=get("ccert_fingerprint", ""),
            ccert_pubkey_fingerprint=get("ccert_pubkey_fingerprint", ""),
            encryption_protocol=get("encryption_protocol", ""),
            encryption_cipher=get("encryption_cipher", ""),
            encryption_keysize=_number(get("encryption_keysize", "")),
            etrn_domain=get("etrn_domain", ""),
            stress=get("stress", "").strip().lower() == "yes",
            client_port=_number(get("client_port", "")),
            policy_context=get("policy_context", ""),
            server_address=parse_address(get("server_address", "")),
            server_port=_number(get("server_port", "")),
            compatibility_level=get("compatibility_level", ""),
            mail_version=get("mail_version", ""),
        )

    @property
    def unknown(self) -> dict[str, str]:
        """Attributes this version does not know (a newer Postfix, a policy_context...)."""
        return {k: v for k, v in self.attributes.items() if k not in KNOWN_ATTRIBUTES}

    @property
    def authenticated(self) -> bool:
        return bool(self.sasl_username)

    @property
    def sender_domain(self) -> str:
        """The MAIL FROM domain, lower case ("" for the null sender or no domain)."""
        _, at, domain = self.sender.rpartition("@")
        return domain.strip().rstrip(".").lower() if at else ""

    def describe(self) -> str:
        """For log lines: queue id, state, client, sender, recipient."""
        return (
            f"{self.queue_id or 'NOQUEUE'}: {self.protocol_state or '?'} "
            f"client={self.client_name or 'unknown'}[{self.client_address or '?'}] "
            f"from=<{self.sender}> to=<{self.recipient}>"
        )


# --------------------------------------------------------------------------- decisions


class Decision(StrEnum):
    """What one policy concluded; also the `decision` label of its metric."""

    SKIP = "skip"  # not applicable (state, trusted client, authenticated, no data)
    DUNNO = "dunno"  # evaluated, no objection
    PREPEND = "prepend"  # no objection, and a header to add
    DEFER = "defer"  # 4xx
    REJECT = "reject"  # 5xx

    @property
    def final(self) -> bool:
        """Defer and reject end the evaluation: later policies are not asked."""
        return self in (Decision.DEFER, Decision.REJECT)


@dataclass(frozen=True)
class PolicyDecision:
    """One policy's conclusion.  `action` is the access(5) action for prepend, defer and
    reject ("PREPEND Received-SPF: ...", "550 5.7.23 ..."); `reason` is for the log.
    `on_answer` runs if this decision becomes the answer Postfix gets (e.g. to remember
    that a message's Received-SPF header was prepended)."""

    policy: str
    decision: Decision
    action: str = ""
    reason: str = ""
    on_answer: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        needs_action = self.decision in (Decision.PREPEND, Decision.DEFER, Decision.REJECT)
        if needs_action != bool(self.action):
            raise ValueError(f"{self.decision} decision {'needs' if needs_action else 'takes no'}"
                             f" action, got {self.action!r}")
        if "\n" in self.action or "\r" in self.action:
            raise ValueError(f"a policy action must be one line, got {self.action!r}")


def skip(policy: str, reason: str) -> PolicyDecision:
    return PolicyDecision(policy, Decision.SKIP, reason=reason)


def dunno(policy: str, reason: str = "") -> PolicyDecision:
    return PolicyDecision(policy, Decision.DUNNO, reason=reason)


class Policy(Protocol):
    """A policy of the policy service: name, the protocol states it answers in, and an
    evaluation.  Outside its states the engine does not ask it (the answer is DUNNO)."""

    @property
    def name(self) -> str: ...

    @property
    def states(self) -> frozenset[str]: ...

    def evaluate(self, request: AccessRequest) -> Steps[PolicyDecision]: ...


def is_outbound(request: AccessRequest, trusted: Callable[[IPAddress], bool]) -> bool:
    """Authenticated (SASL) clients and clients in general.trusted_networks."""
    if request.authenticated:
        return True
    return request.client_address is not None and trusted(request.client_address)


def not_inbound_reason(request: AccessRequest, trusted: Callable[[IPAddress], bool]) -> str:
    """Why an inbound-only policy (SPF, greylisting) skips this client, or "" if it
    applies: no client address, a SASL login, or a client in trusted_networks."""
    client = request.client_address
    if client is None:
        return "no client address"
    if request.authenticated:
        return "SASL-authenticated client"
    if trusted(client):
        return "client in trusted_networks"
    return ""


# --------------------------------------------------------------------------- state errors

STATE_DEFER_ACTION = "DEFER_IF_PERMIT 4.3.0 Temporary policy failure, please try again later"


def state_error_decision(
    policy: str, operation: str, error: StateUnavailable, on_error: StateErrorAction
) -> PolicyDecision:
    """A state backend outage: counted, logged, answered as [policyd] on_state_error says.

    Never a rejection: the mail is either let through this policy or deferred."""
    metrics.STATE_ERRORS.labels(error.backend, operation).inc()
    log.warning("%s: %s; answering %s", policy, error, on_error.value)
    if on_error is StateErrorAction.DEFER:
        return PolicyDecision(policy, Decision.DEFER, STATE_DEFER_ACTION,
                              reason=f"state backend unavailable: {error.message}")
    return dunno(policy, f"state backend unavailable: {error.message}")


# --------------------------------------------------------------------------- per-transaction memo


class TransactionMemo(Generic[V]):
    """A small, thread-safe LRU for what one SMTP transaction should not compute twice.

    Postfix asks once per recipient; the `instance` attribute is the same for all
    requests of one message transaction.  Entries are keyed by the instance (plus what
    the value depends on), live at most `lifetime` seconds and at most `max_entries`
    of them are kept, so a busy server's memory stays flat.
    """

    def __init__(
        self, max_entries: int = 4096, lifetime: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lifetime = lifetime
        self._entries: TtlCache[Hashable, V] = TtlCache(max_entries, clock)

    def get(self, key: Hashable) -> V | None:
        return self._entries.get(key)

    def put(self, key: Hashable, value: V) -> None:
        self._entries.put(key, value, self._lifetime)

    def __len__(self) -> int:
        return len(self._entries)

