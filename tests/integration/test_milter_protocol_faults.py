"""Hostile milter packets against the real milter service (issue 9, item 1).

Under libmilter, one macro packet with a name and no value (``Mi\\0QID\\0{auth_authen}\\0``)
made the worker die with SIGSEGV, and every session of that worker with it.  Mailward's
own engine checks each packet: these tests play a broken MTA-side client next to a
well-behaved session that is mid-message, and check that only the broken session ends,
that the worker process is the same one afterwards, and that the fallback engine
(libmilter) still carries ordinary mail through real Postfix.
"""

from __future__ import annotations

import socket
import struct
import uuid

from bench import milter_client as mta
from tests.harness import CHECKS_OFF, send_with_swaks, toml
from tests.harness.process import child_pids, wait_for_children

AUTHSERV_ID = "mx.example.net"

#: What a buggy or hostile client on the MTA side may write after negotiating.
HOSTILE = {
    "macro name without value, connect stage": mta.packet(mta.SMFIC_MACRO, b"C{client_addr}\0"),
    "odd macro list, mail stage": mta.packet(mta.SMFIC_MACRO, b"Mi\0QID\0{auth_authen}\0"),
    "header without terminator": mta.packet(mta.SMFIC_HEADER, b"Subject\0no end"),
    "length past any packet": struct.pack(">I", 0x7FFFFFFF) + b"B",
    "unknown command": mta.packet(b"Z", b"\0\0"),
    "connect without address": mta.packet(mta.SMFIC_CONNECT, b"host\x004"),
}


def address(milter_socket: str) -> tuple[str, int]:
    host, _, port = milter_socket.removeprefix("inet:").rpartition(":")
    return host, int(port)


def negotiated_session(milter_socket: str) -> tuple[socket.socket, mta.ResponseReader]:
    sock = socket.create_connection(address(milter_socket), timeout=10)
    reader = mta.ResponseReader()
    sock.sendall(mta.encode_optneg())
    while reader.next_packet() is None:
        data = sock.recv(65536)
        assert data, "the milter closed the connection during negotiation"
        reader.feed(data)
    return sock, reader


def response(sock: socket.socket, reader: mta.ResponseReader) -> mta.Response:
    while (answer := reader.next_response()) is None:
        data = sock.recv(65536)
        assert data, "the milter closed the connection"
        reader.feed(data)
    return answer


def message_commands(queue_id: str) -> bytes:
    return (mta.encode_macros(mta.SMFIC_MAIL, [("i", queue_id)])
            + mta.encode_mail("sender@example.org")
            + mta.encode_rcpt("rcpt@example.net")
            + mta.encode_header("Subject", " protocol faults")
            + mta.encode_body(b"hello\r\n")
            + mta.ENCODED_EOM)


def connection_commands() -> bytes:
    return (mta.encode_macros(mta.SMFIC_CONNECT, [("j", AUTHSERV_ID)])
            + mta.encode_connect("client.example.org", mta.SMFIA_INET, 40000, "192.0.2.10")
            + mta.encode_helo("client.example.org"))


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_hostile_packets_end_only_their_own_session(stack, mailward_factory):
    services = mailward_factory(CHECKS_OFF, services=["milter"], attach=False)
    supervisor = services.pids()["milter"]
    # The supervisor forks its worker after it starts listening: wait for it.
    workers = wait_for_children(supervisor, 1)
    assert len(workers) == 1

    # A well-behaved session, half-way through its message, on the same (only) worker.
    bystander, bystander_reader = negotiated_session(services.milter_socket)
    bystander.sendall(connection_commands() + message_commands("BYSTANDER")[:-5])

    for name, payload in HOSTILE.items():
        sock, reader = negotiated_session(services.milter_socket)
        try:
            sock.sendall(connection_commands() + payload)
            if name.startswith(("macro", "odd macro")):
                # Not fatal: the stray name is dropped and the message is served.
                sock.sendall(message_commands(f"HOSTILE{len(name)}"))
                answer = response(sock, reader)
                assert answer.reply.action is mta.Action.CONTINUE, name
            else:
                assert closed(sock), f"{name}: the session should have been ended"
        finally:
            sock.close()

    bystander.sendall(mta.ENCODED_EOM)
    answer = response(bystander, bystander_reader)
    bystander.close()
    assert answer.reply.action is mta.Action.CONTINUE
    assert mta.InsertHeader(0, "Authentication-Results", f" {AUTHSERV_ID}; none") \
        in answer.modifications

    assert child_pids(supervisor) == workers  # no crash, no respawn
    log = services.log_text("milter")
    assert "exited unexpectedly" not in log
    assert log.count("milter protocol error from the MTA side, session closed") == 4
    assert "has a name without a value; the name was dropped" in log
    assert "BYSTANDER: client=client.example.org[192.0.2.10]" in log

    # And a new session afterwards is served as usual.
    sock, reader = negotiated_session(services.milter_socket)
    sock.sendall(connection_commands() + message_commands("AFTER"))
    assert response(sock, reader).reply.action is mta.Action.CONTINUE
    sock.close()


def test_the_libmilter_engine_still_carries_mail_through_postfix(stack, mailward_factory,
                                                                  recipient):
    mailward_factory(toml.deep_merge(CHECKS_OFF, {"milter": {"engine": "libmilter"}}))
    subject = f"libmilter engine {uuid.uuid4().hex}"
    result = send_with_swaks(stack.postfix.smtp_port, "sender@client.example.org", recipient,
                             headers={"Subject": subject}, xclient_addr="192.0.2.10")
    assert result.exit_code == 0, result.transcript
    stored = stack.dovecot.wait_for_message(
        recipient, "INBOX", lambda m: m.get("Subject") == subject, timeout=20)
    ours = [" ".join(str(v).split()) for v in stored.get_all("Authentication-Results", [])
            if str(v).strip().startswith(AUTHSERV_ID)]
    assert ours == [f"{AUTHSERV_ID}; none"]
