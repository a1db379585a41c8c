"""Fuzz the parsers that read what a sender or a client writes (issue 9), for N seconds each.

`python -m bench.fuzz [--seconds 10] [--only codec,mime] [--seed 1]` feeds each target
random inputs (random bytes, and seeds of its syntax mutated: bytes flipped, pieces
spliced, repeated, cut) and prints, per target, the inputs tried and the crashes: any
exception other than the target's documented error.  The goal (issue 9) is >= 1M inputs
per target and 0 crashes; the bounded form of the same properties runs in CI as the
hypothesis tests tests/unit/test_fuzz_*.py.

With atheris installed, `python -m bench.fuzz --atheris TARGET [libFuzzer flags...]`
runs one target under coverage-guided fuzzing instead (atheris is not a dependency).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailward.authresults import authserv_id_of, parse_results, split_resinfo
from mailward.checks.dmarc import parse_record
from mailward.dkimcore.arcset import lenient_instance, seal_cv
from mailward.dkimcore.taglist import TagListError, lenient_tags, parse_tag_list, strip_b_value
from mailward.fromheader import author_domains, parse_from
from mailward.messagefile import transaction_from_bytes
from mailward.mime import MimeLimits, parse_message
from milters.protocol import CommandReader, ProtocolError
from policyd.codec import PolicyDecoder

_TEXT = "utf-8", "surrogateescape"
_MIME_LIMITS = MimeLimits(max_depth=8, max_parts=50, max_part_bytes=16 * 1024,
                          max_total_bytes=64 * 1024)


def _codec(data: bytes) -> None:
    decoder = PolicyDecoder(max_request=4096)
    half = len(data) // 2
    decoder.feed(data[:half])
    decoder.feed(data[half:])
    decoder.eof()


def _authresults(data: bytes) -> None:
    text = data.decode(*_TEXT)
    authserv_id_of(text)
    split_resinfo(text)
    parse_results(text)


def _taglist(data: bytes) -> None:
    with contextlib.suppress(TagListError):
        parse_tag_list(data)
    lenient_tags(data)
    strip_b_value(data)
    for kind in ("AAR", "AMS", "AS"):
        lenient_instance(kind, data)
    seal_cv(data)


def _dmarc(data: bytes) -> None:
    parse_record(data.decode(*_TEXT))


def _from(data: bytes) -> None:
    text = data.decode(*_TEXT)
    parse_from(text)
    author_domains(text.split("\x00")[:4])


def _milter(data: bytes) -> None:
    """The milter engine's packet decoder, the stream split at two points."""
    reader = CommandReader(max_packet=4096)
    third = len(data) // 3
    with contextlib.suppress(ProtocolError):
        for piece in (data[:third], data[third:2 * third], data[2 * third:]):
            reader.receive(piece)


def _mime(data: bytes) -> None:
    parse_message(transaction_from_bytes(data), _MIME_LIMITS)


@dataclass(frozen=True)
class Target:
    """One function under fuzz and the seeds its mutations start from."""

    name: str
    run: Callable[[bytes], None]
    seeds: tuple[bytes, ...]
    max_size: int = 1024


