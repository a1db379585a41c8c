"""Soak: many messages through one Mailward milter; do RSS, threads and descriptors stay flat?

    python -m bench.soak [--messages 100000] [--every 5000] [--concurrency 8]

A leak shows as a slope, not a level: memory that grows by a few bytes per message is
invisible in a 10-second benchmark and fatal after a month.  The milter (the bench's
`mailward-milter` target: SPF, DKIM, DMARC, ... against the bench's nsd) gets
`--messages` messages in chunks of `--every`; after each chunk the process tree's RSS,
thread count and open descriptors are sampled.  Printed: each sample, and the slope of
each series per 10k messages over the second half of the run (the first half includes
warm-up: caches filling, allocator arenas growing).  Goal: flat (RSS slope within 1 MiB
per 10k messages, threads and descriptors 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.dnsserver import DnsServer
from bench.loadgen import LoadConfig
from bench.milter_load import MilterLoadOptions, run_milter_load
from bench.procs import process_tree, rss_bytes
from bench.run import Context, MailwardMilter, parse_settings, prepare_message
from bench.sockets import SocketSpec


@dataclass(frozen=True)
class Sample:
    messages: int
    rss: int
    threads: int
    fds: int


def _threads(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return total


def _fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def sample(root: int, messages: int) -> Sample:
    pids = process_tree(root)
    return Sample(messages, rss_bytes(pids), _threads(pids), _fds(pids))


def slope_per_10k(samples: list[Sample], value: str) -> float:
    """Least-squares slope of `value` per 10,000 messages over the second half."""
    half = samples[len(samples) // 2:]
    if len(half) < 2:
        return 0.0
    xs = [s.messages for s in half]
    ys = [float(getattr(s, value)) for s in half]
    return statistics.linear_regression(xs, ys).slope * 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mailward-soak-"))
    ctx = Context(workdir, parse_settings([]), message=b"", dns_port=None)
    dns = None
    service = None
    try:
        ctx.message, dkim_key = prepare_message(workdir, ctx.notes)
        if not DnsServer.available():
            print("soak needs nsd (make deps-bench)")
            return 2
        dns = DnsServer(workdir / "dns", dkim_key)
        dns.start()
        ctx.dns_port = dns.port
        spec = SocketSpec("unix", path=str(workdir / "milter.sock"))
        target = MailwardMilter()
        service = target.launch(ctx, spec)
        samples = [sample(service.pid, 0)]
        started = time.monotonic()
        sent = 0
        print(f"soak: {args.messages:,} messages, {args.concurrency} sessions, sample every "
              f"{args.every:,}")
        while sent < args.messages:
            chunk = min(args.every, args.messages - sent)
            opts = MilterLoadOptions(socket=spec, message=ctx.message,
                                     client_ips=("192.0.2.0/24",),
                                     load=LoadConfig(concurrency=args.concurrency,
                                                     count=chunk, warmup=0.0))
            result = run_milter_load(opts)
            sent += chunk
            point = sample(service.pid, sent)
            samples.append(point)
            print(f"  {sent:>8,} msgs  rss {point.rss / 2**20:7.1f} MiB  threads "
                  f"{point.threads:4d}  fds {point.fds:4d}  ({result.rate:,.0f} msg/s, "
                  f"{sum(result.errors.values())} errors)")
        elapsed = time.monotonic() - started
        print(f"slope per 10k messages (second half): rss "
              f"{slope_per_10k(samples, 'rss') / 2**20:+.2f} MiB, threads "
              f"{slope_per_10k(samples, 'threads'):+.2f}, fds {slope_per_10k(samples, 'fds'):+.2f}"
              f"  ({elapsed:.0f} s)")
        print("goal: flat (rss within 1 MiB per 10k messages, threads and fds 0)")
        return 0
    finally:
        if service is not None:
            service.stop()
        if dns is not None:
            dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
