"""`make bench`: throughput and latency of the services as they stand, next to references.

Usage::

    python -m bench.run [--duration 5] [--policy-duration 5] [--rounds 2]
                        [--sockets unix,inet] [--only empty-pymilter,mailward-milter]
                        [--json results.json] [--keep]

Everything measured is started here, in a temporary directory, and stopped afterwards:
an authoritative DNS server (nsd) serving bench.world's zones, the reference peers
(an empty pymilter milter, a DUNNO policy stub) and the Mailward services, each once
per socket type (unix and inet).  Readiness is polled on each socket, never slept for.

For every (kind, socket type) the reference and each other target are measured
alternately, A B A B ... (`--rounds` pairs), and the table shows the median over the
rounds plus the median of the pair ratios against the reference (DESIGN.md,
"Performance": the machines drift 10-20% between runs, pairs cancel that).  A target
whose software is missing is skipped with the reason, not failed.

Targets: empty-pymilter (reference), mailward-milter, policyd-spf (reference: Debian's
postfix-policyd-spf-python, spawned per connection as Postfix's spawn(8) does), dunno-stub
(the reference when policyd-spf is not installed), mailward-policyd; optional, only
with --only: mailward-milter-out (the milter load as authenticated submissions, i.e. the
outbound path), and the signing comparison
opendkim-sign (reference), mailward-sign, dkimpy-milter-sign (same RSA-2048 key, same
message, relaxed/relaxed):

    python -m bench.run --only opendkim-sign,mailward-sign,dkimpy-milter-sign

Environment overrides (flags win): BENCH_DURATION, BENCH_POLICY_DURATION, BENCH_WARMUP,
BENCH_ROUNDS, BENCH_SOCKETS, BENCH_ONLY, BENCH_CONCURRENCY, BENCH_POLICYD_WORKERS.

Adding a peer (OpenDKIM, Rspamd, policyd-spf, ...): subclass `Target`, implement
`unavailable()` and `launch()`, and append it to `all_targets()`.  The runner, table,
ratios and RSS accounting need no change.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench import world
from bench.compare import Comparison, alternate
from bench.dnsserver import DnsServer
from bench.goals import MeasuredTarget, goal_lines
from bench.loadgen import LoadConfig, LoadResult
from bench.messages import dkim_public_key_b64, dkim_sign, generate_message, generate_rsa_key
from bench.milter_client import MilterClient
from bench.milter_load import MilterLoadOptions, run_milter_load
from bench.policy_load import PolicyLoadOptions, run_policy_load
from bench.procs import CpuWindow, RssSampler, ServiceProcess
from bench.sockets import SocketSpec, connect_probe, free_tcp_port
from bench.stats import fmt_ms, fmt_rate, format_table

Kind = Literal["milter", "policy"]

#: PolicyLoadOptions per --policy-workload.  "one-lookup": example.org's SPF record is
#: `v=spf1 ip4:192.0.2.0/25 -all` (bench/world.py), so each uncached request costs one
#: TXT lookup for MAIL FROM (plus the HELO check, the same for every target).
POLICY_WORKLOADS: dict[str, dict[str, Any]] = {
    "mix": {},
    "one-lookup": {"sender": "alice@example.org", "client_ips": ("192.0.2.0/25",)},
}
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- settings


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    milter_duration: float
    policy_duration: float
    warmup: float
    rounds: int
    concurrency: int
    sockets: tuple[str, ...]
    only: tuple[str, ...]
    messages_per_connection: int
    client_processes: int
    mailward_workers: int
    policyd_workers: int
    json_path: Path | None
    keep: bool
    policy_workload: str = "mix"
    mailward_engine: str = "python"  # [milter] engine of every Mailward milter target


def parse_settings(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=float(_env("BENCH_DURATION", "5")),
        help="measured seconds per milter run (default 5)",
    )
    parser.add_argument(
        "--policy-duration",
        type=float,
        default=float(_env("BENCH_POLICY_DURATION", "5")),
        help="measured seconds per policy run (default 5)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=float(_env("BENCH_WARMUP", "1")),
        help="unmeasured seconds before each run (default 1)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=int(_env("BENCH_ROUNDS", "2")),
        help="A/B pairs per comparison (default 2)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(_env("BENCH_CONCURRENCY", "8")),
        help="milter sessions / policy connections (default 8)",
    )
    parser.add_argument(
        "--sockets",
        default=_env("BENCH_SOCKETS", "unix,inet"),
        help="socket types to measure (default unix,inet)",
    )
    parser.add_argument(
        "--only",
        default=_env("BENCH_ONLY", ""),
        help="comma-separated target names (default: every non-optional one; optional: "
        "mailward-milter-out, the authenticated/outbound path; opendkim-sign, "
        "mailward-sign, dkimpy-milter-sign, the signing comparison)",
    )
    parser.add_argument(
        "--messages-per-connection",
        type=int,
        default=1,
        help="milter transactions per session (default 1, like one SMTP session per message)",
    )
    parser.add_argument(
        "--client-processes", type=int, default=1, help="load client event loops (default 1)"
    )
    parser.add_argument(
        "--mailward-workers",
        type=int,
        default=1,
        help="[milter] workers for the Mailward milter (default 1)",
    )
    parser.add_argument(
        "--mailward-engine",
        choices=("python", "libmilter"),
        default=_env("BENCH_MAILWARD_ENGINE", "python"),
        help="[milter] engine of the Mailward milter targets (default python; the "
        "mailward-inbound-libmilter target always uses libmilter)",
    )
    parser.add_argument(
        "--policyd-workers",
        type=int,
        default=int(_env("BENCH_POLICYD_WORKERS", str(os.cpu_count() or 1))),
        help="[policyd] workers for the Mailward policy service (default: one per core, "
        "as policyd-spf under spawn(8) uses every core too)",
    )
    parser.add_argument(
        "--policy-workload",
        choices=sorted(POLICY_WORKLOADS),
        default=_env("BENCH_POLICY_WORKLOAD", "mix"),
        help="policy requests: 'mix' (bench/world.py's realistic scenarios, default) or "
        "'one-lookup' (one sender domain whose SPF record is a single TXT lookup, "
        "clients it allows: issue 8's second policy workload)",
    )
    parser.add_argument("--json", type=Path, help="also write all results as JSON here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (configs, logs, zones)"
    )
    args = parser.parse_args(argv)
    sockets = tuple(s.strip() for s in args.sockets.split(",") if s.strip())
    for s in sockets:
        if s not in ("unix", "inet"):
            parser.error(f"--sockets: unknown socket type {s!r}")
    return Settings(
        milter_duration=args.duration,
        policy_duration=args.policy_duration,
        warmup=args.warmup,
        rounds=max(1, args.rounds),
        concurrency=args.concurrency,
        sockets=sockets,
        only=tuple(s.strip() for s in args.only.split(",") if s.strip()),
        messages_per_connection=args.messages_per_connection,
        client_processes=args.client_processes,
        mailward_workers=args.mailward_workers,
        policyd_workers=max(1, args.policyd_workers),
        json_path=args.json,
        keep=args.keep,
        policy_workload=args.policy_workload,
        mailward_engine=args.mailward_engine,
    )


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What every target and measurement may use: where to put files, DNS, the message."""

    workdir: Path
    settings: Settings
    message: bytes
    dns_port: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """Child environment: the repository on PYTHONPATH so `-m bench...` works anywhere."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def socket_for(self, name: str, socket_kind: str) -> SocketSpec:
        if socket_kind == "unix":
            directory = self.workdir / "sockets"
            directory.mkdir(exist_ok=True)
            return SocketSpec("unix", path=str(directory / f"{name}.sock"))
        return SocketSpec("inet", host="127.0.0.1", port=free_tcp_port())


def milter_probe(spec: SocketSpec) -> Callable[[], None]:
    """Ready means: accepts a connection and completes milter negotiation."""

    def probe() -> None:
        client = MilterClient(spec, timeout=5.0)
        try:
            client.negotiate()
        except (ConnectionError, TimeoutError) as exc:
            raise OSError(str(exc)) from exc
        finally:
            client.close()

    return probe


# --------------------------------------------------------------------------- targets


class Target:
    """Something to measure: a service of one kind, started once per socket type."""

    name = "target"
    kind: Kind = "milter"
    reference = False  # the baseline others are compared with
    optional = False  # measured only when named in --only (slow or niche)
    auth_user: str | None = None  # milter load as an authenticated (outbound) submission
    sender = "alice@example.org"  # milter load: MAIL FROM and the client (bench.world)
    client_ips: tuple[str, ...] = ("192.0.2.10",)
    description = ""

    def unavailable(self, ctx: Context) -> str | None:
        """Why this target cannot run here (missing software), or None."""
        return None

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        """Start the service on `spec` and return it once it answers there."""
        raise NotImplementedError

    def own_load(self, ctx: Context, spec: SocketSpec) -> Callable[[], LoadResult] | None:
        """A load of the target's own protocol (bench.tlspolicy_bench); None: by kind."""
        return None

    def measured(self, measurement: Measurement) -> None:
        """Called after each load run while the service still runs (e.g. to read its
        metrics); nothing by default."""

    def _start(
        self, ctx: Context, spec: SocketSpec, argv: list[str], timeout: float = 60.0
    ) -> ServiceProcess:
        tag = f"{self.name}-{spec.kind}"
        service = ServiceProcess(
            tag, argv, log=ctx.workdir / "logs" / f"{tag}.log", env=ctx.env, cwd=ctx.workdir
        )
        service.start()
        probe = milter_probe(spec) if self.kind == "milter" else connect_probe(spec)
        try:
            service.wait_ready(probe, timeout=timeout)
        except BaseException:
            service.stop()
            raise
        return service


