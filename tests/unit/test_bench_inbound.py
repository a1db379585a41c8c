"""The inbound-authentication benchmarks' own logic: verdict counting, the ARC-sealed
message, the Rspamd configuration and the checks that fail a run measuring failures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dkim
import pytest

from bench import inbound, world
from bench.loadgen import LoadResult
from bench.messages import dkim_public_key_b64, dkim_sign, generate_message, generate_rsa_key
from bench.milter_load import auth_results
from bench.peers.rspamd import RspamdSetup, bind_socket
from bench.run import Context, Measurement, TargetReport, parse_settings
from bench.sockets import SocketSpec
from bench.stats import LatencySummary

# --------------------------------------------------------------------------- A-R parsing


def test_auth_results_lists_method_and_result_of_each_resinfo() -> None:
    value = (
        " mx.example.net;\n\tiprev=pass reason=mail10.example.org policy.iprev=192.0.2.10;"
        "\n\tspf=pass smtp.mailfrom=alice@example.org;\n\tspf=none smtp.helo=mail10.example.org;"
        "\n\tDKIM=Pass header.d=example.org;\n\tarc=pass header.oldest-pass=0"
    )
    assert auth_results(value) == ["iprev=pass", "spf=pass", "spf=none", "dkim=pass", "arc=pass"]


def test_auth_results_skips_authserv_id_version_and_comment_fragments() -> None:
    # OpenDKIM's comment holds a semicolon: its second half is not a result.
    value = (
        " mx.example.net 1;\n\tdkim=pass (2048-bit key; unprotected) header.d=example.org;"
        "\n\tdkim-atps=neutral"
    )
    assert auth_results(value) == ["dkim=pass", "dkim-atps=neutral"]
    assert auth_results(" mx.example.net; none") == []
    assert auth_results("dkim=pass") == []  # no resinfo without an authserv-id first


# --------------------------------------------------------------------------- the message


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path, bytes]:
    """The bench message DKIM-signed as bench.run signs it, its key and key record."""
    key = generate_rsa_key(tmp_path_factory.mktemp("keys") / "dkim.key")
    record = f"v=DKIM1; k=rsa; p={dkim_public_key_b64(key)}".encode()
    message = generate_message(sender=inbound.SENDER, recipient=inbound.RECIPIENT)
    return dkim_sign(message, "example.org", world.DKIM_SELECTOR, key), key, record


def _dnsfunc(record: bytes) -> object:
    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        wanted = f"{world.DKIM_SELECTOR}._domainkey.example.org."
        text = name.decode() if isinstance(name, bytes) else name
        return record if text.rstrip(".") + "." == wanted else None

    return lookup


def test_arc_sealed_message_has_a_passing_chain_and_keeps_its_dkim_signature(
    signed: tuple[bytes, Path, bytes],
) -> None:
    message, key, record = signed
    sealed = inbound.arc_seal(message, key)
    assert sealed.endswith(message)
    head = sealed[: len(sealed) - len(message)]
    assert head.startswith(b"ARC-Seal: i=1; cv=none;")
    assert b"ARC-Message-Signature: i=1;" in head
    assert f"ARC-Authentication-Results: i=1; {inbound.SEALER};".encode() in head
    assert f"Authentication-Results: {inbound.SEALER};".encode() in head
    cv, _results, reason = dkim.arc_verify(sealed, dnsfunc=_dnsfunc(record))
    assert cv == b"pass", reason
    assert dkim.verify(sealed, dnsfunc=_dnsfunc(record))


def test_a_tampered_sealed_message_fails_the_chain(signed: tuple[bytes, Path, bytes]) -> None:
    message, key, record = signed
    sealed = inbound.arc_seal(message, key)
    tampered = sealed.replace(b"Quarterly report", b"Quarterly rep0rt", 1)
    cv, _results, _reason = dkim.arc_verify(tampered, dnsfunc=_dnsfunc(record))
    assert cv == b"fail"


# --------------------------------------------------------------------------- Rspamd config


def test_rspamd_configuration_is_private_and_loads_only_the_authentication_modules(
    tmp_path: Path,
) -> None:
    setup = RspamdSetup(
        tmp_path / "r", SocketSpec("unix", path=str(tmp_path / "m.sock")), "127.0.0.1:5353"
    )
    config = setup.write().read_text()
    assert 'nameserver = ["127.0.0.1:5353"];' in config
    assert f'bind_socket = "{tmp_path}/m.sock mode=0666";' in config
    assert "milter = yes;" in config
    included = sorted(line.split("/")[-1] for line in config.splitlines() if "modules.d/" in line)
    assert included == [
        'arc.conf"',
        'dkim.conf"',
        'dmarc.conf"',
        'milter_headers.conf"',
        'spf.conf"',
    ]
    # Rspamd's shipped entry point loads every rule file; ours does not.
    assert (tmp_path / "r" / "rspamd.lua").read_text().strip() == 'require "global_functions" ()'
    headers = (tmp_path / "r" / "local.d" / "milter_headers.conf").read_text()
    assert '"authentication-results"' in headers
    # Every path it writes or reads at run time is ours, or the shipped read-only files.
    argv = setup.argv()
    assert f"--var=LOCAL_CONFDIR={tmp_path / 'r'}" in argv
    assert f"--var=DBDIR={tmp_path / 'r' / 'db'}" in argv
    assert argv[argv.index("-c") + 1] == str(tmp_path / "r" / "rspamd.conf")


def test_rspamd_bind_socket_syntax() -> None:
    assert bind_socket(SocketSpec("unix", path="/tmp/x.sock")) == "/tmp/x.sock mode=0666"
    assert bind_socket(SocketSpec("inet", host="127.0.0.1", port=11332)) == "127.0.0.1:11332"
    assert bind_socket(SocketSpec("inet", host="::1", port=11332)) == "[::1]:11332"


# --------------------------------------------------------------------------- run checks


def _measurement(messages: int, results: dict[str, int], outcomes: Counter[str]) -> Measurement:
    empty = LatencySummary.of([])
    result = LoadResult(
        requests=sum(outcomes.values()),
        elapsed=1.0,
        latency=empty,
        connect_latency=empty,
        outcomes=outcomes,
        errors=Counter(),
        client_cpu=0.1,
        sessions=messages,
        extra={"messages": messages, "auth_results": results},
    )
    return Measurement("t", "milter", "unix", result, 1.0, 1.0)


def test_a_run_where_every_message_passes_stays_ok() -> None:
    target = inbound.MailwardInbound()
    report = TargetReport(target, "unix")
    results = dict.fromkeys(target.expect, 100) | {"spf=none": 100}
    report.runs.append(_measurement(100, results, Counter(accept=90)))
    inbound.verify_runs(report)
    assert (report.status, report.reason) == ("ok", "")


def test_a_run_with_one_message_short_of_a_verdict_fails_with_the_counts() -> None:
    target = inbound.RspamdInbound()
    report = TargetReport(target, "unix")
    good = dict.fromkeys(target.expect, 100)
    report.runs.append(_measurement(100, good, Counter(accept=90)))
    report.runs.append(_measurement(100, good | {"dmarc=pass": 99}, Counter(accept=90)))
    inbound.verify_runs(report)
    assert report.status == "failed"
    assert report.reason == "run 2: dmarc=pass on 99 of 100 messages"


def test_a_run_with_refused_messages_fails_even_with_the_verdicts() -> None:
    target = inbound.OpenDkimVerify()
    report = TargetReport(target, "unix")
    report.runs.append(
        _measurement(100, {"dkim=pass": 100}, Counter({"accept": 80, "tempfail": 3}))
    )
    inbound.verify_runs(report)
    assert report.status == "failed"
    assert report.reason == "run 1: 3 x tempfail"


def test_inbound_sockets_default_to_unix_and_follow_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ctx(argv: list[str]) -> Context:
        return Context(tmp_path, parse_settings(argv), message=b"", dns_port=None)

    monkeypatch.delenv("BENCH_INBOUND_SOCKETS", raising=False)
    monkeypatch.delenv("BENCH_SOCKETS", raising=False)
    assert inbound.inbound_sockets(ctx([])) == ("unix",)
    assert inbound.inbound_sockets(ctx(["--sockets", "inet"])) == ("inet",)
    monkeypatch.setenv("BENCH_INBOUND_SOCKETS", "unix,inet")
    assert inbound.inbound_sockets(ctx([])) == ("unix", "inet")


def test_targets_are_grouped_with_their_peer_as_reference() -> None:
    targets = inbound.all_targets()
    for group in inbound.GROUPS:
        members = [t for t in targets if getattr(t, "group", "") == group]
        assert members[0].reference and not any(t.reference for t in members[1:])
        assert all(inbound.grouped(t) and t.kind == "milter" for t in members)
    assert {t.name for t in targets} >= {
        "rspamd-inbound",
        "mailward-inbound",
        "opendkim-verify",
        "mailward-dkim-verify",
    }
