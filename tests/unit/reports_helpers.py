"""Typed outcomes as the milter produces them, for the report tests."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

from mailward.checks.dkim import DkimOutcome, DkimResult
from mailward.checks.dmarc import (
    AlignmentMode,
    Disposition,
    DmarcOutcome,
    DmarcRecord,
    DmarcResult,
    IdentifierAlignment,
    PolicyTag,
)
from mailward.checks.spf import SpfIdentity, SpfOutcome, SpfResult

XSD = Path(__file__).parent / "data" / "dmarc-2.0.xsd"


def dmarc(domain: str = "sender.example", passed: bool = True,
          rua: tuple[str, ...] = ("mailto:dmarc@sender.example",)) -> DmarcOutcome:
    record = DmarcRecord(text="v=DMARC1; p=reject", p=Disposition.REJECT, rua=rua)
    result = "pass" if passed else "fail"
    return DmarcOutcome(
        result=DmarcResult.PASS if passed else DmarcResult.FAIL, from_domain=domain,
        record=record, policy_domain=domain, applied_policy=PolicyTag.P,
        requested_disposition=Disposition.NONE if passed else Disposition.REJECT,
        alignments=(IdentifierAlignment("spf", domain, result, passed, AlignmentMode.RELAXED),
                    IdentifierAlignment("dkim", domain, result, passed, AlignmentMode.RELAXED,
                                        selector="s1")))


def spf(domain: str = "sender.example", passed: bool = True) -> SpfOutcome:
    return SpfOutcome(SpfResult.PASS if passed else SpfResult.FAIL, SpfIdentity.MAILFROM,
                      domain, f"bounce@{domain}", ipaddress.ip_address("192.0.2.10"), "mx")


def dkim(domain: str = "sender.example", passed: bool = True) -> DkimOutcome:
    return DkimOutcome(DkimResult.PASS if passed else DkimResult.FAIL, domain=domain,
                       selector="s1")


def validate(xml: bytes, tmp: Path) -> None:
    """xmllint --schema: raises AssertionError with xmllint's words if invalid."""
    xmllint = shutil.which("xmllint")
    assert xmllint, "xmllint (libxml2-utils) is needed: deploy/scripts/install-system-deps.sh"
    path = tmp / "report.xml"
    path.write_bytes(xml)
    done = subprocess.run([xmllint, "--noout", "--schema", str(XSD), str(path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
