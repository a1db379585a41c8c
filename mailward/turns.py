"""One message computes at a time in a milter worker, oldest first.

Why: a worker's ends of message run on threads (milters/connections.py) so that one
message waiting on DNS never holds up the others.  But when none of them waits, the
threads only take turns at the GIL, and CPython hands the GIL over in no particular
order: with eight connections, a message that arrived first could be finished last,
and the latency of a message was that of every message in flight rather than of those
ahead of it.  On the scoring benchmark (one worker, eight connections) the p99 was 2.9
times the p50 (23 against 8 ms).  Taking the turns in arrival order gave the same
throughput with a p99 of 14 ms.

How: the message thread takes the worker's turn for the end of message
(`Turns.held(ticket)`, the ticket numbered when the message arrived).  Where a check
waits on the network (a DNS query on the wire, the DNS-list lookups, spamd, Redis) it
says so (`with turns.waiting():`): the turn goes to the oldest message that wants it,
and comes back, ahead of newer messages, once the wait is over.  A thread that holds no
turn (the connection loop, a DNS-list pool thread, the policy service, a test) passes
through `waiting()` unchanged.

What keeps it safe:

* a message waits at most `MAX_TURN_WAIT` for the turn, then runs anyway, sharing the
  GIL as before; so a message that computes for long (a 20 MB part), or a network wait
  nobody marked with `waiting()`, delays the others by that much at most, never
  stalls them;
* `waiting()` is never entered while holding a lock that another message could need
  (it would wait for the turn holding that lock): mark the network call itself.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The longest a message waits for its turn before running without one (seconds).  Far
#: above one message's CPU (1-2 ms) times the connections a worker usually serves, so
#: it only matters when something holds the turn for long.
MAX_TURN_WAIT = 0.05


class Turns:
    """A worker's turn to compute: held by one message at a time, lowest ticket next."""

    def __init__(self, max_wait: float = MAX_TURN_WAIT) -> None:
        self._max_wait = max_wait
        self._lock = threading.Lock()
        self._taken = False
        # (ticket, gate) of the messages that want the turn: a gate is a locked Lock,
        # released by the holder that hands the turn over.  Tickets are unique.
        self._waiting: list[tuple[int, threading.Lock]] = []
        self._tickets = itertools.count()

    def ticket(self) -> int:
        """The next ticket: number a message when it arrives (thread-safe)."""
        return next(self._tickets)

    def acquire(self, ticket: int) -> bool:
        """Take the turn (True), or after `max_wait` seconds go without it (False)."""
        with self._lock:
            if not self._taken:
                self._taken = True
                return True
            gate = threading.Lock()
            gate.acquire()
            entry = (ticket, gate)
            heapq.heappush(self._waiting, entry)
        if gate.acquire(timeout=self._max_wait):
            return True
        with self._lock:
            if gate.acquire(blocking=False):
                return True  # handed over just as the wait ended
            self._waiting.remove(entry)
            heapq.heapify(self._waiting)
        return False

    def release(self) -> None:
        """Give the turn to the lowest waiting ticket, or free it."""
        with self._lock:
            if self._waiting:
                _, gate = heapq.heappop(self._waiting)
                gate.release()  # still taken: it is that message's now
            else:
                self._taken = False

    @property
    def waiting_count(self) -> int:
        """How many messages wait for the turn (for tests and diagnostics)."""
        with self._lock:
            return len(self._waiting)

    @contextmanager
    def held(self, ticket: int) -> Iterator[bool]:
        """The turn for this thread's message; yields whether it was had."""
        had = self.acquire(ticket)
        if had:
            _state.turn, _state.ticket = self, ticket
        try:
            yield had
        finally:
            if _state.turn is self:
                _state.turn = None
                self.release()


class _ThreadState(threading.local):
    turn: Turns | None = None
    ticket: int = 0


_state = _ThreadState()


@contextmanager
def waiting() -> Iterator[None]:
    """Around a network wait: the turn goes to another message meanwhile, if held."""
    turn = _state.turn
    if turn is None:
        yield
        return
    ticket = _state.ticket
    _state.turn = None  # a nested waiting() passes through
    turn.release()
    try:
        yield
    finally:
        if turn.acquire(ticket):
            _state.turn = turn