class EmptyMilter(Target):
    name = "empty-pymilter"
    kind: Kind = "milter"
    reference = True
    description = "pymilter, every event with @noreply, accept at end of message"

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        argv = [sys.executable, "-m", "bench.peers.empty_milter", "--socket", str(spec)]
        return self._start(ctx, spec, argv, timeout=30.0)


class DunnoPolicy(Target):
    name = "dunno-stub"
    kind: Kind = "policy"
    reference = True
    description = "asyncio server answering action=DUNNO"

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        argv = [sys.executable, "-m", "bench.peers.dunno_policy", "--socket", str(spec)]
        return self._start(ctx, spec, argv, timeout=30.0)


_MAILWARD_CHECK: dict[str, str | None] = {}


def mailward_unavailable(ctx: Context) -> str | None:
    """None if `python -m mailward --version` works, else why not (checked once)."""
    if "result" not in _MAILWARD_CHECK:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "mailward", "--version"],
                capture_output=True,
                text=True,
                timeout=60,
                env=ctx.env,
                cwd=REPO,
            )
            reason = (
                None
                if proc.returncode == 0
                else (
                    f"`python -m mailward --version` exited {proc.returncode}: "
                    + (proc.stderr.strip().splitlines() or ["no output"])[-1]
                )
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"`python -m mailward --version` failed: {exc}"
        _MAILWARD_CHECK["result"] = reason
    return _MAILWARD_CHECK["result"]


def mailward_config(
    ctx: Context, name: str, milter: SocketSpec, policyd: SocketSpec, extra: str = "",
    metrics_listen: str = "",
) -> Path:
    """A configuration using only the keys DESIGN.md fixes (unknown keys are errors),
    plus `extra` TOML (e.g. [dkim.sign] for the signing targets)."""
    state = ctx.workdir / "state" / name
    state.mkdir(parents=True, exist_ok=True)
    dns = (
        f'nameservers = ["127.0.0.1"]\nport = {ctx.dns_port}\n'
        if ctx.dns_port
        else "nameservers = []\n"
    )
    text = f"""# Written by bench.run for one benchmark run.
[general]
authserv_id = "{world.RECEIVER_HOST}"
trusted_networks = ["127.0.0.0/8", "::1/128"]

[dns]
{dns}timeout = 2.0

[milter]
engine = "{ctx.settings.mailward_engine}"
socket = "{milter}"
workers = {ctx.settings.mailward_workers}

[policyd]
socket = "{policyd}"
workers = {ctx.settings.policyd_workers}

[metrics]
listen = "{metrics_listen}"
policyd_listen = ""

[state]
path = "{state / "state.db"}"
{extra}"""
    path = ctx.workdir / "config" / f"{name}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class MailwardMilter(Target):
    name = "mailward-milter"
    kind: Kind = "milter"
    description = "python -m mailward milter (inbound: SPF, DKIM, DMARC, ... as built so far)"

    def unavailable(self, ctx: Context) -> str | None:
        return mailward_unavailable(ctx)

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        unused = SocketSpec("inet", host="127.0.0.1", port=free_tcp_port())
        config = mailward_config(ctx, f"{self.name}-{spec.kind}", spec, unused)
        argv = [sys.executable, "-m", "mailward", "milter", "-c", str(config)]
        return self._start(ctx, spec, argv)


class MailwardMilterOutbound(MailwardMilter):
    name = "mailward-milter-out"
    optional = True
    auth_user = "alice"
    description = "the Mailward milter with {auth_authen} set: the outbound (signing) path"


# ----------------------------------------------------------------- signing (outbound)

SIGN_DOMAIN = "example.org"  # the From domain of the bench message
SIGN_SELECTOR = "bench"


def signing_key(ctx: Context) -> Path:
    """One RSA-2048 key shared by every signing target: same key size, same work."""
    path = ctx.workdir / "sign" / "example.org.bench.key"
    if not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        generate_rsa_key(path, 2048)
    return path


def libmilter_socket(spec: SocketSpec) -> str:
    """The socket as OpenDKIM and dkimpy-milter write it (local:PATH, inet:PORT@HOST)."""
    if spec.kind == "unix":
        return f"local:{spec.path}"
    return f"inet:{spec.port}@{spec.host}"


class OpenDkimSign(Target):
    name = "opendkim-sign"
    kind: Kind = "milter"
    reference = True
    optional = True
    auth_user = "alice"
    description = (
        "OpenDKIM (Debian) Mode s, RSA-2048, relaxed/relaxed, the bench client an internal host"
    )

    def unavailable(self, ctx: Context) -> str | None:
        return None if shutil.which("opendkim") else "opendkim not installed (Debian: opendkim)"

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        base = ctx.workdir / f"{self.name}-{spec.kind}"
        base.mkdir(exist_ok=True)
        config = base / "opendkim.conf"
        config.write_text(
            "Mode s\n"
            f"Socket {libmilter_socket(spec)}\n"
            f"PidFile {base / 'opendkim.pid'}\n"
            f"Domain {SIGN_DOMAIN}\nSelector {SIGN_SELECTOR}\nKeyFile {signing_key(ctx)}\n"
            "Canonicalization relaxed/relaxed\n"
            "InternalHosts 127.0.0.1, 192.0.2.0/24\n"
            # The bench lives under /tmp, which OpenDKIM's key-path check rejects.
            "RequireSafeKeys no\n"
            "Syslog no\nUMask 000\n"
        )
        return self._start(ctx, spec, ["opendkim", "-f", "-x", str(config)])


class DkimpyMilterSign(Target):
    name = "dkimpy-milter-sign"
    kind: Kind = "milter"
    optional = True
    auth_user = "alice"
    description = "dkimpy-milter (Debian) signing, RSA-2048 (pure-Python RSA), relaxed/relaxed"

    def unavailable(self, ctx: Context) -> str | None:
        if shutil.which("dkimpy-milter") is None:
            return "dkimpy-milter not installed (Debian: dkimpy-milter)"
        return None

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        base = ctx.workdir / f"{self.name}-{spec.kind}"
        base.mkdir(exist_ok=True)
        config = base / "dkimpy-milter.conf"
        config.write_text(
            "Mode s\n"
            f"Socket {libmilter_socket(spec)}\n"
            f"PidFile {base / 'dkimpy-milter.pid'}\n"
            f"Domain {SIGN_DOMAIN}\nSelector {SIGN_SELECTOR}\nKeyFile {signing_key(ctx)}\n"
            "Canonicalization relaxed/relaxed\n"
            "InternalHosts 127.0.0.1, 192.0.2.0/24\n"
            # Its default drops to user dkimpy-milter, who cannot reach the bench's dirs.
            f"UserID {pwd.getpwuid(os.getuid()).pw_name}\n"
            "Syslog no\nUMask 000\n"
        )
        return self._start(ctx, spec, ["dkimpy-milter", str(config)])


class MailwardSign(MailwardMilter):
    name = "mailward-sign"
    optional = True
    auth_user = "alice"
    description = (
        "the Mailward milter signing authenticated submissions, RSA-2048, relaxed/relaxed "
        "([milter] workers from --mailward-workers)"
    )

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        unused = SocketSpec("inet", host="127.0.0.1", port=free_tcp_port())
        extra = (
            "\n[[dkim.sign.keys]]\n"
            f'domain = "{SIGN_DOMAIN}"\nselector = "{SIGN_SELECTOR}"\n'
            f'key = "{signing_key(ctx)}"\n'
        )
        config = mailward_config(ctx, f"{self.name}-{spec.kind}", spec, unused, extra)
        argv = [sys.executable, "-m", "mailward", "milter", "-c", str(config)]
        return self._start(ctx, spec, argv)


class MailwardPolicy(Target):
    name = "mailward-policyd"
    kind: Kind = "policy"
    description = "python -m mailward policyd"

    def unavailable(self, ctx: Context) -> str | None:
        return mailward_unavailable(ctx)

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        unused = ctx.socket_for(f"{self.name}-unused-milter", "unix")
        config = mailward_config(ctx, f"{self.name}-{spec.kind}", unused, spec)
        argv = [sys.executable, "-m", "mailward", "policyd", "-c", str(config)]
        return self._start(ctx, spec, argv)


POLICYD_SPF = Path("/usr/bin/policyd-spf")

#: policyd-spf doing what `[policyd.spf]`'s defaults do: HELO then MAIL FROM, reject
#: fail, prepend Received-SPF otherwise, errors neither deferred nor rejected.
POLICYD_SPF_CONFIG = """\
debugLevel = 1
TestOnly = 1
HELO_reject = Fail
Mail_From_reject = Fail
PermError_reject = False
TempError_Defer = False
skip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1
Header_Type = SPF
Hide_Receiver = No
Authserv_Id = {receiver}
"""


class PolicydSpf(Target):
    """Debian's postfix-policyd-spf-python, spawned per connection as Postfix does.

    The policy baseline when installed (what users would otherwise run, DESIGN.md); the
    DUNNO stub is then measured against it too, as the protocol's ceiling."""

    name = "policyd-spf"
    kind: Kind = "policy"
    reference = True
    description = (
        "policyd-spf (postfix-policyd-spf-python), one process per connection as "
        "spawn(8) runs it; pydns pointed at the bench's nsd"
    )

    def unavailable(self, ctx: Context) -> str | None:
        if not POLICYD_SPF.exists():
            return f"{POLICYD_SPF} not installed (Debian: postfix-policyd-spf-python)"
        if ctx.dns_port is None:
            return "needs the bench's nsd (its resolv.conf cannot name a port)"
        return None

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        config = ctx.workdir / "config" / "policyd-spf.conf"
        config.parent.mkdir(exist_ok=True)
        config.write_text(POLICYD_SPF_CONFIG.format(receiver=world.RECEIVER_HOST))
        argv = [
            sys.executable, "-m", "bench.peers.spawn", "--socket", str(spec),
            "--python-dns-server", f"127.0.0.1:{ctx.dns_port}",
            "--", str(POLICYD_SPF), str(config),
        ]
        return self._start(ctx, spec, argv, timeout=30.0)


def all_targets() -> list[Target]:
    """Every target, references first within each kind."""
    from bench import inbound, scoring, tlspolicy_bench  # imported here: they build on this module

    return [
        EmptyMilter(),
        MailwardMilter(),
        MailwardMilterOutbound(),
        OpenDkimSign(),
        MailwardSign(),
        DkimpyMilterSign(),
        PolicydSpf(),
        DunnoPolicy(),
        MailwardPolicy(),
        *inbound.all_targets(),  # their own A/B groups: vs Rspamd, vs OpenDKIM verifying
        *tlspolicy_bench.all_targets(),  # its own A/B group: vs postfix-mta-sts-resolver
        *scoring.all_targets(),  # its own A/B group: spam scoring vs Rspamd
    ]


def select_targets(only: Sequence[str]) -> list[Target]:
    """The default set (non-optional targets), or exactly the ones named."""
    targets = all_targets()
    if not only:
        return [t for t in targets if not t.optional]
    unknown = set(only) - {t.name for t in targets}
    if unknown:
        raise SystemExit(
            f"unknown target(s) {', '.join(sorted(unknown))}; known: "
            + ", ".join(t.name for t in targets)
        )
    return [t for t in targets if t.name in only]


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    target: str
    kind: Kind
    socket: str
    result: LoadResult
    service_cpu: float  # cores used by the service's process tree during the run
    machine_cpu: float  # cores used by everything on the machine during the run


def measure(
    ctx: Context, target: Target, service: ServiceProcess, spec: SocketSpec, socket_kind: str
) -> Measurement:
    s = ctx.settings
    own = target.own_load(ctx, spec)
    if own is not None:
        window, outcome = CpuWindow.measure(service, own)
    elif target.kind == "milter":
        load = LoadConfig(
            concurrency=s.concurrency,
            duration=s.milter_duration,
            warmup=s.warmup,
            processes=s.client_processes,
        )
        opts = MilterLoadOptions(
            socket=spec,
            message=ctx.message,
            sender=target.sender,
            recipients=(f"bob@{world.RECEIVER_DOMAIN}",),
            client_ips=target.client_ips,
            auth_user=target.auth_user,
            messages_per_connection=s.messages_per_connection,
            load=load,
        )
        window, outcome = CpuWindow.measure(service, lambda: run_milter_load(opts))
    else:
        load = LoadConfig(
            concurrency=s.concurrency,
            duration=s.policy_duration,
            warmup=s.warmup,
            processes=s.client_processes,
        )
        popts = PolicyLoadOptions(socket=spec, load=load,
                                  **POLICY_WORKLOADS[s.policy_workload])
        window, outcome = CpuWindow.measure(service, lambda: run_policy_load(popts))
    assert isinstance(outcome, LoadResult)
    unit = "msg/s" if target.kind == "milter" else "req/s"
    errors = sum(outcome.errors.values())
    print(
        f"  {target.name:<18} {socket_kind:<5} {fmt_rate(outcome.rate):>8} {unit}  "
        f"p50 {fmt_ms(outcome.latency.p50)} ms  p99 {fmt_ms(outcome.latency.p99)} ms"
        + (f"  errors {errors}" if errors else ""),
        file=sys.stderr,
        flush=True,
    )
    measurement = Measurement(
        target.name, target.kind, socket_kind, outcome, window.service, window.machine
    )
    target.measured(measurement)
    return measurement


@dataclass
class TargetReport:
    """Everything known about one target on one socket type after its group ran."""

    target: Target
    socket: str
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    runs: list[Measurement] = field(default_factory=list)
    comparison: Comparison[Measurement] | None = None
    peak_rss: int = 0
    stop_note: str = ""

    def median(self, value: Callable[[Measurement], float]) -> float:
        return statistics.median(value(m) for m in self.runs) if self.runs else float("nan")


def run_group(
    ctx: Context, sampler: RssSampler, kind: Kind, socket_kind: str, targets: list[Target]
) -> list[TargetReport]:
    """Start the targets of one kind on one socket type, measure alternately, stop them."""
    reports: list[TargetReport] = []
    started: list[tuple[Target, ServiceProcess, SocketSpec, TargetReport]] = []
    print(f"[{kind} / {socket_kind}]", file=sys.stderr, flush=True)
    try:
        for target in targets:
            report = TargetReport(target, socket_kind)
            reports.append(report)
            reason = target.unavailable(ctx)
            if reason:
                report.status, report.reason = "skipped", reason
                print(f"  {target.name}: skipped: {reason}", file=sys.stderr, flush=True)
                continue
            spec = ctx.socket_for(target.name, socket_kind)
            try:
                service = target.launch(ctx, spec)
            except Exception as exc:  # noqa: BLE001 - reported in the table, others go on
                report.status, report.reason = "failed", f"did not start: {exc}"
                print(f"  {target.name}: failed to start: {exc}", file=sys.stderr, flush=True)
                continue
            sampler.watch(service)
            service.sample(tree_max_age=0)
            started.append((target, service, spec, report))

        def runner(
            entry: tuple[Target, ServiceProcess, SocketSpec, TargetReport],
        ) -> Callable[[], Measurement]:
            target, service, spec, report = entry

            def run() -> Measurement:
                m = measure(ctx, target, service, spec, socket_kind)
                report.runs.append(m)
                return m

            return run

        refs = [e for e in started if e[0].reference]
        # The first reference that started is the baseline; other references (the DUNNO
        # stub when policyd-spf is the baseline) are measured against it like any target.
        others = [e for e in started if not refs or e is not refs[0]]
        if refs and others:
            ref = refs[0]
            for other in others:
                other[3].comparison = alternate(
                    ref[0].name,
                    runner(ref),
                    other[0].name,
                    runner(other),
                    rounds=ctx.settings.rounds,
                    metric=lambda m: m.result.rate,
                )
        else:
            for entry in started:
                for _ in range(ctx.settings.rounds):
                    runner(entry)()
    finally:
        for _target, service, _, report in started:
            sampler.forget(service)
            service.sample(tree_max_age=0)
            report.peak_rss = service.peak_rss
            code = service.stop()
            if service.killed:
                report.stop_note = "did not exit on SIGTERM within 10 s (killed)"
            elif code not in (0, -15, None):
                report.stop_note = f"exit status {code} after SIGTERM"
            for run in report.runs:
                if run.result.requests == 0 and report.status == "ok":
                    report.status = "failed"
                    report.reason = "no request succeeded: " + ", ".join(
                        f"{v} x {k}" for k, v in run.result.errors.most_common(3)
                    )
    return reports


# --------------------------------------------------------------------------- output


def measured_targets(reports: list[TargetReport]) -> list[MeasuredTarget]:
    """Each target's ratio and p99 on the first socket kind measured, for the goals."""
    seen: dict[str, MeasuredTarget] = {}
    for report in reports:
        if report.status != "ok" or report.target.name in seen:
            continue
        ratio = report.comparison.median_ratio if report.comparison else float("nan")
        p99 = report.median(lambda m: m.result.latency.p99)
        seen[report.target.name] = MeasuredTarget(report.target.name, ratio, p99)
    return list(seen.values())


def _ratio(report: TargetReport) -> str:
    comp = report.comparison
    if comp is None or not comp.ratios:
        return "ref" if report.target.reference and report.runs else ""
    low, high = comp.spread
    return f"{comp.median_ratio:.2f} ({low:.2f}-{high:.2f})"


def table(reports: list[TargetReport], kind: Kind) -> str:
    unit = "msg/s" if kind == "milter" else "req/s"
    headers = [
        "target",
        "socket",
        unit,
        "p50 ms",
        "p99 ms",
        "peak RSS MB",
        "svc CPU",
        "client CPU",
        "vs ref",
    ]
    rows = []
    for r in reports:
        if r.target.kind != kind:
            continue
        if r.status == "skipped":
            rows.append([r.target.name, r.socket, "skipped", "", "", "", "", "", ""])
            continue
        if not r.runs:
            rows.append([r.target.name, r.socket, r.status, "", "", "", "", "", ""])
            continue
        rows.append(
            [
                r.target.name + ("" if r.status == "ok" else f" ({r.status})"),
                r.socket,
                fmt_rate(r.median(lambda m: m.result.rate)),
                fmt_ms(r.median(lambda m: m.result.latency.p50)),
                fmt_ms(r.median(lambda m: m.result.latency.p99)),
                f"{r.peak_rss / 2**20:.1f}",
                f"{r.median(lambda m: m.service_cpu):.2f}",
                f"{r.median(lambda m: m.result.client_cpu):.2f}",
                _ratio(r),
            ]
        )
    return format_table(headers, rows)


def details(reports: list[TargetReport]) -> list[str]:
    lines = []
    for r in reports:
        if r.status != "ok" or r.stop_note:
            lines.append(
                f"{r.target.name} ({r.socket}): {r.status}"
                + (f": {r.reason}" if r.reason else "")
                + (f"; {r.stop_note}" if r.stop_note else "")
            )
        if not r.runs:
            continue
        outcomes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for m in r.runs:
            outcomes += m.result.outcomes
            errors += m.result.errors
        total = sum(outcomes.values()) or 1
        actions = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in outcomes.most_common(6))
        line = f"{r.target.name} ({r.socket}): {actions}"
        negotiated = r.runs[-1].result.extra.get("negotiated")
        if negotiated:
            line += f"; negotiated {negotiated}"
        edits = r.runs[-1].result.extra.get("edits_per_message")
        if edits:
            line += "; edits/msg " + ", ".join(f"{k} {v}" for k, v in edits.items())
        if errors:
            line += "; errors " + ", ".join(f"{v} x {k}" for k, v in errors.most_common(3))
        lines.append(line)
    return lines


