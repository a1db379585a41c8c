"""Putting mail into the stack: smtplib with XCLIENT, or swaks.

Mail enters Postfix on loopback, but Mailward must see the client a real MX would see:
`XCLIENT ADDR=192.0.2.10 NAME=mail.example.org` makes Postfix (and so the milter and the
policy service) treat the session as coming from that address.  Postfix only honours it
from `smtpd_authorized_xclient_hosts`, which the harness sets to loopback.

`send_smtp` returns the reply to every stage instead of raising, because the tests are
about replies: 550 at end-of-DATA for a DMARC reject, 451 when DNS is down, 450 for
greylisting at RCPT.
"""

from __future__ import annotations

import email.utils
import smtplib
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: A reply: (code, text).  Code 0 means the stage was not reached.
Reply = tuple[int, str]

NOT_REACHED: Reply = (0, "")


def xtext(value: str) -> str:
    """Encode an XCLIENT attribute value (RFC 3461 xtext: "+XX" for specials and spaces)."""
    out = []
    for char in value:
        code = ord(char)
        if code < 33 or code > 126 or char in "+=":
            out.append(f"+{code:02X}")
        else:
            out.append(char)
    return "".join(out)


def build_message(
    mail_from: str,
    rcpt: str | Sequence[str],
    subject: str = "Test message",
    body: str = "Hello from the Mailward integration tests.\r\n",
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    message_id: str | None = None,
) -> bytes:
    """A minimal RFC 5322 message with CRLF line ends.

    Extra `headers` come after the standard ones, in order; pass a sequence of pairs to
    repeat a header (e.g. two Authentication-Results).  A header named in `headers`
    replaces the default one of that name (From, To, Subject, Date, Message-ID).
    """
    recipients = [rcpt] if isinstance(rcpt, str) else list(rcpt)
    extra = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    overridden = {name.lower() for name, _ in extra}
    domain = mail_from.rpartition("@")[2] or "example.org"
    standard = [
        ("From", mail_from),
        ("To", ", ".join(recipients)),
        ("Subject", subject),
        ("Date", email.utils.formatdate(localtime=False)),
        ("Message-ID", message_id or f"<{uuid.uuid4().hex}@{domain}>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ]
    lines = [f"{name}: {value}" for name, value in standard if name.lower() not in overridden]
    lines += [f"{name}: {value}" for name, value in extra]
    text = "\r\n".join(lines) + "\r\n\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")
    return text.encode()


@dataclass
class SmtpResult:
    """The server's reply at each stage of one SMTP transaction.

    `final` is the reply that decided the outcome: end-of-DATA if DATA was reached,
    else the first failing reply.  `accepted` is True only for 250 at end-of-DATA.
    """

    banner: Reply = NOT_REACHED
    ehlo: Reply = NOT_REACHED
    xclient: Reply = NOT_REACHED
    auth: Reply = NOT_REACHED
    mail: Reply = NOT_REACHED
    rcpt: dict[str, Reply] = field(default_factory=dict)
    data: Reply = NOT_REACHED
    final: Reply = NOT_REACHED

    @property
    def code(self) -> int:
        return self.final[0]

    @property
    def accepted(self) -> bool:
        return self.data[0] == 250

    @property
    def queue_id(self) -> str | None:
        """Postfix's queue id from "250 2.0.0 Ok: queued as 4Xyz..." (None otherwise)."""
        marker = "queued as "
        text = self.data[1]
        return text.split(marker, 1)[1].split()[0] if marker in text else None


def _as_bytes(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def _reply(pair: tuple[int, bytes]) -> Reply:
    code, text = pair
    return code, text.decode(errors="replace")


def send_smtp(
    port: int,
    mail_from: str,
    rcpt: str | Sequence[str],
    message: bytes | str | None = None,
    *,
    host: str = "127.0.0.1",
    helo: str = "client.example.org",
    xclient_addr: str | None = None,
    xclient_name: str | None = None,
    xclient: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 30.0,
) -> SmtpResult:
    """Run one SMTP transaction and report every reply; never raises on 4xx/5xx.

    XCLIENT happens right after the first EHLO when `xclient_addr`, `xclient_name` or
    `xclient` (any attributes: HELO, PROTO, LOGIN, PORT, ...) is given; `helo` is then
    sent again, as the EHLO of the impersonated client (Postfix resets the session on
    XCLIENT).  `xclient_name` defaults to "[UNAVAILABLE]" so Postfix does no reverse
    lookup.  `auth=(user, password)` authenticates (SMTP AUTH) before MAIL FROM.
    `message` defaults to `build_message(mail_from, rcpt)`.
    """
    recipients = [rcpt] if isinstance(rcpt, str) else list(rcpt)
    if message is None:
        message = build_message(mail_from, recipients)
    data = message.encode() if isinstance(message, str) else message
    result = SmtpResult()
    client = smtplib.SMTP(timeout=timeout, local_hostname=helo)
    try:
        result.banner = _reply(client.connect(host, port))
        result.ehlo = result.final = _reply(client.ehlo(helo))
        if result.ehlo[0] != 250:
            return result
        attributes: dict[str, str] = {}
        if xclient_addr is not None:
            attributes["ADDR"] = xclient_addr
            attributes["NAME"] = xclient_name if xclient_name is not None else "[UNAVAILABLE]"
        elif xclient_name is not None:
            attributes["NAME"] = xclient_name
        attributes.update(xclient or {})
        if attributes:
            if not client.has_extn("xclient"):
                raise RuntimeError("the server does not offer XCLIENT to this client")
            argument = " ".join(f"{key}={xtext(value)}" for key, value in attributes.items())
            result.xclient = result.final = _reply(client.docmd("XCLIENT", argument))
            if result.xclient[0] != 220:
                return result
            result.ehlo = result.final = _reply(client.ehlo(helo))
            if result.ehlo[0] != 250:
                return result
        if auth is not None:
            try:
                result.auth = result.final = _reply(client.login(*auth))
            except smtplib.SMTPAuthenticationError as exc:
                result.auth = result.final = _reply((exc.smtp_code, _as_bytes(exc.smtp_error)))
                return result
        result.mail = result.final = _reply(client.mail(mail_from))
        if result.mail[0] != 250:
            return result
        for address in recipients:
            result.rcpt[address] = _reply(client.rcpt(address))
        accepted = [reply for reply in result.rcpt.values() if reply[0] in (250, 251)]
        if not accepted:
            result.final = next(iter(result.rcpt.values()))
            return result
        try:
            result.data = result.final = _reply(client.data(data))
        except smtplib.SMTPDataError as exc:  # the DATA command itself was refused
            result.data = result.final = _reply((exc.smtp_code, _as_bytes(exc.smtp_error)))
        return result
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


@dataclass
class SwaksResult:
    """swaks' exit status (0 = delivered; see `man swaks`, EXIT CODES) and its transcript."""

    exit_code: int
    transcript: str


def send_with_swaks(
    port: int,
    mail_from: str,
    rcpt: str | Sequence[str],
    *,
    data: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
    helo: str = "client.example.org",
    xclient_addr: str | None = None,
    xclient_name: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 60.0,
) -> SwaksResult:
    """Send with swaks, the tool an admin would use by hand; returns (exit code, transcript).

    `data` is a complete message (headers and body); otherwise swaks builds one and
    `headers`/`body` are added to it.
    """
    recipients = [rcpt] if isinstance(rcpt, str) else list(rcpt)
    argv = [
        "swaks", "--server", host, "--port", str(port), "--from", mail_from,
        "--to", ",".join(recipients), "--helo", helo, "--timeout", "30",
    ]
    if xclient_addr is not None:
        argv += ["--xclient-addr", xclient_addr,
                 "--xclient-name", xclient_name if xclient_name is not None else "[UNAVAILABLE]"]
    elif xclient_name is not None:
        argv += ["--xclient-name", xclient_name]
    stdin: str | None = None
    if data is not None:
        argv += ["--data", "-"]
        stdin = data.decode() if isinstance(data, bytes) else data
    else:
        for name, value in (headers or {}).items():
            argv += ["--header", f"{name}: {value}"]
        if body is not None:
            argv += ["--body", body]
    completed = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    return SwaksResult(completed.returncode, completed.stdout + completed.stderr)
