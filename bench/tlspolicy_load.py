"""Postfix socketmap load client for `mailward tlspolicy` (or any socketmap TLS policy
service, such as postfix-mta-sts-resolver).

Usage::

    python -m bench.tlspolicy_load --socket unix:/run/mailward/tlspolicy.sock \\
        --concurrency 8 --duration 10 [--warmup 1] [--processes 1] example.org ...

Each session keeps one connection open and has one lookup in flight, as Postfix's smtp
processes do (closed loop); the keys are used in turn, each session starting at its own
offset.  Latency is per lookup, from writing the request to the end of its answer.
Prints one JSON object: answers per second, latency percentiles (ms) and the answers
seen by status.

The sessions run on `bench.loadgen`'s single-threaded engine, not one thread each: on
the shared 2-core machine, threads doing blocking I/O spend more CPU on GIL hand-offs
than a cached socketmap answer costs the service, and the client would be measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.loadgen import Controls, LoadConfig, LoadResult, Recorder, Script, clock, run_load
from bench.sockets import SocketSpec
from bench.sockets import connect as open_socket
from mailward.tlspolicy.socketmap import Lookup, Reply, decode_reply, encode_lookup

WANT_REPLY = 1


class ReplyFramer:
    """Splits the byte stream into socketmap reply netstrings (bench.loadgen.Framer)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take(self, want: int) -> object | None:
        buffer = self._buffer
        colon = buffer.find(b":")
        if colon < 0:
            if len(buffer) > 7:
                raise ValueError(f"not a netstring: {bytes(buffer[:20])!r}")
            return None
        end = colon + 1 + int(buffer[:colon])
        if len(buffer) <= end:
            return None
        if buffer[end] != ord(","):
            raise ValueError("reply netstring not terminated by ','")
        payload = bytes(buffer[colon + 1:end])
        del buffer[:end + 1]
        return decode_reply(payload)


@dataclass(frozen=True)
class TlsPolicyLoadOptions:
    socket: SocketSpec
    keys: tuple[str, ...]
    name: str = "postfix"
    load: LoadConfig = field(default_factory=LoadConfig)


def session_script(requests: Sequence[bytes], offset: int, rec: Recorder,
                   ctl: Controls) -> Script:
    """A persistent socketmap connection: lookups back to back until told to stop."""
    rec.connected(clock())
    turn = itertools.islice(itertools.cycle(requests), offset % len(requests), None)
    while ctl.more():
        ctl.next_seq()
        start = clock()
        reply: Reply = yield (next(turn), WANT_REPLY)
        rec.request(start, reply.status.value)
    return b""


def lookup_once(spec: SocketSpec, name: str, key: str, timeout: float = 10.0) -> Reply:
    """One blocking lookup (a readiness probe, or the warm-up of one key)."""
    sock = open_socket(spec, timeout=timeout)
    try:
        sock.sendall(encode_lookup(Lookup(name, key)))
        framer = ReplyFramer()
        while (reply := framer.take(WANT_REPLY)) is None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("socketmap server closed the connection")
            framer.feed(data)
        assert isinstance(reply, Reply)
        return reply
    finally:
        sock.close()


def run_tlspolicy_load(opts: TlsPolicyLoadOptions) -> LoadResult:
    requests = [encode_lookup(Lookup(opts.name, key)) for key in opts.keys]

    def factory(slot: int, rec: Recorder, ctl: Controls) -> tuple[ReplyFramer, Script]:
        return ReplyFramer(), session_script(requests, slot * 7, rec, ctl)

    result = run_load(opts.socket, factory, opts.load)
    result.extra["latency_from"] = "request written to answer read"
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--socket", required=True, type=SocketSpec.parse)
    parser.add_argument("--name", default="postfix", help="socketmap name (default: postfix)")
    parser.add_argument("--concurrency", "-c", type=int, default=8)
    parser.add_argument("--duration", "-d", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("keys", nargs="+")
    args = parser.parse_args(argv)
    load = LoadConfig(concurrency=args.concurrency, duration=args.duration,
                      warmup=args.warmup, processes=args.processes)
    result = run_tlspolicy_load(TlsPolicyLoadOptions(args.socket, tuple(args.keys),
                                                     args.name, load))
    print(json.dumps({"answers": result.requests, "seconds": round(result.elapsed, 3),
                      "answers_per_second": round(result.rate, 1),
                      "latency_ms": result.latency.as_ms(),
                      "statuses": dict(result.outcomes), "errors": dict(result.errors),
                      "client_cpu_cores": round(result.client_cpu, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