def nagle_notes(reports: list[TargetReport]) -> list[str]:
    """Spot the Nagle + delayed-ACK stall: ~40 ms per message over TCP only.

    A milter that answers end of message with two writes (a header edit, then accept)
    without TCP_NODELAY waits for the MTA's delayed ACK between them.  Postfix sees the
    same stall, so it is reported, not worked around in the client.
    """
    notes = []
    by_target: dict[str, dict[str, float]] = {}
    for r in reports:
        if r.runs:
            by_target.setdefault(r.target.name, {})[r.socket] = r.median(
                lambda m: m.result.latency.p50
            )
    for name, p50 in by_target.items():
        unix, inet = p50.get("unix"), p50.get("inet")
        if unix is not None and inet is not None and 0.035 <= inet <= 0.25 and inet > 4 * unix:
            notes.append(
                f"{name}: p50 over inet {fmt_ms(inet)} ms vs {fmt_ms(unix)} ms over unix: "
                "looks like Nagle + delayed ACK (two small writes per reply); the service "
                "should set TCP_NODELAY on its sockets"
            )
    return notes


def machine_note(reports: list[TargetReport]) -> str | None:
    """How busy the machine was with things other than this benchmark."""
    others = []
    for r in reports:
        for m in r.runs:
            others.append(max(0.0, m.machine_cpu - m.service_cpu - m.result.client_cpu))
    if not others:
        return None
    median = statistics.median(others)
    cores = os.cpu_count() or 1
    note = f"other load on the machine during runs: median {median:.2f} of {cores} cores"
    if median > 0.25:
        note += " (numbers are depressed by it; compare ratios, not absolutes)"
    return note


