"""A closed-loop load engine: N sessions, each doing requests back to back.

Shared by the milter and the policy load clients.  Closed loop (a session waits for
the reply before its next request) is how an MTA drives a milter or a policy server:
a Postfix smtpd process has one outstanding milter or policy request at a time, so
"N concurrent sessions" means N busy smtpd processes.

Why an event loop and not threads: the load client shares the machine's two cores
with the service it measures.  Eight Python threads doing blocking I/O spent ~340 µs
of CPU per milter session on GIL hand-offs and wake-ups, enough to make the client
the bottleneck against an empty pymilter milter.  One thread multiplexing non-blocking
sockets with `selectors` costs a fraction of that, and `processes` > 1 spreads the
sessions over several such loops when one core is not enough.

A session is a *script*: a generator that yields ``(bytes to send, what to wait for)``
and receives the decoded reply, one protocol exchange at a time; it returns the bytes
to send before the connection is closed.  A *framer* turns received bytes into
replies.  Protocol code (bench.milter_load, bench.policy_load) provides both; this
module owns sockets, timing windows, timeouts, errors and processes.
"""

from __future__ import annotations

import multiprocessing
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

from bench.sockets import SocketSpec
from bench.sockets import connect as open_socket
from bench.stats import LatencySummary

clock = time.monotonic  # CLOCK_MONOTONIC: comparable across the worker processes

#: A session script: yields (data, want) with want >= 1, receives the framed reply,
#: returns the bytes to send before closing (b"" for none).
Script = Generator[tuple[bytes, int], Any, bytes]


class Framer(Protocol):
    """Splits a byte stream into replies of the kind the script asked for."""

    def feed(self, data: bytes) -> None: ...

    def take(self, want: int) -> object | None:
        """A complete reply of kind `want`, or None until more bytes arrive."""


@dataclass
class Recorder:
    """Everything one engine observed; picklable, so worker processes can send it home."""

    done: list[tuple[float, float, str]] = field(default_factory=list)  # end, latency, label
    connects: list[tuple[float, float]] = field(default_factory=list)  # end, latency
    errors: list[tuple[float, str]] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)  # protocol-specific counts
    sessions: int = 0
    cpu: float = 0.0  # CPU seconds of the process that ran the engine

    def request(self, start: float, label: str) -> None:
        end = clock()
        self.done.append((end, end - start, label))

    def connected(self, start: float) -> None:
        end = clock()
        self.connects.append((end, end - start))
        self.sessions += 1

    def merge(self, other: Recorder) -> None:
        self.done += other.done
        self.connects += other.connects
        self.errors += other.errors
        self.stats += other.stats
        self.sessions += other.sessions
        self.cpu += other.cpu


class Controls:
    """What a script asks the engine: may I start another request, and its number."""

    def __init__(self, stop_at: float | None, count: int | None, seq_offset: int, stride: int):
        self._stop_at = stop_at
        self._count = count
        self._issued = 0
        self._seq_offset = seq_offset
        self._stride = stride

    def more(self) -> bool:
        if self._count is not None:
            return self._issued < self._count
        return self._stop_at is None or clock() < self._stop_at

    def next_seq(self) -> int:
        """Claim the next request; numbers are unique across worker processes."""
        n = self._issued
        self._issued += 1
        return self._seq_offset + n * self._stride


ScriptFactory = Callable[[int, Recorder, Controls], tuple[Framer, Script]]


@dataclass(frozen=True)
class LoadConfig:
    concurrency: int = 8
    duration: float = 10.0  # measured seconds (ignored when `count` is set)
    count: int | None = None  # total requests instead of a duration
    warmup: float = 1.0  # seconds run before measuring, not counted
    processes: int = 1  # event loops (processes) sharing the sessions
    timeout: float = 30.0  # seconds without progress before a session is abandoned


@dataclass
class LoadResult:
    """What one load run measured.  Latencies in seconds."""

    requests: int
    elapsed: float
    latency: LatencySummary
    connect_latency: LatencySummary
    outcomes: Counter[str]
    errors: Counter[str]
    client_cpu: float  # CPU seconds the client used per wall second (all its processes)
    sessions: int
    stats: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "elapsed_s": round(self.elapsed, 3),
            "rate_per_s": round(self.rate, 1),
            "latency": {k: round(v, 3) for k, v in self.latency.as_ms().items()},
            "connect_latency": {k: round(v, 3) for k, v in self.connect_latency.as_ms().items()},
            "outcomes": dict(self.outcomes.most_common()),
            "errors": dict(self.errors.most_common()),
            "client_cpu_cores": round(self.client_cpu, 3),
            "sessions": self.sessions,
            **self.extra,
        }


