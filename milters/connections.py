"""The MTA connections of one worker: one event loop for the I/O, threads for the checks.

Why this shape: with one thread per connection, every packet's `recv` handed the GIL
to another session's thread, and under load those hand-overs cost about a fifth of a
message's CPU.  Here one loop thread owns every socket (epoll), decodes what arrives and
runs the cheap callbacks (connect to the last body chunk) inline, so a burst of packets
from many connections is one wake-up and no hand-over.  An end of message, whose checks
may wait on DNS or the state store for seconds, goes to a thread of `MessageThreads`;
while it runs, its connection is off the loop, and the thread writes the reply itself.

A connection's failures stay its own: a malformed packet, an internal error, a peer
that sends nothing for `milter.mta_timeout` or stops reading our replies ends that
connection with a log line, and the loop goes on with the others.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable

from mailward import metrics
from mailward.turns import Turns
from milters.engine import MilterConnection, SessionFactory
from milters.protocol import ProtocolError

log = logging.getLogger("mailward.milter")

# Below glibc's mmap threshold (128 KiB): a larger recv buffer is mmap'ed and unmapped on
# every call.  Postfix writes at most one body chunk (64 KiB) per packet anyway.
_RECV_SIZE = 64 * 1024
# Replies the MTA has not read yet, beyond which we stop reading its commands: a peer
# that writes without reading cannot make us buffer without end.
_MAX_UNSENT = 1 << 20
_ACCEPTS_PER_WAKE = 64
_TICK = 0.5  # how often idle connections are looked at


class SessionCounter:
    """The open sessions of a worker, so that a stopping worker can wait for them."""

    def __init__(self) -> None:
        self._open = 0
        self._idle = threading.Condition()

    def opened(self) -> None:
        with self._idle:
            self._open += 1

    def closed(self) -> None:
        with self._idle:
            self._open -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> int:
        """Wait until no session is open, at most `timeout` seconds; return those left."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._open > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(remaining)
            return self._open


