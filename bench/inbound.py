"""Inbound authentication benchmarks: Mailward next to Rspamd and OpenDKIM.

The issue "Inbound authentication" (DESIGN.md, "Performance") asks for two comparisons,
same message, same machine, 8 concurrent sessions over a unix socket, DNS from the
benchmark's authoritative server for everyone:

* **inbound-auth**: ``mailward-inbound`` (SPF, DKIM, ARC, DMARC and iprev, the defaults)
  against ``rspamd-inbound`` (Rspamd's milter proxy configured for the same checks,
  see `bench.peers.rspamd`); plus ``mailward-inbound-w2``, the same with
  ``[milter] workers = 2``, because Rspamd's proxy and scanner are two processes.
* **dkim-verify**: ``mailward-dkim-verify`` (only ``[dkim] verify``) against
  ``opendkim-verify`` (OpenDKIM ``Mode v``); plus ``mailward-dkim-verify-w2``
  (optional: ``--only`` it), since OpenDKIM's threads use every core.

Each comparison is its own A/B group (`bench.run.run_group`: the peer is the reference,
measured alternately with each Mailward target), so the "vs ref" column is against the
peer of that group, not against the empty milter.

The message is the benchmark's 6.5 KB message, DKIM-signed for example.org, with one
ARC set added by example.org's outbound relay (``mail1.example.org``, sealing with the
same published key, as some providers seal their outgoing mail; 7.9 KB in all), so that
ARC verification does real work: two RSA verifications for the set, besides the DKIM
signature.  It is
sent by 192.0.2.10, one of example.org's servers (bench.world): SPF pass, a
forward-confirmed PTR (iprev pass), and DMARC ``p=reject`` passing through aligned
DKIM and SPF.

A benchmark that measures failures is worthless, so every target states the
Authentication-Results verdicts each message must get (``expect``).  Before measuring,
one message is sent and its answer checked (the target fails to start otherwise); after
measuring, the load client's count of ``method=result`` pairs
(`bench.milter_load.auth_results`) must show every expected verdict on every message,
or the target is reported as failed with the counts.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench import world
from bench.milter_client import (
    AddHeader,
    ClientInfo,
    Envelope,
    InsertHeader,
    Message,
    MilterClient,
    PreparedMessage,
)
from bench.milter_load import AUTH_RESULTS, auth_results
from bench.peers import rspamd
from bench.procs import RssSampler, ServiceProcess
from bench.run import (
    Context,
    Kind,
    Target,
    TargetReport,
    libmilter_socket,
    mailward_config,
    mailward_unavailable,
    milter_probe,
    run_group,
    table,
)
from bench.sockets import SocketSpec, free_tcp_port
from bench.stats import fmt_rate

# What bench.run.measure sends: the sample check must send the same.
SENDER = "alice@example.org"
RECIPIENT = f"bob@{world.RECEIVER_DOMAIN}"
CLIENT_IP = "192.0.2.10"
CLIENT_NAME = "mail10.example.org"  # its PTR (world.ORG_SERVERS), also its HELO

#: The private key bench.run.prepare_message signs the message with (published at
#: world.DKIM_SELECTOR._domainkey.example.org); the ARC set is sealed with it too.
SIGNING_KEY = "dkim.key"
SEALER = "mail1.example.org"  # authserv-id of the sealer's Authentication-Results

GROUP_AUTH = "inbound-auth"
GROUP_DKIM = "dkim-verify"
GROUPS = {
    GROUP_AUTH: "SPF + DKIM + ARC + DMARC, Mailward against Rspamd",
    GROUP_DKIM: "DKIM verification alone, Mailward against OpenDKIM",
}

AUTH_EXPECT = ("spf=pass", "dkim=pass", "arc=pass", "dmarc=pass")

#: Every authentication check on, spelled out (the defaults, see
#: deploy/mailward.example.toml).  Spam scoring off: the Rspamd peer of this group runs
#: only its dkim, spf, dmarc and arc modules, no rules; scoring against Rspamd's rules is
#: the scoring group's comparison (bench/scoring.py).
MAILWARD_INBOUND = """
[spf]
enabled = true
helo = true

[dkim]
verify = true

[arc]
verify = true

[iprev]
enabled = true

[dmarc]
enabled = true

