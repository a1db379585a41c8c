"""ARC verification: chains sealed in the test with dkimpy, keys served from memory.

Keys are generated once per module; `arc_sign` (dkimpy's sealer) builds real chains
whose hops record what they saw in an Authentication-Results header.  Messages are
turned into Transactions the way the milter builds them (bare-LF folding).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Iterator

import authres
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailward.authresults import ParsedResults, format_header, parse_results
from mailward.checks.arc import (
    ArcLimits,
    ArcOutcome,
    ArcResult,
    ArcVerifier,
    auth_result,
)
from mailward.dkimcore.arcset import MAX_INSTANCES
from mailward.dns import InMemoryResolver
from mailward.model import AuthProperty, AuthResult, Connection, Header, Transaction
from tests.support.checks import arc_auth_results

ORIGINAL = (
    b"From: Alice <alice@origin.example>\r\n"
    b"To: list@lists.example\r\n"
    b"Subject: hello\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@origin.example>\r\n"
    b"\r\n"
    b"Hello, world.\r\n"
)
RESULTS = (
    b"spf=pass smtp.mailfrom=alice@origin.example;"
    b" dkim=pass header.d=origin.example header.s=sel;"
    b" dmarc=pass header.from=origin.example"
)
SEALERS = ("lists.example", "fwd.example", "mx.relay.example")


@pytest.fixture(scope="module")
def private_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def key_record(private_key: bytes) -> str:
    public = serialization.load_pem_private_key(private_key, None).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def _txt(value: str) -> str:
    return " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200))


@pytest.fixture
def resolver(key_record: str) -> InMemoryResolver:
    return InMemoryResolver.from_zones(
        {domain: f"arc._domainkey 300 IN TXT {_txt(key_record)}\n" for domain in SEALERS}
    )


def seal(raw: bytes, domain: str, key: bytes, arc: str | None = None) -> bytes:
    """One hop: record results (and the chain's status, for i>1), then seal."""
    results = RESULTS if arc is None else f"arc={arc}; ".encode() + RESULTS
    received = f"Authentication-Results: {domain}; ".encode() + results + b"\r\n" + raw
    headers = dkim.arc_sign(received, b"arc", domain.encode(), key, domain.encode())
    assert headers, "dkimpy refused to seal"
    return b"".join(headers) + received


def chain(key: bytes, hops: int = 1, between: bytes = b"") -> bytes:
    raw = ORIGINAL
    for hop in range(hops):
        raw = seal(raw, SEALERS[hop], key, arc=None if hop == 0 else "pass")
        if hop < hops - 1 and between:
            raw = between + raw  # what the next hop adds before sealing
    return raw


def transaction(raw: bytes, *, truncated: bool = False) -> Transaction:
    """Header values as the milter passes them: after the colon, folded with bare LF."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: list[tuple[str, str]] = []
    for line in head.decode("utf-8", "surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t"):
            name, value = headers[-1]
            headers[-1] = (name, value + "\n" + line)
        else:
            name, _, value = line.partition(":")
            headers.append((name, value))
    return Transaction(
        queue_id="Q1", mail_from="alice@origin.example", recipients=("bob@dest.example",),
        headers=tuple(Header(n, v) for n, v in headers), body=body, body_size=len(body),
        body_truncated=truncated,
    )


def replace_header(tx: Transaction, index: int, value: str) -> Transaction:
    headers = list(tx.headers)
    headers[index] = Header(headers[index].name, value)
    return _with_headers(tx, headers)


def _with_headers(tx: Transaction, headers: list[Header]) -> Transaction:
    return Transaction(tx.queue_id, tx.mail_from, tx.recipients, tuple(headers), tx.body,
                       tx.body_size, tx.body_truncated)


def arc_index(tx: Transaction, name: str, instance: int) -> int:
    for index, header in enumerate(tx.headers):
        if header.name.lower() == name and re.search(rf"\bi={instance};", header.value):
            return index
    raise AssertionError(f"no {name} i={instance}")


def verify(resolver: InMemoryResolver, tx: Transaction) -> ArcOutcome:
    return ArcVerifier(resolver).verify(tx)


# --------------------------------------------------------------------------- pass / none


def test_no_arc_headers_is_none_without_dns(resolver: InMemoryResolver) -> None:
    outcome = verify(resolver, transaction(ORIGINAL))
    assert outcome == ArcOutcome(ArcResult.NONE, "no ARC sets")
    assert resolver.queries == []
    assert auth_result(outcome) == AuthResult("arc", "none")


def test_one_hop_passes_and_exposes_the_set(resolver: InMemoryResolver, private_key: bytes) -> None:
    outcome = verify(resolver, transaction(chain(private_key)))
    assert outcome.result is ArcResult.PASS, outcome.reason
    assert outcome.oldest_pass == 1
    assert outcome.sealers == ("lists.example",)
    only = outcome.instances[0]
    assert outcome.latest is only and outcome.instance(1) is only and outcome.instance(2) is None
    assert (only.instance, only.sealer, only.selector) == (1, "lists.example", "arc")
    assert only.cv == "none"
    assert (only.ams_domain, only.ams_selector) == ("lists.example", "arc")
    assert only.ams_valid is True and only.seal_valid is True
    assert only.aar.lstrip().startswith("i=1; lists.example;")
    aar = only.authentication_results
    assert aar.authserv_id == "lists.example" and aar.error == ""
    assert aar.says("dmarc", "pass")
    assert aar.says("dkim", "pass", {"header.d": "origin.example"})
    assert aar.says("spf", "pass", {"smtp.mailfrom": "alice@origin.example"})
    assert not aar.says("dkim", "pass", {"header.d": "evil.example"})
    assert not aar.says("spf", "fail")
    assert not aar.says("arc", "pass")
    assert auth_result(outcome) == AuthResult("arc", "pass", None, (
        AuthProperty("header", "oldest-pass", "0"),
        AuthProperty("arc", "chain", "lists.example"),
    ))


def test_three_hops_pass_with_the_chain_newest_first(
    resolver: InMemoryResolver, private_key: bytes
) -> None:
    outcome = verify(resolver, transaction(chain(private_key, hops=3)))
    assert outcome.result is ArcResult.PASS, outcome.reason
    assert outcome.sealers == SEALERS
    assert [i.cv for i in outcome.instances] == ["none", "pass", "pass"]
    third = outcome.instance(3)
    assert third is not None and third.sealer == "mx.relay.example"
    assert third.authentication_results.says("arc", "pass")
    result = auth_result(outcome, ipaddress.ip_address("2001:db8::25"))
    assert result.properties == (
        AuthProperty("header", "oldest-pass", "0"),
        AuthProperty("arc", "chain", "mx.relay.example:fwd.example:lists.example"),
        AuthProperty("smtp", "remote-ip", "2001:db8::25"),
    )
    # The A-R header we would write stays parseable (colons in values are quoted).
    header = format_header("mx.example.net", [result])
    assert '"mx.relay.example:fwd.example:lists.example"' in header
    parsed = authres.AuthenticationResultsHeader.parse_value(header)
    (arc,) = parsed.results
    assert (arc.method, arc.result) == ("arc", "pass")
    props = {(p.type, p.name): p.value for p in arc.properties}
    assert props[("header", "oldest-pass")] == "0"
    assert props[("smtp", "remote-ip")] == "2001:db8::25"


def test_oldest_pass_names_the_oldest_ams_that_still_verifies(
    resolver: InMemoryResolver, private_key: bytes
) -> None:
    # Between hop 1 and hop 2 the subject changes (a list tag): AMS 1 breaks, the
    # seals do not (they cover only ARC fields), so the chain passes with oldest-pass 2.
    raw = chain(private_key)
    raw = raw.replace(b"Subject: hello", b"Subject: [list] hello")
    raw = seal(raw, "fwd.example", private_key, arc="pass")
    outcome = verify(resolver, transaction(raw))
    assert outcome.result is ArcResult.PASS, outcome.reason
    assert outcome.oldest_pass == 2
    assert [i.ams_valid for i in outcome.instances] == [False, True]
    assert ("header", "oldest-pass", "2") in [
        (p.ptype, p.name, p.value) for p in auth_result(outcome).properties
    ]


def test_folding_and_field_order_do_not_matter(
    resolver: InMemoryResolver, private_key: bytes
) -> None:
    """Two things dkimpy's own ARC.verify() gets wrong (it raises IndexError)."""
    raw = chain(private_key, hops=2)
    # A sealer that folds before i= (legal: folding is white space).
    folded = raw.replace(b"ARC-Message-Signature: i=2;", b"ARC-Message-Signature:\r\n\ti=2;")
    assert folded != raw
    assert verify(resolver, transaction(folded)).result is ArcResult.PASS
    # ARC sets reordered in transit: the seal's input is defined by instance number.
    tx = transaction(raw)
    older = [h for h in tx.headers if h.name.lower().startswith("arc-") and "i=1;" in h.value]
    assert len(older) == 3
    reordered = _with_headers(tx, older + [h for h in tx.headers if h not in older])
    outcome = verify(resolver, reordered)
    assert outcome.result is ArcResult.PASS, outcome.reason


def test_check_reports_with_the_client_address(
    resolver: InMemoryResolver, private_key: bytes
) -> None:
    verifier = ArcVerifier(resolver)
    connection = Connection(client_ip=ipaddress.ip_address("192.0.2.7"))
    (result,) = arc_auth_results(verifier, connection, transaction(chain(private_key)))
    assert result.method == "arc" and result.result == "pass"
    assert result.properties[-1] == AuthProperty("smtp", "remote-ip", "192.0.2.7")


# --------------------------------------------------------------------------- fail


def test_body_changed_after_the_last_seal_fails(
    resolver: InMemoryResolver, private_key: bytes
) -> None:
    raw = chain(private_key, hops=2).replace(b"Hello, world.", b"Hello, w0rld.")
    outcome = verify(resolver, transaction(raw))
    assert outcome.result is ArcResult.FAIL
    assert outcome.reason.startswith("ARC-Message-Signature i=2 did not verify")
    assert "body hash" in outcome.reason
    assert outcome.instances[-1].ams_valid is False
    assert outcome.oldest_pass is None
    result = auth_result(outcome)
    assert (result.result, result.properties) == ("fail", ())
    assert result.reason is not None and result.reason.startswith("ARC-Message-Signature i=2")


def test_changed_seal_input_fails(resolver: InMemoryResolver, private_key: bytes) -> None:
    tx = transaction(chain(private_key, hops=2))
    index = arc_index(tx, "arc-authentication-results", 1)
    value = tx.headers[index].value
    tampered = replace_header(tx, index, value.replace("dmarc=pass", "dmarc=fail"))
    outcome = verify(resolver, tampered)
    assert outcome.result is ArcResult.FAIL
    # The newest seal covers AAR 1 as well, and is checked first.
    assert outcome.reason.startswith("ARC-Seal i=2 did not verify"), outcome.reason
    assert outcome.instances[1].seal_valid is False


def test_unknown_key_fails(resolver: InMemoryResolver, private_key: bytes) -> None:
    raw = chain(private_key).replace(b"s=arc;", b"s=gone;")
    outcome = verify(resolver, transaction(raw))
    assert outcome.result is ArcResult.FAIL
    assert "gone._domainkey.lists.example" in str(resolver.queries)


# --------------------------------------------------------------------------- structure


def _set(instance: int, cv: str = "pass") -> list[Header]:
    return [
        Header("ARC-Seal", f" i={instance}; a=rsa-sha256; cv={cv}; d=x.example; s=s; b=AAAA"),
        Header("ARC-Message-Signature",
               f" i={instance}; a=rsa-sha256; d=x.example; s=s; h=from; bh=AAAA; b=AAAA"),
        Header("ARC-Authentication-Results", f" i={instance}; x.example; none"),
    ]


def _synthetic(headers: list[Header]) -> Transaction:
    return Transaction(None, "", (), tuple([*headers, Header("From", " a@x.example")]), b"hi\r\n")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param(_set(1, "none") + _set(1, "none"), "duplicate ARC-Seal for i=1",
                     id="duplicate-instance"),
        pytest.param(_set(1, "none") + _set(3), "ARC set i=2 is missing", id="gap"),
        pytest.param(_set(2), "ARC set i=1 is missing", id="no-first-set"),
        pytest.param(_set(1, "none")[:2], "missing ARC-Authentication-Results for i=1",
                     id="missing-aar"),
        pytest.param([h for n in range(1, 61) for h in _set(n, "none" if n == 1 else "pass")],
                     "more than 50 ARC sets (180 ARC header fields)", id="sixty-sets"),
        pytest.param([h for n in range(1, 52) for h in _set(n, "none" if n == 1 else "pass")],
                     "more than 50 ARC sets (153 ARC header fields)", id="fifty-one-sets"),
        pytest.param(_set(51), "more than 50 ARC sets (i=51)", id="instance-51"),
        pytest.param(_set(0), "invalid instance i=0", id="instance-0"),
        pytest.param(_set(1, "fail"), "ARC-Seal i=1 reports cv=fail", id="newest-says-fail"),
        pytest.param(_set(1, "none") + _set(2, "fail"), "ARC-Seal i=2 reports cv=fail",
                     id="newest-says-fail-2"),
        pytest.param(_set(1, "pass"), "ARC-Seal i=1 has cv=pass, expected cv=none",
                     id="first-says-pass"),
        pytest.param(_set(1, "none") + _set(2, "none"), "ARC-Seal i=2 has cv=none",
                     id="second-says-none"),
        pytest.param([Header("ARC-Seal", " i=1; i=1; cv=none")], "malformed tag list",
                     id="duplicate-tag"),
        pytest.param([Header("ARC-Seal", " a=rsa-sha256; cv=none")], "ARC-Seal has no i= tag",
                     id="no-instance"),
        pytest.param([Header("ARC-Authentication-Results", " x.example; i=1; none")],
                     "does not start with i=", id="aar-not-prefixed"),
        pytest.param([Header("ARC-Seal", " \x00\udcff;;;===; i=\udcfe")], "malformed tag list",
                     id="garbage"),
    ],
)
def test_structural_failures(
    resolver: InMemoryResolver, headers: list[Header], reason: str
) -> None:
    outcome = verify(resolver, _synthetic(headers))
    assert outcome.result is ArcResult.FAIL
    assert reason in outcome.reason
    assert outcome.instances == ()
    assert resolver.queries == []  # structure is checked before any DNS work
    result = auth_result(outcome)
    assert result.result == "fail" and result.reason
    assert result.reason.isascii() and result.reason.isprintable()


