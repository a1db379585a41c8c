"""milters.protocol: the milter-side codec, checked against bench's MTA-side codec.

Two independent implementations of the wire format meet here: bench/milter_client.py
encodes what Postfix sends and decodes what a milter answers; milters/protocol.py does
the opposite.  Each test feeds one into the other.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import milter_client as mta
from milters import protocol
from milters.protocol import (
    Arguments,
    Bare,
    Body,
    Command,
    CommandReader,
    Connect,
    HeaderField,
    Macros,
    Negotiate,
    ProtocolError,
)


def events(data: bytes, chunk: int | None = None) -> list[protocol.Event]:
    reader = CommandReader()
    out: list[protocol.Event] = []
    step = chunk or len(data) or 1
    for start in range(0, len(data), step):
        out.extend(reader.receive(data[start:start + step]))
    return out


def test_a_postfix_message_decodes_to_typed_commands_whatever_the_read_boundaries():
    stream = (
        mta.encode_optneg()
        + mta.encode_macros(mta.SMFIC_CONNECT, [("j", "mx.example.net"), ("_", "c [192.0.2.1]")])
        + mta.encode_connect("client.example.org", mta.SMFIA_INET, 40000, "192.0.2.1")
        + mta.encode_helo("client.example.org")
        + mta.encode_mail("a@example.org", ["SIZE=12", "BODY=8BITMIME"])
        + mta.encode_rcpt("b@example.net")
        + mta.encode_header("Subject", " hello")
        + mta.ENCODED_EOH
        + mta.encode_body(b"body\r\n")
        + mta.ENCODED_EOM
        + mta.ENCODED_QUIT
    )
    expected = [
        Negotiate(6, int(mta.POSTFIX_ACTIONS), int(mta.POSTFIX_V6_PROTOCOL)),
        Macros(b"C", {"j": "mx.example.net", "_": "c [192.0.2.1]"}),
        Connect("client.example.org", protocol.FAMILY_INET, 40000, "192.0.2.1"),
        Arguments(Command.HELO, (b"client.example.org",)),
        Arguments(Command.MAIL, (b"<a@example.org>", b"SIZE=12", b"BODY=8BITMIME")),
        Arguments(Command.RCPT, (b"<b@example.net>",)),
        HeaderField(b"Subject", b" hello"),
        Bare(Command.EOH),
        Body(b"body\r\n"),
        Bare(Command.BODYEOB),
        Bare(Command.QUIT),
    ]
    assert events(stream) == expected
    assert events(stream, chunk=1) == expected
    assert events(stream, chunk=7) == expected


def test_a_macro_name_without_its_value_is_dropped_and_flagged_not_fatal():
    # libmilter's smfi_getsymval walks such a list past its end (SIGSEGV, issue 9).
    data = mta.packet(mta.SMFIC_MACRO, b"Mi\0QID1\0{auth_authen}\0")
    assert events(data) == [Macros(b"M", {"i": "QID1"}, malformed=True)]
    assert events(mta.packet(mta.SMFIC_MACRO, b"C{x}\0")) == [Macros(b"C", {}, malformed=True)]
    assert events(mta.packet(mta.SMFIC_MACRO, b"E")) == [Macros(b"E", {})]


def test_a_repeated_macro_packet_decodes_as_often_as_it_is_sent_to_the_same_values():
    # Postfix sends the end-of-header macros before every header; the reader decodes a
    # repeat once, and a changed packet (the next message's queue id) afresh.
    first = mta.packet(mta.SMFIC_MACRO, b"Ni\0QID1\0")
    header = mta.encode_header("Subject", " hi")
    second = mta.packet(mta.SMFIC_MACRO, b"Ni\0QID2\0")
    reader = CommandReader()
    decoded = reader.receive(first + header + first + header + second + header)
    assert decoded[0::2] == [Macros(b"N", {"i": "QID1"}), Macros(b"N", {"i": "QID1"}),
                             Macros(b"N", {"i": "QID2"})]
    assert decoded[1::2] == [HeaderField(b"Subject", b" hi")] * 3
    # Hundreds of distinct packets: every one still decodes to its own values.
    many = [mta.packet(mta.SMFIC_MACRO, b"Ni\0Q%d\0" % n) for n in range(200)]
    assert reader.receive(b"".join(many + many)) == [
        Macros(b"N", {"i": f"Q{n}"}) for n in [*range(200), *range(200)]]
    # After that many, the next message's repeated packet is still decoded once.
    third = mta.packet(mta.SMFIC_MACRO, b"Ni\0QID3\0")
    (again,) = reader.receive(third)
    assert again == Macros(b"N", {"i": "QID3"}) and reader.receive(third)[0] is again


def test_8bit_macro_values_and_headers_decode_without_raising():
    data = mta.packet(mta.SMFIC_MACRO, b"M{auth_authen}\0j\xf6rg\0")
    (macros,) = events(data)
    assert isinstance(macros, Macros)
    assert macros.values["{auth_authen}"].encode("utf-8", "surrogateescape") == b"j\xf6rg"
    assert events(mta.packet(mta.SMFIC_HEADER, b"X-A\0\xff\0")) == [HeaderField(b"X-A", b"\xff")]


@pytest.mark.parametrize("data, message", [
    (mta.packet(mta.SMFIC_HEADER, b"Subject\0no terminator"), "not NUL-terminated"),
    (mta.packet(mta.SMFIC_HEADER, b"Subject\0a\0b\0"), "3 strings"),
    (mta.packet(mta.SMFIC_CONNECT, b"host\0"), "no host name or address family"),
    (mta.packet(mta.SMFIC_CONNECT, b"host\0Z\0\0x\0"), "unknown address family"),
    (mta.packet(mta.SMFIC_CONNECT, b"host\x004"), "no port or address"),
    (mta.packet(mta.SMFIC_OPTNEG, b"\0\0\0\6"), "12 expected"),
    (mta.packet(mta.SMFIC_MACRO), "without a command code"),
    (mta.packet(mta.SMFIC_MAIL), "not NUL-terminated"),
    (mta.packet(b"Z", b"x"), "unknown command"),
    (struct.pack(">I", 0), "packet length 0"),
    (struct.pack(">I", protocol.MAX_PACKET + 1) + b"L", "packet length"),
])
def test_malformed_packets_raise_protocol_error_naming_the_problem(data, message):
    with pytest.raises(ProtocolError, match=message):
        events(data)


def test_an_oversized_length_is_refused_before_its_data_arrives():
    reader = CommandReader(max_packet=1024)
    with pytest.raises(ProtocolError):
        reader.receive(struct.pack(">I", 1025))


def test_connect_forms_unknown_unix_and_sendmail_ipv6():
    assert events(mta.encode_connect("h", mta.SMFIA_UNKNOWN)) == [
        Connect("h", protocol.FAMILY_UNKNOWN, 0, "")]
    assert events(mta.encode_connect("h", mta.SMFIA_UNIX, 0, "/run/x")) == [
        Connect("h", protocol.FAMILY_UNIX, 0, "/run/x")]
    assert events(mta.encode_connect("h", mta.SMFIA_INET6, 25, "IPv6:2001:db8::1")) == [
        Connect("h", protocol.FAMILY_INET6, 25, "2001:db8::1")]


def test_body_with_end_of_message_is_one_last_chunk():
    assert events(mta.packet(mta.SMFIC_BODYEOB, b"tail")) == [Body(b"tail", last=True)]


def test_replies_decode_in_the_mta_codec_as_what_they_mean():
    stream = (
        protocol.encode_change_header(2, "Authentication-Results", None)
        + protocol.encode_insert_header(0, "Authentication-Results", " mx; none")
        + protocol.encode_add_header("X-Spam-Flag", " NO")
        + protocol.encode_quarantine("held")
        + protocol.CONTINUE_PACKET
        + protocol.encode_reply_code("550", "5.7.1", "no thanks")
        + protocol.encode_reply_code("451", None, "later")
        + protocol.encode_negotiate(6, int(protocol.Action.ADDHDRS), int(protocol.Step.NR_HDR))
    )
    reader = mta.ResponseReader()
    reader.feed(stream)
    first = reader.next_response()
    assert first == mta.Response(mta.Reply(mta.Action.CONTINUE), (
        mta.ChangeHeader(2, "Authentication-Results", ""),
        mta.InsertHeader(0, "Authentication-Results", " mx; none"),
        mta.AddHeader("X-Spam-Flag", " NO"),
        mta.Quarantine("held"),
    ))
    assert reader.next_response() == mta.Response(
        mta.Reply(mta.Action.REPLYCODE, "550 5.7.1 no thanks"))
    assert reader.next_response() == mta.Response(
        mta.Reply(mta.Action.REPLYCODE, "451 4.0.0 later"))
    negotiated = mta.parse_optneg(reader.next_packet().data)  # type: ignore[union-attr]
    assert negotiated.version == 6 and not negotiated.replies(mta.Stage.HEADER)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_any_bytes_give_commands_or_a_protocol_error_never_another_exception(data, chunk):
    with contextlib.suppress(ProtocolError):
        events(data, chunk)


_command_codes = st.sampled_from([c.value for c in Command] + [b"Z", b"\0"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_command_codes, st.binary(max_size=64)), max_size=20))
def test_well_framed_packets_of_any_content_never_raise_anything_but_protocol_error(packets):
    stream = b"".join(mta.packet(code, data) for code, data in packets)
    try:
        for event in events(stream):
            assert isinstance(event, (Negotiate, Macros, Connect, Arguments, HeaderField,
                                      Body, Bare))
    except ProtocolError:
        pass
