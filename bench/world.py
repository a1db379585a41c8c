"""The small fictional Internet the benchmarks run in.

Load clients, the test message and the DNS zones served to the services under test
must agree: a message from example.org sent by 192.0.2.10 should get SPF pass, DKIM
pass and DMARC pass, or the benchmark measures timeout handling instead of the checks
users pay for.  Everything that has to agree is defined once, here.

Only documentation address space (RFC 5737) and reserved names (RFC 2606) are used,
so nothing can leak to a real network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

RECEIVER_HOST = "mx.example.net"  # authserv_id and macro j of the receiving MTA
RECEIVER_DOMAIN = "example.net"
DKIM_SELECTOR = "bench2048"


@dataclass(frozen=True)
class ClientNet:
    """A network of sending hosts and what DNS says about them."""

    network: str
    ptr_pattern: str | None  # "mail{n}.example.org": PTR + matching A; None: no PTR
    note: str

    def host(self, n: int) -> str:
        net = ipaddress.ip_network(self.network)
        return str(net.network_address + 1 + n % (net.num_addresses - 2))

    def ptr_name(self, address: str) -> str | None:
        if self.ptr_pattern is None:
            return None
        last = int(ipaddress.ip_address(address)) - int(
            ipaddress.ip_network(self.network).network_address
        )
        return self.ptr_pattern.format(n=last)


#: The outbound servers of example.org: SPF pass for example.org, forward-confirmed PTR.
ORG_SERVERS = ClientNet("192.0.2.0/25", "mail{n}.example.org", "example.org's servers")
#: example.com's servers, authorised through an include: and an mx mechanism.
COM_SERVERS = ClientNet("198.51.100.0/24", "out{n}.example.com", "example.com's servers")
#: Hosts nobody vouches for: no PTR, not in any SPF record.
UNKNOWN_HOSTS = ClientNet("203.0.113.0/24", None, "unknown hosts")

CLIENT_NETS = (ORG_SERVERS, COM_SERVERS, UNKNOWN_HOSTS)

#: MTA-STS destinations for the TLS policy benchmark (bench.tlspolicy_bench): each has
#: `_mta-sts` TXT and `mta-sts.DOMAIN` at STS_POLICY_ADDRESS, where the bench serves the
#: policies over HTTPS on port 443 (postfix-mta-sts-resolver cannot be given a port).
STS_POLICY_ADDRESS = "127.84.61.1"
STS_ENFORCE_DOMAINS = tuple(f"sts{n}.example" for n in range(1, 19))
STS_TESTING_DOMAINS = ("sts-testing1.example", "sts-testing2.example")
STS_DOMAINS = STS_ENFORCE_DOMAINS + STS_TESTING_DOMAINS

#: The scoring comparison's lists (bench/scoring.py): a DNSBL for client addresses and a
#: URI list for link domains, Spamhaus ZEN/DBL style return codes, private zones here.
DNSBL_ZONE = "zen.dnsbl.test"
URIBL_ZONE = "multi.uribl.test"
#: A spam source: one of the unknown hosts (no PTR, in no SPF record), listed as SBL.
LISTED_CLIENT = "203.0.113.66"
#: The domain the spam links to, listed in the URI list (its registrable domain).
LISTED_LINK_DOMAIN = "example.com"


def reverse_zone(net: ClientNet) -> str:
    """The in-addr.arpa zone of a /24 or smaller network (by its first three octets)."""
    octets = str(ipaddress.ip_network(net.network).network_address).split(".")
    return ".".join(reversed(octets[:3])) + ".in-addr.arpa"


def zones(dkim_public_key_b64: str | None) -> dict[str, list[str]]:
    """Resource records by zone, in zone-file syntax relative to the zone origin.

    SOA and NS records are added by whoever writes the zone files.
    """
    org = [
        '@ IN TXT "v=spf1 ip4:192.0.2.0/25 -all"',
        "@ IN MX 10 mail1.example.org.",
        '_dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.org"',
        '_spf IN TXT "v=spf1 ip4:198.51.100.0/24 -all"',
    ]
    if dkim_public_key_b64:
        # TXT strings are limited to 255 octets: split the key the way zone files do.
        text = f"v=DKIM1; k=rsa; p={dkim_public_key_b64}"
        parts = " ".join(f'"{text[i : i + 250]}"' for i in range(0, len(text), 250))
        org.append(f"{DKIM_SELECTOR}._domainkey IN TXT {parts}")
    com = [
        '@ IN TXT "v=spf1 mx include:_spf.example.org ~all"',
        "@ IN MX 10 mx.example.com.",
        "mx IN A 198.51.100.25",
        '_dmarc IN TXT "v=DMARC1; p=none"',
    ]
    net = [
        "@ IN MX 10 mx.example.net.",
        "mx IN A 127.0.0.1",
        '@ IN TXT "v=spf1 mx -all"',
        '_dmarc IN TXT "v=DMARC1; p=quarantine"',
    ]
    out: dict[str, list[str]] = {"example.org": org, "example.com": com, "example.net": net}
    listed = ".".join(reversed(LISTED_CLIENT.split(".")))
    # RFC 5782 2.1: the test entries 127.0.0.2 (listed) and no 127.0.0.1 (not listed).
    out[DNSBL_ZONE] = [f"{listed} IN A 127.0.0.2", f'{listed} IN TXT "bench: listed"',
                       "2.0.0.127 IN A 127.0.0.2"]
    out[URIBL_ZONE] = [f"{LISTED_LINK_DOMAIN} IN A 127.0.1.2", "test IN A 127.0.1.2"]
    for client_net in CLIENT_NETS:
        rev = out.setdefault(reverse_zone(client_net), [])
        if client_net.ptr_pattern is None:
            continue
        network = ipaddress.ip_network(client_net.network)
        domain = client_net.ptr_pattern.split(".", 1)[1]
        forward = out.setdefault(domain, [])
        for address in list(network.hosts())[:200]:
            name = client_net.ptr_name(str(address))
            assert name is not None
            rev.append(f"{str(address).rsplit('.', 1)[1]} IN PTR {name}.")
            forward.append(f"{name.removesuffix('.' + domain)} IN A {address}")
    for domain in STS_DOMAINS:
        out[domain] = [
            '_mta-sts IN TXT "v=STSv1; id=20261203T000000"',
            f"mta-sts IN A {STS_POLICY_ADDRESS}",
            f"@ IN MX 10 mx.{domain}.",
            "mx IN A 127.0.0.1",
        ]
    return out
