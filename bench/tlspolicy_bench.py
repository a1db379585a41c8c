"""TLS policy benchmark: `mailward tlspolicy` next to postfix-mta-sts-resolver (issue 15).

Both serve Postfix's socketmap (`smtp_tls_policy_maps = socketmap:...`) for the same
destinations, bench.world's STS_DOMAINS (18 with an `enforce` policy, 2 in `testing`),
with a warm cache: each target is asked about every domain once after it starts (its
policy fetched over HTTPS and cached; the answers are checked), then loaded with
lookups of those domains in turn, 8 persistent connections, one lookup in flight each
(as Postfix's smtp processes ask).  The reference and each Mailward target are measured
alternately (bench.run.run_group: A B A B, the median of the pair ratios).

Every service resolves through the bench's nsd and fetches from one HTTPS server on
loopback (bench.world.STS_POLICY_ADDRESS:443, a certificate from a test CA made here,
trusted by both); bench.peers.mta_sts_resolver says how the peer is pointed at them.
Mailward is configured alike: `cache = "memory"` (the peer's `internal` cache), DANE off
(the peer has none), its default `servername = true`.
"""

from __future__ import annotations

import http.server
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import world
from bench.loadgen import LoadConfig, LoadResult
from bench.peers import mta_sts_resolver
from bench.procs import RssSampler, ServiceProcess
from bench.run import (
    Context,
    Target,
    TargetReport,
    mailward_config,
    mailward_unavailable,
    run_group,
    table,
)
from bench.sockets import SocketSpec
from bench.tlspolicy_load import TlsPolicyLoadOptions, lookup_once, run_tlspolicy_load

GROUP = "tlspolicy"
POLICY_PORT = 443  # the peer cannot be told another one
MAP_NAME = "postfix"


def policy_text(domain: str, mode: str) -> str:
    return f"version: STSv1\nmode: {mode}\nmx: mx.{domain}\nmax_age: 86400\n"


def expected(domain: str) -> str:
    """The answer a correct service gives for `domain` (what the warm-up checks)."""
    if domain in world.STS_TESTING_DOMAINS:
        return "NOTFOUND "
    return f"OK secure match=mx.{domain} servername=hostname"


# --------------------------------------------------------------------------- policy site


