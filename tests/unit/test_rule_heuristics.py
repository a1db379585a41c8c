"""The rule heuristics added for rules-only accuracy: each symbol fires on its case and
stays quiet on ordinary mail (received, header_forms, mime_form, html_style, url_forms,
phrases, and the Received-relative date rules of headers)."""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import re
import time

import pytest

from mailward.checks import (
    advertising,
    headerforms,
    headers,
    htmlstyle,
    mimeform,
    phrases,
    received,
    urlforms,
)
from mailward.checks.base import Check, CheckInput, Results
from mailward.checks.mime import RESULT as MIME_RESULT
from mailward.checks.mime import MimeView
from mailward.checks.rulebase import RuleFindings
from mailward.messagefile import transaction_from_bytes
from mailward.model import Connection
from mailward.scoring import DEFAULT_WEIGHTS, ScoringSettings

NOW = time.time()
DATE = email.utils.formatdate(NOW)
RECEIVED = ("from mail.example.org (mail.example.org [81.2.69.142]) by mx.example.net "
            f"(Postfix) with ESMTPS id 4F2; {DATE}")
ORDINARY = f"""Received: {RECEIVED}
From: Alice Example <alice@example.org>
To: bob@example.net
Date: {DATE}
Message-ID: <1234@mail.example.org>
Subject: Lunch on Friday?
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

See you at noon. The minutes are at https://wiki.example.org/minutes/2026-12
""".encode()

HTML_HEAD = ("From: Shop <news@shop.example>\nTo: bob@example.net\nDate: " + DATE +
             "\nMessage-ID: <a1@shop.example>\nSubject: News\nMIME-Version: 1.0\n"
             "Content-Type: text/html; charset=utf-8\n\n")


def run(check: Check[RuleFindings], raw: bytes) -> list[str]:
    transaction = transaction_from_bytes(raw, mail_from="a@example.org",
                                         recipients=("bob@example.net",))
    results = Results().with_result(MIME_RESULT, MimeView(transaction))
    result = check.evaluate(CheckInput(Connection(client_ip=ipaddress.ip_address("192.0.2.1")),
                                       transaction, results))
    return sorted(symbol.name for symbol in check.symbols(result))


def with_header(raw: bytes, name: str, value: str | None) -> bytes:
    lines = raw.decode("utf-8", "surrogateescape").split("\n")
    kept = [line for line in lines if not line.startswith(name + ":")]
    if value is not None:
        kept.insert(0, f"{name}: {value}")
    return "\n".join(kept).encode("utf-8", "surrogateescape")


def html(body: str) -> bytes:
    return (HTML_HEAD + body).encode()


CHECKS: list[Check[RuleFindings]] = [
    received.ReceivedHeuristics(), headerforms.HeaderFormHeuristics(),
    mimeform.MimeFormHeuristics(), htmlstyle.HtmlStyleHeuristics(),
    urlforms.UrlFormHeuristics(), phrases.PhraseHeuristics(),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.name)
def test_ordinary_message_is_clean(check: Check[RuleFindings]) -> None:
    assert run(check, ORDINARY) == []


# --------------------------------------------------------------------------- dates


def header_symbols(raw: bytes) -> list[str]:
    transaction = transaction_from_bytes(raw, recipients=("bob@example.net",))
    result = headers.HeaderHeuristics(clock=lambda: NOW).evaluate(
        CheckInput(Connection(client_ip=None), transaction))
    return [symbol.name for symbol in result.symbols]


def test_date_is_judged_against_the_top_received_date_not_the_clock() -> None:
    old = "Thu, 22 Aug 2002 16:37:34 +0100"
    received_then = f"from a.example (a.example [192.0.2.9]) by mx.example.net; {old}"
    message = with_header(with_header(ORDINARY, "Received", received_then), "Date", old)
    assert header_symbols(message) == []  # old, but as old as its arrival
    received_later = received_then.replace("22 Aug 2002", "02 Sep 2002")
    assert header_symbols(with_header(message, "Received", received_later)) == ["DATE_IN_PAST"]
    received_earlier = received_then.replace("22 Aug 2002", "15 Aug 2002")
    assert header_symbols(with_header(message, "Received", received_earlier)) == [
        "DATE_IN_FUTURE"]