def test_forbidden_tags_fail(resolver: InMemoryResolver, private_key: bytes) -> None:
    tx = transaction(chain(private_key))
    seal_at = arc_index(tx, "arc-seal", 1)
    with_h = replace_header(tx, seal_at, tx.headers[seal_at].value + "; h=from")
    assert "h= tag" in verify(resolver, with_h).reason
    ams_at = arc_index(tx, "arc-message-signature", 1)
    value = re.sub(r"([;\s])h=", r"\1h=arc-seal : ", tx.headers[ams_at].value, count=1)
    assert "h=arc-seal : from" in value
    signs_seal = replace_header(tx, ams_at, value)
    assert "signs ARC-Seal" in verify(resolver, signs_seal).reason


def test_body_length_tag_must_be_a_number(
    resolver: InMemoryResolver, sealed_two_hops: Transaction
) -> None:
    index = arc_index(sealed_two_hops, "arc-message-signature", 2)
    with_l = replace_header(sealed_two_hops, index, sealed_two_hops.headers[index].value + "; l=")
    outcome = verify(resolver, with_l)
    assert outcome.result is ArcResult.FAIL
    assert outcome.reason == (
        "ARC-Message-Signature i=2 did not verify: l= value is not a decimal integer"
    )


def test_huge_and_absurd_fields_fail_without_work(resolver: InMemoryResolver) -> None:
    huge = [Header("ARC-Seal", " i=1; cv=none; b=" + "A" * 2_000_000)]
    outcome = verify(resolver, _synthetic(huge))
    assert outcome.result is ArcResult.FAIL and "longer than 65536 bytes" in outcome.reason
    many = [Header("ARC-Seal", " i=1") for _ in range(10_000)]
    assert "more than 50 ARC sets" in verify(resolver, _synthetic(many)).reason
    long_number = _set(1, "none")
    long_number[0] = Header("ARC-Seal", long_number[0].value + "; t=" + "9" * 5000)
    outcome = verify(resolver, _synthetic(long_number))
    assert outcome.result is ArcResult.FAIL and "ARC-Seal i=1" in outcome.reason


