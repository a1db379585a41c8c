"""The spamd check and its client: settings, symbols and their weight, every failure
scoring nothing and counted, and the client against small loopback servers that stall,
refuse, answer garbage or answer like spamd (the real spamd is in
tests/integration/test_spamd.py)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from mailward.checks.base import CheckInput
from mailward.checks.spamd import (
    SpamdCheck,
    SpamdSettings,
    SpamdStatus,
    rule_symbol,
    trace_header,
)
from mailward.config import SocketAddress, settings_from_mapping
from mailward.configreader import ConfigError
from mailward.dns import InMemoryResolver
from mailward.model import Action, AppendHeader, Connection, Header, Symbol, Transaction
from mailward.pipeline import Pipeline, build_inbound_checks
from mailward.scoring import DEFAULT_WEIGHTS, ScoringSettings, score_symbols
from mailward.spamc_protocol import SpamdErrorAnswer, SpamdProtocolError, SpamVerdict
from mailward.spamd_client import (
    SpamdClient,
    SpamdConnectionError,
    SpamdRefused,
    SpamdTimeout,
)

MESSAGE = Transaction(
    queue_id="Q1", mail_from="a@example.org", recipients=("b@example.net",),
    headers=(Header("From", " a@example.org"), Header("Subject", " offer")),
    body=b"Buy now\r\n", body_size=9)
CONNECTION = Connection(ipaddress.ip_address("198.51.100.7"))


def outcomes(status: str) -> float:
    return REGISTRY.get_sample_value("mailward_spamd_requests_total",
                                     {"outcome": status}) or 0.0


class Asker:
    """Stands in for the client: answers with a verdict or raises what it is given."""

    def __init__(self, answer: SpamVerdict | Exception) -> None:
        self.answer = answer
        self.sent: list[bytes] = []

    def symbols(self, message: bytes) -> SpamVerdict:
        self.sent.append(message)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def run(answer: SpamVerdict | Exception, transaction: Transaction = MESSAGE,
        max_size: int = 512_000) -> tuple[SpamdStatus, tuple[Symbol, ...], Asker]:
    asker = Asker(answer)
    check = SpamdCheck(SpamdSettings(enabled=True, max_size=max_size), asker)
    result = check.evaluate(CheckInput(CONNECTION, transaction))
    assert check.metric_result(result) == result.status.value
    return result.status, tuple(check.symbols(result)), asker


# ------------------------------------------------------------------ settings


def test_off_by_default_and_defaults() -> None:
    settings = settings_from_mapping({})
    section = settings.checks["spamd"]
    assert section == SpamdSettings()
    assert not section.enabled
    assert str(section.socket) == "inet:127.0.0.1:783"
    assert not [check for check in build_inbound_checks(settings, InMemoryResolver())
                if check.name == "spamd"]


def test_settings_are_read() -> None:
    settings = settings_from_mapping({"spamd": {
        "enabled": True, "socket": "unix:/run/spamd.sock", "timeout": 3,
        "max_size": 2048, "user": "spam-filter"}})
    assert settings.checks["spamd"] == SpamdSettings(
        True, SocketAddress.parse("unix:/run/spamd.sock"), 3.0, 2048, "spam-filter")
    checks = build_inbound_checks(settings, InMemoryResolver())
    assert [check.name for check in checks if check.name == "spamd"] == ["spamd"]


@pytest.mark.parametrize("section, message", [
    ({"socket": "tcp:spamd:783"}, "spamd.socket: unknown socket type"),
    ({"timeout": 0}, "spamd.timeout: must be between"),
    ({"max_size": 10}, "spamd.max_size: must be between"),
    ({"user": "two words"}, "spamd.user: must be"),
    ({"weight": 2.0}, "spamd.weight: unknown key"),
    ({"enabled": "yes"}, "spamd.enabled: expected"),
])
def test_bad_settings_name_their_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping({"spamd": section})


def test_weight_of_spamassassin_is_a_scoring_weight() -> None:
    settings = settings_from_mapping({"scoring": {"weights": {"SPAMASSASSIN": 0.5}}})
    assert settings.scoring.weight("SPAMASSASSIN") == 0.5


# ------------------------------------------------------------------ symbols and score


def test_scored_message_gives_the_total_and_the_rules() -> None:
    before = outcomes("scored")
    status, symbols, asker = run(SpamVerdict(True, 7.4, 5.0, ("HTML_MESSAGE", "Lower_case")))
    assert status is SpamdStatus.SCORED
    assert [str(symbol) for symbol in symbols] == [
        "SPAMASSASSIN(7.4/5)", "SA_HTML_MESSAGE", "SA_LOWER_CASE"]
    [sent] = asker.sent
    trace, _, message = sent.partition(b"\r\n\tby localhost (Mailward) with ESMTP id Q1; ")
    assert trace == b"Received: from unknown (unknown [198.51.100.7])"
    assert message.split(b"\r\n", 1)[1] == (
        b"From: a@example.org\r\nSubject: offer\r\n\r\nBuy now\r\n")
    assert outcomes("scored") == before + 1


def test_spamassassin_score_is_scaled_by_its_weight_and_rules_weigh_nothing() -> None:
    _, symbols, _ = run(SpamVerdict(True, 7.4, 5.0, ("HTML_MESSAGE",)))
    settings = ScoringSettings()
    score = score_symbols(symbols, settings)
    assert score.total == 7.4
    assert {hit.symbol.name: hit.weight for hit in score.hits} == {
        "SPAMASSASSIN": 7.4, "SA_HTML_MESSAGE": 0.0}
    halved = ScoringSettings(weights={**DEFAULT_WEIGHTS, "SPAMASSASSIN": 0.5})
    assert score_symbols(symbols, halved).total == 3.7
    _, ham, _ = run(SpamVerdict(False, -1.9, 5.0, ()))
    assert score_symbols(ham, settings).total == -1.9


def test_trace_header_keeps_only_host_name_characters() -> None:
    connection = Connection(ipaddress.ip_address("2001:db8::7"), client_name="mx.example",
                            helo="evil\r\nX-Spam-Flag: NO (x)", auth_user="alice")
    line = trace_header(connection, MESSAGE, "mx.example.net", now=0.0).decode()
    assert line.startswith("Received: from evilX-Spam-Flag:NOx (mx.example [2001:db8::7])\r\n"
                           "\tby mx.example.net (Mailward) with ESMTPA id Q1; ")
    assert line.count("\r\n") == 2 and line.endswith("\r\n")
    assert trace_header(Connection(None), MESSAGE, "mx.example.net") == b""


def test_rule_symbols_are_bounded() -> None:
    rules = tuple(f"RULE_{index}" for index in range(200))
    _, symbols, _ = run(SpamVerdict(True, 50.0, 5.0, rules))
    assert len(symbols) == 1 + 64
    assert rule_symbol("x" * 200) == "SA_" + "X" * 61
    assert Symbol(rule_symbol("a-b.c"))  # a valid symbol name whatever SA sends


@pytest.mark.parametrize("error, status", [
    (SpamdTimeout("no answer"), SpamdStatus.TIMEOUT),
    (SpamdRefused("inet:127.0.0.1:783: Connection refused"), SpamdStatus.REFUSED),
    (SpamdConnectionError("reset"), SpamdStatus.CONNECTION_ERROR),
    (SpamdErrorAnswer(76, "Bad header line"), SpamdStatus.SPAMD_ERROR),
    (SpamdProtocolError("not a SPAMD status line"), SpamdStatus.BAD_ANSWER),
])
def test_failures_score_nothing_and_are_counted(error: Exception, status: SpamdStatus,
                                                caplog: pytest.LogCaptureFixture) -> None:
    before = outcomes(status.value)
    got, symbols, _ = run(error)
    assert (got, symbols) == (status, ())
    assert outcomes(status.value) == before + 1
    assert "Q1: spamd:" in caplog.text and "not scored" in caplog.text


def test_large_and_truncated_messages_are_not_sent() -> None:
    before = outcomes("too_large")
    status, symbols, asker = run(SpamVerdict(True, 9.0, 5.0, ()), max_size=1024,
                                 transaction=Transaction(
                                     queue_id="Q2", mail_from="", recipients=("b@x.example",),
                                     headers=(), body=b"x" * 1100, body_size=1100))
    assert (status, symbols, asker.sent) == (SpamdStatus.TOO_LARGE, (), [])
    status, _, asker = run(SpamVerdict(True, 9.0, 5.0, ()), transaction=Transaction(
        queue_id="Q3", mail_from="", recipients=("b@x.example",), headers=(),
        body=b"x" * 100, body_size=10_000, body_truncated=True))
    assert (status, asker.sent) == (SpamdStatus.TOO_LARGE, [])
    assert outcomes("too_large") == before + 2


# ------------------------------------------------------------------ client and sockets


@contextlib.contextmanager
def server(handle: Callable[[socket.socket], None], family: int = socket.AF_INET,
           path: Path | None = None) -> Iterator[SocketAddress]:
    """A one-thread loopback server calling `handle` for each connection."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    if path is not None:
        listener.bind(str(path))
        address = SocketAddress.parse(f"unix:{path}")
    else:
        listener.bind(("127.0.0.1", 0))
        address = SocketAddress.parse(f"inet:127.0.0.1:{listener.getsockname()[1]}")
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        listener.close()
        thread.join(5)


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += conn.recv(4096)
    return data


