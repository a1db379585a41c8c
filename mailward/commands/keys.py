"""`mailward keys generate|show-dns|check`: the DKIM key lifecycle.

Rotation, the way these commands support it:

1. `mailward keys generate --domain example.com --selector s2027r` writes a new key
   (mode 0600) and prints the TXT record to publish;
2. add it to the configuration with `active = false`: it is loaded and validated,
   `show-dns` prints it and `check` looks it up, but nothing is signed with it yet;
3. once `mailward keys check` says "matches" for it (the record has propagated), set
   `active = true` (and the old key to false) and reload (SIGHUP): sessions in flight
   finish with the old keys, new ones sign with the new key;
4. keep the old record published for a few days, then remove it (or publish it
   revoked, `p=`).

The logic is here as plain functions over a Resolver and loaded keys, so tests can
run it against an in-memory zone; `run_*` are the subcommands.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import pwd
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mailward.config import ConfigError, DkimSigningKey, Settings, load_settings
from mailward.dkimcore.taglist import tag_specs

if TYPE_CHECKING:
    from mailward.dns import Resolver
    from mailward.signing.keys import LoadedKey, PrivateKey

KEY_ALGORITHMS = ("rsa-2048", "rsa-3072", "ed25519")


# --------------------------------------------------------------------------- generate


def generate_private_key(algorithm: str) -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    raise ValueError(f"unknown algorithm {algorithm!r}: use one of {', '.join(KEY_ALGORITHMS)}")


def private_key_pem(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_file_name(domain: str, selector: str) -> str:
    return f"{domain}.{selector}.key"


def write_private_key(path: Path, key: PrivateKey, owner: str | None = None) -> None:
    """Create `path` with mode 0600 (never overwriting), write the PEM, fsync it."""
    created_directory = not path.parent.exists()
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    if owner and created_directory:
        # A directory we just made for the owner's key must let the owner in.
        account = pwd.getpwnam(owner)
        os.chown(path.parent, account.pw_uid, account.pw_gid)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask says
        if owner:
            account = pwd.getpwnam(owner)
            os.fchown(fd, account.pw_uid, account.pw_gid)
        os.write(fd, private_key_pem(key))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


# --------------------------------------------------------------------------- check


class KeyStatus(StrEnum):
    MATCHES = "matches"
    MISSING = "missing"
    MISMATCHED = "mismatched"
    REVOKED = "revoked"
    TOO_SHORT = "too short"
    MALFORMED = "malformed"
    DNS_ERROR = "dns error"


@dataclass(frozen=True)
class KeyCheck:
    """What DNS publishes for one key, compared with the key file."""

    key: LoadedKey
    status: KeyStatus
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is KeyStatus.MATCHES

    def line(self) -> str:
        active = "" if self.key.active else " [inactive]"
        text = f"{self.key.name}{active} ({self.key.record_name}): {self.status}"
        return f"{text}: {self.detail}" if self.detail else text


def parse_tag_list(text: str) -> dict[str, str] | None:
    """A key record's RFC 6376 3.2 tag=value list, values without any white space (so
    that p= compares with our key); None if it is not one (or repeats a tag).  Empty
    specs are passed over: this reads what we publish, it does not judge it."""
    tags: dict[str, str] = {}
    for spec in tag_specs(text):
        if not spec.text:
            continue
        if not spec.well_formed or spec.name in tags:
            return None
        tags[spec.name] = "".join(spec.value.split())
    return tags


def check_key(resolver: Resolver, key: LoadedKey) -> KeyCheck:
    """Look up `key`'s record and say whether it publishes this key."""
    from mailward.dns import Outcome

    answer = resolver.query(key.record_name, "TXT")
    if answer.outcome is Outcome.TEMPERROR:
        return KeyCheck(key, KeyStatus.DNS_ERROR, answer.error or "temporary DNS failure")
    if answer.outcome is not Outcome.ANSWER:
        return KeyCheck(key, KeyStatus.MISSING, f"{answer.outcome}: publish the record "
                        "`mailward keys show-dns` prints")
    records = [b"".join(strings).decode("ascii", "replace") for strings in answer.txt_strings]
    candidates = []
    for record in records:
        tags = parse_tag_list(record)
        if tags is not None and tags.get("v", "DKIM1") == "DKIM1" and "p" in tags:
            candidates.append(tags)
    if not candidates:
        return KeyCheck(key, KeyStatus.MISSING, f"no DKIM key record among {len(records)} "
                        "TXT record(s)")
    if len(candidates) > 1:
        return KeyCheck(key, KeyStatus.MISMATCHED, f"{len(candidates)} DKIM key records "
                        "published; verifiers pick one at random: keep exactly one")
    return compare_record(key, candidates[0])


