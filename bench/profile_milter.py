"""Where one milter's time goes, per message: CPU, instruction counts, Python stacks.

    python -m bench.profile_milter --target mailward-dkim-verify [--count 2000]
        [--warmup-count 200] [--tool none|callgrind|pyspy] [--concurrency 8] [--top 40]

Starts the bench's nsd and one bench target (``mailward-dkim-verify``,
``opendkim-verify``, ``mailward-sign``, ``opendkim-sign``, ... any name `bench.run`
or `bench.inbound` knows), sends ``--warmup-count`` messages (caches fill, imports
finish), then ``--count`` measured ones, and prints the service's CPU per message.

Why a second tool next to `bench.run`: the machine is shared, so wall-clock rates
move with the neighbours' load.  CPU seconds per message move less, and instruction
counts (``--tool callgrind``: the service runs under valgrind twice, once with and
once without the measured messages, and the difference of the two totals is divided
by ``--count``) hardly at all, which makes them the number to compare before and
after a change.  ``--tool pyspy`` samples the
Python stacks of the service's processes during the measured messages and prints the
functions with the largest inclusive and self share (py-spy must be installed:
``pip install py-spy``; it is not a project dependency).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import world
from bench.dnsserver import DnsServer
from bench.loadgen import LoadConfig
from bench.milter_load import MilterLoadOptions, run_milter_load
from bench.procs import ServiceProcess, cpu_seconds, process_tree
from bench.run import Context, Target, parse_settings, prepare_message
from bench.sockets import SocketSpec

TOOLS = ("none", "callgrind", "pyspy")


@dataclass(frozen=True)
class PerMessage:
    """The service's cost of the measured messages."""

    messages: int
    cpu_seconds: float
    instructions: int | None  # callgrind only


def find_target(name: str) -> Target:
    from bench import inbound, run

    for target in [*run.all_targets(), *inbound.all_targets()]:
        if target.name == name:
            return target
    raise SystemExit(f"unknown target {name!r}")


def wrap(target: Target, prefix: list[str]) -> Target:
    """`target` with `prefix` (valgrind ...) in front of the service's command line."""
    if not prefix:
        return target
    original = type(target)

    class Wrapped(original):  # type: ignore[misc, valid-type]
        def _start(
            self, ctx: Context, spec: SocketSpec, argv: list[str], timeout: float = 60.0
        ) -> ServiceProcess:
            started: ServiceProcess = super()._start(
                ctx, spec, [*prefix, *argv], timeout=max(timeout, 600.0))
            return started

    wrapped = Wrapped()
    wrapped.__dict__.update(target.__dict__)
    return wrapped


def send(ctx: Context, target: Target, spec: SocketSpec, count: int, concurrency: int) -> None:
    opts = MilterLoadOptions(
        socket=spec, message=ctx.message, sender="alice@example.org",
        recipients=(f"bob@{world.RECEIVER_DOMAIN}",), client_ips=("192.0.2.10",),
        auth_user=target.auth_user,
        load=LoadConfig(concurrency=concurrency, count=count, warmup=0.0, timeout=300.0),
    )
    result = run_milter_load(opts)
    errors = sum(result.errors.values())
    if errors or result.requests < count:
        raise SystemExit(f"load failed: {result.requests}/{count} messages, errors "
                         f"{dict(result.errors)}")


