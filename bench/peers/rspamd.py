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
        includes = "".join(f'.include "$CONFDIR/modules.d/{m}.conf"\n' for m in MODULES)
        return f"""# Written by bench.peers.rspamd: a private instance for one benchmark run.
lua = {_quote(self.directory / "rspamd.lua")};

.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
{includes}
modules {{
  path = "${{PLUGINSDIR}}";
}}

options {{
  pidfile = "$RUNDIR/rspamd.pid";
  # C modules to load (Debian: chartable,dkim,regexp,fuzzy_check).
  filters = "dkim";
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
  mime = true;
}}
"""

    def write(self) -> Path:
        """Write the configuration (and make its directories); return rspamd.conf."""
        for sub in ("db", "run", "log", "tmp", "local.d"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        if self.hs_cache is not None:
            self.hs_cache.mkdir(parents=True, exist_ok=True)
        (self.directory / "rspamd.lua").write_text(ENTRY_LUA, encoding="utf-8")
        for name, text in LOCAL_D.items():
            (self.directory / "local.d" / name).write_text(text, encoding="utf-8")
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


def unavailable() -> str | None:
    """Why Rspamd cannot run here, or None."""
    if shutil.which("rspamd") is None:
        return "rspamd not installed (Debian: rspamd)"
    missing = [m for m in MODULES if not (SYSTEM_CONFDIR / "modules.d" / f"{m}.conf").exists()]
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
    parser.add_argument(
        "--check", action="store_true", help="run rspamadm configtest instead of rspamd"
    )
    args = parser.parse_args(argv)
    spec = SocketSpec.parse(args.socket)
    setup = RspamdSetup(args.dir.resolve(), spec, args.dns, args.hs_cache, log_level=args.log_level)
    setup.write()
    if args.check:
        return subprocess.run(setup.configtest_argv(), check=False).returncode
    remove_stale_unix_socket(spec)
    sys.stdout.flush()
    os.execvp("rspamd", setup.argv())


if __name__ == "__main__":
    sys.exit(main())
