"""An empty pymilter milter: the ceiling any pymilter-based service can reach.

It receives every event a real filter would look at (connect, HELO, envelope, each
header, body) but does no work and answers nothing it does not have to: every callback
is ``@Milter.noreply``, so the MTA streams the whole message and waits for one reply, at
end of message, where it accepts.  What remains is the cost of libmilter, the pymilter
bindings and the Python callbacks themselves, which is what Mailward's milter is
compared against (DESIGN.md: ≈4,500 msg/s at 8 sessions on the 2-core machines).

``--workers N`` forks N processes sharing one listening socket (open it, then fork
workers that each run the libmilter loop), the prefork model Mailward's ``[milter]
workers`` uses.

Usage: ``python -m bench.peers.empty_milter --socket unix:/tmp/empty.sock [--workers 2]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from types import FrameType

import Milter
import milter

from bench.sockets import SocketSpec, remove_stale_unix_socket


class EmptyMilter(Milter.Base):  # type: ignore[misc]
    """Sees everything, decides nothing, accepts at end of message."""

    @Milter.noreply  # type: ignore[untyped-decorator]
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def hello(self, hostname: str) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def envfrom(self, sender: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def envrcpt(self, recipient: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def header(self, name: str, value: str) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def eoh(self) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def body(self, chunk: bytes) -> int:
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        return int(Milter.ACCEPT)


class BareMilter(Milter.Base):  # type: ignore[misc]
    """Overrides nothing but end of message: negotiates every other event away.

    The floor of what pymilter costs per message (DESIGN.md's "empty pymilter milter"
    figure was taken this way or close to it); a real filter looks at headers and body,
    so `EmptyMilter` is the fair reference for Mailward.
    """

    def eom(self) -> int:
        return int(Milter.ACCEPT)


MODES: dict[str, type[Milter.Base]] = {"full": EmptyMilter, "bare": BareMilter}


def _register(name: str, spec: SocketSpec, timeout: int, factory: type[Milter.Base]) -> None:
    """What `Milter.runmilter()` does before `milter.main()`, so that we can fork there.

    The callbacks are the ones runmilter installs, so the per-event cost is that of an
    ordinary pymilter application.
    """
    Milter.factory = factory
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(spec.libmilter())
    if timeout > 0:
        milter.settimeout(timeout)
    milter.setbacklog(128)
    milter.register(
        name,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def serve(spec: SocketSpec, workers: int, mode: str = "full", timeout: int = 600) -> int:
    """Listen on `spec` and run `workers` libmilter processes until SIGTERM."""
    remove_stale_unix_socket(spec)
    _register("empty-milter", spec, timeout, MODES[mode])
    milter.opensocket(True)
    if workers <= 1:
        milter.main()  # libmilter's signal thread returns from main() on SIGTERM/SIGINT
        return 0

    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # worker: run the shared socket's accept loop until told to stop
            try:
                milter.main()
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    if spec.kind == "unix" and os.path.exists(spec.path):
        os.unlink(spec.path)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.empty_milter", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--socket", required=True, help="unix:/path or inet:HOST:PORT (Postfix syntax)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the socket")
    parser.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="full",
        help="full: receive every event without replying (default); bare: only end of message",
    )
    args = parser.parse_args(argv)
    print(
        f"empty milter ({args.mode}) on {args.socket}, {args.workers} worker(s)",
        file=sys.stderr,
        flush=True,
    )
    return serve(SocketSpec.parse(args.socket), args.workers, args.mode)


if __name__ == "__main__":
    sys.exit(main())