_ARC_NAMES = st.sampled_from(["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results",
                              "arc-seal"])
_TAGS = st.lists(
    st.tuples(st.sampled_from(["i", "a", "b", "bh", "cv", "d", "s", "h", "t", "c", "l", "x", "?"]),
              st.one_of(st.text(max_size=12), st.integers(-1, 60).map(str),
                        st.sampled_from(["rsa-sha256", "none", "pass", "fail", "from", "AAAA"]))),
    max_size=9,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.lists(st.tuples(_ARC_NAMES, _TAGS, st.booleans()), max_size=8))
def test_garbage_never_raises(fields: list[tuple[str, list[tuple[str, str]], bool]]) -> None:
    resolver = InMemoryResolver()
    headers = []
    for name, tags, fold in fields:
        sep = ";\n\t" if fold else "; "
        headers.append(Header(name, " " + sep.join(f"{k}={v}" for k, v in tags)))
    outcome = ArcVerifier(resolver).verify(_synthetic(headers))
    assert outcome.result in (ArcResult.FAIL, ArcResult.NONE)
    assert (outcome.result is ArcResult.NONE) == (not headers)
    auth_result(outcome)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_chains_never_raise(
    data: st.DataObject, resolver: InMemoryResolver, sealed_two_hops: Transaction
) -> None:
    """Any one ARC field of a real chain replaced by noise: a defined result, no crash."""
    tx = sealed_two_hops
    arc_positions = [i for i, h in enumerate(tx.headers) if h.name.lower().startswith("arc-")]
    position = data.draw(st.sampled_from(arc_positions))
    original = tx.headers[position].value
    cut = data.draw(st.integers(0, len(original)))
    noise = data.draw(st.text(max_size=30))
    mutated = replace_header(tx, position, original[:cut] + noise + original[cut:])
    outcome = ArcVerifier(resolver).verify(mutated)
    assert outcome.result in (ArcResult.PASS, ArcResult.FAIL)
    if not noise:
        assert outcome.result is ArcResult.PASS, outcome.reason
    auth_result(outcome)