def error_label(exc: BaseException) -> str:
    """Bounded error names: the type plus the start of the message."""
    text = str(exc).split("\n")[0][:60]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Conn:
    """One live session inside the engine."""

    __slots__ = (
        "closing",
        "dead",
        "deadline",
        "framer",
        "outbuf",
        "script",
        "slot",
        "sock",
        "want",
    )

    def __init__(self, slot: int, sock: socket.socket, framer: Framer, script: Script) -> None:
        self.slot = slot
        self.sock = sock
        self.framer = framer
        self.script = script
        self.want = 0
        self.outbuf = b""
        self.closing = False
        self.deadline = 0.0
        self.dead = False


def run_engine(
    spec: SocketSpec,
    factory: ScriptFactory,
    *,
    slots: range,
    controls: Controls,
    hard_stop: float | None,
    timeout: float,
) -> Recorder:
    """Drive one session per slot until `controls` says stop and every session ended."""
    rec = Recorder()
    sel = selectors.DefaultSelector()
    conns: dict[int, _Conn] = {}  # fd -> connection
    restarts: list[tuple[float, int]] = []  # (when, slot): back-off after a failure
    cpu0 = time.process_time()

    def fail(conn: _Conn | None, slot: int, exc: BaseException) -> None:
        rec.errors.append((clock(), error_label(exc)))
        if conn is not None:
            drop(conn)
        if controls.more():
            restarts.append((clock() + 0.01, slot))  # do not spin on a refusing socket

    def drop(conn: _Conn) -> None:
        if conn.dead:
            return
        conn.dead = True
        del conns[conn.sock.fileno()]
        sel.unregister(conn.sock)
        conn.sock.close()
        conn.script.close()

    def start(slot: int) -> None:
        framer, script = factory(slot, rec, controls)
        try:
            data, want = next(script)
        except StopIteration:
            return  # the script had nothing to do (no more requests allowed)
        try:
            sock = open_socket(spec, timeout=timeout)  # blocking connect: backpressure
            sock.setblocking(False)
        except OSError as exc:
            script.close()
            fail(None, slot, exc)
            return
        conn = _Conn(slot, sock, framer, script)
        conns[sock.fileno()] = conn
        sel.register(sock, selectors.EVENT_READ, conn)
        try:
            send(conn, data, want)
        except Exception as exc:  # noqa: BLE001 - e.g. reset right after accept
            fail(conn, slot, exc)

    def send(conn: _Conn, data: bytes, want: int) -> None:
        conn.want = want
        conn.deadline = clock() + timeout
        if data:
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                conn.outbuf = data[sent:]
                sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
                return
        if conn.closing:
            finish(conn)

    def finish(conn: _Conn) -> None:
        slot = conn.slot
        drop(conn)
        if controls.more():
            start(slot)

    def advance(conn: _Conn, reply: object) -> None:
        try:
            data, want = conn.script.send(reply)
        except StopIteration as stop:
            conn.closing = True
            send(conn, stop.value or b"", 0)
            return
        send(conn, data, want)

    for slot in slots:
        start(slot)

    while conns or restarts:
        now = clock()
        if hard_stop is not None and now > hard_stop:
            for conn in list(conns.values()):
                rec.errors.append((now, "TimeoutError: session still busy at the end of the run"))
                drop(conn)
            break
        if restarts:
            due = [r for r in restarts if r[0] <= now]
            restarts[:] = [r for r in restarts if r[0] > now]
            for _, slot in due:
                if controls.more():
                    start(slot)
        events = sel.select(timeout=0.05) if conns else []
        if not events and restarts and not conns:
            time.sleep(max(0.0, min(r[0] for r in restarts) - clock()))  # back-off wait
        for key, mask in events:
            conn = key.data
            if conn.dead:
                continue  # dropped earlier in this batch
            try:
                if mask & selectors.EVENT_WRITE:
                    sent = conn.sock.send(conn.outbuf)
                    conn.outbuf = conn.outbuf[sent:]
                    if not conn.outbuf:
                        if conn.closing:
                            finish(conn)
                        else:
                            sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                data = conn.sock.recv(262144)
                if not data:
                    raise ConnectionError("peer closed the connection")
                conn.framer.feed(data)
                while not conn.closing and not conn.dead:
                    reply = conn.framer.take(conn.want)
                    if reply is None:
                        break
                    advance(conn, reply)
            except BlockingIOError:
                continue
            except Exception as exc:  # noqa: BLE001 - every failure is a counted error
                if conn.dead:  # failed while starting its successor: already restarted
                    rec.errors.append((clock(), error_label(exc)))
                else:
                    fail(conn, conn.slot, exc)
        now = clock()
        for conn in list(conns.values()):
            if now > conn.deadline:
                fail(conn, conn.slot, TimeoutError(f"no reply within {timeout:g} s"))
    sel.close()
    rec.cpu = time.process_time() - cpu0
    return rec


