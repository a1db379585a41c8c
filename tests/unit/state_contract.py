"""The behaviour every state backend must show, written once.

`StoreContract` is a test class without a `store` fixture: a test module subclasses it
(`class TestSqliteStore(StoreContract)`) and provides `store`, a fresh empty store per
test.  tests/unit/test_state.py runs it against SQLite and the memory store,
tests/integration/test_state_redis.py against a real redis-server, so all backends pass
the identical suite.  The module name does not start with `test_`, so pytest collects
the class only through its subclasses.

Also here: `hammer`, which runs the same operations from several forked processes at
once, for the concurrency tests of each backend.

Time is a number passed in; `Clock` just makes the arithmetic readable.  T0 has a
fractional part on purpose, and every value is exact in binary floating point, so the
expected remaining times can be compared with `==`.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.state import (
    GreylistDecision,
    GreylistParams,
    MemoryStore,
    RateExceeded,
    RateWindow,
    StateStore,
    StateUnavailable,
)

PASS = GreylistDecision.PASS
DEFER = GreylistDecision.DEFER

T0 = 1_700_000_000.5
DAY = 86400.0
PARAMS = GreylistParams(delay=300, retry_window=4 * 3600, expiry=30 * DAY)
AUTO = GreylistParams(delay=300, retry_window=4 * 3600, expiry=30 * DAY, auto_allow_after=2)

#: 1_700_000_040 is a multiple of 60: a minute window starts at RATE_T0.
RATE_T0 = 1_700_000_040.0
HOUR_END = 1_700_002_800.0  # (1_700_000_040 // 3600 + 1) * 3600
MINUTE = RateWindow(60, 3)
HOUR = RateWindow(3600, 5)


class Clock:
    """A fake clock: `now` only moves when told."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class StoreContract:
    """Subclasses provide the `store` fixture: a fresh, empty store."""

    # ------------------------------------------------------------------ greylisting

    def test_first_attempt_defers_for_the_delay(self, store: StateStore) -> None:
        outcome = store.greylist("net|a@x|b@y", "net", T0, PARAMS)
        assert outcome.decision is DEFER
        assert not outcome.passed
        assert outcome.remaining == 300.0
        assert outcome.first_seen == T0
        assert not outcome.newly_passed
        assert not outcome.auto_allowed

    def test_early_retry_defers_for_the_rest_of_the_delay(self, store: StateStore) -> None:
        store.greylist("t", "c", T0, PARAMS)
        early = store.greylist("t", "c", T0 + 120.25, PARAMS)
        assert (early.decision, early.remaining, early.first_seen) == (DEFER, 179.75, T0)
        last = store.greylist("t", "c", T0 + 299.5, PARAMS)
        assert (last.decision, last.remaining, last.first_seen) == (DEFER, 0.5, T0)

    def test_retry_after_the_delay_passes(self, store: StateStore) -> None:
        store.greylist("t", "c", T0, PARAMS)
        first = store.greylist("t", "c", T0 + 300, PARAMS)
        assert first.decision is PASS
        assert (first.remaining, first.newly_passed, first.first_seen) == (0.0, True, T0)
        again = store.greylist("t", "c", T0 + 301, PARAMS)
        assert (again.decision, again.newly_passed, again.first_seen) == (PASS, False, T0)

    def test_retry_late_in_the_window_passes(self, store: StateStore) -> None:
        store.greylist("t", "c", T0, PARAMS)
        assert store.greylist("t", "c", T0 + 4 * 3600 - 0.5, PARAMS).newly_passed

    def test_retry_after_the_retry_window_starts_over(self, store: StateStore) -> None:
        clock = Clock()
        store.greylist("t", "c", clock.now, PARAMS)
        restart = clock.advance(4 * 3600)
        over = store.greylist("t", "c", restart, PARAMS)
        assert (over.decision, over.remaining, over.first_seen) == (DEFER, 300.0, restart)
        early = store.greylist("t", "c", clock.advance(299), PARAMS)
        assert (early.decision, early.remaining) == (DEFER, 1.0)
        assert store.greylist("t", "c", clock.advance(1), PARAMS).newly_passed

    def test_passed_triplet_stays_passed_until_expiry_after_its_last_pass(
        self, store: StateStore
    ) -> None:
        clock = Clock()
        store.greylist("t", "c", clock.now, PARAMS)
        assert store.greylist("t", "c", clock.advance(300), PARAMS).newly_passed
        # Each pass keeps it another 30 days: 29 days later, and again, it still passes.
        for _ in range(3):
            outcome = store.greylist("t", "c", clock.advance(29 * DAY), PARAMS)
            assert (outcome.decision, outcome.newly_passed, outcome.first_seen) == (
                PASS, False, T0
            )
        # 30 days after the last pass it is forgotten: greylisted again, from now.
        expired = store.greylist("t", "c", clock.advance(30 * DAY), PARAMS)
        assert (expired.decision, expired.remaining, expired.first_seen) == (
            DEFER, 300.0, clock.now
        )

    def test_triplets_are_independent(self, store: StateStore) -> None:
        store.greylist("t1", "c", T0, PARAMS)
        other = store.greylist("t2", "c", T0 + 200, PARAMS)
        assert (other.decision, other.remaining) == (DEFER, 300.0)
        assert store.greylist("t1", "c", T0 + 300, PARAMS).passed
        assert store.greylist("t2", "c", T0 + 300, PARAMS).decision is DEFER

    def test_client_is_auto_allowed_after_n_passed_triplets(self, store: StateStore) -> None:
        clock = Clock()
        for triplet in ("t1", "t2"):
            store.greylist(triplet, "c", clock.now, AUTO)
        clock.advance(300)
        assert store.greylist("t1", "c", clock.now, AUTO).newly_passed
        # Passing the same triplet again does not count: one passed triplet so far.
        assert not store.greylist("t1", "c", clock.advance(1), AUTO).newly_passed
        assert store.greylist("t3", "c", clock.now, AUTO).decision is DEFER
        assert store.greylist("t2", "c", clock.advance(1), AUTO).newly_passed
        # Two passed triplets: the client passes without greylisting, for any triplet.
        allowed = store.greylist("t4", "c", clock.advance(1), AUTO)
        assert allowed.decision is PASS
        assert allowed.auto_allowed
        assert (allowed.remaining, allowed.newly_passed, allowed.first_seen) == (
            0.0, False, None
        )
        # Other clients are still greylisted.
        assert store.greylist("t4", "d", clock.now, AUTO).decision is DEFER

    def test_auto_allow_expires_after_its_last_use(self, store: StateStore) -> None:
        clock = Clock()
        self._passes(store, "c", ["t1", "t2"], clock)
        # Each auto-allowed request keeps the client allowed for another 30 days.
        for _ in range(3):
            assert store.greylist("new", "c", clock.advance(29 * DAY), AUTO).auto_allowed
        expired = store.greylist("new", "c", clock.advance(30 * DAY), AUTO)
        assert (expired.decision, expired.auto_allowed) == (DEFER, False)

    def test_pass_count_expires(self, store: StateStore) -> None:
        clock = Clock()
        self._passes(store, "c", ["t1"], clock)
        # 30 days after the first pass the count is gone: t2 is again the first.
        clock.advance(30 * DAY)
        self._passes(store, "c", ["t2"], clock)
        assert store.greylist("t3", "c", clock.advance(1), AUTO).decision is DEFER

    def test_auto_allow_zero_never_allows(self, store: StateStore) -> None:
        clock = Clock()
        for i in range(5):
            store.greylist(f"t{i}", "c", clock.now, PARAMS)
            assert store.greylist(f"t{i}", "c", clock.now + 300, PARAMS).newly_passed
        assert store.greylist("t9", "c", clock.advance(301), PARAMS).decision is DEFER

    @staticmethod
    def _passes(store: StateStore, client: str, triplets: Sequence[str], clock: Clock) -> None:
        for triplet in triplets:
            store.greylist(triplet, client, clock.now, AUTO)
        clock.advance(300)
        for triplet in triplets:
            assert store.greylist(triplet, client, clock.now, AUTO).newly_passed

    # ------------------------------------------------------------------ rate limits

    def test_rate_under_and_at_the_limit_is_allowed_then_refused(self, store: StateStore) -> None:
        windows = [MINUTE, HOUR]
        for expected in (1, 2, 3):
            outcome = store.rate_limit("user:alice", windows, 1, RATE_T0 + expected)
            assert outcome.allowed
            assert outcome.counts == (expected, expected)
            assert outcome.exceeded is None
        refused = store.rate_limit("user:alice", windows, 1, RATE_T0 + 10.5)
        assert not refused.allowed
        assert refused.counts == (3, 3)
        assert refused.exceeded == RateExceeded(MINUTE, 3, 49.5)

    def test_refused_requests_count_nothing(self, store: StateStore) -> None:
        windows = [MINUTE, HOUR]
        for _ in range(3):
            store.rate_limit("k", windows, 1, RATE_T0)
        for _ in range(5):
            assert not store.rate_limit("k", windows, 1, RATE_T0 + 1).allowed
        # Next minute: the hour window still holds 3, not 8.
        assert store.rate_limit("k", windows, 1, RATE_T0 + 60).counts == (1, 4)

    def test_each_window_refuses_on_its_own(self, store: StateStore) -> None:
        windows = [MINUTE, HOUR]
        for _ in range(3):
            assert store.rate_limit("k", windows, 1, RATE_T0).allowed
        assert store.rate_limit("k", windows, 1, RATE_T0 + 60).counts == (1, 4)
        assert store.rate_limit("k", windows, 1, RATE_T0 + 61).counts == (2, 5)
        refused = store.rate_limit("k", windows, 1, RATE_T0 + 62)
        assert refused.counts == (2, 5)
        assert refused.exceeded == RateExceeded(HOUR, 5, HOUR_END - (RATE_T0 + 62))

    def test_the_first_exceeded_window_in_the_given_order_is_named(
        self, store: StateStore
    ) -> None:
        tight_hour = RateWindow(3600, 3)
        for _ in range(3):
            store.rate_limit("k", [MINUTE, tight_hour], 1, RATE_T0)
        assert store.rate_limit("k", [MINUTE, tight_hour], 1, RATE_T0).exceeded == (
            RateExceeded(MINUTE, 3, 60.0)
        )
        assert store.rate_limit("k", [tight_hour, MINUTE], 1, RATE_T0).exceeded == (
            RateExceeded(tight_hour, 3, HOUR_END - RATE_T0)
        )

    def test_window_rolls_over_at_its_aligned_end(self, store: StateStore) -> None:
        for _ in range(3):
            store.rate_limit("k", [MINUTE], 1, RATE_T0)
        last = store.rate_limit("k", [MINUTE], 1, RATE_T0 + 59.75)
        assert last.exceeded == RateExceeded(MINUTE, 3, 0.25)
        rolled = store.rate_limit("k", [MINUTE], 1, RATE_T0 + 60)
        assert (rolled.allowed, rolled.counts) == (True, (1,))
        # A window is aligned to the clock, not to the first request: one that started
        # 30 s into a minute ends at the minute's end.
        assert store.rate_limit("late", [MINUTE], 3, RATE_T0 + 30).allowed
        assert store.rate_limit("late", [MINUTE], 1, RATE_T0 + 31).exceeded == (
            RateExceeded(MINUTE, 3, 29.0)
        )
        assert store.rate_limit("late", [MINUTE], 1, RATE_T0 + 60).counts == (1,)

    def test_amount_counts_several_units(self, store: StateStore) -> None:
        recipients = RateWindow(3600, 5)
        assert store.rate_limit("k", [recipients], 2, RATE_T0).counts == (2,)
        assert store.rate_limit("k", [recipients], 2, RATE_T0).counts == (4,)
        refused = store.rate_limit("k", [recipients], 2, RATE_T0)
        assert (refused.allowed, refused.counts) == (False, (4,))
        assert refused.exceeded == RateExceeded(recipients, 4, HOUR_END - RATE_T0)
        assert store.rate_limit("k", [recipients], 1, RATE_T0).counts == (5,)

    def test_amount_above_the_limit_is_always_refused(self, store: StateStore) -> None:
        outcome = store.rate_limit("k", [MINUTE], 4, RATE_T0)
        assert (outcome.allowed, outcome.counts) == (False, (0,))
        assert outcome.exceeded == RateExceeded(MINUTE, 0, 60.0)

    def test_limit_zero_refuses_everything(self, store: StateStore) -> None:
        blocked = RateWindow(86400, 0)
        assert not store.rate_limit("k", [blocked], 1, RATE_T0).allowed

    def test_rate_keys_are_independent(self, store: StateStore) -> None:
        for _ in range(3):
            store.rate_limit("user:alice", [MINUTE], 1, RATE_T0)
        assert not store.rate_limit("user:alice", [MINUTE], 1, RATE_T0).allowed
        assert store.rate_limit("user:bob", [MINUTE], 1, RATE_T0).counts == (1,)
        assert store.rate_limit("ip:192.0.2.1", [MINUTE], 1, RATE_T0).counts == (1,)
        # Keys are opaque: separators inside them do not collide.
        assert store.rate_limit("a:60:1:b", [MINUTE], 1, RATE_T0).counts == (1,)

    def test_greylist_and_rate_keys_do_not_collide(self, store: StateStore) -> None:
        store.rate_limit("same", [MINUTE], 3, RATE_T0)
        assert store.greylist("same", "same", RATE_T0, PARAMS).remaining == 300.0

    # ------------------------------------------------------------------ the rest

    def test_invalid_arguments_are_value_errors(self, store: StateStore) -> None:
        with pytest.raises(ValueError, match="at least one window"):
            store.rate_limit("k", [], 1, RATE_T0)
        with pytest.raises(ValueError, match="distinct"):
            store.rate_limit("k", [MINUTE, RateWindow(60, 9)], 1, RATE_T0)
        with pytest.raises(ValueError, match="amount"):
            store.rate_limit("k", [MINUTE], 0, RATE_T0)
        with pytest.raises(ValueError, match="rate key"):
            store.rate_limit("", [MINUTE], 1, RATE_T0)
        with pytest.raises(ValueError, match="triplet"):
            store.greylist("", "c", T0, PARAMS)

    def test_purge_keeps_what_is_still_alive(self, store: StateStore) -> None:
        store.rate_limit("k", [MINUTE, HOUR], 2, RATE_T0)
        store.purge(RATE_T0 + 30)
        assert store.rate_limit("k", [MINUTE, HOUR], 1, RATE_T0 + 30).counts == (3, 3)
        clock = Clock(RATE_T0 + 40)
        store.greylist("pending", "c", clock.now, AUTO)
        store.greylist("passed", "c", clock.now - 300, AUTO)
        store.greylist("passed", "c", clock.now, AUTO)
        store.purge(clock.advance(100))
        clock.advance(200)
        assert store.greylist("pending", "c", clock.now, AUTO).newly_passed
        assert store.greylist("passed", "c", clock.now, AUTO).passed
        assert store.greylist("third", "c", clock.now, AUTO).auto_allowed

    def test_ping(self, store: StateStore) -> None:
        store.ping()

    def test_closed_store_raises_state_unavailable(self, store: StateStore) -> None:
        with store as same:
            assert same is store
            store.greylist("t", "c", T0, PARAMS)
        with pytest.raises(StateUnavailable, match="closed"):
            store.greylist("t", "c", T0, PARAMS)
        with pytest.raises(StateUnavailable, match="closed"):
            store.rate_limit("k", [MINUTE], 1, RATE_T0)
        with pytest.raises(StateUnavailable):
            store.ping()
        store.close()  # closing twice is harmless

    def test_matches_the_reference_rules(self, store: StateStore) -> None:
        """Any sequence of operations gives the outcomes of the pure rules (MemoryStore)."""
        params = GreylistParams(delay=300, retry_window=3600, expiry=7200, auto_allow_after=2)
        windows = [RateWindow(60, 3), RateWindow(3600, 8)]
        step = st.tuples(
            st.sampled_from(["grey", "rate"]),
            st.integers(0, 2),  # which triplet or key
            st.integers(0, 1),  # which client, or amount - 1
            st.sampled_from([0.0, 0.25, 1.0, 59.75, 150.0, 299.5, 300.0, 3600.0, 7200.0]),
        )

        # Defined per call: each backend's run is its own Hypothesis test.
        @settings(max_examples=40, deadline=None, database=None)
        @given(steps=st.lists(step, max_size=30))
        def check(steps: list[tuple[str, int, int, float]]) -> None:
            namespace = f"ex{next(_examples)}|"  # the store is shared by the examples
            reference = MemoryStore()
            clock = Clock()
            for kind, which, other, delta in steps:
                now = clock.advance(delta)
                if kind == "grey":
                    triplet, client = f"{namespace}t{which}", f"{namespace}c{other}"
                    assert store.greylist(triplet, client, now, params) == (
                        reference.greylist(triplet, client, now, params)
                    )
                else:
                    key, amount = f"{namespace}k{which}", other + 1
                    assert store.rate_limit(key, windows, amount, now) == (
                        reference.rate_limit(key, windows, amount, now)
                    )

        check()