@pytest.fixture(scope="module")
def sealed_two_hops(private_key: bytes) -> Transaction:
    return transaction(chain(private_key, hops=2))


def test_aar_payload_garbage_is_tolerated() -> None:
    for payload in ["", ";;;", "(unclosed", "x.example; dkim=", "x.example; =pass", "\x00\udcff"]:
        parsed = parse_results(payload)
        assert parsed.results == ()
        assert not parsed.says("dkim")
    bad = parse_results("x.example; dkim=pass header.d=a.example; garbage here")
    assert bad.error and bad.authserv_id == "x.example"
    good = parse_results(" X.example; DKIM=Pass (good) Header.D=A.Example; x-new=hmm")
    assert good.error == "" and good.authserv_id == "x.example"  # authres lower-cases it
    assert good.says("dkim", "PASS", {"HEADER.d": "a.example"})
    assert good.results_for("X-New")[0].result == "hmm"
    assert parse_results("x.example; none") == ParsedResults("x.example", ())


# --------------------------------------------------------------------------- could not tell


def test_temporary_key_failure_is_temperror_not_fail(
    resolver: InMemoryResolver, sealed_two_hops: Transaction
) -> None:
    resolver.fail("arc._domainkey.lists.example")
    outcome = verify(resolver, sealed_two_hops)
    assert outcome.result is ArcResult.TEMPERROR
    assert outcome.reason.startswith("ARC-Seal i=1 could not be checked")
    assert "simulated failure" in outcome.reason
    assert outcome.instances[0].seal_valid is None
    assert outcome.instances[1].seal_valid is True
    result = auth_result(outcome)
    assert result.result == "none" and result.reason is not None
    assert result.reason.startswith("temperror: ARC-Seal i=1")
    assert result.properties == ()


