"""Greylisting as a spam-score action: defer (451 4.7.1) the first sight of a message's
sender/IP/recipients triplet whose score reached `[scoring] greylist`.

A real MTA retries after a delay and the retry is scored again from scratch (the pipeline
runs whole), so a list that caught up in the meantime still counts; bulk spamware rarely
retries.  The triplet lives in the shared state store (mailward/state), whose one atomic
`greylist` step decides, so two milter processes or MX hosts never race.

A store outage never turns into a deferral or rejection of our making: the message is
accepted (with its spam headers) and the outage is logged by the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailward.model import Connection, Transaction
from mailward.scoring import ScoringSettings
from mailward.state import StateStore, open_store
from mailward.state.base import GreylistOutcome, GreylistParams

if TYPE_CHECKING:
    from mailward.config import StateSettings

#: Keys are namespaced so they never meet the policy service's greylist triplets.
KEY_PREFIX = "spam-greylist:"


def triplet_key(connection: Connection, transaction: Transaction) -> str:
    """IP, envelope sender and the sorted recipients (one deferral covers one DATA)."""
    recipients = ",".join(sorted(recipient.lower() for recipient in transaction.recipients))
    return f"{KEY_PREFIX}{connection.client_ip}/{transaction.mail_from.lower()}/{recipients}"


def client_key(connection: Connection) -> str:
    return f"{KEY_PREFIX}{connection.client_ip}"


@dataclass(frozen=True)
class SpamGreylister:
    """One atomic greylist step per scored message; the clock is injectable for tests."""

    store: StateStore
    params: GreylistParams
    clock: Callable[[], float] = field(default=time.time)

    def check(self, connection: Connection, transaction: Transaction) -> GreylistOutcome:
        """Raises StateUnavailable when the store cannot answer."""
        return self.store.greylist(triplet_key(connection, transaction), client_key(connection),
                                   self.clock(), self.params)


def build_greylister(settings: ScoringSettings, state: StateSettings) -> SpamGreylister | None:
    """The greylister when `[scoring] greylist` is set, on the `[state]` store.

    Opening does no I/O (mailward.state.open_store), so a Redis that is down at start is an
    outage handled per message, not a startup failure.
    """
    if settings.greylist is None:
        return None
    params = GreylistParams(delay=settings.greylist_delay,
                            retry_window=settings.greylist_retry_window,
                            expiry=settings.greylist_expiry)
    return SpamGreylister(open_store(state.backend, state.path, state.url), params)
