"""The full inbound pipeline with spam scoring: Mailward next to Rspamd (issue 10).

Issue 10 asks for "the full inbound pipeline with scoring against Rspamd with the
equivalent modules on (DNS lists served by the same nsd), one process each and two:
target >= 1.0x, p99 no worse; per-message scoring cost printed".  The comparison group
``scoring``:

* ``rspamd-scoring`` (the reference): Debian's Rspamd, proxy + one normal worker, the
  authentication modules of the inbound comparison plus ``rbl`` with the bench's two
  private lists, the header/content rules it ships, ``mime_types`` and ``phishing``,
  ``milter_headers`` writing X-Spam-Status/X-Spam-Level/X-Spamd-Result
  (`bench.peers.rspamd`, ``--profile scoring``);
* ``mailward-scoring``: one milter worker with SPF, DKIM, ARC, iprev, DMARC, and
  ``[scoring]`` with ``[dnsbl]`` and ``[urilist]`` on the same two lists plus the MIME,
  GTUBE, header and content heuristics (on with scoring);
* ``mailward-scoring-w2`` and ``rspamd-scoring-w2`` (two workers / two normal workers),
  the latter measured against the single-process reference like every other target.

The message is a spam: a multipart/alternative advertisement from deals@example.com,
sent by 203.0.113.66 (no PTR, in no SPF record: SPF softfail, DMARC fail for p=none,
iprev fail), a client listed in the DNSBL (127.0.0.2: RBL_SBL), linking to
deals.example.com, whose registrable domain is listed in the URI list (127.0.1.2:
URIBL_LISTED).  Both filters must say so on every message: ``X-Spam-Status: Yes`` and
both list symbols (Mailward's ``tests=`` list, Rspamd's X-Spamd-Result), counted by the
load client (`bench.milter_load.spam_tokens`); a run where one message lacks one is
reported as failed, and a sample message is checked before measuring.

The score stays under both filters' reject threshold (15), so both add headers and
the MTA accepts: the comparison measures scoring, not the shortcut of a rejection.

Per-message scoring cost: Mailward's own check latency histograms
(``mailward_check_duration_seconds``, read from the milter's metrics endpoint after each
run) for the checks that exist only for scoring (mime, gtube, dnsbl, urilist, headers,
content), next to the whole engine's time per message
(``mailward_milter_message_duration_seconds``).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench import world
from bench.inbound import RspamdInbound, load_shortfalls
from bench.milter_client import (
    AddHeader,
    ClientInfo,
    Envelope,
    InsertHeader,
    Message,
    MilterClient,
    PreparedMessage,
)
from bench.milter_load import SPAM_STATUS, SPAMD_RESULT, spam_tokens
from bench.peers import rspamd
from bench.procs import RssSampler, ServiceProcess
from bench.run import (
    Context,
    Kind,
    Measurement,
    Target,
    TargetReport,
    mailward_config,
    mailward_unavailable,
    run_group,
    table,
)
from bench.sockets import SocketSpec, free_tcp_port
from bench.stats import fmt_rate

SENDER = f"deals@{world.LISTED_LINK_DOMAIN}"
RECIPIENT = f"bob@{world.RECEIVER_DOMAIN}"
CLIENT_IP = world.LISTED_CLIENT
CLIENT_NAME = f"mail.{world.LISTED_LINK_DOMAIN}"  # HELO (the client has no PTR)

GROUP = "scoring"
TITLE = "Inbound pipeline with spam scoring (DNSBL + URI list + rules), Mailward against Rspamd"

#: What every message must get from both: scored as spam, both lists hit.
EXPECT = (f"{SPAM_STATUS}=yes", "symbol=RBL_SBL", "symbol=URIBL_LISTED")

#: The checks that exist for scoring only: their summed latency is Mailward's scoring cost.
SCORING_CHECKS = ("mime", "gtube", "bayes", "dnsbl", "rhsbl", "urilist", "headers", "content")


def mailward_checks(ctx: Context) -> str:
    """The Mailward configuration of this comparison (after bench.run's fixed keys)."""
    return f"""
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
enabled = true
required = 6.0
reject = 15.0

[dnsbl]
enabled = true
timeout = 2.0

[[dnsbl.lists]]
zone = "{world.DNSBL_ZONE}"
name = "bench"
symbol = "RBL_LISTED"
[dnsbl.lists.codes]
"127.0.0.2" = "RBL_SBL"

[urilist]
enabled = true
timeout = 2.0

[[urilist.lists]]
zone = "{world.URIBL_ZONE}"
name = "bench"
symbol = "URIBL_LISTED"
"""


# --------------------------------------------------------------------------- the message


def generate_spam() -> bytes:
    """The advertisement (deterministic; ~4 KB, CRLF line ends)."""
    link = f"http://deals.{world.LISTED_LINK_DOMAIN}/offer?id=2026"
    paragraphs = [
        "Dear customer, our spring clearance has started and you are one of the few "
        "selected to receive an exclusive discount on premium watches and bags.",
        "Every item ships free within 24 hours. Stock is limited and the offer ends "
        "this Friday, so do not wait: reserve yours today before it is gone.",
        "Thousands of satisfied buyers trust our store. Payment is safe and simple, "
        "and every order comes with our no-questions-asked guarantee.",
    ] * 4
    plain = "\r\n\r\n".join(paragraphs) + f"\r\n\r\nOrder now: {link}\r\n"
    html = "\r\n".join(f"<p>{p}</p>" for p in paragraphs)
    head = [
        f"Received: from {CLIENT_NAME} (unknown [{CLIENT_IP}])",
        f"\tby {CLIENT_NAME} with SMTP id 9Zq1bC2kLmz7",
        f"\tfor <{RECIPIENT}>; Tue, 03 Mar 2026 09:20:11 +0100",
        f'From: "Premium Deals" <{SENDER}>',
        f"To: <{RECIPIENT}>",
        "Subject: Exclusive spring discount on premium watches",
        "Date: Tue, 03 Mar 2026 09:20:10 +0100",
        f"Message-ID: <20260303082010.7F3A@{CLIENT_NAME}>",
        "MIME-Version: 1.0",
        'Content-Type: multipart/alternative; boundary="=_deal_2026"',
    ]
    body = "\r\n".join([
        "This is a multi-part message in MIME format.",
        "",
        "--=_deal_2026",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 7bit",
        "",
        plain,
        "--=_deal_2026",
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: 7bit",
        "",
        "<html><body>",
        html,
        f'<p><a href="{link}">Order now</a></p>',
        "</body></html>",
        "",
        "--=_deal_2026--",
        "",
    ])
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("utf-8")


def scoring_message(ctx: Context) -> bytes:
    path = ctx.workdir / "scoring.eml"
    if not path.exists():
        path.write_bytes(generate_spam())
    return path.read_bytes()


# --------------------------------------------------------------------------- checking


class VerdictMismatch(RuntimeError):
    """The service did not score the benchmark message as it should."""


def sample_check(spec: SocketSpec, message: bytes, expect: Sequence[str]) -> str:
    """Send one message as the load will; return its spam headers, folded.

    Raises VerdictMismatch unless it is accepted with every `expect`ed token.
    """
    client_info = ClientInfo(address=CLIENT_IP, hostname="unknown", helo=CLIENT_NAME,
                             myhostname=world.RECEIVER_HOST)
    with MilterClient(spec, timeout=30.0) as client:
        decided = client.open(client_info)
        if decided is not None:
            raise VerdictMismatch(f"the session was decided at {decided.stage}: {decided.label}")
        result = client.send_message(
            Envelope(SENDER, (RECIPIENT,)), PreparedMessage(Message.parse(message))
        )
    headers = [
        (m.name, " ".join(m.value.split()))
        for m in result.modifications
        if isinstance(m, AddHeader | InsertHeader)
        and m.name.lower() in (SPAM_STATUS, SPAMD_RESULT, "x-spam-score", "x-spam-flag")
    ]
    found = {t for name, value in headers for t in spam_tokens(name, value)}
    lacking = [e for e in expect if e not in found]
    shown = " | ".join(f"{name}: {value}" for name, value in headers) or "none"
    if not result.accepted or lacking:
        raise VerdictMismatch(
            f"answer {result.label}"
            + (f", lacking {', '.join(lacking)}" if lacking else "")
            + f"; spam headers: {shown}"
        )
    return shown


def spam_shortfalls(extra: Mapping[str, object], expect: Sequence[str]) -> list[str]:
    """Expected tokens that some messages of a load run did not get."""
    renamed = {"messages": extra.get("messages", 0), "auth_results": extra.get("spam_results", {})}
    return load_shortfalls(renamed, expect)


# --------------------------------------------------------------------------- costs


_SAMPLE = re.compile(r'^(mailward_\w+?)(_sum|_count)(?:\{([^}]*)\})?\s+(\S+)$')


def read_costs(text: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each check's latency and of the whole message, from /metrics text.

    Keys: the check name, and "" for mailward_milter_message_duration_seconds.
    """
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        metric, part, labels, value = match.groups()
        if metric == "mailward_check_duration_seconds":
            check = dict(re.findall(r'(\w+)="([^"]*)"', labels or "")).get("check", "")
            if not check:
                continue
        elif metric == "mailward_milter_message_duration_seconds":
            check = ""
        else:
            continue
        pair = out.setdefault(check, [0.0, 0.0])
        pair[0 if part == "_sum" else 1] += float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def scrape(port: int) -> dict[str, tuple[float, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return read_costs(answer.read().decode("utf-8", "replace"))


@dataclasses.dataclass
class ScoringCost:
    """Mean seconds per message over the measured runs (deltas between scrapes)."""

    per_check: dict[str, float]
    message: float
    messages: int

    @property
    def scoring(self) -> float:
        return sum(v for k, v in self.per_check.items() if k in SCORING_CHECKS)

    def describe(self) -> str:
        checks = ", ".join(f"{k} {v * 1e6:.0f}" for k, v in sorted(
            self.per_check.items(), key=lambda kv: -kv[1]) if k in SCORING_CHECKS)
        auth = sum(v for k, v in self.per_check.items() if k not in SCORING_CHECKS)
        return (f"scoring checks {self.scoring * 1e6:.0f} us/msg ({checks}); "
                f"authentication checks {auth * 1e6:.0f} us; whole engine "
                f"{self.message * 1e6:.0f} us/msg; over {self.messages:,} messages "
                f"(wall time in the worker, from its latency histograms)")


def cost_between(before: Mapping[str, tuple[float, float]],
                 after: Mapping[str, tuple[float, float]]) -> ScoringCost:
    def delta(key: str) -> tuple[float, float]:
        s0, c0 = before.get(key, (0.0, 0.0))
        s1, c1 = after.get(key, (0.0, 0.0))
        return s1 - s0, c1 - c0

    total, messages = delta("")
    per_check = {}
    for key in after:
        if key:
            seconds, _count = delta(key)
            per_check[key] = seconds / messages if messages else 0.0
    return ScoringCost(per_check, total / messages if messages else 0.0, int(messages))


# --------------------------------------------------------------------------- targets


class ScoringTarget(Target):
    """A target of the scoring group."""

    kind: Kind = "milter"
    group = GROUP
    expect: tuple[str, ...] = EXPECT
    sender = SENDER
    client_ips = (CLIENT_IP,)

    def __init__(self) -> None:
        self.samples: dict[str, str] = {}

    def unavailable(self, ctx: Context) -> str | None:
        if ctx.dns_port is None:
            return "needs the bench's nsd (nsd not installed)"
        return None

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        raise NotImplementedError

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        service = self.start_service(ctx, spec)
        try:
            self.samples[spec.kind] = sample_check(spec, ctx.message, self.expect)
            self.started(spec)
        except BaseException:
            service.stop()
            raise
        return service

    def started(self, spec: SocketSpec) -> None:
        """After the sample check: the moment metrics deltas start from."""


_TASK_TIME = re.compile(rb"rspamd_task_write_log: .* time: ([0-9.]+)ms")


def rspamd_task_times(log: Path, offset: int) -> tuple[list[float], int]:
    """Seconds of each task Rspamd logged after `offset` (its per-message scan time,
    wall clock, DNS waits included), and the new offset."""
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    return [float(m[1]) / 1000 for m in _TASK_TIME.finditer(data)], offset + len(data)


class RspamdScoring(ScoringTarget):
    name = "rspamd-scoring"
    reference = True
    normal_workers = 1
    description = (
        "Rspamd (Debian) proxy + 1 normal worker: dkim, spf, dmarc, arc, rbl (the bench's "
        "DNSBL and URI list), its shipped rules (rules/rspamd.lua, regexp, chartable), "
        "mime_types, phishing; milter_headers X-Spam-Status/-Level, X-Spamd-Result"
    )

    def unavailable(self, ctx: Context) -> str | None:
        return rspamd.unavailable(rspamd.SCORING_MODULES) or super().unavailable(ctx)

    def argv(self, ctx: Context, spec: SocketSpec, directory: Path) -> list[str]:
        return [
            sys.executable, "-m", "bench.peers.rspamd", "--socket", str(spec),
            "--dns", f"127.0.0.1:{ctx.dns_port}", "--dir", str(directory),
            "--hs-cache", str(ctx.workdir / "rspamd-scoring-hyperscan"),
            "--profile", "scoring", "--normal-workers", str(self.normal_workers),
            "--dnsbl-zone", world.DNSBL_ZONE, "--uribl-zone", world.URIBL_ZONE,
        ]  # fmt: skip

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        # A cold start compiles the hyperscan databases of every shipped rule: once, in a
        # throw-away instance, as bench.inbound does (see RspamdInbound.warm_up).
        cache = ctx.workdir / "rspamd-scoring-hyperscan"
        if not (cache.is_dir() and any(cache.iterdir())):
            warm_spec = ctx.socket_for(f"{self.name}-warmup", "unix")
            argv = self.argv(ctx, warm_spec, ctx.workdir / f"{self.name}-warmup")
            warm = ServiceProcess(f"{self.name}-warmup", argv,
                                  log=ctx.workdir / "logs" / f"{self.name}-warmup.log",
                                  env=ctx.env, cwd=ctx.workdir)
            warm.start()
            try:
                from bench.run import milter_probe

                warm.wait_ready(milter_probe(warm_spec), timeout=RspamdInbound.START_TIMEOUT)
            finally:
                warm.stop()
        directory = ctx.workdir / f"{self.name}-{spec.kind}"
        self.log = directory / "log" / "rspamd.log"
        argv = self.argv(ctx, spec, directory)
        return self._start(ctx, spec, argv, timeout=RspamdInbound.START_TIMEOUT)

    log: Path | None = None
    _log_offset = 0

    def started(self, spec: SocketSpec) -> None:
        if self.log is not None:
            _, self._log_offset = rspamd_task_times(self.log, 0)
        self.task_times: list[list[float]] = []

    def measured(self, measurement: Measurement) -> None:
        if self.log is not None:
            times, self._log_offset = rspamd_task_times(self.log, self._log_offset)
            self.task_times.append(times)


class RspamdScoringW2(RspamdScoring):
    name = "rspamd-scoring-w2"
    reference = False
    normal_workers = 2
    description = "rspamd-scoring with 2 normal workers"


class MailwardScoring(ScoringTarget):
    name = "mailward-scoring"
    workers = 1
    description = (
        "python -m mailward milter, 1 worker: SPF, DKIM, ARC, iprev, DMARC, [scoring] with "
        "[dnsbl] + [urilist] (the bench's lists), MIME/GTUBE/header/content heuristics"
    )

    def __init__(self) -> None:
        super().__init__()
        self.metrics_port = 0
        self._last: dict[str, tuple[float, float]] = {}
        self.costs: list[ScoringCost] = []

    def unavailable(self, ctx: Context) -> str | None:
        return mailward_unavailable(ctx) or super().unavailable(ctx)

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        settings = dataclasses.replace(ctx.settings, mailward_workers=self.workers)
        ctx = dataclasses.replace(ctx, settings=settings)
        unused = SocketSpec("inet", host="127.0.0.1", port=free_tcp_port())
        self.metrics_port = free_tcp_port()
        config = mailward_config(ctx, f"{self.name}-{spec.kind}", spec, unused,
                                 mailward_checks(ctx), metrics_listen=f"127.0.0.1:"
                                 f"{self.metrics_port}")
        argv = [sys.executable, "-m", "mailward", "milter", "-c", str(config)]
        return self._start(ctx, spec, argv)

    def started(self, spec: SocketSpec) -> None:
        self._last = scrape(self.metrics_port)

    def measured(self, measurement: Measurement) -> None:
        now = scrape(self.metrics_port)
        self.costs.append(cost_between(self._last, now))
        self._last = now


class MailwardScoringW2(MailwardScoring):
    name = "mailward-scoring-w2"
    workers = 2
    description = "mailward-scoring with [milter] workers = 2"


def all_targets() -> list[Target]:
    """This module's targets, the reference first."""
    return [RspamdScoring(), MailwardScoring(), MailwardScoringW2(), RspamdScoringW2()]


def grouped(target: Target) -> bool:
    return isinstance(target, ScoringTarget)


# --------------------------------------------------------------------------- running


def verify_runs(report: TargetReport) -> None:
    """Fail a report whose load runs did not score every message as expected."""
    target = report.target
    if report.status != "ok" or not isinstance(target, ScoringTarget):
        return
    for number, run in enumerate(report.runs, 1):
        short = spam_shortfalls(run.result.extra, target.expect)
        refused = {k: v for k, v in run.result.outcomes.items() if k != "accept"}
        if short or refused:
            report.status = "failed"
            report.reason = f"run {number}: " + "; ".join(
                short + [f"{v} x {k}" for k, v in refused.items()])
            return


def run_groups(ctx: Context, sampler: RssSampler, targets: Sequence[Target]) -> list[TargetReport]:
    """Measure this module's targets (those among `targets`) on a unix socket."""
    ours = [t for t in targets if isinstance(t, ScoringTarget)]
    if not ours:
        return []
    sub = dataclasses.replace(ctx, message=scoring_message(ctx))
    print(f"[{GROUP}]", file=sys.stderr, flush=True)
    reports = run_group(sub, sampler, "milter", "unix", list(ours))
    for report in reports:
        verify_runs(report)
    return reports


# --------------------------------------------------------------------------- output


def tables(ctx: Context, reports: Sequence[TargetReport]) -> str:
    """The scoring comparison with its heading, verdicts and costs ("" if it did not run)."""
    ours = [r for r in reports if grouped(r.target)]
    if not ours:
        return ""
    s = ctx.settings
    ref = next((r.target.name for r in ours if r.target.reference), None)
    lines = [
        f"Spam scoring: {s.concurrency} concurrent sessions, a {len(generate_spam()):,} byte "
        f"spam from {CLIENT_IP} (listed in {world.DNSBL_ZONE}; SPF softfail, DMARC fail, no "
        f"PTR) linking to {world.LISTED_LINK_DOMAIN} (listed in {world.URIBL_ZONE}); "
        f"{s.milter_duration:g} s per run, {s.rounds} A/B rounds; DNS: the bench's nsd",
        "",
        TITLE + (f" (vs ref: against {ref})" if ref else ""),
        table(ours, "milter"),
        "",
        "verdicts (one sample message; every message of every run is checked too):",
    ]
    for r in ours:
        target = r.target
        assert isinstance(target, ScoringTarget)
        counts = r.runs[-1].result.extra.get("spam_results", {}) if r.runs else {}
        messages = r.runs[-1].result.extra.get("messages", 0) if r.runs else 0
        per_message = ""
        if isinstance(counts, dict) and isinstance(messages, int) and messages:
            per_message = ", ".join(f"{k} {v / messages:.3f}" for k, v in counts.items()
                                    if k in target.expect or k.startswith(SPAM_STATUS))
        lines.append(f"  {target.name}: expects {', '.join(target.expect)}"
                     + (f"; per message in the last run: {per_message}" if per_message else ""))
        sample = next(iter(target.samples.values()), "")
        if sample:
            lines.append(f"    {sample}")
    for r in ours:
        target = r.target
        if isinstance(target, RspamdScoring) and getattr(target, "task_times", None):
            runs = [t for t in target.task_times if t]
            if runs:
                means = sorted(sum(t) / len(t) for t in runs)
                median = means[len(means) // 2]
                lines.append(f"per-message cost, {target.name}: scan {median * 1e6:.0f} us/msg "
                             f"(its log's task time: wall clock in the worker, DNS waits "
                             f"included; median over {len(runs)} runs)")
    for r in ours:
        if isinstance(r.target, MailwardScoring) and r.target.costs:
            measured = [c for c in r.target.costs if c.messages]
            if measured:
                best = sorted(measured, key=lambda c: c.scoring)[len(measured) // 2]
                lines.append(f"per-message cost, {r.target.name}: {best.describe()}")
    for r in ours:
        comp = r.comparison
        if comp is None or not comp.ratios:
            continue
        a = ", ".join(fmt_rate(m.result.rate) for m in comp.a)
        b = ", ".join(fmt_rate(m.result.rate) for m in comp.b)
        lines.append(f"{comp.describe()} [{r.socket}; {comp.a_name}: {a}; "
                     f"{comp.b_name}: {b} msg/s]")
    return "\n".join(lines)