class _Idle:
    """One idle message thread's inbox (the next task it is to run)."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()


class MessageThreads:
    """Threads that run ends of message, kept for the next one instead of ended.

    Starting a Python thread per message would cost about a tenth of its CPU (the start
    handshake needs the GIL twice).  The most recently idle thread is picked (a stack,
    not a queue), so under steady load the same few threads do the work, and those a
    burst of slow DNS added stay idle and end after `idle_timeout` seconds.

    The tasks compute one at a time, in the order they were submitted, each giving its
    turn away while it waits on the network (mailward/turns.py: without that, the GIL
    served them in no order and a message's latency was that of all in flight).
    """

    def __init__(self, idle_timeout: float = 60.0) -> None:
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []
        self.turns = Turns()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def submit(self, task: Callable[[], None]) -> bool:
        """Run `task` on an idle thread, or a new one; False if no thread could start."""
        task = self._in_turn(task, self.turns.ticket())
        with self._lock:
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            idle.inbox.put(task)
            return True
        thread = threading.Thread(target=self._run, args=(task,), name="milter-message",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError:
            return False
        return True

    def _in_turn(self, task: Callable[[], None], ticket: int) -> Callable[[], None]:
        def run() -> None:
            with self.turns.held(ticket):
                task()
        return run

    def _run(self, task: Callable[[], None] | None) -> None:
        me = _Idle()
        while task is not None:
            task()  # never raises: the loop's tasks catch what they can handle
            task = self._next(me)

    def _next(self, me: _Idle) -> Callable[[], None] | None:
        with self._lock:
            self._idle.append(me)
        try:
            return me.inbox.get(timeout=self._idle_timeout)
        except queue.Empty:
            with self._lock:
                if me in self._idle:
                    self._idle.remove(me)
                    return None
            # Picked by `submit` just as the wait ended: its task is on the way.
            return me.inbox.get()


class _Link:
    """One MTA connection as the loop sees it."""

    __slots__ = ("busy", "closed", "deadline", "protocol", "sock", "unsent")

    def __init__(self, sock: socket.socket, protocol: MilterConnection,
                 deadline: float) -> None:
        self.sock = sock
        self.protocol = protocol
        self.unsent = b""
        self.deadline = deadline
        self.busy = False  # an end of message is running on a message thread
        self.closed = False


class ConnectionLoop:
    """Accepts on the worker's listener and serves every connection it accepted."""

    def __init__(self, listener: socket.socket, new_session: SessionFactory,
                 timeout: float, sessions: SessionCounter, *,
                 max_unsent: int = _MAX_UNSENT) -> None:
        self._listener: socket.socket | None = listener
        self._new_session = new_session
        self._timeout = timeout
        self._sessions = sessions
        self._threads = MessageThreads()
        self._max_unsent = max_unsent
        self._selector = selectors.DefaultSelector()
        self._links: set[_Link] = set()
        # Links handed back by message threads (or adopted), with the error that ended
        # their end of message, if one did.
        self._returned: collections.deque[tuple[_Link, Exception | None]] = \
            collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, listener)
        self._stop_accepting = threading.Event()
        self._accepting_stopped = threading.Event()

    def adopt(self, sock: socket.socket) -> None:
        """Serve an already connected socket (tests hand one end of a socketpair)."""
        self._returned.append((self._new_link(sock), None))
        self._wake()

    def stop_accepting(self, wait: float = 5.0) -> None:
        """Accept no more connections; the open ones go on.  Returns once the loop let
        go of the listener (so that the caller may close it)."""
        self._stop_accepting.set()
        self._wake()
        self._accepting_stopped.wait(wait)

    def run(self) -> None:
        """Serve until the process ends (the worker exits once its sessions drained)."""
        select = self._selector.select
        next_tick = time.monotonic() + _TICK
        while True:
            for key, mask in select(_TICK):
                data = key.data
                if data is None:
                    self._drain_wake()
                elif isinstance(data, _Link):
                    try:
                        if mask & selectors.EVENT_WRITE:
                            self._write(data)
                        if mask & selectors.EVENT_READ and not data.closed:
                            self._read(data)
                    except Exception as exc:  # a bug here must not stop the other links
                        log.exception("%s: internal error in the milter engine",
                                      data.protocol.log_id)
                        self._failed(data, exc)
                else:
                    self._accept()
            returned = self._returned
            while returned:
                link, error = returned.popleft()
                if error is None:
                    self._resume(link)
                else:
                    link.busy = False  # off the selector already
                    self._failed(link, error)
            if self._stop_accepting.is_set() and self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener = None
                self._accepting_stopped.set()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + _TICK
                self._expire(now)

    # ------------------------------------------------------------------ the loop's side

    def _new_link(self, sock: socket.socket) -> _Link:
        self._sessions.opened()
        sock.setblocking(False)
        link = _Link(sock, MilterConnection(self._new_session),
                     time.monotonic() + self._timeout)
        link.busy = True  # until the loop registers it in `_resume`
        self._links.add(link)
        return link

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("accept on the milter socket failed: %s", exc)
                return
            link = self._new_link(conn)
            self._resume(link)

    def _read(self, link: _Link) -> None:
        try:
            data = link.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(link, f"MTA connection lost: {exc}", logging.INFO)
            return
        if not data:
            self._close(link)
            return
        link.deadline = time.monotonic() + self._timeout
        try:
            message_waits = link.protocol.feed(data)
        except ProtocolError as exc:
            self._failed(link, exc)
            return
        except Exception as exc:
            log.exception("%s: internal error in the milter engine", link.protocol.log_id)
            self._failed(link, exc)
            return
        self._send(link, link.protocol.take_output())
        if link.closed:
            return
        if link.protocol.quit:
            self._close(link)
        elif message_waits:
            self._selector.unregister(link.sock)
            link.busy = True
            if not self._threads.submit(lambda: self._finish_message(link)):
                log.error("%s: cannot start a thread for the end of message;"
                          " session closed", link.protocol.log_id)
                link.busy = False
                self._close(link)

    def _resume(self, link: _Link) -> None:
        """A link back from a message thread (or new): listen to it again."""
        link.busy = False
        if link.closed:
            return
        if link.protocol.quit:
            self._close(link)
            return
        link.deadline = time.monotonic() + self._timeout
        self._selector.register(link.sock, self._interest(link), link)

    def _interest(self, link: _Link) -> int:
        if not link.unsent:
            return selectors.EVENT_READ
        if len(link.unsent) > self._max_unsent:
            return selectors.EVENT_WRITE
        return selectors.EVENT_READ | selectors.EVENT_WRITE

    def _send(self, link: _Link, data: bytes) -> None:
        """Write what we can now; the rest waits for the socket to take it."""
        had_unsent = bool(link.unsent)
        pending = link.unsent + data if had_unsent else data
        if not pending:
            return
        try:
            sent = link.sock.send(pending) if not had_unsent else 0
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._close(link, f"MTA connection lost: {exc}", logging.INFO)
            return
        link.unsent = pending[sent:]
        if not link.busy and (had_unsent or link.unsent):
            self._selector.modify(link.sock, self._interest(link), link)

    def _write(self, link: _Link) -> None:
        try:
            sent = link.sock.send(link.unsent)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(link, f"MTA connection lost: {exc}", logging.INFO)
            return
        link.unsent = link.unsent[sent:]
        link.deadline = time.monotonic() + self._timeout
        self._selector.modify(link.sock, self._interest(link), link)

    def _expire(self, now: float) -> None:
        for link in [each for each in self._links if not each.busy and each.deadline < now]:
            self._close(link, f"the MTA sent or took nothing for {self._timeout:.0f}s"
                        " (milter.mta_timeout); session closed", logging.INFO)

    def _failed(self, link: _Link, exc: Exception) -> None:
        if isinstance(exc, ProtocolError):
            metrics.MILTER_PROTOCOL_ERRORS.labels("session_closed").inc()
            self._close(link, f"milter protocol error from the MTA side, session closed:"
                        f" {exc}", logging.WARNING)
        else:  # the traceback is logged where it was caught
            metrics.ERRORS.labels("milter").inc()
            self._close(link, "session closed after the internal error", logging.ERROR)

    def _close(self, link: _Link, why: str = "", level: int = logging.INFO) -> None:
        if link.closed:
            return
        link.closed = True
        if why:
            log.log(level, "%s: %s", link.protocol.log_id, why)
        if not link.busy:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(link.sock)
        self._links.discard(link)
        try:
            link.protocol.close()
        except Exception:
            log.exception("%s: internal error closing the milter session",
                          link.protocol.log_id)
            metrics.ERRORS.labels("milter").inc()
        finally:
            with contextlib.suppress(OSError):
                link.sock.close()
            self._sessions.closed()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    # ------------------------------------------------------------ a message thread's side

    def _finish_message(self, link: _Link) -> None:
        """Run one end of message (and what followed it) off the loop, reply, hand back."""
        protocol = link.protocol
        try:
            while protocol.finish_message():
                pass
            out = protocol.take_output()
        except ProtocolError as exc:
            self._returned.append((link, exc))
            self._wake()
            return
        except Exception as exc:
            log.exception("%s: internal error in the milter engine", protocol.log_id)
            self._returned.append((link, exc))
            self._wake()
            return
        # The loop does not touch a busy link: write the reply from here, at once.
        try:
            sent = link.sock.send(out) if out else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = len(out)  # the loop's next read sees the error and closes
        link.unsent = out[sent:]
        self._returned.append((link, None))
        self._wake()


def serve_forever(listener: socket.socket, new_session: SessionFactory, timeout: float,
                  sessions: SessionCounter, stopping: Callable[[], bool]) -> None:
    """Serve MTA connections from `listener` until `stopping()`.

    The listener is shared with the other workers; the kernel hands each connection to
    one of them.  Returns once this worker accepts no more, with the sessions in flight
    still served by the loop thread (the caller waits for them through `sessions`).
    """
    loop = ConnectionLoop(listener, new_session, timeout, sessions)
    thread = threading.Thread(target=loop.run, name="milter-loop", daemon=True)
    thread.start()
    while not stopping():
        thread.join(0.5)  # how soon a stop request is noticed
        if not thread.is_alive():
            raise RuntimeError("the milter connection loop ended")
    loop.stop_accepting()
