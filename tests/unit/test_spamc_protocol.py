"""The SPAMC/1.5 codec: requests as spamd reads them, answers as spamd 4.0.1 writes them.

The answer bytes below were captured from Debian 12's spamd 4.0.1 (SYMBOLS, CHECK,
PING, an error answer); the malformed ones are what a broken or foreign peer sends.
"""

from __future__ import annotations

import pytest

from mailward.spamc_protocol import (
    Command,
    ResponseDecoder,
    SpamdErrorAnswer,
    SpamdProtocolError,
    SpamdResponse,
    SpamVerdict,
    encode_request,
    parse_rule_names,
    spam_verdict,
)

SYMBOLS_SPAM = (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
                b"GTUBE,NO_RECEIVED,NO_RELAYS")
SYMBOLS_HAM = (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 21\r\nSpam: False ; -0.0 / 5.0\r\n\r\n"
               b"NO_RECEIVED,NO_RELAYS")
CHECK_SPAM = b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
PONG = b"SPAMD/1.5 0 PONG\r\n"
ERROR = b"SPAMD/1.0 76 Bad header line: (EOF during headers)\r\n"


def decode(*chunks: bytes, close: bool = True) -> SpamdResponse | None:
    decoder = ResponseDecoder()
    response = None
    for chunk in chunks:
        response = decoder.feed(chunk) or response
    if close:
        response = decoder.feed(b"")
    return response


# ------------------------------------------------------------------ requests


def test_symbols_request_announces_the_exact_length() -> None:
    message = b"Subject: hi\r\n\r\nbody\r\n"
    assert encode_request(Command.SYMBOLS, message) == (
        b"SYMBOLS SPAMC/1.5\r\nContent-length: 21\r\n\r\n" + message)


def test_ping_has_no_length_and_no_message() -> None:
    assert encode_request(Command.PING) == b"PING SPAMC/1.5\r\n\r\n"
    with pytest.raises(ValueError, match="no message"):
        encode_request(Command.PING, b"x")


def test_user_header_and_no_header_injection() -> None:
    assert b"\r\nUser: nobody\r\n\r\n" in encode_request(Command.CHECK, b"", user="nobody")
    for bad in ("a b", "x\r\nContent-length: 1", "", "\u00e9"):
        with pytest.raises(ValueError, match="spamd user"):
            encode_request(Command.CHECK, b"", user=bad)


# ------------------------------------------------------------------ answers


def test_symbols_answer_gives_score_threshold_and_rules() -> None:
    response = decode(SYMBOLS_SPAM, close=False)
    assert response is not None  # complete at Content-length, before the close
    assert (response.version, response.code, response.message) == ("1.1", 0, "EX_OK")
    assert spam_verdict(response) == SpamVerdict(True, 1000.0, 5.0,
                                                 ("GTUBE", "NO_RECEIVED", "NO_RELAYS"))


def test_ham_answer_with_negative_zero() -> None:
    verdict = spam_verdict(decode(SYMBOLS_HAM) or pytest.fail("no response"))
    assert not verdict.is_spam
    assert verdict.score == 0.0
    assert verdict.rules == ("NO_RECEIVED", "NO_RELAYS")


def test_answer_split_into_single_bytes_is_the_same() -> None:
    whole = decode(SYMBOLS_SPAM)
    assert decode(*[bytes([b]) for b in SYMBOLS_SPAM]) == whole


def test_check_answer_ends_with_the_connection() -> None:
    assert decode(CHECK_SPAM, close=False) is None  # no Content-length: wait for close
    response = decode(CHECK_SPAM)
    assert response is not None
    assert spam_verdict(response, Command.CHECK) == SpamVerdict(True, 1000.0, 5.0, ())


def test_pong_and_error_answers_are_a_status_line_only() -> None:
    pong = decode(PONG)
    assert pong is not None and pong.ok and pong.message == "PONG"
    error = decode(ERROR)
    assert error is not None and not error.ok and error.code == 76
    with pytest.raises(SpamdErrorAnswer, match="spamd error 76") as caught:
        spam_verdict(error)
    assert caught.value.code == 76


