"""The ARC test suite's signing part (ValiMail, 2 scenarios, 17 tests) against our sealer.

Each test gives a message, a key, the srv-id (our authserv-id), the header fields the
AMS signs and a timestamp; the expected ARC-Seal, ARC-Message-Signature and
ARC-Authentication-Results are compared the way the suite defines (its README,
"Signing Header Format Standardization"): AS and AMS as tag sets with all white space
removed (so b= must match bit for bit), the AAR as its ';'-separated parts with white
space normalised.  An empty expected set means "no ARC Set may be added".

As the suite assumes, the chain validation status is read from the `arc=` result of the
srv-id's Authentication-Results (the suite stamps the correct status there), and the AAR
is those headers consolidated.  The suite's standardized format has no white space
inside tag values, so the sealer runs with `fold=False` here; what production writes
(folded) is checked by having dkimpy verify it (`test_folded_set_verifies_with_dkimpy`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import dkim
import pytest
import yaml
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mailward.signing.arc import NotSealed, consolidate_results, seal_message
from mailward.signing.keys import LoadedKey, PrivateKey

SUITE = Path(__file__).parent / "data" / "arc" / "arc-draft-sign-tests.yml"
SCENARIOS: list[dict[str, Any]] = list(yaml.safe_load_all(SUITE.read_text()))
CASES = [
    pytest.param(scenario, name, id=name)
    for scenario in SCENARIOS
    for name in scenario["tests"]
]


def parse_message(text: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    head, _, body = data.partition(b"\r\n\r\n")
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            headers.append((name, value))
    return headers, body


def chain_status(headers: list[tuple[bytes, bytes]], srv_id: str) -> str:
    arc = [r for r in consolidate_results(headers, srv_id) if r.lower().startswith("arc=")]
    if len(arc) != 1:
        return "none" if not arc else "fail"
    return arc[0].split("=", 1)[1].split()[0].lower()


def tag_set(value: str) -> dict[str, str]:
    tags = {}
    for part in value.split(";"):
        if part.strip():
            name, _, text = part.partition("=")
            tags[name.strip()] = re.sub(r"\s+", "", text)
    return tags


def aar_parts(value: str) -> list[str]:
    return [" ".join(part.split()) for part in value.split(";") if part.strip()]


def seal_case(scenario: dict[str, Any], name: str, fold: bool = False) -> Any:
    test = scenario["tests"][name]
    headers, body = parse_message(test["message"])
    private = cast(PrivateKey, load_pem_private_key(scenario["privatekey"].encode(), None))
    key = LoadedKey(scenario["domain"], scenario["sel"], Path("/suite"), private)
    return seal_message(
        headers, body, key, test["srv-id"], consolidate_results(headers, test["srv-id"]),
        chain_status(headers, test["srv-id"]), signed_headers=test["sig-headers"].split(":"),
        timestamp=int(test["t"]), fold=fold,
    )


def test_suite_has_all_seventeen_tests() -> None:
    assert len(CASES) == 17


@pytest.mark.parametrize(("scenario", "name"), CASES)
def test_arc_sign_suite(scenario: dict[str, Any], name: str) -> None:
    test = scenario["tests"][name]
    expected = {kind: (test[kind] or "").strip() for kind in ("AS", "AMS", "AAR")}
    if not any(expected.values()):
        with pytest.raises(NotSealed):
            seal_case(scenario, name)
        return
    arc_set = seal_case(scenario, name)
    assert tag_set(arc_set.seal) == tag_set(expected["AS"])
    assert tag_set(arc_set.ams) == tag_set(expected["AMS"])
    assert aar_parts(arc_set.aar) == aar_parts(expected["AAR"])


def _dns(scenario: dict[str, Any]) -> Any:
    records = {f"{name}.": "".join(value.split("\n")).encode()
               for name, value in scenario["txt-records"].items()}

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode())

    return lookup


@pytest.mark.parametrize(("scenario", "name"), [
    case for case in CASES if case.id in ("i0_base", "i1_base", "i2_base", "i1_base_fail")
])
def test_folded_set_verifies_with_dkimpy(scenario: dict[str, Any], name: str) -> None:
    """What production writes (b= folded, tags folded) is a valid ARC Set for dkimpy."""
    test = scenario["tests"][name]
    headers, body = parse_message(test["message"])
    arc_set = seal_case(scenario, name, fold=True)
    assert all(len(line.expandtabs()) <= 78 for field in (arc_set.ams, arc_set.seal)
               for line in field.split("\n"))
    top = (f"ARC-Seal: {arc_set.seal}\r\nARC-Message-Signature: {arc_set.ams}\r\n"
           f"ARC-Authentication-Results: {arc_set.aar}\r\n").replace("\n\t", "\r\n\t")
    message = top.replace("\r\r\n", "\r\n").encode() + b"".join(
        name + b":" + value + b"\r\n" for name, value in headers) + b"\r\n" + body
    cv, _, reason = dkim.arc_verify(message, dnsfunc=_dns(scenario))
    if arc_set.cv == "fail":
        # A set sealed cv=fail ends the chain: verifiers report it and go no further.
        assert cv is None and f"ARC-Seal[{arc_set.instance}] reported failure" in reason
    else:
        assert cv == b"pass", reason
