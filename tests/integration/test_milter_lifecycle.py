"""The milter service's lifecycle, spoken to directly over the milter protocol.

Postfix cannot be paused in the middle of a message, so these tests play the MTA with
the protocol codec from bench/milter_client.py: start a message, stop the service
half-way, and check that the message still gets its answer.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from bench.milter_client import (
    ENCODED_EOH,
    ENCODED_EOM,
    SMFIA_INET,
    SMFIC_CONNECT,
    SMFIC_MAIL,
    Action,
    InsertHeader,
    Response,
    ResponseReader,
    Stage,
    encode_body,
    encode_connect,
    encode_header,
    encode_helo,
    encode_macros,
    encode_mail,
    encode_optneg,
    encode_rcpt,
    parse_optneg,
)
from tests.harness import CHECKS_OFF
from tests.harness.process import wait_until


def read_until(sock: socket.socket, reader: ResponseReader, deadline: float) -> Response:
    while True:
        response = reader.next_response()
        if response is not None:
            return response
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        data = sock.recv(65536)
        assert data, "the milter closed the connection"
        reader.feed(data)


def refused(milter_socket: str) -> bool:
    host, _, port = milter_socket.removeprefix("inet:").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def start_message(milter_socket: str) -> tuple[socket.socket, ResponseReader]:
    """Connect and send everything up to the body; the milter answers none of it
    (it negotiated no-reply for these steps), so it is mid-message from its view."""
    host, _, port = milter_socket.removeprefix("inet:").rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = ResponseReader()
    sock.sendall(encode_optneg())
    deadline = time.monotonic() + 5
    while (pkt := reader.next_packet()) is None:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        reader.feed(sock.recv(65536))
    negotiated = parse_optneg(pkt.data)
    assert negotiated.leading_space  # we asked for raw header values
    sock.sendall(
        encode_macros(SMFIC_CONNECT, [("j", "mx.example.net")])
        + encode_connect("client.example.org", SMFIA_INET, 40000, "192.0.2.10")
        + encode_helo("client.example.org")
        + encode_macros(SMFIC_MAIL, [("i", "DRAIN1")])
        + encode_mail("sender@example.org")
        + encode_rcpt("rcpt@example.net")
        + encode_header("Subject", " drain test")
        + (ENCODED_EOH if negotiated.sends(Stage.EOH) else b"")
        + encode_body(b"half of the body\r\n")
    )
    return sock, reader


def test_sigterm_lets_a_message_in_flight_finish(stack, mailward_factory):
    services = mailward_factory(CHECKS_OFF, services=["milter"], attach=False)
    sock, reader = start_message(services.milter_socket)
    try:
        mark = len(services.log_text("milter"))
        os.kill(services.pids()["milter"], signal.SIGTERM)
        services.wait_for_log(r"stopping: workers finish open sessions", since=mark)
        # New sessions are refused from now on (the MTA answers 4xx and retries): once
        # libmilter's accept loop wakes up (every 5 s at most) the socket is gone ...
        wait_until(lambda: refused(services.milter_socket), 15, "new connections refused")
        # ... while the open one is still served: finish it after the stop began.
        sock.sendall(encode_body(b"and the other half\r\n") + ENCODED_EOM)
        response = read_until(sock, reader, time.monotonic() + 10)
    finally:
        sock.close()
    assert response.reply.action in (Action.CONTINUE, Action.ACCEPT), response
    assert [m for m in response.modifications if isinstance(m, InsertHeader)] == [
        InsertHeader(0, "Authentication-Results", " mx.example.net; none")
    ]
    wait_until(lambda: "milter" not in services.pids(), 10, "the milter to exit")
    log = services.log_text("milter")
    assert "DRAIN1: client=" in log and "action=accept" in log
    assert "mailward milter stopped" in log


def test_a_session_that_never_finishes_is_cut_off_after_shutdown_timeout(stack, mailward_factory):
    services = mailward_factory({**CHECKS_OFF, "milter": {"shutdown_timeout": 1.0}},
                                services=["milter"], attach=False)
    sock, _ = start_message(services.milter_socket)
    try:
        os.kill(services.pids()["milter"], signal.SIGTERM)
        # Bounded: the worker gives up on the silent session after shutdown_timeout.
        wait_until(lambda: "milter" not in services.pids(), 15, "the milter to exit")
    finally:
        sock.close()
    assert "worker stopping with 1 session(s) still open" in services.log_text("milter")
