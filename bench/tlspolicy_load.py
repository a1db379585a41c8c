"""Postfix socketmap load client for `mailward tlspolicy` (or any socketmap TLS policy
service, such as postfix-mta-sts-resolver).

Usage::

    python -m bench.tlspolicy_load --socket unix:/run/mailward/tlspolicy.sock \\
        --concurrency 8 --duration 10 example.org example.net ...

Each client keeps one connection open and has one lookup in flight, as Postfix's smtp
processes do; the keys are used in turn.  Latency is per lookup, from writing the
request to the end of its answer.  Prints one JSON object: answers per second, latency
percentiles (ms) and the answers seen by status.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence

from bench.stats import LatencySummary
from mailward.tlspolicy.socketmap import Lookup, decode_reply, encode_lookup


def connect(spec: str) -> socket.socket:
    kind, _, rest = spec.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(rest)
        return sock
    host, _, port = rest.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    while True:
        colon = buffer.find(b":")
        if colon > 0:
            length = int(buffer[:colon])
            end = colon + 1 + length
            if len(buffer) > end:
                payload = bytes(buffer[colon + 1:end])
                del buffer[:end + 1]
                return payload
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk


def client(spec: str, name: str, keys: Sequence[str], deadline: float, offset: int,
           latencies: list[float], statuses: Counter[str], lock: threading.Lock) -> None:
    sock = connect(spec)
    buffer = bytearray()
    mine: list[float] = []
    seen: Counter[str] = Counter()
    index = offset
    try:
        while time.perf_counter() < deadline:
            request = encode_lookup(Lookup(name, keys[index % len(keys)]))
            index += 1
            started = time.perf_counter()
            sock.sendall(request)
            reply = decode_reply(read_reply(sock, buffer))
            mine.append(time.perf_counter() - started)
            seen[reply.status.value] += 1
    finally:
        sock.close()
    with lock:
        latencies.extend(mine)
        statuses.update(seen)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--name", default="postfix", help="socketmap name (default: postfix)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("keys", nargs="+")
    args = parser.parse_args(argv)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + args.duration
    threads = [threading.Thread(target=client, args=(args.socket, args.name, args.keys,
                                                     deadline, i, latencies, statuses, lock))
               for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    summary = LatencySummary.of(latencies)
    print(json.dumps({"answers": len(latencies), "seconds": round(elapsed, 3),
                      "answers_per_second": round(len(latencies) / elapsed, 1),
                      "latency_ms": summary.as_ms(), "statuses": dict(statuses)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
