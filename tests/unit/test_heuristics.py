"""Header and content heuristics: each rule fires on its case and stays quiet on ordinary mail."""

from __future__ import annotations

import base64
import email.utils
import io
import ipaddress
import time
import zipfile

from mailward.checks import content, headers
from mailward.checks.base import CheckInput, Results
from mailward.checks.mime import RESULT as MIME_RESULT
from mailward.checks.mime import MimeView
from mailward.messagefile import transaction_from_bytes
from mailward.model import Connection

NOW = time.time()
DATE = email.utils.formatdate(NOW)
ORDINARY = f"""From: Alice Example <alice@example.org>
To: bob@example.net
Date: {DATE}
Message-ID: <1234@mail.example.org>
Subject: Lunch on Friday?
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

See you at noon.
""".encode()


def header_symbols(raw: bytes) -> list[str]:
    transaction = transaction_from_bytes(raw, mail_from="a@example.org",
                                         recipients=("bob@example.net",))
    result = headers.HeaderHeuristics(clock=lambda: NOW).evaluate(
        CheckInput(Connection(client_ip=ipaddress.ip_address("192.0.2.1")), transaction))
    return [symbol.name for symbol in result.symbols]


def content_symbols(raw: bytes) -> list[str]:
    transaction = transaction_from_bytes(raw)
    results = Results().with_result(MIME_RESULT, MimeView(transaction))
    result = content.ContentHeuristics().evaluate(
        CheckInput(Connection(client_ip=None), transaction, results))
    return [symbol.name for symbol in result.symbols]


def replace_header(raw: bytes, name: bytes, value: bytes | None) -> bytes:
    lines = [line for line in raw.split(b"\n") if not line.startswith(name + b":")]
    if value is not None:
        lines.insert(0, name + b": " + value)
    return b"\n".join(lines)


def test_ordinary_message_is_clean() -> None:
    assert header_symbols(ORDINARY) == []
    assert content_symbols(ORDINARY) == []


def test_date_rules() -> None:
    assert header_symbols(replace_header(ORDINARY, b"Date", None)) == ["MISSING_DATE"]
    assert header_symbols(replace_header(ORDINARY, b"Date", b"yesterday-ish")) == [
        "INVALID_DATE"]
    future = email.utils.formatdate(NOW + 3 * 86400).encode()
    assert header_symbols(replace_header(ORDINARY, b"Date", future)) == ["DATE_IN_FUTURE"]
    past = email.utils.formatdate(NOW - 30 * 86400).encode()
    assert header_symbols(replace_header(ORDINARY, b"Date", past)) == ["DATE_IN_PAST"]


def test_message_id_rules() -> None:
    assert header_symbols(replace_header(ORDINARY, b"Message-ID", None)) == ["MISSING_MID"]
    assert header_symbols(replace_header(ORDINARY, b"Message-ID", b"no-brackets")) == [
        "INVALID_MID"]


def test_display_name_rules() -> None:
    phish = replace_header(ORDINARY, b"From", b'"service@paypal.com" <x@evil.test>')
    assert header_symbols(phish) == ["FROM_NAME_OTHER_DOMAIN"]
    same = replace_header(ORDINARY, b"From", b'"news.example.org" <n@mail.example.org>')
    assert header_symbols(same) == []
    local = replace_header(ORDINARY, b"From", b'"Helpdesk example.net" <it@evil.test>')
    assert "FROM_NAME_LOCAL_DOMAIN" in header_symbols(local)


def test_reply_to_freemail_rule() -> None:
    raw = replace_header(ORDINARY, b"Reply-To", b"claims@gmail.com")
    assert header_symbols(raw) == ["REPLYTO_FREEMAIL"]
    own = replace_header(ORDINARY.replace(b"alice@example.org", b"alice@gmail.com"),
                         b"Reply-To", b"alice@gmail.com")
    assert header_symbols(own) == []


def test_subject_rules() -> None:
    assert header_symbols(replace_header(ORDINARY, b"Subject", b"FREE MONEY FOR YOU NOW")) == [
        "SUBJECT_ALL_CAPS"]
    assert header_symbols(replace_header(ORDINARY, b"Subject", b"Act now!!!")) == [
        "SUBJECT_EXCESS_PUNCT"]


def html_message(html: str, extra_parts: bytes = b"") -> bytes:
    return (b"From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; "
            b"boundary=b\n\n--b\nContent-Type: text/html\n\n" + html.encode() + b"\n"
            + extra_parts + b"--b--\n")


def test_html_rules() -> None:
    assert content_symbols(html_message("<p>" + "hello " * 60 + "</p>")) == ["HTML_ONLY"]
    hidden = content_symbols(html_message('<p>hi</p><div style="display: none">buy</div>'))
    assert "HTML_HIDDEN_TEXT" in hidden
    mismatch = content_symbols(html_message(
        '<a href="http://login.evil.test/x">www.bank.example</a>'))
    assert "LINK_TEXT_MISMATCH" in mismatch
    same = content_symbols(html_message(
        '<a href="https://www.bank.example/login">bank.example</a>'))
    assert "LINK_TEXT_MISMATCH" not in same
    assert "URL_IP_LITERAL" in content_symbols(html_message(
        '<a href="http://192.0.2.7/pay">click</a>'))


def attachment(name: str, data: bytes, content_type: str = "application/octet-stream") -> bytes:
    return (f'--b\nContent-Type: {content_type}; name="{name}"\nContent-Disposition: '
            f'attachment; filename="{name}"\nContent-Transfer-Encoding: base64\n\n').encode() + (
        base64.encodebytes(data))


def test_attachment_rules() -> None:
    exe = content_symbols(html_message("<p>see attached</p>",
                                       attachment("invoice.pdf.exe", b"MZ\x90\x00rest")))
    assert {"ATTACH_EXECUTABLE", "ATTACH_DOUBLE_EXT"} <= set(exe)
    assert "ATTACH_OFFICE_MACRO" in content_symbols(html_message(
        "<p>x</p>", attachment("report.xlsm", b"PK\x03\x04whatever")))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("readme.txt", "hello")
        zipped.writestr("setup.scr", b"MZ" + b"\x00" * 100)
    assert "ATTACH_ARCHIVE_EXECUTABLE" in content_symbols(html_message(
        "<p>x</p>", attachment("files.zip", archive.getvalue(), "application/zip")))
    harmless = io.BytesIO()
    with zipfile.ZipFile(harmless, "w") as zipped:
        zipped.writestr("notes.txt", "hello")
    assert content_symbols(html_message("<p>x</p>", attachment(
        "notes.zip", harmless.getvalue(), "application/zip"))) == ["HTML_ONLY"]


def test_images_with_little_text() -> None:
    image = attachment("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "image/png")
    assert "MOSTLY_IMAGES" in content_symbols(html_message("<img src='cid:a'>", image))


def test_a_million_links_are_bounded() -> None:
    html = '<a href="http://a.example/">a.example</a>' * 20_000
    assert content.links(html)[:1] == [("http://a.example/", "a.example")]
    assert len(content.links(html)) == content.MAX_LINKS