def _child(
    pipe: Connection,
    spec: SocketSpec,
    factory: ScriptFactory,
    slots: range,
    controls: Controls,
    start_at: float,
    hard_stop: float | None,
    timeout: float,
) -> None:
    """Worker process: wait for the common start time, run, send the Recorder home."""
    try:
        delay = start_at - clock()
        if delay > 0:
            time.sleep(delay)  # synchronised start of all workers, not a readiness guess
        rec = run_engine(
            spec, factory, slots=slots, controls=controls, hard_stop=hard_stop, timeout=timeout
        )
    except Exception as exc:  # noqa: BLE001 - reported to the parent instead of lost
        rec = Recorder(errors=[(clock(), error_label(exc))])
    pipe.send(rec)
    pipe.close()


def run_load(spec: SocketSpec, factory: ScriptFactory, config: LoadConfig) -> LoadResult:
    """Run `config.concurrency` sessions, over `config.processes` event loops.

    Only requests that complete inside the measurement window count, so neither the
    warm-up nor requests still in flight at the deadline distort the rate.
    """
    procs = max(1, min(config.processes, config.concurrency))
    counted = config.count is not None
    start_at = clock() + (0.3 if procs > 1 else 0.0)  # let forked workers get going
    measure_from = start_at + (0.0 if counted else config.warmup)
    stop_at = None if counted else measure_from + config.duration
    hard_stop = None if stop_at is None else stop_at + config.timeout

    def controls_for(index: int) -> Controls:
        count = None
        if config.count is not None:
            count = config.count // procs + (1 if index < config.count % procs else 0)
        return Controls(stop_at, count, index, procs)

    def slots_for(index: int) -> range:
        return range(index, config.concurrency, procs)

    wall0 = clock()
    total = Recorder()
    if procs == 1:
        total = run_engine(
            spec,
            factory,
            slots=slots_for(0),
            controls=controls_for(0),
            hard_stop=hard_stop,
            timeout=config.timeout,
        )
    else:
        ctx = multiprocessing.get_context("fork")
        children = []
        for index in range(procs):
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child,
                args=(
                    child_end,
                    spec,
                    factory,
                    slots_for(index),
                    controls_for(index),
                    start_at,
                    hard_stop,
                    config.timeout,
                ),
                daemon=True,
            )
            proc.start()
            child_end.close()
            children.append((proc, parent_end))
        for proc, pipe in children:
            try:
                total.merge(pipe.recv())
            except EOFError:
                total.errors.append((clock(), f"load worker {proc.pid} died"))
            proc.join()
    wall1 = clock()

    if counted:
        window_end = max((d[0] for d in total.done), default=wall1)
    else:
        assert stop_at is not None
        window_end = stop_at
    elapsed = window_end - measure_from

    def inside(t: float) -> bool:
        return measure_from <= t <= window_end

    done = [d for d in total.done if inside(d[0])]
    return LoadResult(
        requests=len(done),
        elapsed=elapsed,
        latency=LatencySummary.of(d[1] for d in done),
        connect_latency=LatencySummary.of(c[1] for c in total.connects if inside(c[0])),
        outcomes=Counter(d[2] for d in done),
        # Errors count over the whole run, warm-up included: worth seeing either way.
        errors=Counter(e[1] for e in total.errors),
        client_cpu=total.cpu / (wall1 - wall0) if wall1 > wall0 else 0.0,
        sessions=total.sessions,
        stats=total.stats,
    )