TARGETS = (
    Target("codec", _codec, (
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@b.c\n\n",
        b"x=y\r\n\r\n", b"noequals\n\n", b"\x00\n\n")),
    Target("authresults", _authresults, (
        b"mx.example.net; dkim=pass header.d=example.com; spf=pass smtp.mailfrom=a@b.c",
        b'"x"(c); dmarc=fail reason="a b" policy.dmarc=reject', b"a; none")),
    Target("taglist", _taglist, (
        b"v=1; a=rsa-sha256; d=example.com; s=s; h=from:to; bh=AA==; b=BB==",
        b"i=1; cv=none; a=rsa-sha256; b=x", b"i=" + b"9" * 5000)),
    Target("dmarc", _dmarc, (
        b"v=DMARC1; p=reject; sp=none; adkim=s; pct=50; rua=mailto:r@example.com",
        b"v=DMARC1;p=bogus;psd=y;t=y", b"v=DMARC1")),
    Target("from", _from, (
        b"Joe <joe@example.com>", b"=?UTF-8?B?QmVk?=<B&B@example.com>",
        b'"a, b" <a@[127.0.0.1]>, c@d.e', b"(((((a@b.c")),
    Target("milter", _milter, (
        b"\x00\x00\x00\rO\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff"
        b"\x00\x00\x00\x18DMi\x00QID\x00{auth_authen}\x00\x00\x00\x00\x01N",
        b"\x00\x00\x00\x1bCclient.example.org\x004\x9c@192.0.2.1\x00"
        b"\x00\x00\x00\x11LSubject\x00 hello\x00\x00\x00\x00\x01E",
        b"\x00\x00\x00\x10M<a@example.org>\x00\x00\x00\x00\x06Bbody\n")),
    Target("mime", _mime, (
        b"Subject: hi\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"PGI+aGk8L2I+\r\n--b\r\nContent-Disposition: attachment; filename=x.exe\r\n\r\n"
        b"MZ\r\n--b--\r\n",), max_size=4096),
)


def mutate(rng: random.Random, seeds: tuple[bytes, ...], max_size: int) -> bytes:
    """A random input: random bytes now and then, else a seed changed a few times."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randrange(max_size))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 6)):
        choice = rng.randrange(5)
        position = rng.randrange(len(data) + 1)
        if choice == 0 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif choice == 1:
            other = rng.choice(seeds)
            start = rng.randrange(len(other) + 1)
            data[position:position] = other[start:start + rng.randrange(1, 64)]
        elif choice == 2:
            end = min(len(data), position + rng.randrange(1, 32))
            data[position:position] = data[position:end] * rng.randrange(1, 20)
        elif choice == 3:
            del data[position:position + rng.randrange(1, 16)]
        else:
            data[position:position] = rng.choice([b";", b"=", b"\n", b"\r\n", b'"', b"(", b"<",
                                                  b"@", b"=?", b"\\", b"\x00", b"\xff", b" "])
    return bytes(data[:max_size])


@dataclass
class Outcome:
    tried: int = 0
    crashes: list[tuple[bytes, str]] = field(default_factory=list)


def fuzz(target: Target, seconds: float, rng: random.Random) -> Outcome:
    outcome = Outcome()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100):
            data = mutate(rng, target.seeds, target.max_size)
            outcome.tried += 1
            try:
                target.run(data)
            except Exception as exc:  # noqa: BLE001 - any exception here is the finding
                if len(outcome.crashes) < 1000:
                    outcome.crashes.append((data, f"{type(exc).__name__}: {exc}"[:200]))
    return outcome


def _atheris(target: Target, argv: list[str]) -> None:
    try:
        atheris = importlib.import_module("atheris")  # optional, untyped
    except ImportError:
        sys.exit("atheris is not installed (pip install atheris)")
    atheris.Setup([sys.argv[0], *argv], target.run)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per target")
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--atheris", metavar="TARGET", default=None)
    args, rest = parser.parse_known_args(argv)
    by_name = {target.name: target for target in TARGETS}
    if args.atheris is not None:
        _atheris(by_name[args.atheris], rest)
        return 0
    if rest:
        parser.error(f"unknown arguments {rest}")
    names = [name for name in args.only.split(",") if name] or list(by_name)
    unknown = set(names) - set(by_name)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(by_name)}")
    rng = random.Random(args.seed)
    total_crashes = 0
    print(f"{'target':<12} {'inputs':>10} {'per s':>9} {'crashes':>8}")
    for name in names:
        outcome = fuzz(by_name[name], args.seconds, rng)
        total_crashes += len(outcome.crashes)
        rate = outcome.tried / args.seconds if args.seconds else 0.0
        print(f"{name:<12} {outcome.tried:>10} {rate:>9.0f} {len(outcome.crashes):>8}")
        for data, error in outcome.crashes[:3]:
            print(f"    {error}\n    input: {data[:120]!r}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