def to_json(ctx: Context, reports: list[TargetReport]) -> dict[str, Any]:
    return {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in ctx.settings.__dict__.items()
        },
        "message_bytes": len(ctx.message),
        "notes": ctx.notes,
        "targets": [
            {
                "target": r.target.name,
                "kind": r.target.kind,
                "socket": r.socket,
                "status": r.status,
                "reason": r.reason,
                "peak_rss_bytes": r.peak_rss,
                "ratio_vs_reference": r.comparison.ratios if r.comparison else None,
                "runs": [
                    {
                        **m.result.as_dict(),
                        "service_cpu_cores": round(m.service_cpu, 3),
                        "machine_cpu_cores": round(m.machine_cpu, 3),
                    }
                    for m in r.runs
                ],
            }
            for r in reports
        ],
    }


# --------------------------------------------------------------------------- main


def prepare_message(workdir: Path, notes: list[str]) -> tuple[bytes, str | None]:
    """The ~6 KB test message, DKIM-signed for example.org; returns it and the DNS key."""
    message = generate_message(sender="alice@example.org", recipient=f"bob@{world.RECEIVER_DOMAIN}")
    try:
        key = generate_rsa_key(workdir / "dkim.key")
        public = dkim_public_key_b64(key)
        return dkim_sign(message, "example.org", world.DKIM_SELECTOR, key), public
    except (OSError, subprocess.CalledProcessError, ImportError) as exc:
        notes.append(f"test message is not DKIM-signed ({exc})")
        return message, None