def compare_record(key: LoadedKey, tags: dict[str, str]) -> KeyCheck:
    published = tags["p"]
    if not published:
        return KeyCheck(key, KeyStatus.REVOKED, "the record has an empty p= (key revoked)")
    key_type = tags.get("k", "rsa").lower()
    expected_type = key.algorithm.key_type
    if key_type != expected_type:
        return KeyCheck(key, KeyStatus.MISMATCHED,
                        f"k={key_type} published, the key file is {expected_type}")
    hashes = tags.get("h")
    if hashes is not None and "sha256" not in hashes.lower().split(":"):
        return KeyCheck(key, KeyStatus.MISMATCHED, f"h={hashes} does not allow sha256")
    services = tags.get("s")
    if services is not None and not {"*", "email"} & set(services.lower().split(":")):
        return KeyCheck(key, KeyStatus.MISMATCHED, f"s={services} excludes email")
    ours = key.public_key_b64()
    note = " (t=y: testing mode)" if "y" in tags.get("t", "").lower().split(":") else ""
    if published == ours:
        return KeyCheck(key, KeyStatus.MATCHES, note.strip(" ()"))
    if ours.startswith(published):
        return KeyCheck(key, KeyStatus.TOO_SHORT, f"p= holds only {len(published)} of "
                        f"{len(ours)} characters: a string of the TXT record is missing")
    try:
        data = base64.b64decode(published, validate=True)
    except (binascii.Error, ValueError):
        return KeyCheck(key, KeyStatus.MALFORMED, "p= is not base64")
    bits = _published_key_bits(data, expected_type)
    if bits is None:
        return KeyCheck(key, KeyStatus.MALFORMED, f"p= is not a {expected_type} public key")
    if expected_type == "rsa" and bits < 1024:
        return KeyCheck(key, KeyStatus.TOO_SHORT, f"the published RSA key has {bits} bits "
                        "(verifiers reject less than 1024) and is not this key")
    return KeyCheck(key, KeyStatus.MISMATCHED, f"a different {expected_type} key ({bits} bits) "
                    "is published")


def _published_key_bits(data: bytes, key_type: str) -> int | None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    if key_type == "ed25519":
        return 256 if len(data) == 32 else None
    try:
        public = load_der_public_key(data)
    except (ValueError, TypeError):
        return None
    return public.key_size if isinstance(public, rsa.RSAPublicKey) else None


# --------------------------------------------------------------------------- commands


def _select(
    configs: Sequence[DkimSigningKey], domain: str | None, selector: str | None
) -> list[DkimSigningKey]:
    return [
        key for key in configs
        if (domain is None or key.domain == domain.lower().rstrip("."))
        and (selector is None or key.selector == selector)
    ]


def _load_configured(args: argparse.Namespace) -> tuple[Settings, list[LoadedKey]]:
    from mailward.signing.keys import load_keys

    settings = load_settings(args.config)
    chosen = _select(settings.dkim.sign.keys, args.domain, args.selector)
    if not chosen:
        raise LookupError(f"{args.config}: no [[dkim.sign.keys]] table"
                          + (" matches the --domain/--selector given" if args.domain
                             or args.selector else ""))
    return settings, list(load_keys(chosen))


