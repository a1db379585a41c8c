"""An inetd-style acceptor that runs a command per connection, as Postfix's spawn(8) does.

Postfix runs policyd-spf through spawn(8): master accepts a connection on the policy
socket and starts one `policyd-spf` process with the connection as its stdin and
stdout; the process serves every request of that (persistent) connection and exits when
it closes.  This does the same, so that the benchmark measures policyd-spf the way
Postfix runs it.

Usage::

    python -m bench.peers.spawn --socket unix:/tmp/spf.sock [--max-processes 100] \\
        -- /usr/bin/policyd-spf /etc/postfix-policyd-spf-python/policyd-spf.conf

`--python-dns-server 127.0.0.1:5353` starts the command as
`/usr/bin/python3 -c <prelude>` instead, where the prelude points the DNS library
Debian's pyspf uses (dnspython, or pydns without it) at that server and port before
running the policyd-spf script given as the command: resolv.conf cannot name a port,
and the benchmark's DNS server does not run on port 53.  Nothing else of policyd-spf
changes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from bench.sockets import SocketSpec, remove_stale_unix_socket

#: Runs a policyd-spf script (argv[1], its arguments after it) with its DNS library
#: pointed at DNS_SERVER:DNS_PORT.  Debian's pyspf uses dnspython when it is installed
#: and pydns otherwise; both read /etc/resolv.conf, which cannot name a port.  The
#: prelude replaces the servers and port each found, the way their documentation shows
#: (dnspython: the default resolver; pydns: its module defaults).  No cache is added.
DNS_PRELUDE = """\
import os, runpy, sys
server, port = os.environ["BENCH_DNS_SERVER"], int(os.environ["BENCH_DNS_PORT"])
try:
    import dns.resolver
except ImportError:
    pass
else:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.port = port
    dns.resolver.default_resolver = resolver
try:
    import DNS
except ImportError:
    pass
else:
    DNS.Base.defaults["server"] = [server]
    DNS.Base.defaults["port"] = port
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def listen(spec: SocketSpec) -> socket.socket:
    if spec.kind == "unix":
        remove_stale_unix_socket(spec)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(spec.path)
    else:
        sock = socket.socket(spec.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host, spec.port))
    sock.listen(256)
    return sock


def serve(spec: SocketSpec, argv: list[str], max_processes: int,
          env: dict[str, str]) -> None:
    server = listen(spec)
    children: set[subprocess.Popen[bytes]] = set()
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            try:
                conn, _ = server.accept()
            except OSError:
                if stopping:
                    break
                raise
            children = {child for child in children if child.poll() is None}
            if len(children) >= max_processes:
                conn.close()  # as spawn does past its process limit: the client retries
                continue
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                children.add(subprocess.Popen(
                    argv, stdin=conn.fileno(), stdout=conn.fileno(), env=env, close_fds=True
                ))
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        deadline = time.monotonic() + 5
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if spec.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.spawn", description=__doc__)
    parser.add_argument("--socket", required=True, help="unix:/path or inet:HOST:PORT")
    parser.add_argument("--max-processes", type=int, default=100)
    parser.add_argument("--python-dns-server", default="",
                        help="HOST:PORT for pydns (runs the command under a prelude)")
    parser.add_argument("command", nargs="+", help="the command and its arguments")
    args = parser.parse_args(argv)
    # The peer runs on the system Python with its own modules only.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    command = list(args.command)
    if args.python_dns_server:
        host, _, port = args.python_dns_server.rpartition(":")
        env["BENCH_DNS_SERVER"], env["BENCH_DNS_PORT"] = host, port
        command = ["/usr/bin/python3", "-c", DNS_PRELUDE, *command]
    serve(SocketSpec.parse(args.socket), command, args.max_processes, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