_examples = itertools.count()


# --------------------------------------------------------------------------- processes


StoreFactory = Callable[[], StateStore]


@dataclass(frozen=True)
class RateRun:
    allowed_counts: list[int]
    refused: int


def _rate_worker(
    factory: StoreFactory, key: str, window: RateWindow, times: int, start: Any, results: Any
) -> None:
    try:
        with factory() as store:
            start.wait(30)
            counts, refused = [], 0
            for _ in range(times):
                outcome = store.rate_limit(key, [window], 1, RATE_T0)
                if outcome.allowed:
                    counts.append(outcome.counts[0])
                else:
                    refused += 1
        results.put(RateRun(counts, refused))
    except BaseException as exc:  # report anything to the parent, which fails the test
        results.put(repr(exc))
        raise


def hammer_rate(
    factory: StoreFactory, key: str, window: RateWindow, processes: int, times: int
) -> list[RateRun]:
    """`processes` forked processes each call `rate_limit(key, [window], 1)` `times` times,
    all at once; returns what each saw."""
    return _run_forked(_rate_worker, (factory, key, window, times), processes)


def _greylist_worker(
    factory: StoreFactory, triplets: list[str], client: str, params: GreylistParams,
    start: Any, results: Any,
) -> None:
    try:
        with factory() as store:
            start.wait(30)
            deferred = [store.greylist(t, client, T0, params).decision for t in triplets]
            passed = [store.greylist(t, client, T0 + params.delay, params) for t in triplets]
        results.put((deferred, passed))
    except BaseException as exc:
        results.put(repr(exc))
        raise


