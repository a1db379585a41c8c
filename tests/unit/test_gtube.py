"""GTUBE: each variant found, the strongest wins, near-misses are not GTUBE."""

from __future__ import annotations

import pytest

from mailward.checks.gtube import find_gtube

TAIL = "JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.mark.parametrize(("body", "symbol"), [
    (f"X{TAIL}", "GTUBE"),
    (f"text\r\nY{TAIL}\r\n", "GTUBE_ADD_HEADER"),
    (f"Z{TAIL}", "GTUBE_QUARANTINE"),
    (f"Y{TAIL} Z{TAIL}", "GTUBE_QUARANTINE"),
    (f"Z{TAIL} X{TAIL}", "GTUBE"),
    (f"A{TAIL}", ""),
    (TAIL, ""),
    ("X" + TAIL[:-1], ""),
    ("", ""),
])
def test_variants(body: str, symbol: str) -> None:
    assert find_gtube(body.encode()) == symbol


def test_sample_spam_from_spamassassin_is_gtube() -> None:
    # The body of Debian's sample-spam.txt, as far as the test string goes.
    body = (b"This is the GTUBE, the\r\n\tGeneric\r\n\tTest for\r\n\tUnsolicited\r\n"
            b"\tBulk\r\n\tEmail\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-"
            b"TEST-EMAIL*C.34X\r\n")
    assert find_gtube(body) == "GTUBE"
