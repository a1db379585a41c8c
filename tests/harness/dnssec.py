"""DNSSEC-signed zones for the harness's nsd: keys from `ldns-keygen`, signatures from
`ldns-signzone`, trust anchors (DS records) for a validating resolver (unbound.py).

DANE (RFC 7672) only means something when the MX and TLSA answers are validated, so the
DANE tests need real signed zones, not zone text with an AD bit set by hand.  A
`SigningDns` is the harness's `AuthoritativeDns` that signs the zones it was told to sign
after the harness has stamped their SOA serial, so every version nsd serves carries valid
signatures (or deliberately expired ones, for a "bogus" zone).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.harness.nameserver import AuthoritativeDns, ZoneData
from tests.harness.process import HarnessError

#: ECDSA P-256 (algorithm 13): small keys, fast signing, what DANE deployments use.
ALGORITHM = "ECDSAP256SHA256"
_DAY = 86400


@dataclass(frozen=True)
class ZoneKeys:
    """A KSK and a ZSK for one zone; `ds` is the KSK's DS record (the trust anchor)."""

    zone: str
    ksk: Path  # base name, without .key / .private
    zsk: Path
    ds: str


def _run(argv: list[str], cwd: Path) -> str:
    if shutil.which(argv[0]) is None:
        raise HarnessError(f"{argv[0]} is missing (Debian ldnsutils): "
                           "bash deploy/scripts/install-system-deps.sh")
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                            check=False)
    if result.returncode != 0:
        raise HarnessError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def generate_keys(directory: Path, zone: str) -> ZoneKeys:
    """New keys for `zone` in `directory` (/dev/urandom: key generation never blocks)."""
    directory.mkdir(parents=True, exist_ok=True)
    ksk = _run(["ldns-keygen", "-a", ALGORITHM, "-k", "-r", "/dev/urandom", zone], directory)
    zsk = _run(["ldns-keygen", "-a", ALGORITHM, "-r", "/dev/urandom", zone], directory)
    ds = (directory / f"{ksk}.ds").read_text().strip()
    return ZoneKeys(zone, directory / ksk, directory / zsk, ds)


def sign_zone_text(text: str, keys: ZoneKeys, work_dir: Path, expired: bool = False) -> str:
    """`text` signed with `keys` (NSEC, DNSKEYs added).  `expired`: signatures that
    ended yesterday, which a validator must treat as bogus (SERVFAIL)."""
    unsigned = work_dir / f"{keys.zone}.unsigned"
    signed = work_dir / f"{keys.zone}.signed"
    unsigned.write_text(text)
    now = int(time.time())
    if expired:
        window = ["-i", str(now - 10 * _DAY), "-e", str(now - _DAY)]
    else:
        window = ["-i", str(now - _DAY), "-e", str(now + 7 * _DAY)]
    _run(["ldns-signzone", *window, "-o", keys.zone, "-f", str(signed), str(unsigned),
          str(keys.zsk), str(keys.ksk)], work_dir)
    return signed.read_text()


class SigningDns(AuthoritativeDns):
    """nsd that serves `signed` zones DNSSEC-signed (and `expired` ones with signatures
    that have run out); all other zones it serves stay unsigned.

    Keys are made at construction, so the trust anchors are known before the validating
    resolver starts.
    """

    def __init__(self, base_dir: Path, signed: Iterable[str], expired: Iterable[str] = (),
                 port: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(base_dir, port=port, host=host)
        self.keys_dir = base_dir / "keys"
        self._expired = {name.rstrip(".").lower() for name in expired}
        self.keys = {name: generate_keys(self.keys_dir, name)
                     for name in sorted({n.rstrip(".").lower() for n in signed}
                                        | self._expired)}

    @property
    def trust_anchors(self) -> list[str]:
        """DS records of every signed zone, for unbound's `trust-anchor:`."""
        return [keys.ds for keys in self.keys.values()]

    def set_signed_zone(self, zone: str, data: ZoneData) -> int:
        """`set_zone` for a zone made with signing (an error for any other zone, so a
        test cannot think it published signed data when it did not)."""
        if zone.rstrip(".").lower() not in self.keys:
            raise HarnessError(f"{zone} has no keys: name it in SigningDns(signed=...)")
        return self.set_zone(zone, data)

    def _render(self, name: str, data: ZoneData, serial: int) -> str:
        text = super()._render(name, data, serial)
        keys = self.keys.get(name)
        if keys is None:
            return text
        return sign_zone_text(text, keys, self.keys_dir, expired=name in self._expired)