[scoring]
enabled = false
"""

#: DKIM verification and nothing else: OpenDKIM scores no spam, so neither does this
#: target ([scoring] off also turns off the header and content heuristics that feed it).
MAILWARD_DKIM_ONLY = """
[spf]
enabled = false

[dkim]
verify = true

[arc]
verify = false

[iprev]
enabled = false

[dmarc]
enabled = false

[scoring]
enabled = false
"""


# --------------------------------------------------------------------------- the message


def arc_seal(message: bytes, key: Path, *, timestamp: int | None = None) -> bytes:
    """`message` with the sealer's Authentication-Results and one ARC set (i=1) on top.

    Sealed by example.org (selector world.DKIM_SELECTOR) with `key`, as its outbound
    relay would seal mail it passes on: the ARC-Authentication-Results copies what the
    relay recorded (the submission's SMTP AUTH and the DKIM signature it made).
    """
    import dkim  # dkimpy, as bench.messages.dkim_sign

    results = (
        f"Authentication-Results: {SEALER};\r\n"
        f"\tauth=pass smtp.auth={SENDER};\r\n"
        f"\tdkim=pass header.d=example.org header.s={world.DKIM_SELECTOR}\r\n"
    ).encode()
    with_results = results + message
    fields = dkim.arc_sign(
        with_results,
        world.DKIM_SELECTOR.encode(),
        b"example.org",
        key.read_bytes(),
        SEALER.encode(),
        timestamp=timestamp,
    )
    if len(fields) != 3:
        raise RuntimeError(f"dkimpy's arc_sign made {len(fields)} header fields, not 3")
    return b"".join(fields) + with_results


def inbound_message(ctx: Context) -> bytes:
    """The ARC-sealed variant of the benchmark's message (made once per run)."""
    path = ctx.workdir / "inbound.eml"
    if not path.exists():
        path.write_bytes(arc_seal(ctx.message, ctx.workdir / SIGNING_KEY))
    return path.read_bytes()


# --------------------------------------------------------------------------- checking


class VerdictMismatch(RuntimeError):
    """The service did not verify the benchmark message as it should."""


def missing(found: Iterable[str], expect: Sequence[str]) -> list[str]:
    have = set(found)
    return [e for e in expect if e not in have]


def sample_check(spec: SocketSpec, message: bytes, expect: Sequence[str]) -> str:
    """Send one message as the load will; return its Authentication-Results, folded.

    Raises VerdictMismatch unless the message is accepted with every `expect`ed result.
    """
    client_info = ClientInfo(
        address=CLIENT_IP, hostname=CLIENT_NAME, helo=CLIENT_NAME, myhostname=world.RECEIVER_HOST
    )
    with MilterClient(spec, timeout=30.0) as client:
        decided = client.open(client_info)
        if decided is not None:
            raise VerdictMismatch(f"the session was decided at {decided.stage}: {decided.label}")
        result = client.send_message(
            Envelope(SENDER, (RECIPIENT,)), PreparedMessage(Message.parse(message))
        )
    headers = [
        " ".join(m.value.split())
        for m in result.modifications
        if isinstance(m, AddHeader | InsertHeader) and m.name.lower() == AUTH_RESULTS
    ]
    found = [r for h in headers for r in auth_results(h)]
    lacking = missing(found, expect)
    if not result.accepted or lacking:
        raise VerdictMismatch(
            f"answer {result.label}"
            + (f", lacking {', '.join(lacking)}" if lacking else "")
            + "; Authentication-Results: "
            + (" | ".join(headers) or "none")
        )
    return " | ".join(headers)


def load_shortfalls(extra: dict[str, object], expect: Sequence[str]) -> list[str]:
    """Expected verdicts that some messages of a load run did not get."""
    messages = extra.get("messages", 0)
    counts = extra.get("auth_results", {})
    assert isinstance(messages, int) and isinstance(counts, dict)
    if not messages:
        return []
    return [
        f"{e} on {counts.get(e, 0)} of {messages} messages"
        for e in expect
        if counts.get(e, 0) < messages
    ]


# --------------------------------------------------------------------------- targets


class InboundTarget(Target):
    """A target of one of this module's comparison groups."""

    kind: Kind = "milter"
    group = ""
    expect: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.samples: dict[str, str] = {}  # socket kind -> the sample's A-R

    def unavailable(self, ctx: Context) -> str | None:
        if ctx.dns_port is None:
            return "needs the bench's nsd (nsd not installed)"
        if not (ctx.workdir / SIGNING_KEY).exists():
            return "the test message is not DKIM-signed"
        return None

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        raise NotImplementedError

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        service = self.start_service(ctx, spec)
        try:
            self.samples[spec.kind] = sample_check(spec, ctx.message, self.expect)
        except BaseException:
            service.stop()
            raise
        return service


class RspamdInbound(InboundTarget):
    name = "rspamd-inbound"
    group = GROUP_AUTH
    reference = True
    expect = AUTH_EXPECT
    description = (
        "Rspamd (Debian) milter proxy + normal worker, modules dkim, spf, dmarc, arc and "
        "milter_headers (A-R) only, no rules/statistics/network lists; bench.peers.rspamd"
    )

    def unavailable(self, ctx: Context) -> str | None:
        return rspamd.unavailable() or super().unavailable(ctx)

    #: Seconds to wait for readiness: a start with a cold hyperscan cache compiles its
    #: databases first (~20 s on the 2-core machines, more when they are busy).
    START_TIMEOUT = 240.0

    def argv(self, ctx: Context, spec: SocketSpec, directory: Path) -> list[str]:
        return [
            sys.executable, "-m", "bench.peers.rspamd", "--socket", str(spec),
            "--dns", f"127.0.0.1:{ctx.dns_port}", "--dir", str(directory),
            "--hs-cache", str(self.hs_cache(ctx)),
        ]  # fmt: skip

    @staticmethod
    def hs_cache(ctx: Context) -> Path:
        return ctx.workdir / "rspamd-hyperscan"

    def warm_up(self, ctx: Context) -> None:
        """Start and stop Rspamd once if its hyperscan cache is cold.

        Production Rspamd restarts with the databases cached in /var/lib/rspamd.  A cold
        start compiles them in the main process before it forks, and every worker then
        inherits the compiler's heap: ~235 MB resident each instead of ~40 MB, so peak
        RSS would measure the benchmark's empty temporary directory, not Rspamd.
        """
        cache = self.hs_cache(ctx)
        if cache.is_dir() and any(cache.iterdir()):
            return
        spec = ctx.socket_for(f"{self.name}-warmup", "unix")
        argv = self.argv(ctx, spec, ctx.workdir / f"{self.name}-warmup")
        log = ctx.workdir / "logs" / f"{self.name}-warmup.log"
        warm = ServiceProcess(f"{self.name}-warmup", argv, log=log, env=ctx.env, cwd=ctx.workdir)
        warm.start()
        try:
            warm.wait_ready(milter_probe(spec), timeout=self.START_TIMEOUT)
        finally:
            warm.stop()

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        self.warm_up(ctx)
        argv = self.argv(ctx, spec, ctx.workdir / f"{self.name}-{spec.kind}")
        return self._start(ctx, spec, argv, timeout=self.START_TIMEOUT)


class MailwardInbound(InboundTarget):
    name = "mailward-inbound"
    group = GROUP_AUTH
    expect: tuple[str, ...] = (*AUTH_EXPECT, "iprev=pass")
    workers: int | None = None  # None: --mailward-workers
    engine: str | None = None  # None: --mailward-engine
    checks = MAILWARD_INBOUND
    description = (
        "python -m mailward milter: SPF (MAIL FROM + HELO), DKIM, ARC, DMARC, iprev; "
        "workers from --mailward-workers"
    )

    def unavailable(self, ctx: Context) -> str | None:
        return mailward_unavailable(ctx) or super().unavailable(ctx)

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        if self.workers is not None:
            settings = dataclasses.replace(ctx.settings, mailward_workers=self.workers)
            ctx = dataclasses.replace(ctx, settings=settings)
        if self.engine is not None:
            settings = dataclasses.replace(ctx.settings, mailward_engine=self.engine)
            ctx = dataclasses.replace(ctx, settings=settings)
        unused = SocketSpec("inet", host="127.0.0.1", port=free_tcp_port())
        config = mailward_config(ctx, f"{self.name}-{spec.kind}", spec, unused, self.checks)
        argv = [sys.executable, "-m", "mailward", "milter", "-c", str(config)]
        return self._start(ctx, spec, argv)


class MailwardInboundW2(MailwardInbound):
    name = "mailward-inbound-w2"
    workers = 2
    description = "mailward-inbound with [milter] workers = 2"


class MailwardInboundLibmilter(MailwardInbound):
    name = "mailward-inbound-libmilter"
    optional = True
    engine = "libmilter"
    description = ("mailward-inbound with [milter] engine = \"libmilter\" (pymilter): "
                   "what Mailward's own protocol engine replaced")


def opendkim_unavailable() -> str | None:
    """None if Debian's OpenDKIM with libunbound is installed (port-capable resolver)."""
    if shutil.which("opendkim") is None:
        return "opendkim not installed (Debian: opendkim)"
    try:
        version = subprocess.run(
            ["opendkim", "-V"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`opendkim -V` failed: {exc}"
    if "USE_UNBOUND" not in version:
        return "opendkim built without libunbound: its resolver cannot reach the bench's nsd"
    return None


class OpenDkimVerify(InboundTarget):
    name = "opendkim-verify"
    group = GROUP_DKIM
    reference = True
    expect = ("dkim=pass",)
    description = (
        "OpenDKIM (Debian) Mode v, libunbound forwarding to the bench's nsd "
        "(Nameservers 127.0.0.1@PORT; its cache in front), one thread per session"
    )

    def unavailable(self, ctx: Context) -> str | None:
        return opendkim_unavailable() or super().unavailable(ctx)

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        base = ctx.workdir / f"{self.name}-{spec.kind}"
        base.mkdir(exist_ok=True)
        config = base / "opendkim.conf"
        # `Nameservers` goes to libunbound's ub_ctx_set_fwd, which takes ADDRESS@PORT.
        # Not `ResolverConfiguration` (an unbound.conf): OpenDKIM parses it again in
        # concurrent sessions, and libunbound's parser is not thread-safe ("fatal flex
        # scanner internal error"; OpenDKIM exits at the second concurrent session).
        config.write_text(
            "Mode v\n"
            f"Socket {libmilter_socket(spec)}\n"
            f"PidFile {base / 'opendkim.pid'}\n"
            f"AuthservID {world.RECEIVER_HOST}\n"
            "AlwaysAddARHeader yes\n"
            f"Nameservers 127.0.0.1@{ctx.dns_port}\n"
            "Syslog no\nUMask 000\n"
        )
        return self._start(ctx, spec, ["opendkim", "-f", "-x", str(config)])


class MailwardDkimVerify(MailwardInbound):
    name = "mailward-dkim-verify"
    group = GROUP_DKIM
    expect = ("dkim=pass",)
    checks = MAILWARD_DKIM_ONLY
    description = (
        "python -m mailward milter with only [dkim] verify (spf, iprev, dmarc, scoring "
        "off, [arc] verify = false); workers from --mailward-workers"
    )


class MailwardDkimVerifyW2(MailwardDkimVerify):
    name = "mailward-dkim-verify-w2"
    optional = True
    workers = 2
    description = "mailward-dkim-verify with [milter] workers = 2"


def all_targets() -> list[Target]:
    """This module's targets, each group's reference first."""
    return [
        RspamdInbound(),
        MailwardInbound(),
        MailwardInboundW2(),
        MailwardInboundLibmilter(),
        OpenDkimVerify(),
        MailwardDkimVerify(),
        MailwardDkimVerifyW2(),
    ]


def grouped(target: Target) -> bool:
    """Whether `target` is measured in one of this module's groups (not against the
    empty milter)."""
    return isinstance(target, InboundTarget)


# --------------------------------------------------------------------------- running


def inbound_sockets(ctx: Context) -> tuple[str, ...]:
    """Socket types for these groups: BENCH_INBOUND_SOCKETS, else unix (the issue's
    setting) when the run includes it, else the run's own."""
    text = os.environ.get("BENCH_INBOUND_SOCKETS", "")
    if text:
        return tuple(s.strip() for s in text.split(",") if s.strip() in ("unix", "inet"))
    return ("unix",) if "unix" in ctx.settings.sockets else ctx.settings.sockets


def verify_runs(report: TargetReport) -> None:
    """Fail a report whose load runs did not get the expected verdicts on every message."""
    target = report.target
    if report.status != "ok" or not isinstance(target, InboundTarget):
        return
    for number, run in enumerate(report.runs, 1):
        short = load_shortfalls(run.result.extra, target.expect)
        refused = {k: v for k, v in run.result.outcomes.items() if k != "accept"}
        if short or refused:
            report.status = "failed"
            report.reason = f"run {number}: " + "; ".join(
                short + [f"{v} x {k}" for k, v in refused.items()]
            )
            return


def run_groups(ctx: Context, sampler: RssSampler, targets: Sequence[Target]) -> list[TargetReport]:
    """Measure this module's targets (those among `targets`), group by group."""
    ours = [t for t in targets if isinstance(t, InboundTarget)]
    if not ours:
        return []
    message = ctx.message
    if (ctx.workdir / SIGNING_KEY).exists():
        try:
            message = inbound_message(ctx)
        except Exception as exc:  # noqa: BLE001 - the run goes on, measuring without ARC
            ctx.notes.append(f"inbound message not ARC-sealed ({exc}): arc=pass will fail")
    sub = dataclasses.replace(ctx, message=message)
    reports: list[TargetReport] = []
    for group in GROUPS:
        members = [t for t in ours if t.group == group]
        if not members:
            continue
        for socket_kind in inbound_sockets(ctx):
            print(f"[{group}]", file=sys.stderr, flush=True)
            group_reports = run_group(sub, sampler, "milter", socket_kind, list(members))
            for report in group_reports:
                verify_runs(report)
            reports += group_reports
    return reports


# --------------------------------------------------------------------------- output


def tables(ctx: Context, reports: Sequence[TargetReport]) -> str:
    """The inbound comparison tables with their headings ("" when none ran)."""
    ours = [r for r in reports if grouped(r.target)]
    if not ours:
        return ""
    s = ctx.settings
    sizes = {m.result.extra.get("message_bytes") for r in ours for m in r.runs}
    size = next((f"{v:,} byte" for v in sizes if isinstance(v, int)), "~6.5 KB")
    lines = [
        f"Inbound authentication: {s.concurrency} concurrent sessions, {size} message "
        f"(DKIM-signed by example.org, one ARC set sealed by example.org, DMARC p=reject), "
        f"from {CLIENT_IP} ({CLIENT_NAME}: SPF pass, PTR confirmed); {s.milter_duration:g} s "
        f"per run, {s.rounds} A/B rounds; DNS: the bench's nsd for every service",
    ]
    for group, title in GROUPS.items():
        members = [r for r in ours if getattr(r.target, "group", "") == group]
        if not members:
            continue
        ref = next((r.target.name for r in members if r.target.reference), None)
        title += f" (vs ref: against {ref})" if ref else ""
        lines += ["", title, table(members, "milter")]
    lines.append("")
    lines.append("verdicts (one sample message; every message of every run is checked too):")
    seen: set[str] = set()
    for r in ours:
        target = r.target
        assert isinstance(target, InboundTarget)
        if target.name in seen:
            continue
        seen.add(target.name)
        sample = next(iter(target.samples.values()), "")
        counts = r.runs[-1].result.extra.get("auth_results", {}) if r.runs else {}
        per_message = ""
        if isinstance(counts, dict) and r.runs:
            messages = r.runs[-1].result.extra.get("messages", 0)
            if isinstance(messages, int) and messages:
                per_message = ", ".join(f"{k} {v / messages:.3f}" for k, v in counts.items())
        lines.append(
            f"  {target.name}: expects {', '.join(target.expect)}"
            + (f"; per message in the last run: {per_message}" if per_message else "")
        )
        if sample:
            lines.append(f"    A-R: {sample}")
    rates = _ratio_lines(ours)
    if rates:
        lines += ["", *rates]
    return "\n".join(lines)


def _ratio_lines(reports: Sequence[TargetReport]) -> list[str]:
    """One sentence per comparison: B / A, and the rates it came from."""
    out = []
    for r in reports:
        comp = r.comparison
        if comp is None or not comp.ratios:
            continue
        a = [fmt_rate(m.result.rate) for m in comp.a]
        b = [fmt_rate(m.result.rate) for m in comp.b]
        out.append(
            f"{comp.describe()} [{r.socket}; {comp.a_name}: {', '.join(a)}; "
            f"{comp.b_name}: {', '.join(b)} msg/s]"
        )
    return out
