"""Postfix policy-delegation load client (SMTPD_POLICY_README).

Usage::

    python -m bench.policy_load --socket inet:127.0.0.1:10040 --concurrency 8 --duration 10 \\
        [--client-ip 192.0.2.10 | --client-ip 203.0.113.0/24] [--sender a@example.org] \\
        [--auth-user alice] [--protocol-state RCPT]

The protocol: a request is ``name=value`` lines ended by an empty line; the answer is
``action=...`` plus an empty line; the connection stays open for further requests, as
Postfix's smtpd keeps it (persistent connections, one request in flight each).

Requests carry the attribute set Postfix 3.7 sends, with clients, senders and
recipients drawn from the fictional world of bench.world: by default 70% example.org
mail from its own servers (SPF pass), 20% example.com mail from its servers (pass via
include: and mx), 10% example.org mail from unknown hosts (SPF fail).  Latency is per
request, from writing it to the end of the answer.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import random
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench import world
from bench.loadgen import Controls, LoadConfig, LoadResult, Recorder, Script, clock, run_load
from bench.sockets import SocketSpec
from bench.sockets import connect as open_socket
from bench.stats import fmt_ms, fmt_rate

# --------------------------------------------------------------------------- codec


class PolicyProtocolError(Exception):
    """The server answered something that is not a policy response."""


def encode_request(attributes: Mapping[str, str]) -> bytes:
    """``name=value`` lines and the terminating empty line.

    Values cannot contain a newline (the protocol has no quoting); Postfix never sends
    one, and neither may we.
    """
    lines = []
    for name, value in attributes.items():
        if "\n" in name or "=" in name or "\n" in value:
            raise ValueError(f"attribute {name!r} cannot be encoded")
        lines.append(f"{name}={value}\n")
    lines.append("\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class PolicyResponse:
    attributes: Mapping[str, str]

    @property
    def action(self) -> str:
        return self.attributes.get("action", "")

    @property
    def label(self) -> str:
        """A bounded name for the action distribution: ``DUNNO``, ``DEFER_IF_PERMIT``,
        ``REJECT``, ``550``, ``PREPEND``... (the first word, upper-cased)."""
        word = self.action.split(None, 1)[0] if self.action.strip() else "(empty)"
        return word.upper()


def parse_response(block: bytes) -> PolicyResponse:
    """Decode the lines before the empty line; an answer without action= is an error."""
    attributes: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        name, eq, value = line.partition("=")
        if not eq:
            raise PolicyProtocolError(f"not a name=value line: {line[:60]!r}")
        attributes[name.strip()] = value
    if "action" not in attributes:
        raise PolicyProtocolError("response without action=")
    return PolicyResponse(attributes)


class ResponseSplitter:
    """Splits the byte stream into responses (each ends with an empty line)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_response(self) -> PolicyResponse | None:
        end = self._buffer.find(b"\n\n")
        if end < 0:
            if self._buffer.startswith(b"\n"):  # empty response: action missing
                raise PolicyProtocolError("empty response")
            return None
        block = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return parse_response(block)

    def take(self, want: int) -> object | None:
        """bench.loadgen.Framer interface."""
        return self.next_response()


