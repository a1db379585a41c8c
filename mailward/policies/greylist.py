"""Greylisting at RCPT time: what postgrey does, on the shared state store.

A triplet is (client network, sender, recipient); the network is the client's /24
(IPv4) or /64 (IPv6), configurable, because large senders retry from another address
of the same pool.  The first attempt of a triplet is deferred for `delay` seconds; a
retry within `retry_window` passes, and the triplet is then remembered for `expiry`.
After `auto_allow_after` passed triplets a client network skips greylisting (also for
`expiry`).  The rules themselves, and their atomicity across processes and hosts, are
the state store's (`mailward.state`).

Not greylisted: SASL-authenticated clients, clients in general.trusted_networks, and
mail from the large senders listed in `spf_pass_domains` (or their subdomains) when its
SPF result is `pass`: they retry from other addresses, possibly other networks, and
would be delayed for hours.

A state backend outage is answered as [policyd] on_state_error says (DUNNO or a 4xx),
counted in mailward_state_errors_total, never a crash and never a rejection.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

from mailward.checks.spf import SpfResult
from mailward.config import PolicydGreylistSettings, StateErrorAction
from mailward.model import IPAddress
from mailward.policies.base import (
    AccessRequest,
    Decision,
    PolicyDecision,
    Steps,
    call,
    dunno,
    not_inbound_reason,
    skip,
    state_error_decision,
)
from mailward.policies.spf import SpfEvaluator
from mailward.state import GreylistOutcome, GreylistParams, StateStore, StateUnavailable

NAME = "greylist"


def client_network(address: IPAddress, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The network a client is greylisted as, e.g. "198.51.100.0/24"."""
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def triplet_key(network: str, sender: str, recipient: str) -> str:
    """The triplet as the store keys it; addresses compared without case."""
    return f"{network} <{sender.lower()}> <{recipient.lower()}>"


def in_domains(domain: str, domains: frozenset[str]) -> bool:
    """`domain` is one of `domains` or a subdomain of one."""
    labels = domain.split(".")
    return any(".".join(labels[index:]) in domains for index in range(len(labels) - 1))


class GreylistPolicy:
    """[policyd.greylist]."""

    name = NAME
    states = frozenset({"RCPT"})

    def __init__(
        self,
        settings: PolicydGreylistSettings,
        store: StateStore,
        trusted: Callable[[IPAddress], bool],
        on_state_error: StateErrorAction,
        *,
        spf: SpfEvaluator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._trusted = trusted
        self._on_state_error = on_state_error
        self._spf = spf
        self._clock = clock
        self._large_senders = frozenset(settings.spf_pass_domains)
        if self._large_senders and spf is None:
            raise ValueError("greylisting with spf_pass_domains needs an SPF evaluator")
        self.params = GreylistParams(
            delay=settings.delay,
            retry_window=settings.retry_window,
            expiry=settings.expiry,
            auto_allow_after=settings.auto_allow_after,
        )

    def evaluate(self, request: AccessRequest) -> Steps[PolicyDecision]:
        exempt = not_inbound_reason(request, self._trusted)
        if exempt:
            return skip(NAME, exempt)
        client = request.client_address
        assert client is not None  # not_inbound_reason() says so otherwise
        if not request.recipient:
            return skip(NAME, "no recipient")
        domain = request.sender_domain
        if domain and self._spf is not None and in_domains(domain, self._large_senders):
            outcome = yield from self._spf.mail_from(request, client)
            if outcome.result is SpfResult.PASS:
                return skip(NAME, f"SPF pass for {domain}, a listed large sender")
        settings = self._settings
        network = client_network(client, settings.ipv4_prefix, settings.ipv6_prefix)
        triplet = triplet_key(network, request.sender, request.recipient)
        now = self._clock()
        try:
            result: GreylistOutcome = yield from call(
                lambda: self._store.greylist(triplet, network, now, self.params)
            )
        except StateUnavailable as exc:
            return state_error_decision(NAME, "greylist", exc, self._on_state_error)
        if result.passed:
            if result.auto_allowed:
                return dunno(NAME, f"{network} auto-allowed")
            waited = now - result.first_seen if result.first_seen is not None else 0.0
            first = " (first pass)" if result.newly_passed else ""
            return dunno(NAME, f"triplet passed{first}, first seen {waited:.0f} s ago")
        wait = max(1, math.ceil(result.remaining))
        return PolicyDecision(
            NAME, Decision.DEFER,
            f"DEFER_IF_PERMIT 4.7.1 Greylisted, please try again in {wait} seconds",
            reason=f"greylisted {triplet}, {wait} s to go",
        )