class PolicySite:
    """HTTPS on STS_POLICY_ADDRESS:443 answering every STS domain's policy file, with a
    certificate from a CA made for this run (tests.support.mtasts, as the integration
    tests do)."""

    def __init__(self, directory: Path) -> None:
        from tests.support.mtasts import TestCa

        directory.mkdir(parents=True, exist_ok=True)
        self.ca = TestCa(directory)
        issued = self.ca.issue("policy-site", [f"mta-sts.{d}" for d in world.STS_DOMAINS])
        pages = {f"mta-sts.{d}": policy_text(d, "enforce").encode()
                 for d in world.STS_ENFORCE_DOMAINS}
        pages |= {f"mta-sts.{d}": policy_text(d, "testing").encode()
                  for d in world.STS_TESTING_DOMAINS}
        self.fetches = 0

        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.fetches += 1
                body = pages.get(self.headers.get("Host", "").split(":")[0])
                ok = body is not None and self.path == "/.well-known/mta-sts.txt"
                payload = body if ok and body is not None else b"not found"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(
            (world.STS_POLICY_ADDRESS, POLICY_PORT), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(issued.cert_file, issued.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- targets


class TlsPolicyTarget(Target):
    """A socketmap TLS policy service; `site` is set by run_groups before launch."""

    kind = "policy"
    site: PolicySite | None = None

    def unavailable(self, ctx: Context) -> str | None:
        if ctx.dns_port is None:
            return "needs the bench's nsd"
        return None

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        raise NotImplementedError

    def launch(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        """Start, then warm the cache: one lookup per domain, each answer checked."""
        service = self.start_service(ctx, spec)
        try:
            for domain in world.STS_DOMAINS:
                reply = lookup_once(spec, MAP_NAME, domain, timeout=30.0)
                got = f"{reply.status.value} {reply.data}"
                if got != expected(domain):
                    raise RuntimeError(f"{domain}: answered {got!r}, expected "
                                       f"{expected(domain)!r}")
        except BaseException:
            service.stop()
            raise
        return service

    def own_load(self, ctx: Context, spec: SocketSpec) -> Callable[[], LoadResult]:
        s = ctx.settings
        load = LoadConfig(concurrency=s.concurrency, duration=s.policy_duration,
                          warmup=s.warmup, processes=s.client_processes)
        opts = TlsPolicyLoadOptions(spec, world.STS_DOMAINS, MAP_NAME, load)
        return lambda: run_tlspolicy_load(opts)


class MtaStsResolver(TlsPolicyTarget):
    name = "mta-sts-resolver"
    reference = True
    description = ("postfix-mta-sts-resolver (PyPI, its own venv in ~/.cache/mailward-bench), "
                   "internal cache, aiodns aimed at the bench's nsd")

    def unavailable(self, ctx: Context) -> str | None:
        return super().unavailable(ctx) or mta_sts_resolver.install()

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        assert self.site is not None and ctx.dns_port is not None
        tag = f"{self.name}-{spec.kind}"
        config = ctx.workdir / "config" / f"{tag}.yml"
        config.parent.mkdir(exist_ok=True)
        config.write_text(mta_sts_resolver.config_yaml(
            spec.path if spec.kind == "unix" else None, spec.host, spec.port))
        argv, extra = mta_sts_resolver.argv(config, f"127.0.0.1:{ctx.dns_port}")
        env = {**ctx.env, **extra, "SSL_CERT_FILE": str(self.site.ca.ca_file)}
        return _started(ctx, tag, argv, env, spec)


class MailwardTlsPolicy(TlsPolicyTarget):
    name = "mailward-tlspolicy"
    workers = 1
    description = "python -m mailward tlspolicy, cache = memory, 1 process"

    def unavailable(self, ctx: Context) -> str | None:
        return super().unavailable(ctx) or mailward_unavailable(ctx)

    def start_service(self, ctx: Context, spec: SocketSpec) -> ServiceProcess:
        assert self.site is not None
        tag = f"{self.name}-{spec.kind}"
        unused = ctx.socket_for(f"{tag}-unused", "unix")
        extra = f"""
[tlspolicy]
socket = "{spec}"
metrics_listen = ""
ca_file = "{self.site.ca.ca_file}"
policy_port = {POLICY_PORT}
cache = "memory"
workers = {self.workers}
"""
        config = mailward_config(ctx, tag, unused, unused, extra)
        argv = [sys.executable, "-m", "mailward", "tlspolicy", "-c", str(config)]
        return _started(ctx, tag, argv, ctx.env, spec)


class MailwardTlsPolicyW2(MailwardTlsPolicy):
    name = "mailward-tlspolicy-w2"
    workers = 2
    optional = True  # measured when named in --only
    description = "the same with [tlspolicy] workers = 2"


def _started(ctx: Context, tag: str, argv: list[str], env: dict[str, str],
             spec: SocketSpec) -> ServiceProcess:
    from bench.sockets import connect_probe

    service = ServiceProcess(tag, argv, log=ctx.workdir / "logs" / f"{tag}.log", env=env,
                             cwd=ctx.workdir)
    service.start()
    try:
        service.wait_ready(connect_probe(spec), timeout=60.0)
    except BaseException:
        service.stop()
        raise
    return service


def all_targets() -> list[Target]:
    return [MtaStsResolver(), MailwardTlsPolicy(), MailwardTlsPolicyW2()]


def grouped(target: Target) -> bool:
    return isinstance(target, TlsPolicyTarget)


# --------------------------------------------------------------------------- running


def run_groups(ctx: Context, sampler: RssSampler,
               targets: Sequence[Target]) -> list[TargetReport]:
    """Serve the policies, then measure the TLS policy targets among `targets`."""
    ours = [t for t in targets if isinstance(t, TlsPolicyTarget)]
    if not ours:
        return []
    try:
        site = PolicySite(ctx.workdir / "tlspolicy-site")
    except OSError as exc:
        ctx.notes.append(f"TLS policy group not run: cannot serve policies on "
                         f"{world.STS_POLICY_ADDRESS}:{POLICY_PORT}: {exc}")
        return []
    site.start()
    reports: list[TargetReport] = []
    try:
        for target in ours:
            target.site = site
        for socket_kind in ctx.settings.sockets:
            print(f"[{GROUP} / {socket_kind}]", file=sys.stderr, flush=True)
            reports += run_group(ctx, sampler, "policy", socket_kind, list(ours))
    finally:
        site.stop()
    return reports


def tables(ctx: Context, reports: Sequence[TargetReport]) -> str:
    ours = [r for r in reports if grouped(r.target)]
    if not ours:
        return ""
    s = ctx.settings
    heading = (f"TLS policy (socketmap): {s.concurrency} persistent connections, "
               f"{len(world.STS_DOMAINS)} MTA-STS domains in turn "
               f"({len(world.STS_ENFORCE_DOMAINS)} enforce, "
               f"{len(world.STS_TESTING_DOMAINS)} testing), warm cache; "
               f"{s.policy_duration:g} s per run, {s.rounds} A/B rounds; DNS: the bench's "
               "nsd, policies: one HTTPS server on loopback, for every service")
    return heading + "\n" + table(list(ours), "policy")
