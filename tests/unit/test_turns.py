"""mailward.turns: one message computes at a time, oldest first, none waits for ever."""

from __future__ import annotations

import functools
import threading
import time

from mailward import turns
from mailward.turns import Turns
from milters.connections import MessageThreads


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def _lined_up(board: Turns, count: int) -> bool:
    return board.waiting_count == count


def test_waiting_messages_get_the_turn_by_ticket_not_by_arrival_at_the_lock():
    board = Turns(max_wait=10.0)
    order: list[int] = []
    assert board.acquire(board.ticket())  # ticket 0 holds the turn
    tickets = [board.ticket() for _ in range(5)]  # 1..5

    def message(ticket: int) -> None:
        with board.held(ticket) as had:
            assert had
            order.append(ticket)

    # They line up in reverse ticket order; the turn still goes lowest ticket first.
    threads = []
    for ticket in reversed(tickets):
        thread = threading.Thread(target=message, args=(ticket,))
        thread.start()
        threads.append(thread)
        _wait_until(functools.partial(_lined_up, board, len(threads)))
    board.release()
    for thread in threads:
        thread.join(5)
    assert order == tickets


def test_a_network_wait_hands_the_turn_over_and_takes_it_back_before_newer_messages():
    board = Turns(max_wait=10.0)
    events: list[str] = []
    in_network = threading.Event()
    answer = threading.Event()
    newer_waiting = threading.Event()

    def older() -> None:
        with board.held(0):
            events.append("older computes")
            with turns.waiting():
                in_network.set()
                answer.wait(5)
            events.append("older resumes")

    def middle() -> None:
        with board.held(1):
            events.append("middle computes")
            newer_waiting.wait(5)  # the newest is in line behind the older's return
            _wait_until(lambda: board.waiting_count == 2)
            events.append("middle done")

    def newest() -> None:
        with board.held(2):
            events.append("newest computes")

    first = threading.Thread(target=older)
    first.start()
    in_network.wait(5)
    second = threading.Thread(target=middle)
    second.start()
    _wait_until(lambda: "middle computes" in events)
    third = threading.Thread(target=newest)
    third.start()
    _wait_until(lambda: board.waiting_count == 1)
    answer.set()  # the older's DNS answer arrives while the middle computes
    newer_waiting.set()
    for thread in (first, second, third):
        thread.join(5)
    assert events == ["older computes", "middle computes", "middle done", "older resumes",
                      "newest computes"]


def test_a_message_waits_at_most_max_wait_then_runs_without_the_turn():
    board = Turns(max_wait=0.05)
    assert board.acquire(board.ticket())  # held and never given back (a stuck message)
    started = time.monotonic()
    with board.held(board.ticket()) as had:
        waited = time.monotonic() - started
        assert not had
        with turns.waiting():  # no turn: passes through
            pass
    assert 0.04 <= waited < 2.0
    assert board.waiting_count == 0  # the one that gave up left the line
    board.release()
    assert board.acquire(board.ticket())  # and the turn is free for the next


def test_waiting_outside_any_turn_is_a_pass_through():
    with turns.waiting():
        pass
    board = Turns()
    with board.held(board.ticket()) as had:
        assert had
        with turns.waiting(), turns.waiting():  # nested: the inner one passes through
            assert board.acquire(board.ticket())  # the turn was free meanwhile
            board.release()
    assert board.acquire(board.ticket())  # released at the end of `held`


def test_message_threads_run_their_tasks_one_at_a_time_in_submission_order():
    threads = MessageThreads(idle_timeout=5.0)
    order: list[int] = []
    running = [0]
    overlap = [False]
    gate = threading.Event()
    first_has_turn = threading.Event()
    done = threading.Semaphore(0)

    def task(number: int) -> None:
        if number == 0:
            first_has_turn.set()
            gate.wait(5)  # the first holds the turn until all others are submitted
        running[0] += 1
        overlap[0] = overlap[0] or running[0] > 1
        order.append(number)
        time.sleep(0.001)  # a switch of the GIL here would let another in, unordered
        running[0] -= 1
        done.release()

    for number in range(8):
        assert threads.submit(functools.partial(task, number))
        first_has_turn.wait(5)
    _wait_until(lambda: threads.turns.waiting_count == 7)
    gate.set()
    for _ in range(8):
        assert done.acquire(timeout=5)
    assert order == list(range(8))
    assert not overlap[0]