def spamd_like(conn: socket.socket) -> None:
    request = read_request(conn)
    rules = b"SEEN_" + str(request.count(b"viagra")).encode()
    conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: True ; 6.5 / 5.0\r\n\r\n"
                 % len(rules) + rules)


def silent(conn: socket.socket) -> None:
    read_request(conn)
    conn.recv(1)  # until the client gives up and closes


def garbage(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"220 mail.example ESMTP\r\n")


def test_client_reads_an_answer_over_tcp_and_unix(tmp_path: Path) -> None:
    with server(spamd_like) as address:
        verdict = SpamdClient(address, 5.0).symbols(b"Subject: viagra\r\n\r\nviagra\r\n")
    assert verdict == SpamVerdict(True, 6.5, 5.0, ("SEEN_2",))
    with server(spamd_like, socket.AF_UNIX, tmp_path / "spamd.sock") as address:
        assert SpamdClient(address, 5.0).symbols(b"x").rules == ("SEEN_0",)


def test_client_gives_up_at_its_deadline() -> None:
    with server(silent) as address, pytest.raises(SpamdTimeout):
        SpamdClient(address, 0.3).symbols(b"Subject: x\r\n\r\n")


def test_client_refused_when_nothing_listens(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SpamdRefused):  # bound, not listening: the port refuses
        SpamdClient(SocketAddress.parse(f"inet:127.0.0.1:{port}"), 2.0).symbols(b"x")
    with pytest.raises(SpamdRefused):
        SpamdClient(SocketAddress.parse(f"unix:{tmp_path}/none.sock"), 2.0).symbols(b"x")


