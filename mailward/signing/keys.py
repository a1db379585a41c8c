"""DKIM/ARC private keys: load and validate key files, publish their DNS records.

A key file is checked before it is ever used, at start and on every reload, so that a
broken key is a clear error naming the file instead of mail that silently leaves
unsigned:

- it must exist and be a readable regular file;
- only its owner may read it (mode 0600 or stricter): a key that group or others can
  read is refused, as OpenSSH refuses such a private key;
- it must be an RSA key of at least 1024 bits (below 2048 a warning is logged, RFC 8301)
  or an Ed25519 key (RFC 8463), unencrypted, in PEM (PKCS#1 or PKCS#8, what
  `openssl genpkey`, `opendkim-genkey` and `mailward keys generate` write), or an
  Ed25519 key as dkimpy writes it (the base64 of the 32-byte seed on one line).

Every problem of every key is collected and raised together as a `KeyLoadError`, which
is a `ConfigError`: the milter's reload logic already refuses a new configuration on
ConfigError and keeps the running one.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailward.config import ConfigError, ConfigProblem, DkimSigningKey

log = logging.getLogger(__name__)

MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must not accept less
RECOMMENDED_RSA_BITS = 2048
MAX_KEY_FILE_BYTES = 64 * 1024
TXT_STRING_MAX = 255  # RFC 1035 3.3: one character-string holds at most 255 octets

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class Algorithm(StrEnum):
    """Signature algorithms (the a= tag) and the key type (k=) each needs."""

    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"

    @property
    def key_type(self) -> str:
        return "rsa" if self is Algorithm.RSA_SHA256 else "ed25519"


class KeyLoadError(ConfigError):
    """One or more key files are unusable; each problem names its file."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        super().__init__("signing keys", problems)


class KeyFileProblem(Exception):
    """Why one key file cannot be used (the message names the file)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, eq=False)
class LoadedKey:
    """A validated private key with the domain and selector it signs for."""

    domain: str
    selector: str
    path: Path
    private_key: PrivateKey
    active: bool = True
    subdomains: bool = False

    @property
    def name(self) -> str:
        return f"{self.domain}:{self.selector}"

    @property
    def algorithm(self) -> Algorithm:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return Algorithm.RSA_SHA256
        return Algorithm.ED25519_SHA256

    @property
    def bits(self) -> int:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.key_size
        return 256

    @property
    def record_name(self) -> str:
        """Where the public key is published: selector._domainkey.domain."""
        return f"{self.selector}._domainkey.{self.domain}"

    def public_key_b64(self) -> str:
        return public_key_b64(self.private_key)

    def dns_record(self) -> str:
        """The TXT record value (RFC 6376 3.6.1): v=DKIM1; k=...; p=..."""
        return f"v=DKIM1; k={self.algorithm.key_type}; p={self.public_key_b64()}"

    def describe(self) -> str:
        return f"{self.name} ({self.algorithm}, {self.bits} bits, {self.path})"


def public_key_b64(private_key: PrivateKey) -> str:
    """The p= value: SubjectPublicKeyInfo DER for RSA, the raw 32 bytes for Ed25519."""
    public = private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        data = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- loading


def check_key_file_permissions(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileProblem(path, "not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        who = "others" if mode & 0o007 else "its group"
        raise KeyFileProblem(
            path,
            f"mode {mode:04o} lets {who} read or change a private key; "
            f"run `chmod 600 {path}` (only its owner may read it)",
        )


def parse_private_key(data: bytes, path: Path) -> PrivateKey:
    """A private key from PEM or a dkimpy-style base64 Ed25519 seed."""
    text = data.strip()
    if not text:
        raise KeyFileProblem(path, "empty file, not a private key")
    if text.startswith(b"-----BEGIN"):
        if b"ENCRYPTED" in text.split(b"\n", 1)[0]:
            raise KeyFileProblem(path, "encrypted private key: Mailward needs it unencrypted")
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except TypeError:
            raise KeyFileProblem(
                path, "encrypted private key: Mailward needs it unencrypted"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileProblem(path, f"malformed PEM private key ({_short(exc)})") from None
    else:
        key = _parse_raw_ed25519(text, path)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileProblem(
                path,
                f"RSA key too short: {key.key_size} bits (at least {MIN_RSA_BITS}, "
                f"{RECOMMENDED_RSA_BITS} recommended; RFC 8301)",
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise KeyFileProblem(
        path, f"unsupported key type {type(key).__name__}: DKIM signs with RSA or Ed25519"
    )


def _parse_raw_ed25519(text: bytes, path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise KeyFileProblem(
            path, "not a private key: expected PEM (-----BEGIN ... PRIVATE KEY-----) or the "
            "base64 of a 32-byte Ed25519 seed"
        )
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def read_private_key(path: Path) -> PrivateKey:
    """Open, check and parse one key file; KeyFileProblem says what is wrong with it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileProblem(path, "no such file") from None
    except PermissionError:
        raise KeyFileProblem(path, f"cannot read it as uid {os.geteuid()}: permission denied") \
            from None
    except OSError as exc:
        raise KeyFileProblem(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        check_key_file_permissions(path, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileProblem(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileProblem(path, f"larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
    return parse_private_key(data, path)


def load_key(config: DkimSigningKey) -> LoadedKey:
    """Load and validate the key one [[dkim.sign.keys]] table names."""
    private_key = read_private_key(config.key)
    key = LoadedKey(
        domain=config.domain,
        selector=config.selector,
        path=config.key,
        private_key=private_key,
        active=config.active,
        subdomains=config.subdomains,
    )
    if config.algorithm and config.algorithm != key.algorithm:
        raise KeyFileProblem(
            config.key, f"holds a {key.algorithm} key, but algorithm = {config.algorithm!r}"
        )
    return key


def load_keys(configs: Sequence[DkimSigningKey], key_path: str = "dkim.sign.keys") -> tuple[
    LoadedKey, ...
]:
    """Load every configured key; raise KeyLoadError listing every broken one."""
    loaded = []
    problems = []
    for index, config in enumerate(configs):
        try:
            key = load_key(config)
        except KeyFileProblem as exc:
            problems.append(ConfigProblem(f"{key_path}[{index}].key", str(exc)))
            continue
        if key.algorithm is Algorithm.RSA_SHA256 and key.bits < RECOMMENDED_RSA_BITS:
            log.warning("DKIM key %s has only %d bits; use %d or more (RFC 8301)",
                        key.describe(), key.bits, RECOMMENDED_RSA_BITS)
        loaded.append(key)
    if problems:
        raise KeyLoadError(problems)
    return tuple(loaded)


# --------------------------------------------------------------------------- DNS records


def split_txt(value: str, limit: int = TXT_STRING_MAX) -> list[str]:
    """Cut a TXT value into character-strings of at most `limit` bytes (ASCII)."""
    data = value.encode("ascii")
    return [data[i : i + limit].decode("ascii") for i in range(0, len(data), limit)] or [""]


def zone_record(name: str, value: str, ttl: int | None = None) -> str:
    """A TXT record in zone file form, split into strings of at most 255 bytes.

    One string fits on one line; longer values use parentheses, one string per line,
    the form `opendkim-genkey` writes and nsd, BIND and Knot read.
    """
    owner = name.rstrip(".") + "."
    ttl_text = f"\t{ttl}" if ttl is not None else ""
    strings = [f'"{chunk}"' for chunk in split_txt(value)]
    if len(strings) == 1:
        return f"{owner}{ttl_text}\tIN\tTXT\t{strings[0]}"
    body = "\n\t".join(strings)
    return f"{owner}{ttl_text}\tIN\tTXT\t( {body} )"


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