def test_keys_are_cached_across_messages_but_temporary_failures_are_not(
    resolver: InMemoryResolver, sealed_two_hops: Transaction
) -> None:
    verifier = ArcVerifier(resolver)
    resolver.fail("arc._domainkey.lists.example")
    assert verifier.verify(sealed_two_hops).result is ArcResult.TEMPERROR
    resolver.failing.clear()
    assert verifier.verify(sealed_two_hops).result is ArcResult.PASS
    asked = len(resolver.queries)
    outcome = verifier.verify(sealed_two_hops)
    assert outcome.result is ArcResult.PASS and outcome.oldest_pass == 1
    assert len(resolver.queries) == asked  # every key came from the cache


def test_temporary_failure_of_the_newest_ams_key(
    resolver: InMemoryResolver, private_key: bytes
) -> None:
    # Hop 2 signs with a key of its own domain; only that lookup fails.
    resolver.fail("arc._domainkey.fwd.example")
    outcome = verify(resolver, transaction(chain(private_key, hops=2)))
    assert outcome.result is ArcResult.TEMPERROR
    assert outcome.reason.startswith("ARC-Message-Signature i=2 could not be checked")


def test_a_definitive_failure_wins_over_a_temporary_one(
    resolver: InMemoryResolver, sealed_two_hops: Transaction
) -> None:
    resolver.fail("arc._domainkey.lists.example")
    index = arc_index(sealed_two_hops, "arc-authentication-results", 2)
    value = sealed_two_hops.headers[index].value
    tampered = replace_header(sealed_two_hops, index, value.replace("spf=pass", "spf=fail"))
    outcome = verify(resolver, tampered)
    assert outcome.result is ArcResult.FAIL
    assert outcome.reason.startswith("ARC-Seal i=2 did not verify")


