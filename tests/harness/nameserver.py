"""An authoritative DNS server (nsd) on a loopback high port, serving zones a test writes.

Mailward resolves SPF, DKIM, DMARC, ARC, iprev and DNSBL data; in the integration tests
every one of those answers comes from this server, through `[dns] nameservers` and
`[dns] port`, so no test depends on the internet and each test controls the data.

Zone data goes through dnspython before nsd sees it: that validates what the test wrote
(a typo fails in the test, not as a mysterious SERVFAIL), adds SOA and NS records when the
test left them out, and stamps an increasing SOA serial.  After every change the harness
polls the server until the new serial answers, so a test never races a reload.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.resolver
import dns.zone

from tests.harness.process import HarnessError, ManagedProcess, free_port, tail, wait_until

#: A record for `zone_text`: (name, type, rdata) or (name, ttl, type, rdata).  Names are
#: relative to the zone ("@", "_dmarc", "sel._domainkey") or absolute with a final dot.
Record = tuple[str, str, str] | tuple[str, int, str, str]

#: What `set_zone` accepts: zone-file text, or records for `zone_text`.
ZoneData = str | Sequence[Record]

DEFAULT_TTL = 300
#: SOA minimum = negative-caching TTL; short, so that a resolver cache does not hide a
#: record a test adds after asking for it.
DEFAULT_NEGATIVE_TTL = 60


def txt(value: str | bytes) -> str:
    """Quote a TXT value for zone text, split into the 255-byte strings DNS requires.

    DKIM public keys (RSA-2048) are longer than one character-string; a resolver joins
    the pieces again, which is exactly what DKIM verifiers must cope with.
    """
    data = value.encode() if isinstance(value, str) else value
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    quoted = []
    for chunk in chunks:
        escaped = "".join(
            f"\\{c:03d}" if c < 0x20 or c > 0x7E else ("\\" + chr(c) if chr(c) in '"\\' else chr(c))
            for c in chunk
        )
        quoted.append(f'"{escaped}"')
    return " ".join(quoted)


def zone_text(records: Iterable[Record], ttl: int = DEFAULT_TTL) -> str:
    """Build zone-file text from records; TXT data that is not quoted yet gets quoted.

    >>> zone_text([("@", "TXT", "v=spf1 ip4:192.0.2.10 -all"), ("mx", "A", "192.0.2.25")])
    '$TTL 300\\n@ 300 IN TXT "v=spf1 ip4:192.0.2.10 -all"\\nmx 300 IN A 192.0.2.25\\n'
    """
    lines = [f"$TTL {ttl}"]
    for record in records:
        if len(record) == 3:
            name, rtype, rdata = record
            record_ttl = ttl
        else:
            name, record_ttl, rtype, rdata = record
        rtype = rtype.upper()
        if rtype in ("TXT", "SPF") and not rdata.lstrip().startswith('"'):
            rdata = txt(rdata)
        lines.append(f"{name} {record_ttl} IN {rtype} {rdata}")
    return "\n".join(lines) + "\n"


def _normalize(zone: str) -> str:
    name = zone.strip().rstrip(".").lower()
    if not name:
        raise ValueError("the root zone is not supported")
    return name


class AuthoritativeDns:
    """A private nsd: `set_zone`/`remove_zone` while running, `stop`/`start` for outages.

    nsd runs in the foreground (`nsd -c CONF -d`), unprivileged paths only: its pid file,
    xfrd state, zone list and log all live in `base_dir`.  Response rate limiting is off
    (`rrl-ratelimit: 0`); with it, a load test sees one-second stalls.
    """

    def __init__(self, base_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.base_dir = base_dir
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.conf_path = base_dir / "nsd.conf"
        self.log_path = base_dir / "nsd.log"
        self._zones: dict[str, int] = {}  # zone name -> serial currently in its file
        self._serial = 0
        self._mtime = 0
        self._process = ManagedProcess("nsd", ["nsd", "-c", str(self.conf_path), "-d"],
                                       base_dir / "nsd.out")
        self._blackhole: list[socket.socket] = []
        base_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._process.running()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None

    def start(self, timeout: float = 10.0) -> None:
        """Start nsd on `self.port` (the same port after a `stop`) and wait until it answers."""
        self._release_blackhole()
        self._write_config()
        self._process.start()
        wait_until(self._answers_all_zones, timeout, f"nsd on {self.host}:{self.port}",
                   diagnostics=self._diagnostics)

    def stop(self, blackhole: bool = True) -> None:
        """Stop nsd.  By default the port then swallows queries without answering.

        A closed UDP port answers with ICMP "port unreachable", which some resolvers turn
        into an immediate error and others ignore; a black hole makes an outage look the
        same to every client: a timeout, as when a real name server is down.  It also
        keeps the port reserved for the next `start`.  `blackhole=False` closes the port.
        """
        self._process.stop()
        if blackhole:
            self._hold_blackhole()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """`with dns.outage(): ...` runs the block with the name server down."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        """Stop nsd and release the port for good (teardown)."""
        self._process.stop()
        self._release_blackhole()

    def _hold_blackhole(self) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((self.host, self.port))
        tcp.bind((self.host, self.port))
        tcp.listen(64)  # connections queue up and are never accepted: clients time out
        self._blackhole = [udp, tcp]

    def _release_blackhole(self) -> None:
        for sock in self._blackhole:
            sock.close()
        self._blackhole = []

    # ------------------------------------------------------------------ zones

    @property
    def zones(self) -> list[str]:
        return sorted(self._zones)

    def set_zone(self, zone: str, data: ZoneData) -> int:
        """Serve `zone` with `data` (zone text or records); return the serial now served.

        SOA and apex NS are added when missing; an SOA the test wrote keeps its fields
        except the serial, which the harness sets so that each version is unique.
        """
        return self.set_zones({zone: data})[_normalize(zone)]

    def set_zones(self, zones: Mapping[str, ZoneData]) -> dict[str, int]:
        """Replace several zones with one reload; return {zone: serial}."""
        serials: dict[str, int] = {}
        for zone, data in zones.items():
            name = _normalize(zone)
            serial = self._next_serial()
            self._zone_path(name).write_text(self._render(name, data, serial))
            serials[name] = serial
        new_zone_set = not set(serials) <= set(self._zones)
        self._zones.update(serials)
        self._bump_mtimes(serials)
        self._apply(restart=new_zone_set)
        return serials

    def remove_zone(self, zone: str) -> None:
        """Stop serving `zone`: queries for it get REFUSED, as from a server without it."""
        name = _normalize(zone)
        if name not in self._zones:
            raise KeyError(f"zone {name} is not served")
        del self._zones[name]
        self._zone_path(name).unlink(missing_ok=True)
        self._apply(restart=True, removed=name)

    def zone_file(self, zone: str) -> str:
        """The zone file as nsd reads it (for debugging a test)."""
        return self._zone_path(_normalize(zone)).read_text()

    def _zone_path(self, name: str) -> Path:
        return self.base_dir / f"{name}.zone"

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _bump_mtimes(self, serials: Mapping[str, int]) -> None:
        """nsd reloads a zone on SIGHUP only if its file's mtime changed: make sure it did.

        Two writes within one timestamp tick would otherwise look unchanged.
        """
        self._mtime = max(int(time.time()), self._mtime + 1)
        for name in serials:
            os.utime(self._zone_path(name), (self._mtime, self._mtime))

    def _render(self, name: str, data: ZoneData, serial: int) -> str:
        text = data if isinstance(data, str) else zone_text(data)
        if "$TTL" not in text.upper():
            text = f"$TTL {DEFAULT_TTL}\n{text}"
        origin = dns.name.from_text(name)
        try:
            zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
        except dns.exception.DNSException as exc:
            raise HarnessError(f"zone {name}: invalid zone data: {exc}\n{text}") from exc
        apex = zone.find_node(origin, create=True)
        soa_set = apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA)
        if soa_set is None:
            soa_text = (f"ns.{name}. hostmaster.{name}. {serial} 3600 600 86400 "
                        f"{DEFAULT_NEGATIVE_TTL}")
            soa = dns.rdata.from_text("IN", "SOA", soa_text)
            soa_ttl = DEFAULT_TTL
        else:
            soa = soa_set[0].replace(serial=serial)
            soa_ttl = soa_set.ttl
        apex.replace_rdataset(dns.rdataset.from_rdata(soa_ttl, soa))
        if apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) is None:
            ns = dns.rdata.from_text("IN", "NS", f"ns.{name}.")
            apex.replace_rdataset(dns.rdataset.from_rdata(DEFAULT_TTL, ns))
        return f"$ORIGIN {name}.\n" + zone.to_text(relativize=False)

    def _write_config(self) -> None:
        d = self.base_dir
        lines = [
            "server:",
            f"  ip-address: {self.host}@{self.port}",
            f"  port: {self.port}",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{d}"',
            '  database: ""',
            f'  pidfile: "{d}/nsd.pid"',
            f'  xfrdfile: "{d}/xfrd.state"',
            f'  zonelistfile: "{d}/zone.list"',
            f'  xfrdir: "{d}"',
            f'  logfile: "{self.log_path}"',
            "  rrl-ratelimit: 0",
            "  server-count: 1",
            "  verbosity: 1",
            "  hide-version: yes",
            "  do-ip6: no",
            "remote-control:",
            "  control-enable: no",
        ]
        for name in sorted(self._zones):
            lines += ["zone:", f'  name: "{name}"', f'  zonefile: "{self._zone_path(name)}"']
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _apply(self, restart: bool, removed: str | None = None) -> None:
        """Make the files on disk what nsd serves, then wait until it does.

        A changed zone needs only SIGHUP (nsd rereads files whose mtime changed); a zone
        added or removed changes nsd.conf, which nsd reads only at start.
        """
        self._write_config()
        if not self.running:
            return  # `start` loads whatever is on disk; nothing to wait for now
        if restart:
            self._process.stop()
            self._process.start()
        else:
            self._process.signal(signal.SIGHUP)
        wait_until(self._answers_all_zones, 10.0, "nsd to serve the new zone data",
                   diagnostics=self._diagnostics)
        if removed is not None:
            wait_until(lambda: self._soa_serial(removed) is None, 10.0,
                       f"nsd to stop serving {removed}", diagnostics=self._diagnostics)

    # ------------------------------------------------------------------ queries

    def query(self, name: str, rdtype: str = "A", tcp: bool = False,
              timeout: float = 1.0) -> dns.message.Message:
        """Send one query to this server and return the raw response (any rcode)."""
        request = dns.message.make_query(name, rdtype)
        if tcp:
            return dns.query.tcp(request, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(request, self.host, port=self.port, timeout=timeout)

    def resolver(self, timeout: float = 1.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server (what Mailward is configured with)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.cache = None
        return resolver

    def _soa_serial(self, zone: str) -> int | None:
        """The serial this server answers for `zone`, None if it does not serve it."""
        try:
            response = self.query(zone, "SOA", timeout=0.1)
        except dns.exception.Timeout:
            return None
        if response.rcode() != dns.rcode.NOERROR:
            return None
        for rrset in response.answer:
            for rdata in rrset:
                if isinstance(rdata, dns.rdtypes.ANY.SOA.SOA):
                    return int(rdata.serial)
        return None

    def _answers_all_zones(self) -> bool:
        if not self.running:
            raise HarnessError(f"nsd exited with status {self._process.returncode()}\n"
                               + self._diagnostics())
        if not self._zones:
            # No zone to ask for: any answer (REFUSED) shows that nsd is listening.
            try:
                self.query("harness.invalid", "SOA", timeout=0.1)
            except dns.exception.Timeout:
                return False
            return True
        return all(self._soa_serial(name) == serial for name, serial in self._zones.items())

    def log_text(self) -> str:
        """nsd's log file and its stdout/stderr."""
        parts = []
        for path in (self.log_path, self._process.output_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def _diagnostics(self) -> str:
        return "nsd log:\n" + tail(self.log_text())

    def __repr__(self) -> str:
        return f"<AuthoritativeDns {self.host}:{self.port} zones={self.zones}>"
