"""Handing a report to the local MTA: SMTP on loopback, never a shell.

Mail submitted from 127.0.0.1 is outbound for the milter (trusted network), so the
local Postfix's milter DKIM-signs the report like any other mail of the sender domain.
A 4xx answer or a connection problem is temporary (retry later); 5xx is final for that
recipient.
"""

from __future__ import annotations

import smtplib
from typing import Protocol


class TransportError(Exception):
    def __init__(self, message: str, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


class Transport(Protocol):
    def send(self, sender: str, recipient: str, message: bytes) -> None: ...


class SmtpTransport:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout,
                              local_hostname="localhost") as smtp:
                smtp.sendmail(sender, [recipient], message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            raise TransportError(f"{code} {text!r}", temporary=code < 500) from exc
        except smtplib.SMTPResponseException as exc:
            raise TransportError(f"{exc.smtp_code} {exc.smtp_error!r}",
                                 temporary=exc.smtp_code < 500) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransportError(f"{self.host}:{self.port}: {exc}", temporary=True) from exc