def test_client_garbage_answer_is_a_protocol_error() -> None:
    with server(garbage) as address, pytest.raises(SpamdProtocolError, match="status line"):
        SpamdClient(address, 2.0).symbols(b"x")


def test_pipeline_merges_spamd_into_the_spam_headers() -> None:
    """Through the whole engine: the SA total decides the action, the rules are listed."""
    with server(spamd_like) as address:
        settings = settings_from_mapping({
            "general": {"authserv_id": "mx.example.net"},
            "spamd": {"enabled": True, "socket": str(address), "timeout": 5}})
        resolver = InMemoryResolver()
        pipeline = Pipeline(settings, resolver, build_inbound_checks(settings, resolver))
        verdict = pipeline.evaluate(CONNECTION, MESSAGE)
    assert verdict.action is Action.ACCEPT
    assert AppendHeader("X-Spam-Flag", "YES") in verdict.header_edits
    status = next(edit for edit in verdict.header_edits
                  if isinstance(edit, AppendHeader) and edit.name == "X-Spam-Status")
    assert "SPAMASSASSIN" in status.value and "SA_SEEN_0" in status.value
    # Rule names are SA's (thousands, site-defined): never a metric label; the total is.
    assert REGISTRY.get_sample_value("mailward_spam_symbols_total",
                                     {"symbol": "SA_SEEN_0"}) is None
    assert (REGISTRY.get_sample_value("mailward_spam_symbols_total",
                                      {"symbol": "SPAMASSASSIN"}) or 0) >= 1


def test_pipeline_delivers_normally_when_spamd_is_down() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings_from_mapping({"spamd": {"enabled": True,
                                                "socket": f"inet:127.0.0.1:{port}"}})
    resolver = InMemoryResolver()
    before = outcomes("refused")
    verdict = Pipeline(settings, resolver, build_inbound_checks(settings, resolver)).evaluate(
        CONNECTION, MESSAGE)
    assert verdict.action is Action.ACCEPT
    assert AppendHeader("X-Spam-Flag", "NO") in verdict.header_edits
    assert outcomes("refused") == before + 1