def test_without_a_parseable_received_date_the_clock_decides() -> None:
    old = "Thu, 22 Aug 2002 16:37:34 +0100"
    message = with_header(with_header(ORDINARY, "Received", "from x by y; not a date"),
                          "Date", old)
    assert header_symbols(message) == ["DATE_IN_PAST"]
    assert header_symbols(with_header(with_header(ORDINARY, "Received", None), "Date", old)) \
        == ["DATE_IN_PAST"]


# --------------------------------------------------------------------------- received


def received_symbols(*values: str) -> list[str]:
    chain = "".join(f"Received: {value}\n" for value in values).encode()
    return run(received.ReceivedHeuristics(), chain + with_header(ORDINARY, "Received", None))


def test_received_rules() -> None:
    assert received_symbols("from [81.2.69.160] (helo=81.2.69.160) by mx.example.net "
                            f"with esmtp; {DATE}") == ["RCVD_HELO_IP_LITERAL", "RCVD_NO_RDNS"]
    assert received_symbols(f"from 81.2.69.160 (unknown [81.2.69.160]) by mx with ESMTP; "
                            f"{DATE}") == ["RCVD_HELO_IP_LITERAL", "RCVD_NO_RDNS"]
    assert received_symbols("from desktop (adsl-81-2-69-160.dsl.example.net [81.2.69.160]) "
                            f"by mx with ESMTP; {DATE}") == ["RCVD_DYNAMIC_RDNS",
                                                             "RCVD_HELO_NO_DOT"]
    # The same shapes from private addresses, or by other protocols, are nobody's business.
    assert received_symbols(f"from desktop (unknown [10.1.2.3]) by mx with ESMTP; {DATE}") == []
    assert received_symbols(f"from [81.2.69.161] by n20.grp.example with NNFMP; {DATE}") == []
    assert received_symbols(f"from mail.example.org (mail.example.org [81.2.69.142]) by mx "
                            f"with ESMTP; {DATE}") == []
    later = email.utils.formatdate(NOW + 3 * 86400)
    assert received_symbols(f"from a.example (a.example [192.0.2.9]) by mx with ESMTP; {DATE}",
                            f"from b.example (b.example [192.0.2.8]) by a with SMTP; {later}"
                            ) == ["RCVD_OUT_OF_ORDER"]


def test_message_id_written_by_a_relay() -> None:
    relayed = with_header(ORDINARY, "Message-ID", "<200209231524.QAA15255@mx.example.net>")
    assert run(received.ReceivedHeuristics(), relayed) == ["MID_ADDED_BY_RELAY"]
    assert run(received.ReceivedHeuristics(), ORDINARY) == []  # mail.example.org is the client
    local = with_header(relayed, "Received", "from localhost (localhost [127.0.0.1]) by "
                                             f"mx.example.net (Postfix) with ESMTP; {DATE}")
    assert run(received.ReceivedHeuristics(), local) == []  # made here: ours to number


def test_freemail_from_without_its_relays_is_forged() -> None:
    forged = with_header(ORDINARY, "From", "Kim <kim@hotmail.com>")
    assert run(received.ReceivedHeuristics(), forged) == ["FORGED_FREEMAIL_RCVD"]
    relayed = with_header(forged, "Received", "from hotmail.com (bay4.hotmail.com "
                                              f"[192.0.2.44]) by mx with ESMTP; {DATE}")
    assert run(received.ReceivedHeuristics(), relayed) == []


# --------------------------------------------------------------------------- header forms


def form_symbols(raw: bytes) -> list[str]:
    return run(headerforms.HeaderFormHeuristics(), raw)


def test_recipient_rules() -> None:
    assert form_symbols(with_header(ORDINARY, "To", None)) == ["TO_MISSING"]
    assert form_symbols(with_header(ORDINARY, "To", "undisclosed-recipients:;")) == [
        "TO_UNDISCLOSED"]
    many = ", ".join(f"user{n}@example.net" for n in range(12))
    assert form_symbols(with_header(ORDINARY, "To", many)) == ["TO_MANY"]


