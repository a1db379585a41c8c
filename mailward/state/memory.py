"""An in-process store: the pure rules over dicts.  For unit tests of the policies that use
state, and for a single process that may forget everything on restart.  Not a configured
backend: its state is neither shared nor kept."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from mailward.state.base import (
    GreylistOutcome,
    GreylistParams,
    RateOutcome,
    RateWindow,
    StateStore,
    StateUnavailable,
    check_key,
    check_rate_arguments,
)
from mailward.state.logic import (
    ClientRecord,
    TripletRecord,
    greylist_step,
    rate_outcome,
    window_end,
    window_index,
)


class MemoryStore(StateStore):
    backend = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._triplets: dict[str, TripletRecord] = {}
        self._clients: dict[str, ClientRecord] = {}
        # (key, window seconds, window index) -> (count, expires_at)
        self._counters: dict[tuple[str, int, int], tuple[int, float]] = {}
        self._closed = False

    def greylist(
        self, triplet: str, client: str, now: float, params: GreylistParams
    ) -> GreylistOutcome:
        check_key("triplet", triplet)
        check_key("client", client)
        with self._lock:
            self._check_open()
            known = self._clients.get(client)
            step = greylist_step(self._triplets.get(triplet), known, now, params)
            if step.triplet is not None:
                self._triplets[triplet] = step.triplet
            if step.client is not None:
                self._clients[client] = step.client
            return step.outcome

    def rate_limit(
        self, key: str, windows: Sequence[RateWindow], amount: int, now: float
    ) -> RateOutcome:
        check_key("rate key", key)
        check_rate_arguments(windows, amount)
        slots = [(key, w.seconds, window_index(now, w.seconds)) for w in windows]
        with self._lock:
            self._check_open()
            counts = [self._counters.get(slot, (0, 0.0))[0] for slot in slots]
            outcome = rate_outcome(counts, windows, amount, now)
            if outcome.allowed:
                for slot, window, count in zip(slots, windows, outcome.counts, strict=True):
                    self._counters[slot] = (count, float(window_end(now, window.seconds)))
            return outcome

    def purge(self, now: float) -> int:
        with self._lock:
            self._check_open()
            removed = 0
            for table in (self._triplets, self._clients):
                stale = [k for k, record in table.items() if record.expires_at <= now]
                for k in stale:
                    del table[k]
                removed += len(stale)
            old = [slot for slot, (_, expires_at) in self._counters.items() if expires_at <= now]
            for slot in old:
                del self._counters[slot]
            return removed + len(old)

    def ping(self) -> None:
        with self._lock:
            self._check_open()

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StateUnavailable(self.backend, "store is closed")
