"""Authentication-Results: reading the authserv-id, finding forgeries, formatting ours."""

from __future__ import annotations

import re

import authres as authres_lib
import pytest

from mailward.authresults import HEADER_NAME, authserv_id_of, forged_headers, format_header
from mailward.model import AuthProperty, AuthResult, Header, RemoveHeader

OURS = "mx.example.net"


# --------------------------------------------------------------------------- authserv_id_of


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mx.example.net; spf=pass smtp.mailfrom=example.com", OURS),
        ("mx.example.net;spf=pass", OURS),
        ("MX.Example.NET; dkim=pass", OURS),
        ("  mx.example.net ; none", OURS),
        # folded: CRLF + tab, LF + spaces, folding before the id
        ("mx.example.net;\r\n\tspf=pass", OURS),
        ("\r\n\tmx.example.net;\r\n\tspf=pass", OURS),
        ("\n   mx.example.net\n    ; dmarc=pass", OURS),
        # comments, nested comments, escaped parentheses inside a comment
        ("(forged by nobody) mx.example.net; dmarc=pass", OURS),
        ("(a (nested (deeply)) comment) mx.example.net; dmarc=pass", OURS),
        ("(one)(two)\r\n\t(three) mx.example.net; spf=pass", OURS),
        (r"(with \) escaped paren) mx.example.net; spf=pass", OURS),
        ("mx.example.net(comment right after); spf=pass", OURS),
        # version form, quoted id
        ("mx.example.net 1; spf=pass", OURS),
        ("mx.example.net 1 ; spf=pass", OURS),
        ('"mx.example.net"; spf=pass', OURS),
        ('(c) "MX.example.net" 1; spf=pass', OURS),
        # no semicolon at all
        ("mx.example.net none", OURS),
        ("mx.example.net", OURS),
        # other ids are read as they are
        ("mx.example.net.evil.com; dmarc=pass", "mx.example.net.evil.com"),
        ("evil-mx.example.net; dmarc=pass", "evil-mx.example.net"),
        ("other.example.org; none", "other.example.org"),
        # nothing usable
        ("", None),
        ("   \r\n\t ", None),
        ("; spf=pass", None),
        ("(only a comment)", None),
        ("(unclosed comment mx.example.net; spf=pass", None),
        ('"unterminated; spf=pass', None),
        ('""; spf=pass', None),
        ("()", None),
    ],
)
def test_authserv_id_of(value: str, expected: str | None):
    assert authserv_id_of(value) == expected


# --------------------------------------------------------------------------- forged_headers

MESSAGE_HEADERS = (
    Header("Received", "from mail.example.org by mx.example.net; Mon, 1 Jan 2024"),
    Header("Authentication-Results", "mx.example.net; dmarc=pass header.from=bank.example"),  # 1
    Header("authentication-results", "other.example.org; spf=pass"),  # 2
    Header("AUTHENTICATION-RESULTS", "MX.EXAMPLE.NET;\r\n\tdkim=pass header.d=bank.example"),  # 3
    Header("Subject", "mx.example.net; dmarc=pass"),
    Header("Authentication-Results", "mx.example.net.evil.com; dmarc=pass"),  # 4
    Header("Authentication-Results", "evil-mx.example.net; dmarc=pass"),  # 5
    Header("Authentication-Results", "(trust me) mx.example.net; spf=pass"),  # 6
    Header("X-Authentication-Results", "mx.example.net; spf=pass"),
    Header("Authentication-Results-Original", "mx.example.net; spf=pass"),
    Header("Authentication-Results", "\r\n\tmx.example.net 1;\r\n\tarc=pass"),  # 7
    Header("Authentication-Results", "example.net; dmarc=pass"),  # 8
    Header("Authentication-Results", '"mx.example.net"; dmarc=pass'),  # 9
)


def apply_removals(headers: tuple[Header, ...], edits: tuple[RemoveHeader, ...]) -> list[Header]:
    """Apply removals one after the other, as the MTA does with change-header commands."""
    remaining = list(headers)
    for edit in edits:
        seen = 0
        for position, header in enumerate(remaining):
            if header.name.lower() == edit.name.lower():
                seen += 1
                if seen == edit.occurrence:
                    del remaining[position]
                    break
        else:
            raise AssertionError(f"no occurrence {edit.occurrence} of {edit.name}")
    return remaining


def test_forged_headers_occurrences_last_first():
    edits = forged_headers(MESSAGE_HEADERS, OURS)
    assert edits == (
        RemoveHeader(HEADER_NAME, 9),
        RemoveHeader(HEADER_NAME, 7),
        RemoveHeader(HEADER_NAME, 6),
        RemoveHeader(HEADER_NAME, 3),
        RemoveHeader(HEADER_NAME, 1),
    )


def test_forged_headers_applied_in_order_remove_exactly_ours():
    remaining = apply_removals(MESSAGE_HEADERS, forged_headers(MESSAGE_HEADERS, OURS))
    kept_ar = [h.value for h in remaining if h.name.lower() == "authentication-results"]
    assert kept_ar == [
        "other.example.org; spf=pass",
        "mx.example.net.evil.com; dmarc=pass",
        "evil-mx.example.net; dmarc=pass",
        "example.net; dmarc=pass",
    ]
    assert len(remaining) == len(MESSAGE_HEADERS) - 5
    assert Header("Subject", "mx.example.net; dmarc=pass") in remaining
    assert Header("X-Authentication-Results", "mx.example.net; spf=pass") in remaining


def test_forged_headers_our_id_in_any_case():
    assert forged_headers(MESSAGE_HEADERS, "MX.Example.Net") == forged_headers(
        MESSAGE_HEADERS, OURS
    )


