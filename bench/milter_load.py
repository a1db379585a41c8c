"""Milter load client: N concurrent MTA-side milter sessions against one socket.

Usage::

    python -m bench.milter_load --socket unix:/run/mailward/milter.sock \\
        --concurrency 8 --duration 10 [--message FILE] [--auth-user alice] \\
        [--client-ip 192.0.2.10 | --client-ip 203.0.113.0/24] [--messages-per-connection 1]

Each session does what Postfix's smtpd does for one SMTP client: open the milter
socket, negotiate, connect, HELO, then one or more transactions (MAIL, RCPT, DATA,
headers, body, end of message, ABORT), then QUIT.

Reported latency is per message, **from MAIL to the final reply** (end of message,
or an earlier reject); connecting, negotiating and HELO are reported separately as
"session setup".  The rate counts messages whose final reply arrived inside the
measurement window (after --warmup, for --duration seconds).
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field

from bench import world
from bench.loadgen import Controls, LoadConfig, LoadResult, Recorder, Script, clock, run_load
from bench.messages import generate_message, load_message
from bench.milter_client import (
    ENCODED_QUIT,
    QUEUE_ID_LENGTH,
    SMFIC_OPTNEG,
    AddHeader,
    ClientInfo,
    Envelope,
    FlowGen,
    FlowState,
    InsertHeader,
    Message,
    MessageResult,
    MilterClient,
    Negotiated,
    PreparedMessage,
    ProtocolError,
    Response,
    ResponseReader,
    TransactionTemplate,
    connection_flow,
    encode_optneg,
    eom_result,
    message_flow,
    one_write,
    parse_optneg,
)
from bench.sockets import SocketSpec
from bench.stats import fmt_ms, fmt_rate


@dataclass(frozen=True)
class MilterLoadOptions:
    socket: SocketSpec
    message: bytes
    sender: str = "alice@example.org"
    recipients: tuple[str, ...] = ("bob@example.net",)
    client_ips: tuple[str, ...] = ("192.0.2.10",)  # addresses or CIDR networks
    helo: str | None = None  # None: the client's PTR name, else mail.<sender domain>
    auth_user: str | None = None
    messages_per_connection: int = 1
    timeout: float = 30.0  # for the probe; the load uses load.timeout
    load: LoadConfig = field(default_factory=LoadConfig)


def _pick_address(spec: str, rng: random.Random) -> str:
    """An address, or a random host of a CIDR network (so a milter cannot cache one IP)."""
    if "/" not in spec:
        return spec
    net = ipaddress.ip_network(spec, strict=False)
    if net.num_addresses <= 2:
        return str(net.network_address)
    return str(net.network_address + rng.randrange(1, net.num_addresses - 1))


def _ptr_name(address: str) -> str | None:
    """What the fictional DNS says the client is called (see bench.world)."""
    ip = ipaddress.ip_address(address)
    for net in world.CLIENT_NETS:
        if ip in ipaddress.ip_network(net.network):
            return net.ptr_name(address)
    return None


def client_pool(opts: MilterLoadOptions, rng: random.Random, size: int = 64) -> list[ClientInfo]:
    """SMTP clients a worker cycles through.

    Built once, so that a new session costs no address parsing or DNS-name formatting
    in the client; a single address gives a pool of one, a CIDR network `size` hosts.
    """
    count = size if any("/" in spec for spec in opts.client_ips) else len(opts.client_ips)
    pool = []
    for i in range(count):
        address = _pick_address(opts.client_ips[i % len(opts.client_ips)], rng)
        ptr = _ptr_name(address)
        pool.append(
            ClientInfo(
                address=address,
                hostname=ptr,
                port=rng.randrange(1024, 65535),
                helo=opts.helo or ptr or f"mail.{opts.sender.rpartition('@')[2] or 'example.org'}",
                myhostname=world.RECEIVER_HOST,
                daemon_name="submission" if opts.auth_user else "smtpd",
            )
        )
    return pool


AUTH_RESULTS = "authentication-results"
AUTH_PREFIX = "A-R "  # load-statistics key prefix of the method=result counts
_METHOD_RESULT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*=\s*([A-Za-z0-9_-]+)")


def auth_results(value: str) -> list[str]:
    """The ``method=result`` pairs of an Authentication-Results value, lowercased.

    `value` is what follows the colon: ``" mx.example.net; spf=pass smtp.mailfrom=a@b;
    dkim=pass header.d=b"`` gives ``["spf=pass", "dkim=pass"]``.  The authserv-id (and a
    version after it) is skipped; a resinfo that does not start with method=result
    (``none``, a comment holding a semicolon) is ignored.  Counting these per message lets
    a benchmark show that a filter really verified, not just that it added a header.
    """
    found = []
    for resinfo in value.split(";")[1:]:
        match = _METHOD_RESULT.match(resinfo)
        if match:
            found.append(f"{match[1].lower()}={match[2].lower()}")
    return found


#: Spam headers whose verdict and symbols are counted (bench/scoring.py): Mailward's and
#: SpamAssassin's X-Spam-Status ("Yes, score=7.3 required=6.0 tests=A,B"), Rspamd's
#: X-Spam-Status ("Yes, score=7.30") and X-Spamd-Result ("default: True [7.30 / 15.00];
#: SYM(1.00)[detail]; ...").
SPAM_STATUS = "x-spam-status"
SPAMD_RESULT = "x-spamd-result"
SPAM_PREFIX = "spam "  # load-statistics key prefix of the spam verdict/symbol counts
_TESTS = re.compile(r"\btests=([A-Za-z0-9_,]*)")
_RSPAMD_SYMBOL = re.compile(r"(?:^|;)\s*([A-Z][A-Z0-9_]*)\(")


def spam_tokens(name: str, value: str) -> list[str]:
    """``x-spam-status=yes`` and ``symbol=NAME`` tokens of one added spam header.

    Counted per message like the A-R pairs, so a run shows that every message was
    scored and which lists and rules fired, not only that a header was added.
    """
    name = name.lower()
    text = " ".join(value.split())
    found: list[str] = []
    if name == SPAM_STATUS:
        verdict = text.split(",", 1)[0].strip().lower()
        if verdict in ("yes", "no"):
            found.append(f"{SPAM_STATUS}={verdict}")
        tests = _TESTS.search(re.sub(r",\s+", ",", text))  # folded at commas
        if tests:
            found += [f"symbol={t}" for t in tests[1].split(",") if t and t != "none"]
    elif name == SPAMD_RESULT:
        found += [f"symbol={m[1]}" for m in _RSPAMD_SYMBOL.finditer(text)]
    return found


WANT_NEGOTIATION = 1  # the SMFIC_OPTNEG answer (a raw packet)
WANT_RESPONSE = 2  # a control reply with the modifications before it


class MilterFramer:
    """bench.loadgen.Framer over milter_client.ResponseReader."""

    def __init__(self) -> None:
        self.reader = ResponseReader()

    def feed(self, data: bytes) -> None:
        self.reader.feed(data)

    def take(self, want: int) -> object | None:
        if want == WANT_NEGOTIATION:
            return self.reader.next_packet()
        return self.reader.next_response()


def _exchanges(
    flow: FlowGen, pending: bytes
) -> Generator[tuple[bytes, int], Response, tuple[MessageResult | None, bytes]]:
    """Turn a milter_client flow into engine steps, sending `pending` with the first write."""
    try:
        data = next(flow)
        while True:
            response = yield (pending + data, WANT_RESPONSE)
            pending = b""
            data = flow.send(response)
    except StopIteration as stop:
        result, trailing = stop.value
        return result, pending + trailing


_TEMPLATES: dict[tuple[object, ...], TransactionTemplate] = {}


def _template(
    neg: Negotiated, client: ClientInfo, opts: MilterLoadOptions, message: PreparedMessage
) -> TransactionTemplate:
    """The encoded transaction for this negotiation and client, built on first use."""
    key = (neg.key, client, id(message))
    template = _TEMPLATES.get(key)
    if template is None:
        envelope = Envelope(opts.sender, opts.recipients, auth_user=opts.auth_user)
        template = _TEMPLATES[key] = TransactionTemplate(neg, client, envelope, message)
    return template


def session_script(
    opts: MilterLoadOptions,
    client: ClientInfo,
    message: PreparedMessage,
    rec: Recorder,
    ctl: Controls,
) -> Script:
    """One milter session as Postfix's smtpd runs it, for bench.loadgen.

    Session setup (socket connect, negotiation, connect and HELO events) is timed on
    its own; each message is timed from MAIL to its final reply.
    """
    if not ctl.more():
        return b""  # nothing left to send: do not open a session just to quit it
    t0 = clock()
    pkt = yield (encode_optneg(), WANT_NEGOTIATION)
    if pkt.command != SMFIC_OPTNEG:
        raise ProtocolError(f"expected SMFIC_OPTNEG reply, got {pkt.command!r}")
    state = FlowState(parse_optneg(pkt.data), client)
    decided, pending = yield from _exchanges(connection_flow(state), b"")
    rec.connected(t0)
    if decided is not None:
        # Postfix closes the stream and applies this to the whole SMTP session.
        rec.stats[f"session decided at {decided.stage.value}: {decided.label}"] += 1
        return b""
    template = _template(state.neg, client, opts, message) if one_write(state.neg) else None
    for _ in range(opts.messages_per_connection):
        if not ctl.more():
            break
        queue_id = f"{ctl.next_seq():0{QUEUE_ID_LENGTH}X}"
        start = clock()
        result: MessageResult | None
        if template is not None:  # fast path: one write, one reply per message
            response = yield (pending + template.render(queue_id), WANT_RESPONSE)
            result, pending = eom_result(state, response), template.trailing
        else:
            envelope = Envelope(
                opts.sender, opts.recipients, queue_id=queue_id, auth_user=opts.auth_user
            )
            flow = message_flow(state, envelope, message)
            result, pending = yield from _exchanges(flow, pending)
        assert result is not None
        rec.request(start, result.label)
        rec.stats["messages"] += 1
        for mod in result.modifications:
            rec.stats[type(mod).__name__] += 1
            if isinstance(mod, AddHeader | InsertHeader) and mod.name.lower() == AUTH_RESULTS:
                for found in auth_results(mod.value):
                    rec.stats[AUTH_PREFIX + found] += 1
            elif isinstance(mod, AddHeader | InsertHeader) and mod.name.lower() in (
                    SPAM_STATUS, SPAMD_RESULT):
                for found in set(spam_tokens(mod.name, mod.value)):
                    rec.stats[SPAM_PREFIX + found] += 1
        if state.closed_by_decision is not None:
            return b""  # shutdown / connection failure: Postfix drops the stream
    return pending + ENCODED_QUIT


def probe(opts: MilterLoadOptions) -> Negotiated:
    """One negotiation before the load: fail with one clear error instead of N retries."""
    conn = MilterClient(opts.socket, timeout=opts.timeout)
    try:
        return conn.negotiate()
    finally:
        conn.close()


def run_milter_load(opts: MilterLoadOptions) -> LoadResult:
    """Run the load described by `opts`; `extra` carries negotiation and edit counts."""
    negotiated = probe(opts)
    message = PreparedMessage(Message.parse(opts.message))
    pools = [client_pool(opts, random.Random(1000 + i)) for i in range(opts.load.concurrency)]
    turns = [itertools.cycle(pool) for pool in pools]

    def factory(slot: int, rec: Recorder, ctl: Controls) -> tuple[MilterFramer, Script]:
        return MilterFramer(), session_script(opts, next(turns[slot]), message, rec, ctl)

    result = run_load(opts.socket, factory, opts.load)
    counts = Counter(result.stats)
    messages = counts.pop("messages", 0)
    decisions = {k: v for k, v in counts.items() if k.startswith("session ")}
    results = {
        k.removeprefix(AUTH_PREFIX): v for k, v in counts.items() if k.startswith(AUTH_PREFIX)
    }
    spam = {
        k.removeprefix(SPAM_PREFIX): v for k, v in counts.items() if k.startswith(SPAM_PREFIX)
    }
    edits = {
        k: round(v / messages, 3)
        for k, v in sorted(counts.items())
        if k not in decisions and not k.startswith((AUTH_PREFIX, SPAM_PREFIX)) and messages
    }
    result.extra.update(
        {
            "negotiated": negotiated.describe(),
            "message_bytes": message.message.size,
            "edits_per_message": edits,
            "session_decisions": decisions,
            "messages": messages,
            "auth_results": dict(sorted(results.items())),
            "spam_results": dict(sorted(spam.items())),
            "latency_from": "MAIL to final reply",
        }
    )
    return result


def format_report(result: LoadResult, title: str) -> str:
    """Human-readable summary of a milter load run."""
    lat, setup = result.latency, result.connect_latency
    verdicts = result.extra.get("auth_results", {})  # method=result -> messages
    lines = [
        f"{title}",
        f"  negotiated:       {result.extra.get('negotiated', '?')}",
        f"  messages:         {result.requests} in {result.elapsed:.1f} s "
        f"= {fmt_rate(result.rate)} msg/s over {result.sessions} sessions",
        f"  latency (MAIL to final reply, ms): p50 {fmt_ms(lat.p50)}  p90 {fmt_ms(lat.p90)}  "
        f"p99 {fmt_ms(lat.p99)}  max {fmt_ms(lat.max)}",
        f"  session setup (connect+negotiate+HELO, ms): p50 {fmt_ms(setup.p50)}  "
        f"p99 {fmt_ms(setup.p99)}",
        "  final actions:    "
        + (", ".join(f"{k} {v}" for k, v in result.outcomes.most_common()) or "-"),
        "  edits/message:    "
        + (
            ", ".join(f"{k} {v}" for k, v in result.extra.get("edits_per_message", {}).items())
            or "none"
        ),
        "  A-R results:      " + (", ".join(f"{k} {v}" for k, v in verdicts.items()) or "none"),
        f"  errors:           {sum(result.errors.values())}"
        + "".join(f"\n    {v} x {k}" for k, v in result.errors.most_common(5)),
        f"  client CPU:       {result.client_cpu:.2f} cores",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.milter_load",
        description="Load a milter with N concurrent MTA-side sessions (milter protocol v6).",
    )
    parser.add_argument(
        "--socket",
        required=True,
        help="unix:/path, inet:HOST:PORT or inet:[V6]:PORT (Postfix syntax)",
    )
    parser.add_argument("--concurrency", "-c", type=int, default=8, help="concurrent sessions")
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds")
    parser.add_argument(
        "--count",
        "-n",
        type=int,
        default=None,
        help="send this many messages instead of running for --duration",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--message", help="RFC 5322 file to send (default: generated ~6 KB)")
    parser.add_argument("--sender", default="alice@example.org")
    parser.add_argument("--rcpt", action="append", help="recipient (repeatable)")
    parser.add_argument(
        "--client-ip", action="append", help="SMTP client address or CIDR to pick from (repeatable)"
    )
    parser.add_argument("--helo", help="HELO name (default: the client's PTR name)")
    parser.add_argument("--auth-user", help="send {auth_authen}: an authenticated submission")
    parser.add_argument(
        "--messages-per-connection",
        type=int,
        default=1,
        help="transactions per milter session (Postfix: per SMTP session)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds without a reply before a session counts as failed",
    )
    parser.add_argument(
        "--processes",
        "-p",
        type=int,
        default=1,
        help="client event loops (processes) sharing the sessions",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    message = load_message(args.message) if args.message else generate_message()
    opts = MilterLoadOptions(
        socket=SocketSpec.parse(args.socket),
        message=message,
        sender=args.sender,
        recipients=tuple(args.rcpt or ["bob@example.net"]),
        client_ips=tuple(args.client_ip or ["192.0.2.10"]),
        helo=args.helo,
        auth_user=args.auth_user,
        messages_per_connection=args.messages_per_connection,
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
        result = run_milter_load(opts)
    except (OSError, ProtocolError) as exc:
        print(f"milter at {opts.socket} is not usable: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_report(result, f"milter load: {opts.socket}, {args.concurrency} sessions"))
    return 1 if result.errors and not result.requests else 0


if __name__ == "__main__":
    sys.exit(main())
