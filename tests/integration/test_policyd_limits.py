"""The real `mailward policyd` process and its limits, with raw loopback sockets.

Started as a low open-files limit would start it (soft 256, as a default 1024 would but
smaller): it raises the limit itself and says so, closes a client that dribbles one
byte every 0.2 s after `request_timeout` (never answering it), and at a low cap closes
its oldest idle connections so that a new client still gets an answer.
"""

from __future__ import annotations

import re
import resource
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.codec import encode_request
from tests.harness.services import MailwardServices

CAP = 5

#: Lower the soft open-files limit, then become the real service (exec: same process).
_LOW_LIMIT_BOOT = (
    "import os, resource, sys; "
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'mailward'] + sys.argv[1:])"
)


def low_limit_command(service: str, config_path: Path) -> list[str]:
    return [sys.executable, "-c", _LOW_LIMIT_BOOT, service, "-c", str(config_path)]


@pytest.fixture
def policyd(tmp_path: Path) -> Iterator[MailwardServices]:
    services = MailwardServices(
        tmp_path / "mailward",
        config={"policyd": {"spf": {"enabled": False}, "max_connections": CAP,
                            "request_timeout": 1.0, "idle_timeout": 60.0}},
        services=["policyd"],
        command=low_limit_command,
    )
    try:
        services.start()
        yield services
    finally:
        services.close()


def address(services: MailwardServices) -> tuple[str, int]:
    host, _, port = services.policyd_socket.removeprefix("inet:").rpartition(":")
    return host, int(port)


def request(seq: int | str) -> bytes:
    return encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                           "client_address": "192.0.2.1", "sender": "a@example.org",
                           "recipient": "b@example.net", "seq": str(seq)})


def connect(services: MailwardServices) -> socket.socket:
    client = socket.create_connection(address(services), timeout=10.0)
    return client


def ask(client: socket.socket, data: bytes) -> bytes:
    client.sendall(data)
    received = b""
    while not received.endswith(b"\n\n"):
        chunk = client.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {received!r}")
        received += chunk
    return received


def closed_by_server(client: socket.socket, within: float = 10.0) -> bool:
    client.settimeout(within)
    try:
        return client.recv(4096) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def test_policyd_raises_its_open_files_limit_and_logs_it(policyd):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    line = policyd.wait_for_log(r"open-files limit \d+ \(was 256", service="policyd")
    assert line
    log = policyd.log_text("policyd")
    got = int(re.search(r"open-files limit (\d+) \(was 256", log).group(1))  # type: ignore[union-attr]
    assert got > 256
    if hard != resource.RLIM_INFINITY:
        assert got == hard
    assert f"at most {CAP} concurrent policy connections" in log


def test_dribbling_client_is_closed_after_request_timeout(policyd):
    data = request("slow")  # over 100 bytes: 20 s and more at this pace
    client = connect(policyd)
    started = time.monotonic()
    closed = False
    received = b""
    with client:
        for index in range(len(data)):
            try:
                client.sendall(data[index:index + 1])
            except ConnectionError:
                closed = True
                break
            readable, _, _ = select.select([client], [], [], 0.2)  # the attack's pace
            if readable:
                try:
                    chunk = client.recv(4096)
                except ConnectionError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += chunk
            if time.monotonic() - started > 15.0:  # generous; request_timeout is 1 s
                break
    assert closed, "the dribbling client was still connected"
    assert index < len(data) - 1  # closed before the request was complete
    assert received == b""  # no answer at all, in particular no reject
    policyd.wait_for_log(r"did not complete a request within 1s", service="policyd")
    with connect(policyd) as other:  # and the service goes on serving
        assert ask(other, request(1)) == b"action=DUNNO\n\n"


def test_oldest_idle_connections_make_room_for_a_new_client(policyd):
    idle = []
    try:
        for number in range(CAP + 3):
            client = connect(policyd)
            assert ask(client, request(number)) == b"action=DUNNO\n\n"
            idle.append(client)
        for client in idle[:3]:
            assert closed_by_server(client)
        with connect(policyd) as newcomer:
            assert ask(newcomer, request("new")) == b"action=DUNNO\n\n"
            assert closed_by_server(idle[3])
            for number, client in enumerate(idle[4:], start=4):
                assert ask(client, request(number)) == b"action=DUNNO\n\n"
        policyd.wait_for_log(r"policy connections at the cap \(5", service="policyd")
        assert policyd.metric_value("mailward_policyd_evicted_connections_total",
                                    service="policyd") == 4.0
    finally:
        for client in idle:
            client.close()
