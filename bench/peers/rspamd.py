"""Rspamd (Debian's package) as a milter doing inbound authentication, privately configured.

The benchmark compares Mailward's inbound checks with Rspamd "configured for the same
checks": SPF, DKIM, ARC and DMARC, and the Authentication-Results header that reports
them.  This module writes such a configuration into a directory of its own and runs
``rspamd -f`` on it; nothing under /etc is changed and no system service is started.

What the configuration holds, and why:

* The workers are the shape Debian ships (`/etc/rspamd/rspamd.conf` and
  `worker-proxy.inc`): one ``rspamd_proxy`` process with ``milter = yes`` that the MTA
  talks to, passing each message to ``normal`` scanner workers over a local socket
  (their number is Rspamd's default for the machine).  No controller, no fuzzy storage.
* The modules are loaded from `/etc/rspamd/modules.d/` as shipped, but only these:
  ``dkim`` (a C module), ``spf``, ``dmarc``, ``arc`` (verification; signing off) and
  ``milter_headers`` with the ``authentication-results`` routine, so the MTA gets an
  Authentication-Results header and the benchmark can check that the verdicts are
  really ``pass``.  The rule files of `rules/` (regular
  expressions, HTML and header heuristics), statistics (Bayes, which needs Redis),
  every network list (RBL, SURBL, fuzzy), neural, phishing, greylisting, rate limits,
  reputation and history are not loaded: they are not authentication and most need the
  network or Redis.  Rspamd still parses MIME and detects the text's language for every
  message: that is its core, not a module.
* DNS goes to the benchmark's authoritative server (``options.dns.nameserver`` with
  a port).  Rspamd keeps its own LRU caches of DKIM keys and SPF records (the shipped
  ``dkim_cache_*`` / ``spf_cache_*`` settings); other lookups (DMARC) go to the server
  each time, as Rspamd expects a local caching resolver in front of it.
* Logging at ``notice``: one line per message, like Mailward at ``info``.  Rspamd's
  default ``info`` writes about ten.
* Hyperscan databases (compiled at the first start, ~20 s on the 2-core machines) go
  to ``--hs-cache``, so instances of one benchmark run share them.

Usage::

    python -m bench.peers.rspamd --socket unix:/tmp/rspamd.sock --dns 127.0.0.1:5353 \\
        --dir /tmp/rspamd-bench [--hs-cache DIR] [--log-level notice] [--check]

It writes the configuration, then replaces itself with ``rspamd -f`` (so stopping this
process group stops Rspamd and its workers); ``--check`` runs ``rspamadm configtest``
on it instead and exits with its status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.sockets import SocketSpec, remove_stale_unix_socket

SYSTEM_CONFDIR = Path("/etc/rspamd")

#: The modules.d files loaded: the authentication checks and the header that reports them.
MODULES = ("dkim", "spf", "dmarc", "arc", "milter_headers")

#: Per-module settings written to local.d/ (merged over the shipped modules.d/ files).
LOCAL_D = {
    # Verification only: no keys to sign with, and the benchmark's mail is inbound.
    "arc.conf": "sign_inbound = false;\nsign_local = false;\nsign_authenticated = false;\n",
    # Report what was verified to the MTA.  skip_local: the bench's mail is not local.
    "milter_headers.conf": (
        'use = ["authentication-results"];\nskip_local = false;\nskip_authenticated = true;\n'
    ),
}

#: The Lua entry point: Rspamd's shipped one loads every rule file of rules/; this one
#: only sets up the helpers the plugins rely on.
ENTRY_LUA = 'require "global_functions" ()\n'

# --------------------------------------------------------------------------- scoring profile
#
# `--profile scoring` (bench/scoring.py): Rspamd as a spam filter with the modules that
# correspond to Mailward's [scoring] checks.  The authentication modules above; `rbl` with
# exactly two lists, both private zones of the bench's nsd (a DNSBL for the client address
# and a URI list for link domains); the header and content rules Rspamd ships (its own
# entry point, rules/rspamd.lua: regexp header/MIME/HTML rules, subject and Message-ID
# checks, with the `regexp` and `chartable` C modules), `mime_types` (attachments) and
# `phishing` (link text that shows another domain; no feeds); `milter_headers` writing
# X-Spam-Status, X-Spam-Level and X-Spamd-Result (the symbols), so the load client can
# check that every message was scored.  Statistics (Bayes), fuzzy, neural, greylisting,
# reputation and every public network list stay off, as in Mailward's bench config.

SCORING_MODULES = (*MODULES, "regexp", "chartable", "rbl", "mime_types", "phishing")

#: Symbols of the two private lists and their weights: Mailward's shipped ones for the
#: same return codes (mailward/scoring.py RBL_SBL, URIBL_LISTED).
SCORING_WEIGHTS = {"RBL_SBL": 4.0, "RBL_LISTED": 2.0, "URIBL_LISTED": 4.0}


def scoring_rbl_conf(dnsbl_zone: str, uribl_zone: str, whitelist: Path) -> str:
    """override.d/rbl.conf: only the bench's two lists (the shipped file asks a dozen
    public lists and fetches a whitelist map over HTTPS)."""
    return f"""rbls {{
  bench_dnsbl {{
    symbol = "RBL_LISTED";
    rbl = "{dnsbl_zone}";
    checks = ["from"];
    ipv4 = true;
    ipv6 = true;
    returncodes {{
      RBL_SBL = "127.0.0.2";
    }}
  }}
  bench_uribl {{
    symbol = "URIBL_LISTED";
    rbl = "{uribl_zone}";
    checks = ["urls"];
    ignore_defaults = true;
    returncodes {{
      URIBL_LISTED = "127.0.1.2";
    }}
  }}
}}
url_whitelist = [{_quote(whitelist)}];
"""


SCORING_LOCAL_D = {
    **LOCAL_D,
    "milter_headers.conf": (
        'use = ["authentication-results", "x-spam-status", "x-spam-level", '
        '"x-spamd-result"];\nskip_local = false;\nskip_authenticated = true;\n'
        "extended_spam_headers = false;\n"
    ),
    # No phishing feeds: only the link-text-vs-target comparison, as Mailward's rule.
    "phishing.conf": "openphish_enabled = false;\nphishtank_enabled = false;\n",
}


def bind_socket(spec: SocketSpec, mode: str = "0666") -> str:
    """A socket as Rspamd's bind_socket writes it."""
    if spec.kind == "unix":
        return f"{spec.path} mode={mode}"
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"{host}:{spec.port}"