def main(argv: Sequence[str] | None = None) -> int:
    from bench import inbound, scoring, tlspolicy_bench  # imported here: they build on this module

    settings = parse_settings(argv)
    targets = select_targets(settings.only)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mailward-bench-"))
    ctx = Context(workdir, settings, message=b"", dns_port=None)
    dns: DnsServer | None = None
    dkim_key: str | None = None
    reports: list[TargetReport] = []
    try:
        ctx.message, dkim_key = prepare_message(workdir, ctx.notes)
        if DnsServer.available():
            dns = DnsServer(workdir / "dns", dkim_key)
            dns.start()
            ctx.dns_port = dns.port
        else:
            ctx.notes.append("nsd not installed: services resolve with the system resolver")
        with RssSampler() as sampler:
            for kind in ("milter", "policy"):
                of_kind = [t for t in targets if t.kind == kind and not inbound.grouped(t)
                           and not tlspolicy_bench.grouped(t)
                           and not scoring.grouped(t)]
                if not of_kind:
                    continue
                for socket_kind in settings.sockets:
                    reports += run_group(ctx, sampler, kind, socket_kind, of_kind)
            reports += inbound.run_groups(ctx, sampler, targets)  # vs Rspamd, vs OpenDKIM
            reports += tlspolicy_bench.run_groups(ctx, sampler, targets)
            reports += scoring.run_groups(ctx, sampler, targets)  # spam scoring vs Rspamd
    finally:
        if dns is not None:
            dns.stop()
        if settings.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    s = settings
    signed = "DKIM-signed " if dkim_key else ""
    headings: dict[Kind, str] = {
        "milter": f"Milter: {s.concurrency} concurrent sessions, {len(ctx.message):,} byte "
        f"message ({signed}example.org, from 192.0.2.10), {s.messages_per_connection} "
        f"message(s) per session; latency from MAIL to the final reply; "
        f"{s.milter_duration:g} s per run, {s.rounds} A/B rounds",
        "policy": f"Policy: {s.concurrency} persistent connections, protocol_state=RCPT, "
        + ("mixed clients/senders (bench.world)" if s.policy_workload == "mix" else
           "one sender domain, a one-TXT-lookup SPF record (--policy-workload one-lookup)")
        + f"; {s.policy_duration:g} s per run, "
        f"{s.rounds} A/B rounds; Mailward policyd with {s.policyd_workers} worker(s)",
    }
    print()
    for kind, heading in headings.items():
        shown = [r for r in reports if r.target.kind == kind and not inbound.grouped(r.target)
                 and not tlspolicy_bench.grouped(r.target)
                 and not scoring.grouped(r.target)]
        if shown:
            print(heading)
            print(table(shown, kind))
            print()
    inbound_tables = inbound.tables(ctx, reports)
    if inbound_tables:
        print(inbound_tables + "\n")
    tls_table = tlspolicy_bench.tables(ctx, reports)
    if tls_table:
        print(tls_table + "\n")
    scoring_tables = scoring.tables(ctx, reports)
    if scoring_tables:
        print(scoring_tables + "\n")
    print(
        "peak RSS: sum over the service's process tree, sampled every 0.25 s; svc/client "
        "CPU: cores used during a run; vs ref: median of A/B pair ratios (range)"
    )
    seen: dict[str, str] = {r.target.name: r.target.description for r in reports}
    print("targets: " + "; ".join(f"{name}: {text}" for name, text in seen.items()))
    for line in details(reports):
        print("  " + line)
    for line in goal_lines(measured_targets(reports), settings.policy_workload):
        print("goal: " + line)
    note = machine_note(reports)
    for line in [*ctx.notes, *nagle_notes(reports), *([note] if note else [])]:
        print("note: " + line)
    print(f"total time {time.monotonic() - started:.0f} s")
    if settings.json_path:
        settings.json_path.write_text(json.dumps(to_json(ctx, reports), indent=2))
    failed = [r for r in reports if r.status == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    # Run the one `bench.run` module that bench.inbound imports, not a `__main__` twin.
    from bench import run

    sys.exit(run.main())
