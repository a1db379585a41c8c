"""A private validating resolver (unbound) on loopback, for the DANE tests.

DANE rests on the AD bit of a validating resolver the sender trusts.  This unbound
validates with the trust anchors of the harness's signed zones (dnssec.py), asks the
harness's nsd for the zones a test names (`stub-zone`s), refuses every other name (no
root hints are used: it never reaches the internet), and treats every zone without an
anchor as insecure.  Its cache can be flushed (`unbound-control` over a unix socket), so a test
that changes a zone sees the change at once instead of after a TTL.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

from tests.harness.process import HarnessError, ManagedProcess, free_port, tail, wait_until


def free_loopback_address(port: int = 53) -> str:
    """A 127/8 address whose `port` is free (UDP and TCP).  Postfix resolves through
    libc, which asks port 53 only: a resolver for a sending Postfix needs its own
    address, so the machine's own resolver stays untouched."""
    for _ in range(50):
        address = f"127.0.{random.randint(100, 250)}.{random.randint(2, 250)}"
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return address
    raise HarnessError(f"no free loopback address for port {port}")


class ValidatingResolver:
    """`unbound -d` with its configuration, pid file and control socket in `base_dir`.

    `upstream` is the (host, port) of the authoritative server for `zones` (a parent
    such as "example" covers every zone under it); `trust_anchors` are DS (or DNSKEY)
    records in presentation form.
    """

    def __init__(self, base_dir: Path, upstream: tuple[str, int], zones: Sequence[str],
                 trust_anchors: Sequence[str], host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self.base_dir = base_dir
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.upstream = upstream
        self.zones = [zone.rstrip(".").lower() for zone in zones]
        self.trust_anchors = list(trust_anchors)
        self.conf_path = base_dir / "unbound.conf"
        self.control_socket = base_dir / "unbound-control.sock"
        base_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._process = ManagedProcess(
            "unbound", ["unbound", "-d", "-c", str(self.conf_path)], base_dir / "unbound.log")

    @property
    def address(self) -> str:
        """For `[tlspolicy] dnssec_resolver`."""
        return f"{self.host}:{self.port}"

    def _write_config(self) -> None:
        up_host, up_port = self.upstream
        lines = [
            "server:",
            f"  interface: {self.host}",
            f"  port: {self.port}",
            "  do-ip6: no",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.base_dir}"',
            f'  pidfile: "{self.base_dir}/unbound.pid"',
            '  logfile: ""',
            "  use-syslog: no",
            "  log-servfail: yes",
            "  verbosity: 1",
            "  val-log-level: 2",
            "  access-control: 127.0.0.0/8 allow",
            # nsd runs on loopback: unbound refuses to ask 127/8 unless told otherwise.
            "  do-not-query-localhost: no",
            '  module-config: "validator iterator"',
            "  qname-minimisation: no",
            # A name a test adds later must not be denied from an earlier NSEC record.
            "  aggressive-nsec: no",
            "  prefetch: no",
            "  harden-dnssec-stripped: yes",
            "  val-permissive-mode: no",
            # Signed zones are made now; unbound must not reject them as "from the future".
            "  val-sig-skew-min: 0",
        ]
        lines += [f'  trust-anchor: "{anchor}"' for anchor in self.trust_anchors]
        # Names outside the test's zones are refused here, at once: no root priming,
        # no query to the internet.  The test's zones are resolved (transparent).
        lines.append('  local-zone: "." refuse')
        lines += [f'  local-zone: "{zone}." transparent' for zone in self.zones]
        lines += [
            "remote-control:",
            "  control-enable: yes",
            f'  control-interface: "{self.control_socket}"',
            "  control-use-cert: no",
        ]
        for zone in self.zones:
            lines += ["stub-zone:", f'  name: "{zone}."', f"  stub-addr: {up_host}@{up_port}"]
        self.conf_path.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 20.0) -> None:
        if shutil.which("unbound") is None:
            raise HarnessError("unbound is missing: bash deploy/scripts/install-system-deps.sh")
        check = subprocess.run(["unbound-checkconf", str(self.conf_path)], capture_output=True,
                               text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise HarnessError(f"unbound.conf rejected: {check.stdout}{check.stderr}")
        self._process.start()
        wait_until(self._answers, timeout, f"unbound on {self.address}",
                   diagnostics=lambda: "unbound log:\n" + tail(self._process.output()))

    def stop(self) -> None:
        self._process.stop()

    def _answers(self) -> bool:
        if not self._process.running():
            raise HarnessError(f"unbound exited ({self._process.returncode()}):\n"
                               + tail(self._process.output()))
        try:
            self.query("harness.invalid", "SOA", timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    def output(self) -> str:
        return self._process.output()

    # ------------------------------------------------------------------ use

    def flush(self) -> None:
        """Forget every cached answer (and validation result), as after a restart.
        Before `start` there is nothing cached: nothing to do."""
        if not self._process.running():
            return
        for command in (["flush_zone", "."], ["flush_bogus"], ["flush_negative"],
                        ["flush_infra", "all"]):
            result = subprocess.run(["unbound-control", "-c", str(self.conf_path), *command],
                                    capture_output=True, text=True, timeout=30, check=False)
            if result.returncode != 0:
                raise HarnessError(f"unbound-control {' '.join(command)} failed: "
                                   f"{result.stdout}{result.stderr}")

    def query(self, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
        """One recursive query with the DO bit, as a DANE client sends it."""
        request = dns.message.make_query(name, rdtype, want_dnssec=True)
        request.flags |= dns.flags.AD | dns.flags.RD
        response, _ = dns.query.udp_with_fallback(request, self.host, port=self.port,
                                                  timeout=timeout)
        return response

    def is_secure(self, name: str, rdtype: str) -> bool:
        """NOERROR with the AD bit: the answer was validated."""
        response = self.query(name, rdtype)
        return response.rcode() == dns.rcode.NOERROR and bool(response.flags & dns.flags.AD)