def test_from_and_subject_rules() -> None:
    assert form_symbols(with_header(ORDINARY, "From", "kim20394@example.org")) == [
        "FROM_LOCAL_DIGITS"]
    assert form_symbols(with_header(ORDINARY, "Subject", "Re: your order")) == [
        "SUBJECT_RE_NO_THREAD"]
    threaded = with_header(with_header(ORDINARY, "Subject", "Re: your order"),
                           "In-Reply-To", "<1@example.net>")
    assert form_symbols(threaded) == []
    assert form_symbols(with_header(ORDINARY, "Subject", "Lose weight now       18374")) == [
        "SUBJECT_TRAILING_ID"]
    assert form_symbols(with_header(ORDINARY, "Subject", "Your quote QX7K2P")) == [
        "SUBJECT_TRAILING_ID"]
    assert form_symbols(with_header(ORDINARY, "Subject", "Auto warranties here hvgxs")) == [
        "SUBJECT_TRAILING_ID"]
    assert form_symbols(with_header(ORDINARY, "Subject", "Release 2.5 is out")) == []
    assert form_symbols(with_header(ORDINARY, "Subject", "Build 3f2a9c1 failed")) == []
    uuid_subject = "ordinary 6f1e0c3b9d2a4e7f8a6b5c4d3e2f1a0b"  # the integration tests'
    assert form_symbols(with_header(ORDINARY, "Subject", uuid_subject)) == []
    assert form_symbols(with_header(ORDINARY, "Subject", "bob,Hello there")) == [
        "SUBJECT_NAMES_RECIPIENT"]
    assert form_symbols(with_header(ORDINARY, "Subject", "Hello bob")) == []
    assert form_symbols(with_header(ORDINARY, "To", "alice@example.org")) == ["TO_EQ_FROM"]
    assert form_symbols(with_header(ORDINARY, "Subject", None)) == ["SUBJECT_MISSING"]
    assert form_symbols(with_header(ORDINARY, "Subject", "Gr\udce4\udcdfe")) == ["HEADER_8BIT"]
    assert form_symbols(with_header(ORDINARY, "Subject", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=")) == []


def test_mailer_priority_and_date_form_rules() -> None:
    outlook = with_header(ORDINARY, "X-Mailer", "Microsoft Outlook Express 6.00.2600.0000")
    assert form_symbols(outlook) == ["MAILER_OUTLOOK_FORGED"]
    genuine = with_header(with_header(outlook, "X-MimeOLE", "Produced By Microsoft MimeOLE V6"),
                          "Message-ID", "<000801c24a2b$1c2d3e40$0a00a8c0@pc>")
    assert form_symbols(genuine) == []
    assert form_symbols(with_header(ORDINARY, "X-Priority", "1 (Highest)")) == ["PRIORITY_HIGH"]
    assert form_symbols(with_header(ORDINARY, "X-Priority", "3 (Normal)")) == []
    assert form_symbols(with_header(ORDINARY, "Date", "22 Aug 02 16:37 EST")) == [
        "DATE_ODD_FORMAT"]
    assert form_symbols(with_header(ORDINARY, "Date", "Wed, 11 Sep 2002 09:41:51 -1900")) == [
        "DATE_ODD_FORMAT"]
    assert form_symbols(with_header(ORDINARY, "Date", "Tue, 17 Sep 0102 16:06:15 -1100")) == [
        "DATE_ODD_FORMAT"]
    assert form_symbols(with_header(ORDINARY, "Date", "Wed, 11 Sep 2002 09:41:51 +0530")) == []


def test_outlook_message_id_without_a_microsoft_mailer() -> None:
    copied = with_header(ORDINARY, "Message-ID", "<000b11a65aad$8587c2b3$3bb78ec3@ubrjup>")
    assert form_symbols(copied) == ["MID_OUTLOOK_FORM_NO_OUTLOOK"]
    written = with_header(with_header(copied, "X-Mailer", "Microsoft Outlook Express 6.00.2600"),
                          "X-MimeOLE", "Produced By Microsoft MimeOLE V6")
    assert form_symbols(written) == []


# --------------------------------------------------------------------------- MIME form


def test_mime_form_rules() -> None:
    text = base64.encodebytes(b"Buy now, it is cheap.").decode()
    encoded = ORDINARY.replace(b"Content-Type: text/plain; charset=utf-8\n",
                               b"Content-Type: text/plain; charset=utf-8\n"
                               b"Content-Transfer-Encoding: base64\n")
    encoded = encoded.split(b"\n\n")[0] + b"\n\n" + text.encode()
    assert run(mimeform.MimeFormHeuristics(), encoded) == ["MIME_TEXT_BASE64"]
    cjk = ORDINARY.replace(b"charset=utf-8", b"charset=gb2312")
    assert run(mimeform.MimeFormHeuristics(), cjk) == ["CHARSET_CJK"]
    cjk_subject = with_header(ORDINARY, "Subject", "=?big5?B?pd+kSA==?=")
    assert run(mimeform.MimeFormHeuristics(), cjk_subject) == ["CHARSET_CJK"]
    no_version = with_header(html("<p>hi</p>"), "MIME-Version", None)
    assert run(mimeform.MimeFormHeuristics(), no_version) == ["MIME_NO_VERSION"]
    stub = ("From: a@shop.example\nTo: b@example.net\nSubject: x\nMIME-Version: 1.0\n"
            "Content-Type: multipart/alternative; boundary=b\n\n--b\n"
            "Content-Type: text/plain\n\n \n--b\nContent-Type: text/html\n\n<p>"
            + "Great offer today. " * 40 + "</p>\n--b--\n").encode()
    assert run(mimeform.MimeFormHeuristics(), stub) == ["MIME_ALT_TEXT_STUB"]


# --------------------------------------------------------------------------- HTML style


def style_symbols(body: str) -> list[str]:
    return run(htmlstyle.HtmlStyleHeuristics(), html(body))


PLAIN_HTML = "<html><body><p>Minutes of the meeting are <a href='https://x.example/m'>here " \
             "in the wiki</a>.</p><p>" + "Regards, Alice. " * 30 + "</p></body></html>"


def test_plain_html_is_clean() -> None:
    assert style_symbols(PLAIN_HTML) == []


@pytest.mark.parametrize(("body", "expected"), [
    ('<body bgcolor="#FFFFFF"><font color="white">cheap pills</font>' + "x " * 200, [
        "HTML_TEXT_INVISIBLE"]),
    ('<table><tr><td bgcolor="#000000"><font color="#fff">white on black</font></td></tr>'
     '</table>' + "text " * 100, []),
    ('<font size="-3">filler words</font>' + "text " * 100, ["HTML_TINY_FONT"]),
    ('<span style="font-size: 1px">filler</span>' + "text " * 100, ["HTML_TINY_FONT"]),
    ('<font size="+4">HUGE</font>' + "text " * 100, ["HTML_BIG_FONT"]),
    ("<p>" + "<font>x</font> " * 16 + "text " * 100 + "</p>", ["HTML_FONT_HEAVY"]),
    ("<P>" + "<B>X</B> " * 10 + "text " * 100 + "</P>", ["HTML_UPPERCASE_TAGS"]),
    ("<p>v<!-- zx -->iagra " + "text " * 100 + "</p>", ["HTML_COMMENT_IN_WORD"]),
    ("<p>v<b></b>ia<i></i>gra ch<u></u>eap " + "text " * 100 + "</p>", ["HTML_TAG_IN_WORD"]),
    ("<p>" + "&#102;&#114;&#101;&#101;" * 3 + " text" * 100 + "</p>",
     ["HTML_ENTITY_OBFUSCATION"]),
    ("<p>" + "&#169; &#8364; " * 10 + " text" * 100 + "</p>", []),
    ('<p><a href="https://x.example/">Click here</a> ' + "text " * 100 + "</p>",
     ["HTML_LINK_CLICK_HERE"]),
    ('<form action="https://x.example/"><input name="card"></form>' + "text " * 100,
     ["HTML_FORM"]),
    ('<p onload="go()">' + "text " * 100 + "</p>", ["HTML_SCRIPT"]),
    ('<img src="http://x.example/offer.gif">', ["HTML_IMAGES_LITTLE_TEXT"]),
])
def test_html_style_rules(body: str, expected: list[str]) -> None:
    assert style_symbols(body) == expected


def test_html_style_is_bounded() -> None:
    huge = "<p>" + "<font color=white>x</font>" * 200_000 + "</p>"
    assert "HTML_FONT_HEAVY" in style_symbols(huge)


# --------------------------------------------------------------------------- URL forms


@pytest.mark.parametrize(("url", "expected"), [
    ("http://www.bank.example@81.2.69.160/login", {"URL_USERINFO"}),
    ("http://%77%77%77.example.test/", {"URL_OBFUSCATED_HOST"}),
    ("http://3627732462/", {"URL_OBFUSCATED_HOST"}),
    ("http://t.example/r?u=http://shop.example/", {"URL_REDIRECT"}),
    ("http://shop.example:8081/", {"URL_ODD_PORT"}),
    ("http://shop.example/remove.cgi?id=77", {"URL_UNSUBSCRIBE"}),
    ("mailto:remove@shop.example?subject=remove", {"URL_MAILTO_REMOVE"}),
    ("http://t.example/c?" + "a" * 70, {"URL_LONG_QUERY"}),
    ("https://www.example.org/docs/page.html?lang=en", set()),
    ("mailto:alice@example.org", set()),
])
def test_url_rules(url: str, expected: set[str]) -> None:
    assert urlforms.url_names(url) == expected


def test_url_forms_read_html_hrefs_and_text_urls() -> None:
    assert run(urlforms.UrlFormHeuristics(), html(
        '<a href="http://shop.example:8081/">shop</a>')) == ["URL_ODD_PORT"]
    assert run(urlforms.UrlFormHeuristics(), ORDINARY.replace(
        b"https://wiki.example.org/minutes/2026-12", b"http://a.example/unsubscribe")) == [
        "URL_UNSUBSCRIBE"]


# --------------------------------------------------------------------------- phrases


def phrase_symbols(subject: str, body: str) -> list[str]:
    raw = with_header(ORDINARY, "Subject", subject).split(b"\n\n")[0] + b"\n\n" + body.encode()
    return run(phrases.PhraseHeuristics(), raw)


def test_phrase_categories_and_their_many_grade() -> None:
    assert phrase_symbols("Hello", "Make money fast, earn $500 per week with no credit check.") \
        == ["PHRASE_MONEY", "PHRASE_MONEY_MANY"]
    assert phrase_symbols("Hello", "To be removed from our list reply.") == [
        "PHRASE_BULK_FOOTER"]
    assert phrase_symbols("Hello", "Dear Friend, I write to you") == ["PHRASE_GREETING"]
    assert phrase_symbols("Partnership", "As next of kin you receive 30% of the total sum of "
                          "US$ 25 million dollars in strictest confidence.") == [
        "ADVANCE_FEE", "ADVANCE_FEE_MANY"]
    # Word boundaries: "freedom" is no "free ...", "moneyback" spelled together no phrase.
    assert phrase_symbols("Hello", "The freedom of the press; prehistoric; clicker") == []


def test_text_style_and_subject_rules() -> None:
    assert phrase_symbols("Hello", "THE MEETING IS AT NOON " * 20) == ["BODY_CAPS_HEAVY"]
    assert phrase_symbols("Hello", "Wow!!! really") == ["BODY_EXCLAIM_MANY"]
    assert phrase_symbols("Hello", "Only $10, $20 or $30.") == ["BODY_DOLLAR_AMOUNTS"]
    assert phrase_symbols("Hello", "Ring 1-888-555-0199 today") == ["BODY_TOLL_FREE"]
    assert phrase_symbols("ADV: new catalogue", "Look") == ["SUBJECT_ADV"]
    assert phrase_symbols("Save 50% on ink", "Look") == ["SUBJECT_SPAM_PHRASE"]
    assert phrase_symbols("Advice on the release", "Look") == []


# --------------------------------------------------------------------------- advertising


def test_advertising_grades_count_the_family_cumulatively() -> None:
    assert advertising.grade_symbols(["HTML_ONLY", "PHRASE_OFFER"]) == ()
    names = ["HTML_ONLY", "PHRASE_OFFER", "URL_UNSUBSCRIBE", "MAILER_OUTLOOK_FORGED"]
    assert [s.name for s in advertising.grade_symbols(names)] == ["ADVERTISING_3"]
    many = [*(f"PHRASE_{n}" for n in ("MONEY", "OFFER", "URGENCY", "BULK_FOOTER")),
            "HTML_ONLY", "HTML_BIG_FONT", "SUBJECT_SPAM_PHRASE", "PHRASE_OFFER"]  # one twice
    assert [s.name for s in advertising.grade_symbols(many)] == ["ADVERTISING_3",
                                                                 "ADVERTISING_6"]


def test_advertising_check_reads_the_other_rule_checks_results() -> None:
    raw = html('<p><font size="+4">BIG</font> <a href="https://x.example/">Click here</a> '
               "to order now. Limited time. " + "text " * 100 + "</p>")
    transaction = transaction_from_bytes(raw, recipients=("bob@example.net",))
    results = Results().with_result(MIME_RESULT, MimeView(transaction))
    for check in (htmlstyle.HtmlStyleHeuristics(), phrases.PhraseHeuristics()):
        found = check.evaluate(CheckInput(Connection(client_ip=None), transaction, results))
        results = results.with_result(check.produces, found)
    graded = advertising.AdvertisingGrade().evaluate(
        CheckInput(Connection(client_ip=None), transaction, results))
    # HTML_BIG_FONT, HTML_LINK_CLICK_HERE, PHRASE_CALL_TO_ACTION, PHRASE_OFFER, PHRASE_URGENCY
    assert [s.name for s in graded.symbols] == ["ADVERTISING_3"]
    empty = advertising.AdvertisingGrade().evaluate(
        CheckInput(Connection(client_ip=None), transaction, Results()))
    assert empty.symbols == ()


def test_advertising_alone_stays_under_required_with_the_shipped_weights() -> None:
    settings = ScoringSettings()
    family = [name for name in DEFAULT_WEIGHTS if advertising.in_family(name)]
    assert family and all(DEFAULT_WEIGHTS[name] == 0.0 for name in family)
    grades = sum(DEFAULT_WEIGHTS[name] for name in advertising.GRADE_SYMBOLS)
    assert 0.0 < grades < settings.required


def test_phrase_prefilter_never_hides_a_match() -> None:
    text = phrases.normalise(
        "Reduce your monthly payments! Millions of dollars, 50% off, reply here to be "
        "removed, USD 500, 2.5 million US dollars, deceased client, 30% for you, "
        "don't wait, pre-approved, opt-in list, 100% free, you've been selected")
    unfiltered: dict[str, int] = {}
    for phrase in phrases._PHRASES:
        if re.search(rf"(?<!\w)(?:{phrase.pattern.pattern})", text):
            unfiltered[phrase.category] = unfiltered.get(phrase.category, 0) + 1
    assert phrases.phrase_counts(text) == unfiltered
    assert sum(unfiltered.values()) >= 12


def connection_received_symbols(raw: bytes, connection: Connection) -> list[str]:
    transaction = transaction_from_bytes(raw, recipients=("bob@example.net",))
    check = received.ReceivedHeuristics(own_name="mx.example.net")
    return sorted(s.name for s in check.evaluate(CheckInput(connection, transaction)).symbols)


def test_the_hop_into_us_comes_from_the_connection() -> None:
    # Postfix hands the milter no Received line of its own: the client is the last hop.
    bot = Connection(client_ip=ipaddress.ip_address("81.2.69.160"), client_name="unknown",
                     helo="[81.2.69.160]")
    no_received = with_header(ORDINARY, "Received", None)
    assert connection_received_symbols(no_received, bot) == ["RCVD_HELO_IP_LITERAL",
                                                             "RCVD_NO_RDNS"]
    server = Connection(client_ip=ipaddress.ip_address("81.2.69.142"),
                        client_name="mail.example.org", helo="mail.example.org")
    assert connection_received_symbols(no_received, server) == []
    # The header chain below the connection is not judged as the last hop any more.
    forged_below = with_header(ORDINARY, "Received", f"from [81.2.69.9] by x with SMTP; {DATE}")
    assert connection_received_symbols(forged_below, server) == []
    # A Message-ID in our own name was added on our side.
    ours = with_header(no_received, "Message-ID", "<20261203.AB12@mx.example.net>")
    assert connection_received_symbols(ours, server) == ["MID_ADDED_BY_RELAY"]