def test_spamc_1_2_style_symbols_body_with_trailing_crlf() -> None:
    response = decode(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 7.4 / 5.0\r\n\r\n"
                      b"EMPTY_MESSAGE,MISSING_DATE\r\n")
    assert response is not None
    assert spam_verdict(response).rules == ("EMPTY_MESSAGE", "MISSING_DATE")


def test_yes_no_spelling_and_signs() -> None:
    response = decode(b"SPAMD/1.1 0 EX_OK\r\nSpam: no ; -2.5 / +5\r\n\r\n")
    assert response is not None
    assert spam_verdict(response, Command.CHECK) == SpamVerdict(False, -2.5, 5.0, ())


@pytest.mark.parametrize("data, problem", [
    (b"", "without an answer"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "not a SPAMD status line"),
    (b"SPAMD/1.1 zero EX_OK\r\n\r\n", "not a SPAMD status line"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam True\r\n\r\n", "bad header line"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: a\r\nSpam: b\r\n\r\n", "repeated"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: -1\r\n\r\n", "bad Content-length"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 99999999999\r\n\r\n", "bad Content-length"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 900000\r\n\r\n", "exceeds"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 10\r\n\r\nshort", "closed after 5 of 10"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 2\r\n\r\nlonger", "more body"),
    (b"SPAMD/1.1 0 EX_OK\r\n" + b"X-Pad: y\r\n" * 2000, "no end of headers"),
    (b"SPAMD/1.1 0 EX_OK\r\n\x00\xff\r\n\r\n", "bad header line"),
])
def test_malformed_answers_are_protocol_errors(data: bytes, problem: str) -> None:
    with pytest.raises(SpamdProtocolError, match=problem):
        decode(data)


def test_body_without_length_is_bounded() -> None:
    decoder = ResponseDecoder(max_body_bytes=100)
    decoder.feed(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n\r\n")
    with pytest.raises(SpamdProtocolError, match="exceeds 100"):
        decoder.feed(b"A" * 101)


def test_nothing_after_a_complete_answer() -> None:
    decoder = ResponseDecoder()
    assert decoder.feed(SYMBOLS_SPAM) is not None
    assert decoder.feed(b"") is not None  # the close after it is fine
    with pytest.raises(SpamdProtocolError, match="after the end"):
        decoder.feed(b"x")


@pytest.mark.parametrize("header, problem", [
    (None, "without a Spam"),
    ("Maybe ; 1 / 5", "bad Spam"),
    ("True ; nan / 5", "bad Spam"),
    ("True ; 1e9 / 5", "bad Spam"),
    ("True ; 1 5", "bad Spam"),
    ("True ; 999999 / 5", "out of range"),
])
def test_bad_spam_headers(header: str | None, problem: str) -> None:
    headers = {} if header is None else {"spam": header}
    with pytest.raises(SpamdProtocolError, match=problem):
        spam_verdict(SpamdResponse("1.1", 0, "EX_OK", headers))


@pytest.mark.parametrize("body, problem", [
    (b"GTUBE,,NO_RELAYS", "bad rule name"),
    (b"GTUBE;rm -rf", "bad rule name"),
    (b"\xff\xfe", "not ASCII"),
    (b",".join([b"R"] * 501), "more than 500"),
    (b"A" * 129, "bad rule name"),
])
def test_bad_rule_lists(body: bytes, problem: str) -> None:
    with pytest.raises(SpamdProtocolError, match=problem):
        parse_rule_names(body)


def test_rule_names_keep_order_and_drop_repeats() -> None:
    assert parse_rule_names(b" B_RULE, A_rule ,B_RULE\n") == ("B_RULE", "A_rule")
    assert parse_rule_names(b"  \r\n") == ()
