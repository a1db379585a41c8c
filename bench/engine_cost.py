"""The engine's own cost per message, in one process, without a milter around it.

`make bench` measures whole services against their peers; when the question is "where
do the engine's 2 ms go", the milter protocol, the load client and the scheduler of a
shared 2-core machine are noise.  This runs `Pipeline.evaluate` in a loop on the
benchmark's message (the inbound comparison's ARC-sealed message, or the scoring
comparison's spam sample), resolving through the benchmark's nsd, and prints the CPU
time per message (`time.process_time`, which other processes on the machine barely
move) and the same per check, from the pipeline's own latency histograms.

    python -m bench.engine_cost [--config inbound|scoring] [--messages 2000]
                                [--profile cprofile|pyinstrument] [--top 30]
                                [--dump FILE.prof]

Usage in A/B work: run it on two commits; compare the "CPU per message" lines.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import world
from bench.dnsserver import DnsServer


@dataclass(frozen=True)
class EngineRun:
    """What one loop of evaluations cost."""

    messages: int
    cpu_seconds: float
    wall_seconds: float
    per_check: dict[str, float]  # check name -> mean seconds (wall, from the histograms)
    actions: dict[str, int]
    symbols: str = ""  # the last verdict's

    @property
    def cpu_per_message_us(self) -> float:
        return self.cpu_seconds / self.messages * 1e6


def check_seconds() -> dict[str, tuple[float, float]]:
    """(sum, count) of mailward_check_duration_seconds per check, as collected so far."""
    from mailward import metrics

    out: dict[str, tuple[float, float]] = {}
    for family in metrics.CHECK_SECONDS.collect():
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for sample in family.samples:
            check = sample.labels.get("check", "")
            if sample.name.endswith("_sum"):
                sums[check] = sample.value
            elif sample.name.endswith("_count"):
                counts[check] = sample.value
        for check, total in sums.items():
            out[check] = (total, counts.get(check, 0.0))
    return out


def run_engine(
    config: Path,
    message: bytes,
    messages: int,
    *,
    sender: str,
    client_ip: str,
    client_name: str,
    wrap: Callable[[Callable[[], None]], None] | None = None,
) -> EngineRun:
    """Evaluate `message` `messages` times (after 50 unmeasured warm-up messages)."""
    import ipaddress

    from mailward.compose import build_pipeline
    from mailward.config import load_settings
    from mailward.messagefile import transaction_from_bytes
    from mailward.model import Connection

    settings = load_settings(config)
    pipeline = build_pipeline(settings)
    connection = Connection(
        client_ip=ipaddress.ip_address(client_ip), client_name=client_name, helo=client_name
    )
    transaction = transaction_from_bytes(
        message, mail_from=sender, recipients=(f"bob@{world.RECEIVER_DOMAIN}",), queue_id="BENCH1"
    )
    actions: dict[str, int] = {}
    last: list[str] = [""]

    def loop(count: int) -> None:
        for _ in range(count):
            verdict = pipeline.evaluate(connection, transaction)
            actions[verdict.action.value] = actions.get(verdict.action.value, 0) + 1
        last[0] = ",".join(str(symbol) for symbol in verdict.symbols)

    loop(50)
    actions.clear()
    before = check_seconds()
    cpu, wall = time.process_time(), time.perf_counter()
    if wrap is None:
        loop(messages)
    else:
        wrap(lambda: loop(messages))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = check_seconds()
    per_check = {
        name: (total - before.get(name, (0.0, 0.0))[0])
        / max(1.0, count - before.get(name, (0.0, 0.0))[1])
        for name, (total, count) in after.items()
    }
    return EngineRun(messages, cpu, wall, per_check, actions, last[0])


def main(argv: list[str] | None = None) -> int:
    from bench import inbound
    from bench.run import Context, parse_settings, prepare_message

    parser = argparse.ArgumentParser(prog="python -m bench.engine_cost", description=__doc__)
    parser.add_argument("--config", choices=("inbound", "scoring"), default="inbound")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--profile", choices=("cprofile", "pyinstrument"))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--dump", type=Path, help="cprofile: also write the stats file")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="mailward-engine-cost-"))
    dns: DnsServer | None = None
    try:
        notes: list[str] = []
        message, key = prepare_message(workdir, notes)
        dns = DnsServer(workdir / "dns", key)
        dns.start()
        ctx = Context(workdir, parse_settings([]), message=message, dns_port=dns.port)
        from bench.run import mailward_config
        from bench.sockets import SocketSpec

        spec = SocketSpec("unix", path=str(workdir / "unused.sock"))
        unused = SocketSpec("inet", host="127.0.0.1", port=1)
        if args.config == "inbound":
            body = inbound.inbound_message(ctx)
            extra = inbound.MAILWARD_INBOUND
            sender, client_ip, client_name = inbound.SENDER, inbound.CLIENT_IP, inbound.CLIENT_NAME
        else:
            from bench import scoring

            body = scoring.scoring_message(ctx)
            extra = scoring.mailward_checks(ctx)
            sender, client_ip, client_name = (
                scoring.SENDER, scoring.CLIENT_IP, scoring.CLIENT_NAME)
        config = mailward_config(ctx, f"engine-{args.config}", spec, unused, extra)

        profiler_output: list[str] = []
        wrap: Callable[[Callable[[], None]], None] | None = None
        if args.profile == "cprofile":

            def wrap(body_fn: Callable[[], None]) -> None:
                profile = cProfile.Profile()
                profile.runcall(body_fn)
                stream = io.StringIO()
                if args.dump:
                    profile.dump_stats(args.dump)
                pstats.Stats(profile, stream=stream).sort_stats("tottime").print_stats(args.top)
                profiler_output.append(stream.getvalue())

        elif args.profile == "pyinstrument":
            try:  # a development tool, not a dependency (pip install pyinstrument)
                profiler_class = importlib.import_module("pyinstrument").Profiler
            except ImportError:
                sys.exit("pyinstrument is not installed (pip install pyinstrument)")

            def wrap(body_fn: Callable[[], None]) -> None:
                profiler = profiler_class(interval=0.0002)
                profiler.start()
                body_fn()
                profiler.stop()
                profiler_output.append(profiler.output_text(unicode=False, show_all=False))

        result = run_engine(
            config, body, args.messages, sender=sender, client_ip=client_ip,
            client_name=client_name, wrap=wrap,
        )
    finally:
        if dns is not None:
            dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    for text in profiler_output:
        print(text)
    print(f"{args.config}: {result.messages} messages, actions {result.actions}")
    print(f"symbols: {result.symbols}")
    print(f"CPU per message: {result.cpu_per_message_us:.0f} us "
          f"(wall {result.wall_seconds / result.messages * 1e6:.0f} us)")
    for name, seconds in sorted(result.per_check.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<12} {seconds * 1e6:8.0f} us (wall, mean per message)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