def _quote(text: str | Path) -> str:
    """A UCL double-quoted string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class RspamdSetup:
    """Everything one private Rspamd instance needs, under `directory`."""

    directory: Path
    milter: SocketSpec
    dns: str  # "127.0.0.1:5353"
    hs_cache: Path | None = None  # shared hyperscan cache (default: directory/db)
    log_level: str = "notice"
    profile: str = "auth"  # "auth" (MODULES only) or "scoring" (see SCORING_MODULES)
    normal_workers: int | None = None  # None: Rspamd's default count
    dnsbl_zone: str = ""  # scoring profile: the lists' zones
    uribl_zone: str = ""

    @property
    def modules(self) -> tuple[str, ...]:
        return SCORING_MODULES if self.profile == "scoring" else MODULES

    @property
    def config(self) -> Path:
        return self.directory / "rspamd.conf"

    @property
    def normal_socket(self) -> Path:
        return self.directory / "run" / "normal.sock"

    def variables(self) -> dict[str, str]:
        """The path variables the shipped files use, pointed into `directory`."""
        return {
            "CONFDIR": str(SYSTEM_CONFDIR),
            "LOCAL_CONFDIR": str(self.directory),
            "DBDIR": str(self.directory / "db"),
            "RUNDIR": str(self.directory / "run"),
            "LOGDIR": str(self.directory / "log"),
        }

    def rspamd_conf(self) -> str:
        hs_cache = self.hs_cache or self.directory / "db"
        includes = "".join(f'.include "$CONFDIR/modules.d/{m}.conf"\n' for m in self.modules)
        scoring = self.profile == "scoring"
        lua = "$RULESDIR/rspamd.lua" if scoring else str(self.directory / "rspamd.lua")
        filters = "chartable,dkim,regexp" if scoring else "dkim"
        workers = f"\n  count = {self.normal_workers};" if self.normal_workers else ""
        weights = "".join(f"    {name} {{ weight = {weight}; }}\n"
                          for name, weight in SCORING_WEIGHTS.items())
        groups = f"""
.include "$CONFDIR/composites.conf"
group "bench_lists" {{
  symbols {{
{weights}  }}
}}
""" if scoring else ""
        return f"""# Written by bench.peers.rspamd: a private instance for one benchmark run.
lua = {_quote(lua)};

.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
{includes}{groups}
modules {{
  path = "${{PLUGINSDIR}}";
}}

options {{
  pidfile = "$RUNDIR/rspamd.pid";
  # C modules to load (Debian: chartable,dkim,regexp,fuzzy_check).
  filters = "{filters}";
  explicit_modules = [];
  dns {{
    nameserver = [{_quote(self.dns)}];
    timeout = 1s;
    sockets = 16;
    retransmits = 5;
  }}
  dns_max_requests = 64;
  task_timeout = 8s;
  allow_raw_input = true;
  tempdir = {_quote(self.directory / "tmp")};
  control_socket = "$RUNDIR/rspamd.sock mode=0600";
  cache_file = "$DBDIR/symbols.cache";
  hs_cache_dir = {_quote(str(hs_cache) + "/")};
  url_tld = "${{SHAREDIR}}/effective_tld_names.dat";
  local_addrs = [];
}}