class PolicyClient:
    """A blocking policy client, for one-off queries and readiness probes."""

    def __init__(self, spec: SocketSpec, timeout: float = 10.0) -> None:
        self.sock: socket.socket = open_socket(spec, timeout=timeout)
        self.splitter = ResponseSplitter()

    def query(self, attributes: Mapping[str, str]) -> PolicyResponse:
        self.sock.sendall(encode_request(attributes))
        while (response := self.splitter.next_response()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("policy server closed the connection")
            self.splitter.feed(data)
        return response

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Scenario:
    """A kind of request: who sends, from where, and how often (weight)."""

    weight: int
    sender_domain: str
    clients: world.ClientNet


DEFAULT_MIX = (
    Scenario(70, "example.org", world.ORG_SERVERS),
    Scenario(20, "example.com", world.COM_SERVERS),
    Scenario(10, "example.org", world.UNKNOWN_HOSTS),
)


@dataclass(frozen=True)
class PolicyLoadOptions:
    socket: SocketSpec
    client_ips: tuple[str, ...] = ()  # addresses or CIDRs; empty: the default mix
    sender: str | None = None  # fixed sender instead of the mix's
    auth_user: str | None = None
    protocol_state: str = "RCPT"
    variants: int = 512  # distinct requests per session, cycled
    timeout: float = 30.0
    load: LoadConfig = field(default_factory=LoadConfig)


def _random_host(spec: str, rng: random.Random) -> str:
    if "/" not in spec:
        return spec
    net = ipaddress.ip_network(spec, strict=False)
    if net.num_addresses <= 2:
        return str(net.network_address)
    return str(net.network_address + rng.randrange(1, net.num_addresses - 1))


def _net_of(address: str) -> world.ClientNet | None:
    ip = ipaddress.ip_address(address)
    for net in world.CLIENT_NETS:
        if ip in ipaddress.ip_network(net.network):
            return net
    return None


def make_request(opts: PolicyLoadOptions, rng: random.Random, seq: int) -> dict[str, str]:
    """One realistic attribute set, in the order Postfix 3.7 writes them."""
    if opts.client_ips:
        address = _random_host(rng.choice(opts.client_ips), rng)
        net = _net_of(address)
        domain = "example.org"
    else:
        scenario = rng.choices(DEFAULT_MIX, weights=[s.weight for s in DEFAULT_MIX])[0]
        net = scenario.clients
        address = net.host(rng.randrange(0, 120))
        domain = scenario.sender_domain
    name = net.ptr_name(address) if net is not None else None
    sender = opts.sender or f"user{rng.randrange(1000)}@{domain}"
    helo = name or f"[{address}]"
    authenticated = opts.auth_user is not None
    return {
        "request": "smtpd_access_policy",
        "protocol_state": opts.protocol_state,
        "protocol_name": "ESMTPSA" if authenticated else "ESMTPS",
        "helo_name": helo,
        "queue_id": f"{seq:012X}",
        "sender": sender,
        "recipient": f"rcpt{rng.randrange(200)}@{world.RECEIVER_DOMAIN}",
        "recipient_count": "0",
        "client_address": address,
        "client_name": name or "unknown",
        "reverse_client_name": name or "unknown",
        "instance": f"{seq:x}.{rng.getrandbits(32):08x}.{rng.getrandbits(20):05x}.0",
        "sasl_method": "PLAIN" if authenticated else "",
        "sasl_username": opts.auth_user or "",
        "sasl_sender": "",
        "size": str(rng.randrange(2000, 60000)),
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "",
        "encryption_protocol": "TLSv1.3",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "encryption_keysize": "256",
        "etrn_domain": "",
        "stress": "",
        "client_port": str(rng.randrange(1024, 65535)),
        "policy_context": "",
        "server_address": "10.11.12.13",
        "server_port": "587" if authenticated else "25",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
    }


def request_pool(opts: PolicyLoadOptions, seed: int) -> list[bytes]:
    """Encoded requests a session cycles through: varied, but encoded only once."""
    rng = random.Random(seed)
    return [
        encode_request(make_request(opts, rng, seed * 100_000 + i)) for i in range(opts.variants)
    ]


# --------------------------------------------------------------------------- load

WANT_ANSWER = 1


def fresh_instance(request: bytes, session: int, number: int) -> bytes:
    """`request` with its own `instance`: Postfix never repeats one for another
    transaction, and policy servers (policyd-spf, Mailward) remember results per
    instance, so a cycled pool (or the next run's) must not hand them the same twice."""
    return request.replace(b"\ninstance=", b"\ninstance=%x.%x." % (session, number), 1)


def session_script(requests: Sequence[bytes], rec: Recorder, ctl: Controls) -> Script:
    """A persistent policy connection: requests back to back until told to stop."""
    t0 = clock()
    rec.connected(t0)  # nothing to negotiate: the connection is ready once it exists
    turn = itertools.cycle(requests)
    session, sent = random.getrandbits(48), 0
    while ctl.more():
        ctl.next_seq()
        sent += 1
        start = clock()
        response: PolicyResponse = yield (
            fresh_instance(next(turn), session, sent), WANT_ANSWER
        )
        rec.request(start, response.label)
    return b""


def probe(opts: PolicyLoadOptions) -> PolicyResponse:
    """One query before the load, so that a dead or confused server is one clear error."""
    client = PolicyClient(opts.socket, timeout=opts.timeout)
    try:
        return client.query(make_request(opts, random.Random(0), 0))
    finally:
        client.close()


def run_policy_load(opts: PolicyLoadOptions) -> LoadResult:
    first = probe(opts)
    pools = [request_pool(opts, seed=100 + i) for i in range(opts.load.concurrency)]

    def factory(slot: int, rec: Recorder, ctl: Controls) -> tuple[ResponseSplitter, Script]:
        return ResponseSplitter(), session_script(pools[slot], rec, ctl)

    result = run_load(opts.socket, factory, opts.load)
    result.extra.update(
        {
            "probe_action": first.action,
            "latency_from": "request written to answer read",
        }
    )
    return result


def format_report(result: LoadResult, title: str) -> str:
    lat = result.latency
    lines = [
        title,
        f"  requests:         {result.requests} in {result.elapsed:.1f} s "
        f"= {fmt_rate(result.rate)} requests/s over {result.sessions} connections",
        f"  latency (ms):     p50 {fmt_ms(lat.p50)}  p90 {fmt_ms(lat.p90)}  "
        f"p99 {fmt_ms(lat.p99)}  max {fmt_ms(lat.max)}",
        "  actions:          "
        + (", ".join(f"{k} {v}" for k, v in result.outcomes.most_common()) or "-"),
        f"  errors:           {sum(result.errors.values())}"
        + "".join(f"\n    {v} x {k}" for k, v in result.errors.most_common(5)),
        f"  client CPU:       {result.client_cpu:.2f} cores",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.policy_load",
        description="Load a Postfix policy server with N persistent connections.",
    )
    parser.add_argument(
        "--socket",
        required=True,
        help="inet:HOST:PORT, inet:[V6]:PORT or unix:/path (Postfix syntax)",
    )
    parser.add_argument("--concurrency", "-c", type=int, default=8, help="connections")
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds")
    parser.add_argument(
        "--count",
        "-n",
        type=int,
        default=None,
        help="send this many requests instead of running for --duration",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--client-ip",
        action="append",
        help="client address or CIDR (repeatable; default: a realistic mix)",
    )
    parser.add_argument("--sender", help="fixed envelope sender (default: varied)")
    parser.add_argument("--auth-user", help="sasl_username: authenticated submissions")
    parser.add_argument(
        "--protocol-state", default="RCPT", help="RCPT (default), DATA, END-OF-MESSAGE, ..."
    )
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--processes",
        "-p",
        type=int,
        default=1,
        help="client event loops (processes) sharing the connections",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = PolicyLoadOptions(
        socket=SocketSpec.parse(args.socket),
        client_ips=tuple(args.client_ip or ()),
        sender=args.sender,
        auth_user=args.auth_user,
        protocol_state=args.protocol_state,
        timeout=args.timeout,
        load=LoadConfig(
            concurrency=args.concurrency,
            duration=args.duration,
            count=args.count,
            warmup=args.warmup,
            processes=args.processes,
            timeout=args.timeout,
        ),
    )
    try:
        result = run_policy_load(opts)
    except (OSError, PolicyProtocolError) as exc:
        print(f"policy server at {opts.socket} is not usable: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_report(result, f"policy load: {opts.socket}, {args.concurrency} connections"))
    return 1 if result.errors and not result.requests else 0


if __name__ == "__main__":
    sys.exit(main())