def callgrind_total(directory: Path) -> int:
    """Sum of the Ir totals of every dump in `directory` (one per process, at its exit)."""
    total = 0
    for dump in sorted(directory.glob("callgrind.out.*")):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def pyspy_report(raw: Path, top: int) -> list[str]:
    """Inclusive and self sample shares per function from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        if not frames:
            continue
        samples += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{samples} samples; inclusive share (function (file:line)):"]
    lines += [f"  {n / samples:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    lines.append("self share:")
    lines += [f"  {n / samples:6.1%}  {frame}" for frame, n in own.most_common(top)]
    return lines


@dataclass(frozen=True)
class Options:
    target: str
    count: int
    warmup_count: int
    concurrency: int
    tool: str
    top: int


def run_service(ctx: Context, opts: Options, count: int, name: str) -> PerMessage:
    """Start the target once, send the warm-up and then `count` messages, stop it.

    Under callgrind the instruction total is the whole run's (start-up included):
    valgrind's control channel does not reach the worker the supervisor forks, so the
    caller subtracts a run without measured messages.
    """
    grind = ctx.workdir / name
    prefix: list[str] = []
    if opts.tool == "callgrind":
        grind.mkdir()
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={grind}/callgrind.out.%p"]
    target = wrap(find_target(opts.target), prefix)
    spec = ctx.socket_for(f"{target.name}-{name}", "unix")
    service = target.launch(ctx, spec)
    spy: subprocess.Popen[bytes] | None = None
    raw = ctx.workdir / f"pyspy-{name}.txt"
    try:
        send(ctx, target, spec, opts.warmup_count, opts.concurrency)
        pids = process_tree(service.pid)
        if opts.tool == "pyspy" and count:
            worker = pids[-1]  # the supervisor forks its workers: the tree's last one
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(worker), "--format",
                                    "raw", "--output", str(raw), "--rate", "250",
                                    "--nonblocking", "--gil"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches asynchronously (not a readiness wait)
        cpu_before = cpu_seconds(pids)
        if count:
            send(ctx, target, spec, count, opts.concurrency)
        cpu = cpu_seconds(process_tree(service.pid)) - cpu_before
    finally:
        # Under valgrind, exiting (and writing the dump) takes far longer than the usual
        # 10 s grace on a loaded machine; a SIGKILL then loses that process's count.
        service.stop(timeout=300.0 if opts.tool == "callgrind" else 10.0)
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)
        if raw.exists():
            print("\n".join(pyspy_report(raw, opts.top)))
    instructions = callgrind_total(grind) if opts.tool == "callgrind" else None
    return PerMessage(count, cpu, instructions)


def measured_message(ctx: Context, target: Target) -> bytes:
    """The message `bench.run` sends `target`: the inbound targets get the ARC-sealed one,
    the scoring targets the generated spam their verdict check expects."""
    from bench import inbound, scoring

    if isinstance(target, scoring.ScoringTarget):
        return scoring.scoring_message(ctx)
    if isinstance(target, inbound.InboundTarget) and (ctx.workdir / inbound.SIGNING_KEY).exists():
        return inbound.inbound_message(ctx)
    return ctx.message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="mailward-dkim-verify")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup-count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tool", choices=TOOLS, default="none")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    opts = Options(args.target, args.count, args.warmup_count, args.concurrency, args.tool,
                   args.top)
    if opts.tool == "pyspy" and shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    if opts.tool == "callgrind" and shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: valgrind)", file=sys.stderr)
        return 2
    os.environ["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run
    workdir = Path(tempfile.mkdtemp(prefix="mailward-profile-"))
    ctx = Context(workdir, parse_settings([]), message=b"", dns_port=None)
    dns: DnsServer | None = None
    try:
        ctx.message, dkim_key = prepare_message(workdir, ctx.notes)
        dns = DnsServer(workdir / "dns", dkim_key)
        dns.start()
        ctx.dns_port = dns.port
        ctx.message = measured_message(ctx, find_target(opts.target))
        reason = find_target(opts.target).unavailable(ctx)
        if reason:
            print(f"{opts.target}: {reason}", file=sys.stderr)
            return 2
        started = time.monotonic()
        cost = run_service(ctx, opts, opts.count, "measured")
        elapsed = time.monotonic() - started
        line = (f"{opts.target}: {cost.messages} messages after {opts.warmup_count} warm-up "
                f"({elapsed:.0f} s); service CPU {cost.cpu_seconds / cost.messages * 1000:.3f} "
                f"ms/msg")
        if cost.instructions is not None:
            baseline = run_service(ctx, opts, 0, "baseline")
            assert baseline.instructions is not None
            if not baseline.instructions or not cost.instructions:
                # A process stopped before valgrind wrote its dump (killed on a slow,
                # loaded machine): a difference against 0 would look like a result.
                print(f"{line}; no callgrind dump from the "
                      f"{'baseline' if cost.instructions else 'measured'} run: no "
                      f"instruction count", file=sys.stderr)
                return 1
            per_message = (cost.instructions - baseline.instructions) / cost.messages
            line += (f"; {per_message:,.0f} instructions/msg (total {cost.instructions:,} "
                     f"minus {baseline.instructions:,} for start, warm-up and stop)")
        print(line)
    finally:
        if dns is not None:
            dns.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
