"""Fuzzing the rule heuristics: any message bytes give symbols, never an exception, and
every symbol is a name scoring knows (bounded names, each with a shipped weight)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.rules_accuracy import RULE_CHECKS
from mailward.checks.base import CheckInput, Results
from mailward.checks.registry import build_checks
from mailward.config import settings_from_mapping
from mailward.dns import InMemoryResolver
from mailward.messagefile import transaction_from_bytes
from mailward.model import Connection
from mailward.scoring import DEFAULT_WEIGHTS

FUZZ = settings(max_examples=200, deadline=None)
CHECKS = [check for check in build_checks(settings_from_mapping({"scoring": {"enabled": True}}),
                                          InMemoryResolver())
          if check.name in RULE_CHECKS]

_LINES = st.sampled_from([
    b"Received: from x ([81.2.69.1]) by y with SMTP; Thu, 22 Aug 2002 16:37:34 +0100",
    b"Received: from unknown (HELO 1.2.3.4) (81.2.69.2) by y; not a date",
    b"Received: from [81.2.69.3] (helo=a) by mx", b"Received: ; 99 Foo 9999 99:99:99 +9999",
    b"Message-ID: <000b11a65aad$8587c2b3$3bb78ec3@ubrjup>", b"Message-ID: <@>",
    b"X-Mailer: Microsoft Outlook Express 6.00", b"X-Priority: 1", b"To: undisclosed:;",
    b"From: 12345@[1.2.3.4]", b"From: \"a@b.c\" <d@e>", b"Subject: Re: ADV      x1y2z3",
    b"Subject: =?gb2312?B?////?=", b"Date: Tue, 17 Sep 0102 16:06:15 -1900",
    b"Content-Type: text/html; charset=\"big5\"", b"Content-Transfer-Encoding: base64",
    b"Content-Type: multipart/alternative; boundary=b", b"--b", b"", b" folded",
    b"<font color=white size=-4>v<!--x-->iagra</font>", b"<a href=\"http://a@[::1\">here</a>",
    b"<a href='http://%77.example:99999/?u=http://x'>click here</a>", b"&#102;&#x72;&#99999999;",
    b"mailto:remove@x?subject=remove", b"$10 $20 $30 1-800-555-0199 !!!", b"next of kin",
    b"\xff\xfe\x00", b"<form><input><script>",
])
_MESSAGE = st.one_of(
    st.binary(max_size=1024),
    st.lists(st.one_of(_LINES, st.binary(max_size=12)), max_size=60).map(b"\r\n".join),
)


@FUZZ
@given(_MESSAGE)
def test_any_message_gives_known_symbols(raw: bytes) -> None:
    transaction = transaction_from_bytes(raw, recipients=("bob@example.net",))
    results = Results()
    for check in CHECKS:
        check_input = CheckInput(Connection(client_ip=None), transaction, results)
        result = check.evaluate(check_input)
        results = results.with_result(check.produces, result)
        for symbol in check.symbols(result):
            assert symbol.name in DEFAULT_WEIGHTS, symbol.name