def test_truncated_body_cannot_be_checked(
    resolver: InMemoryResolver, private_key: bytes
) -> None:
    tx = transaction(chain(private_key, hops=2), truncated=True)
    outcome = verify(resolver, tx)
    assert outcome.result is ArcResult.TEMPERROR
    assert "truncated" in outcome.reason
    # The seals do not cover the body: a bad one is still a definitive failure.
    index = arc_index(tx, "arc-authentication-results", 1)
    tampered = replace_header(tx, index, tx.headers[index].value.replace("dmarc=pass", "dmarc=x"))
    assert verify(resolver, tampered).result is ArcResult.FAIL


def test_time_budget(resolver: InMemoryResolver, sealed_two_hops: Transaction) -> None:
    ticks: Iterator[float] = iter([0.0, 0.5, 100.0, 100.0, 100.0, 100.0, 100.0])
    verifier = ArcVerifier(resolver, limits=ArcLimits(max_seconds=10), clock=lambda: next(ticks))
    outcome = verifier.verify(sealed_two_hops)
    assert outcome.result is ArcResult.TEMPERROR
    assert "time budget of 10s spent" in outcome.reason


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        ArcLimits(max_seconds=-1)
    with pytest.raises(ValueError, match="positive"):
        ArcLimits(max_field_bytes=0)
    assert MAX_INSTANCES == 50
