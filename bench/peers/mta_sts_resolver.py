"""postfix-mta-sts-resolver (PyPI), the TLS policy peer: installed, configured, started.

It is never a Mailward dependency: `install()` makes its own virtualenv under
~/.cache/mailward-bench/mta-sts-resolver (once; `make deps-bench` or the first bench run)
and pip-installs the package there.  It is run from that virtualenv's Python.

How it is pointed at the bench's world (bench/README.md says the same):

* DNS: the daemon builds `aiodns.DNSResolver(timeout=..., loop=...)` with no nameserver
  option, so c-ares reads /etc/resolv.conf, which cannot name a port.  This file, run as
  a script by the peer's own Python, sets the resolver's `nameservers` to the bench's
  nsd (`127.0.0.1:PORT`, c-ares's host:port form) before calling the daemon's `main()`;
  nothing else of the daemon is changed.
* HTTPS: it fetches `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (port 443, not
  configurable), so the bench serves the policies on 443 at bench.world's
  STS_POLICY_ADDRESS; the test CA is trusted through `SSL_CERT_FILE` (aiohttp's default
  SSL context loads OpenSSL's default verify paths, which honour it).
* Cache: its `internal` (in-memory LRU) cache, `cache_grace` at its default of 60 s
  (within it a cached policy is answered without DNS; after it, one TXT lookup renews
  it), `require_sni: true` (so it answers `servername=hostname`, as Mailward does).

Top-level imports are the standard library only: this file runs under the peer's
interpreter, which has none of Mailward's packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PACKAGE = "postfix-mta-sts-resolver"
VENV = Path.home() / ".cache" / "mailward-bench" / "mta-sts-resolver"
PYTHON = VENV / "bin" / "python"
NAMESERVER_ENV = "MAILWARD_BENCH_NAMESERVER"


def installed() -> bool:
    return (VENV / "bin" / "mta-sts-daemon").exists()


def install() -> str | None:
    """Create the peer's virtualenv and install the package; None, or why it failed."""
    if installed():
        return None
    try:
        if not PYTHON.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                           capture_output=True, text=True, timeout=300)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", PACKAGE],
                       check=True, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"could not install {PACKAGE} into {VENV}: {detail.strip()[-300:]}"
    return None if installed() else f"{PACKAGE} installed no mta-sts-daemon in {VENV}"


def config_yaml(socket_path: str | None, host: str, port: int, timeout: float = 4.0) -> str:
    """The daemon's YAML configuration (JSON is YAML, so no YAML writer is needed)."""
    import json

    listen: dict[str, object] = ({"path": socket_path, "mode": 0o666} if socket_path
                                 else {"host": host, "port": port})
    return json.dumps({
        **listen,
        "reuse_port": True,  # its default; with False its TCP listener fails to start (1.5.1)
        "shutdown_timeout": 5,
        "cache": {"type": "internal", "options": {"cache_size": 10000}},
        "default_zone": {"strict_testing": False, "timeout": timeout,
                         "require_sni": True},
    }, indent=2)


def argv(config: Path, nameserver: str) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that start the daemon on `config`."""
    return ([str(PYTHON), str(Path(__file__).resolve()), "-c", str(config), "-v", "warn"],
            {NAMESERVER_ENV: nameserver})


def _boot() -> int:
    """Inside the peer's interpreter: aim aiodns at the bench's nsd, run the daemon."""
    import aiodns  # type: ignore[import-not-found]  # the peer's virtualenv only

    nameserver = os.environ[NAMESERVER_ENV]
    original = aiodns.DNSResolver.__init__

    def with_nameserver(self: object, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("nameservers", [nameserver])
        original(self, *args, **kwargs)

    aiodns.DNSResolver.__init__ = with_nameserver
    from postfix_mta_sts_resolver import daemon  # type: ignore[import-not-found]

    sys.argv = ["mta-sts-daemon", *sys.argv[1:]]
    result = daemon.main()
    return int(result or 0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:  # make deps-bench
        problem = install()
        print(problem or f"{PACKAGE} ready in {VENV}", file=sys.stderr)
        raise SystemExit(1 if problem else 0)
    raise SystemExit(_boot())