def test_forged_headers_none_to_remove():
    assert forged_headers((), OURS) == ()
    assert forged_headers(
        (Header("Authentication-Results", "other.example.org; spf=pass"),
         Header("Received", "by mx.example.net")),
        OURS,
    ) == ()


def test_forged_headers_single():
    assert forged_headers(
        (Header("Subject", "x"), Header("Authentication-Results", "mx.example.net; none")), OURS
    ) == (RemoveHeader(HEADER_NAME, 1),)


# --------------------------------------------------------------------------- format_header

SPF_PASS = AuthResult(
    "spf", "pass", properties=(AuthProperty("smtp", "mailfrom", "user@example.com"),)
)

GOLDEN: list[tuple[list[AuthResult], str]] = [
    ([], "mx.example.net; none"),
    ([SPF_PASS], "mx.example.net;\n\tspf=pass smtp.mailfrom=user@example.com"),
    (
        [
            SPF_PASS,
            AuthResult("dkim", "pass", properties=(
                AuthProperty("header", "d", "example.com"),
                AuthProperty("header", "s", "s2026r"),
                AuthProperty("header", "b", "AbC/+dE="),
            )),
            AuthResult(
                "dmarc", "pass", properties=(AuthProperty("header", "from", "example.com"),)
            ),
        ],
        "mx.example.net;\n\tspf=pass smtp.mailfrom=user@example.com;"
        "\n\tdkim=pass header.d=example.com header.s=s2026r header.b=AbC/+dE=;"
        "\n\tdmarc=pass header.from=example.com",
    ),
    (
        [AuthResult("dmarc", "fail", reason="p=reject policy",
                    properties=(AuthProperty("header", "from", "bank.example"),))],
        'mx.example.net;\n\tdmarc=fail reason="p=reject policy" header.from=bank.example',
    ),
    (
        [AuthResult("dkim", "temperror", reason="no key; selector s1")],
        'mx.example.net;\n\tdkim=temperror reason="no key; selector s1"',
    ),
    (
        [AuthResult("spf", "softfail", reason="ok")],
        "mx.example.net;\n\tspf=softfail reason=ok",
    ),
    (
        # "/" "@" "=" are tspecials: a reason containing them must be quoted (RFC 8601 2.2).
        [AuthResult("dkim", "fail", reason="sha256/rsa"),
         AuthResult("spf", "neutral", reason="a=b"),
         AuthResult("iprev", "fail", reason="user@host")],
        'mx.example.net;\n\tdkim=fail reason="sha256/rsa";\n\tspf=neutral reason="a=b";'
        '\n\tiprev=fail reason="user@host"',
    ),
    (
        [AuthResult("dkim", "fail", reason='say "hi" \\ now',
                    properties=(AuthProperty("header", "b", 'a"b\\c'),))],
        'mx.example.net;\n\tdkim=fail reason="say \\"hi\\" \\\\ now" header.b="a\\"b\\\\c"',
    ),
    # authres (1.2) reads a quoted pvalue only as the last one of its resinfo (it drops
    # `a.b="x" c.d=y` silently), so the cases it checks keep quoted values last.
    (
        [AuthResult("spf", "none", properties=(AuthProperty("smtp", "mailfrom", ""),)),
         AuthResult("spf", "pass", properties=(
             AuthProperty("smtp", "mailfrom", "user@example.com"),
             AuthProperty("smtp", "helo", "odd name; really"),
         ))],
        'mx.example.net;\n\tspf=none smtp.mailfrom="";'
        '\n\tspf=pass smtp.mailfrom=user@example.com smtp.helo="odd name; really"',
    ),
    (
        [AuthResult("iprev", "pass", properties=(AuthProperty("policy", "iprev", "192.0.2.1"),)),
         AuthResult("arc", "none")],
        "mx.example.net;\n\tiprev=pass policy.iprev=192.0.2.1;\n\tarc=none",
    ),
]


@pytest.mark.parametrize(("results", "expected"), GOLDEN)
def test_format_header_golden(results: list[AuthResult], expected: str):
    assert format_header(OURS, results) == expected


def _unescape(text: str | None) -> str | None:
    # authres returns quoted-strings with their quoted-pairs still escaped.
    return None if text is None else re.sub(r"\\(.)", r"\1", text)


Parsed = tuple[str, str, str | None, list[tuple[str, str, str | None]]]


def _parsed(value: str) -> tuple[str, list[Parsed]]:
    header = authres_lib.AuthenticationResultsHeader.parse_value(value)
    return header.authserv_id, [
        (
            result.method,
            result.result,
            _unescape(result.reason),
            [(prop.type, prop.name, _unescape(prop.value)) for prop in result.properties],
        )
        for result in header.results
    ]


@pytest.mark.parametrize(("results", "expected"), GOLDEN)
def test_format_header_parses_with_authres(results: list[AuthResult], expected: str):
    authserv_id, parsed = _parsed(format_header(OURS, results))
    assert authserv_id == OURS
    assert parsed == [
        (r.method, r.result, r.reason, [(p.ptype, p.name, p.value) for p in r.properties])
        for r in results
    ]


def test_format_header_newlines_in_a_reason_become_spaces():
    value = format_header(OURS, [AuthResult("spf", "none", reason="line1\r\nline2\n")])
    assert value == 'mx.example.net;\n\tspf=none reason="line1 line2 "'
    assert _parsed(value)[1] == [("spf", "none", "line1 line2 ", [])]


def test_our_header_is_recognised_as_ours():
    value = format_header(OURS, [SPF_PASS])
    assert authserv_id_of(value) == OURS
    assert forged_headers([Header(HEADER_NAME, value)], OURS) == (RemoveHeader(HEADER_NAME, 1),)