def run_generate(args: argparse.Namespace, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from mailward.signing.keys import LoadedKey, zone_record

    directory: Path | None = args.key_dir
    if directory is None:
        try:
            directory = load_settings(args.config).dkim.sign.key_directory
        except ConfigError as exc:
            if args.config_given or args.config.exists():
                print(exc, file=err)
                return 1
            directory = Path("/etc/mailward/keys")  # no configuration yet: the default
    domain = args.domain.lower().rstrip(".")
    path = directory / key_file_name(domain, args.selector)
    private_key = generate_private_key(args.algorithm)
    try:
        write_private_key(path, private_key, args.owner)
    except FileExistsError:
        print(f"{path}: exists already; choose another selector (keys are never "
              "overwritten)", file=err)
        return 1
    except (OSError, KeyError) as exc:
        print(f"{path}: cannot write the key: {exc}", file=err)
        return 1
    key = LoadedKey(domain, args.selector, path, private_key)
    print(zone_record(key.record_name, key.dns_record()), file=out)
    print(f"wrote {path} ({args.algorithm}, mode 0600). Publish the record above, then add:\n"
          f"\n[[dkim.sign.keys]]\ndomain = \"{domain}\"\nselector = \"{args.selector}\"\n"
          f"key = \"{path}\"\nactive = false   # true once `mailward keys check` says it "
          "matches", file=err)
    return 0


def run_show_dns(args: argparse.Namespace, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from mailward.signing.keys import zone_record

    try:
        _, keys = _load_configured(args)
    except (ConfigError, LookupError) as exc:
        print(exc, file=err)
        return 1
    for index, key in enumerate(keys):
        if index:
            print(file=out)
        state = "active" if key.active else "inactive"
        print(f"; {key.name}: {key.algorithm}, {key.bits} bits, {state}, {key.path}", file=out)
        print(zone_record(key.record_name, key.dns_record()), file=out)
    return 0


def run_check(args: argparse.Namespace, out: TextIO | None = None,
              err: TextIO | None = None, resolver: Resolver | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        settings, keys = _load_configured(args)
    except (ConfigError, LookupError) as exc:
        print(exc, file=err)
        return 1
    if resolver is None:
        from mailward.dns import DnsResolver

        resolver = DnsResolver(settings.dns)
    results = [check_key(resolver, key) for key in keys]
    for result in results:
        print(result.line(), file=out)
    return 0 if all(result.ok for result in results) else 1


def add_subcommands(keys_parser: argparse.ArgumentParser, config_default: Path) -> None:
    """`keys generate|show-dns|check` under the `keys` parser the CLI created."""
    actions = keys_parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", type=Path, default=None,
                         help=f"configuration file (default: {config_default})")
        return sub

    generate = action("generate", "write a new private key (0600) and print its DNS record")
    generate.add_argument("--domain", required=True, help="signing domain (d=)")
    generate.add_argument("--selector", required=True, help="selector (s=)")
    generate.add_argument("--algorithm", choices=KEY_ALGORITHMS, default="rsa-2048",
                          help="key type (default rsa-2048)")
    generate.add_argument("--key-dir", type=Path, default=None,
                          help="where to write it (default: dkim.sign.key_directory)")
    generate.add_argument("--owner", default=None,
                          help="chown the key file to this user (the one the milter runs as)")
    generate.set_defaults(keys_handler=run_generate)
    for name, help_text, handler in (
        ("show-dns", "print the DNS TXT record of every configured key", run_show_dns),
        ("check", "look up each key's published record: matches, missing, mismatched, "
                  "revoked, too short (exit 0 only if all match)", run_check),
    ):
        sub = action(name, help_text)
        sub.add_argument("--domain", default=None, help="only keys of this domain")
        sub.add_argument("--selector", default=None, help="only keys with this selector")
        sub.set_defaults(keys_handler=handler)


def run(args: argparse.Namespace, config_default: Path) -> int:
    args.config_given = args.config is not None
    if args.config is None:
        args.config = config_default
    status: int = args.keys_handler(args)
    return status


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             config_default: Path) -> None:
    keys_help = "DKIM key lifecycle: generate a key, show its DNS record, check what is published"
    keys_parser = commands.add_parser("keys", help=keys_help, description=keys_help)
    add_subcommands(keys_parser, config_default)
    keys_parser.set_defaults(handler=lambda args: run(args, config_default))