def hammer_greylist(
    factory: StoreFactory, client: str, params: GreylistParams, processes: int, per_process: int
) -> list[Any]:
    """Each process greylists, then passes, its own `per_process` triplets of one client,
    all at once; returns (decisions of the first attempts, outcomes of the retries) each."""
    return _run_forked_each(
        _greylist_worker,
        [
            (factory, [f"p{p}t{i}" for i in range(per_process)], client, params)
            for p in range(processes)
        ],
    )


def _call_worker(
    factory: StoreFactory, method: str, args: tuple[Any, ...], start: Any, results: Any
) -> None:
    try:
        with factory() as store:
            start.wait(30)
            results.put(getattr(store, method)(*args))
    except BaseException as exc:
        results.put(repr(exc))
        raise


def call_in_child(factory: StoreFactory, method: str, *args: Any) -> Any:
    """`factory().<method>(*args)` in a forked process (its own store and connection)."""
    [outcome] = _run_forked_each(_call_worker, [(factory, method, args)])
    return outcome


def _run_forked(target: Callable[..., None], args: tuple[Any, ...], processes: int) -> list[Any]:
    return _run_forked_each(target, [args] * processes)


def _run_forked_each(target: Callable[..., None], arg_lists: list[tuple[Any, ...]]) -> list[Any]:
    context = multiprocessing.get_context("fork")
    start = context.Barrier(len(arg_lists))
    results = context.Queue()
    children = [
        context.Process(target=target, args=(*args, start, results)) for args in arg_lists
    ]
    for child in children:
        child.start()
    try:
        collected = []
        for _ in children:
            try:
                collected.append(results.get(timeout=60))
            except queue.Empty:
                pytest.fail("a worker process did not report within 60 s")
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
    failures = [result for result in collected if isinstance(result, str)]
    assert not failures, failures
    return collected
