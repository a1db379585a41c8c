"""An authoritative DNS server (nsd) on loopback, serving bench.world's zones.

The services under test resolve SPF, DKIM, DMARC and PTR records; without answers
they would spend the benchmark waiting for timeouts.  nsd is what the integration
tests use too (DESIGN.md): C, fast enough never to be the bottleneck, and with
response rate limiting off so a load test does not meet 1 s stalls.
"""

from __future__ import annotations

import shutil
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from bench import world
from bench.procs import ServiceProcess
from bench.sockets import free_tcp_port

SOA = "@ IN SOA ns.{zone}. hostmaster.{zone}. 2026030301 3600 600 86400 300"


def write_zones(directory: Path, dkim_public_key_b64: str | None) -> list[tuple[str, str]]:
    """Write one zone file per zone; return (zone, file name) pairs."""
    out = []
    for zone, records in world.zones(dkim_public_key_b64).items():
        name = f"{zone}.zone"
        lines = [
            f"$ORIGIN {zone}.",
            "$TTL 3600",
            SOA.format(zone=zone),
            "@ IN NS ns.bench.invalid.",
            *records,
        ]
        (directory / name).write_text("\n".join(lines) + "\n", encoding="ascii")
        out.append((zone, name))
    return out


def nsd_config(directory: Path, port: int, zones: list[tuple[str, str]]) -> str:
    server = f"""server:
    ip-address: 127.0.0.1@{port}
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{directory}"
    database: ""
    zonelistfile: "{directory}/zone.list"
    xfrdfile: "{directory}/xfrd.state"
    xfrdir: "{directory}"
    pidfile: "{directory}/nsd.pid"
    logfile: "{directory}/nsd.log"
    server-count: 1
    verbosity: 1
    rrl-ratelimit: 0
    hide-version: yes
remote-control:
    control-enable: no
"""
    return server + "".join(f"zone:\n    name: {z}\n    zonefile: {f}\n" for z, f in zones)


def _soa_query(zone: str) -> bytes:
    """A minimal DNS query (SOA, no EDNS), built by hand to keep dnspython optional."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in zone.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 6, 1)


def dns_probe(port: int, zone: str = "example.org") -> Callable[[], None]:
    """Readiness probe: an authoritative answer for `zone`'s SOA over UDP."""

    def probe() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.sendto(_soa_query(zone), ("127.0.0.1", port))
            reply = sock.recv(4096)
        if len(reply) < 12 or reply[3] & 0x0F != 0:
            raise OSError(f"DNS server answered rcode {reply[3] & 0x0F if len(reply) > 3 else '?'}")

    return probe


class DnsServer:
    """nsd serving the bench zones on 127.0.0.1:`port`, started in `directory`."""

    def __init__(self, directory: Path, dkim_public_key_b64: str | None) -> None:
        self.directory = directory
        self.port = free_tcp_port()
        directory.mkdir(parents=True, exist_ok=True)
        zones = write_zones(directory, dkim_public_key_b64)
        self.config = directory / "nsd.conf"
        self.config.write_text(nsd_config(directory, self.port, zones), encoding="ascii")
        self.process: ServiceProcess | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("nsd") is not None

    def start(self, timeout: float = 20.0) -> None:
        nsd = shutil.which("nsd") or "/usr/sbin/nsd"
        self.process = ServiceProcess(
            "nsd", [nsd, "-d", "-c", str(self.config)], log=self.directory / "nsd.stderr"
        )
        self.process.start()
        self.process.wait_ready(dns_probe(self.port), timeout=timeout)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