logging {{
  type = "file";
  filename = "$LOGDIR/rspamd.log";
  level = {_quote(self.log_level)};
}}

worker "rspamd_proxy" {{
  bind_socket = {_quote(bind_socket(self.milter))};
  milter = yes;
  timeout = 120s;
  count = 1;
  max_retries = 5;
  discard_on_reject = false;
  quarantine_on_reject = false;
  reject_message = "Spam message rejected";
  upstream "local" {{
    default = yes;
    hosts = {_quote(self.normal_socket)};
  }}
}}

worker "normal" {{
  bind_socket = {_quote(bind_socket(SocketSpec("unix", path=str(self.normal_socket)), "0600"))};
  mime = true;{workers}
}}
"""

    def write(self) -> Path:
        """Write the configuration (and make its directories); return rspamd.conf."""
        for sub in ("db", "run", "log", "tmp", "local.d", "override.d"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        if self.hs_cache is not None:
            self.hs_cache.mkdir(parents=True, exist_ok=True)
        (self.directory / "rspamd.lua").write_text(ENTRY_LUA, encoding="utf-8")
        local_d = SCORING_LOCAL_D if self.profile == "scoring" else LOCAL_D
        for name, text in local_d.items():
            (self.directory / "local.d" / name).write_text(text, encoding="utf-8")
        if self.profile == "scoring":
            # An empty URL whitelist: the shipped one (a map fetched over HTTPS) lists
            # the example.* domains the bench's spam links to.
            whitelist = self.directory / "url-whitelist.inc"
            whitelist.write_text("", encoding="utf-8")
            (self.directory / "override.d" / "rbl.conf").write_text(
                scoring_rbl_conf(self.dnsbl_zone, self.uribl_zone, whitelist), encoding="utf-8")
        self.config.write_text(self.rspamd_conf(), encoding="utf-8")
        return self.config

    def var_args(self) -> list[str]:
        return [f"--var={k}={v}" for k, v in self.variables().items()]

    def argv(self, rspamd: str = "rspamd") -> list[str]:
        """rspamd in the foreground on this configuration.

        As root Rspamd refuses to run its workers without -u/-g or --insecure; the
        benchmark runs as whoever started it, so --insecure is passed only then.
        """
        insecure = ["-i"] if os.geteuid() == 0 else []
        return [rspamd, "-f", *insecure, *self.var_args(), "-c", str(self.config)]

    def configtest_argv(self, rspamadm: str = "rspamadm") -> list[str]:
        return [rspamadm, *self.var_args(), "configtest", "-s", "-c", str(self.config)]


def unavailable(modules: tuple[str, ...] = MODULES) -> str | None:
    """Why Rspamd cannot run here, or None."""
    if shutil.which("rspamd") is None:
        return "rspamd not installed (Debian: rspamd)"
    missing = [m for m in modules if not (SYSTEM_CONFDIR / "modules.d" / f"{m}.conf").exists()]
    if missing:
        return f"{SYSTEM_CONFDIR}/modules.d lacks {', '.join(missing)}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.rspamd", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--socket", required=True, help="milter socket, Postfix syntax")
    parser.add_argument("--dns", required=True, help="DNS server as HOST:PORT")
    parser.add_argument("--dir", required=True, type=Path, help="private configuration dir")
    parser.add_argument("--hs-cache", type=Path, help="hyperscan cache (shared between runs)")
    parser.add_argument("--log-level", default="notice")
    parser.add_argument("--profile", choices=("auth", "scoring"), default="auth",
                        help="auth: the authentication modules; scoring: also rbl, the "
                        "shipped rules, mime_types, phishing, X-Spam-* headers")
    parser.add_argument("--normal-workers", type=int, help="count of normal workers")
    parser.add_argument("--dnsbl-zone", default="", help="scoring: the DNSBL's zone")
    parser.add_argument("--uribl-zone", default="", help="scoring: the URI list's zone")
    parser.add_argument(
        "--check", action="store_true", help="run rspamadm configtest instead of rspamd"
    )
    args = parser.parse_args(argv)
    spec = SocketSpec.parse(args.socket)
    setup = RspamdSetup(args.dir.resolve(), spec, args.dns, args.hs_cache,
                        log_level=args.log_level, profile=args.profile,
                        normal_workers=args.normal_workers, dnsbl_zone=args.dnsbl_zone,
                        uribl_zone=args.uribl_zone)
    setup.write()
    if args.check:
        return subprocess.run(setup.configtest_argv(), check=False).returncode
    remove_stale_unix_socket(spec)
    sys.stdout.flush()
    os.execvp("rspamd", setup.argv())


if __name__ == "__main__":
    sys.exit(main())
