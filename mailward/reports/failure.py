"""DMARC failure reports (RFC 9991, in the AFRF format of RFC 6591 / RFC 5965), pure.

`wanted` decides whether one message gets a report: a DMARC failure, a policy that
names `ruf=` destinations, not a public-suffix policy (`psd=y`: such reports would leak
a whole organisation's mail to a registry), and the domain's `fo=` options (RFC 9991
3.2: `0` all mechanisms failed to give an aligned pass, `1` any did, `d` a DKIM
signature failed, `s` SPF failed).  `failure_report` builds the message: a human part,
the machine-readable `message/feedback-report`, and the original header (never the
body).  Local parts of addresses are redacted by default (RFC 6590).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP

from mailward import __version__
from mailward.checks.dkim import DkimOutcome, DkimResult
from mailward.checks.dmarc import DmarcOutcome, DmarcResult
from mailward.checks.spf import SpfOutcome, SpfResult
from mailward.model import Header
from mailward.orgdomain import split_tags

REDACTED = "redacted"
_ADDRESS = re.compile(r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\"]+)@([A-Za-z0-9.\-\[\]:]+)")


@dataclass(frozen=True)
class FailedMessage:
    """What a failure report says about one message."""

    client_ip: str
    mail_from: str
    recipients: tuple[str, ...]
    headers: tuple[Header, ...]
    arrival: float
    dmarc: DmarcOutcome
    spf: SpfOutcome | None
    dkim: tuple[DkimOutcome, ...]
    authentication_results: str  # our A-R value, as added to the message


def failure_options(dmarc: DmarcOutcome) -> frozenset[str]:
    """The record's `fo=` options (default `0`)."""
    text = dmarc.record.text if dmarc.record is not None else ""
    value = split_tags(text).first("fo") or "0"
    options = frozenset(part.strip() for part in value.split(":") if part.strip())
    return options & {"0", "1", "d", "s"} or frozenset({"0"})


def wanted(dmarc: DmarcOutcome, spf: SpfOutcome | None, dkim: Sequence[DkimOutcome]) -> bool:
    record = dmarc.record
    if dmarc.result is not DmarcResult.FAIL or record is None or not record.ruf:
        return False
    if record.psd == "y":
        return False
    options = failure_options(dmarc)
    spf_aligned, dkim_aligned = dmarc.spf_aligned, dmarc.dkim_aligned
    if "0" in options and not spf_aligned and not dkim_aligned:
        return True
    if "1" in options and (not spf_aligned or not dkim_aligned):
        return True
    if "d" in options and any(d.result is not DkimResult.PASS for d in dkim):
        return True
    return "s" in options and spf is not None and spf.result is not SpfResult.PASS


def redact(text: str) -> str:
    """Every local part in `text` replaced (RFC 6590): the domain stays reportable."""
    return _ADDRESS.sub(lambda match: f"{REDACTED}@{match.group(2)}", text)


def _alignment(dmarc: DmarcOutcome) -> str:
    aligned = [name for name, ok in (("dkim", dmarc.dkim_aligned), ("spf", dmarc.spf_aligned))
               if ok]
    return ",".join(aligned) or "none"


def failure_report(failed: FailedMessage, reporter_address: str, to: str,
                   redact_local_parts: bool = True) -> bytes:
    """The AFRF message for one failed message, ready for SMTP."""
    hide = redact if redact_local_parts else (lambda text: text)
    domain = failed.dmarc.from_domain
    fields = [
        ("Feedback-Type", "auth-failure"),
        ("User-Agent", f"Mailward/{__version__}"),
        ("Version", "1"),
        ("Original-Mail-From", f"<{hide(failed.mail_from)}>"),
        *[("Original-Rcpt-To", f"<{hide(rcpt)}>") for rcpt in failed.recipients[:10]],
        ("Arrival-Date", email.utils.formatdate(failed.arrival, usegmt=True)),
        ("Source-IP", failed.client_ip),
        ("Reported-Domain", domain),
        ("Auth-Failure", "dmarc"),
        ("Identity-Alignment", _alignment(failed.dmarc)),
        ("Authentication-Results", " ".join(failed.authentication_results.split())),
    ]
    for outcome in failed.dkim:
        if outcome.domain and outcome.result is not DkimResult.PASS:
            fields.append(("DKIM-Domain", outcome.domain))
            if outcome.selector:
                fields.append(("DKIM-Selector", outcome.selector))
            if outcome.identity:
                fields.append(("DKIM-Identity", hide(outcome.identity)))
            break  # one DKIM-* group per report (RFC 6591 3.1)
    feedback = "".join(f"{name}: {value}\r\n" for name, value in fields)
    original = "".join(f"{h.name}: {hide(h.value)}\r\n" for h in failed.headers)

    message = EmailMessage(policy=SMTP)
    message["From"] = reporter_address
    message["To"] = to
    message["Subject"] = f"DMARC failure report for {domain} from {failed.client_ip}"
    message["Date"] = email.utils.formatdate(failed.arrival, usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain=reporter_address.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        f"A message claiming to be from {domain} failed DMARC at {failed.client_ip}.\r\n"
        "Details follow in the machine-readable part (RFC 6591).\r\n")
    message.make_mixed()
    feedback_part = EmailMessage(policy=SMTP)
    feedback_part.set_payload(feedback)
    feedback_part["Content-Type"] = "message/feedback-report"
    headers_part = EmailMessage(policy=SMTP)
    headers_part.set_payload(original)
    headers_part["Content-Type"] = "text/rfc822-headers"
    message.attach(feedback_part)
    message.attach(headers_part)
    message.replace_header("Content-Type", "multipart/report; report-type=feedback-report")
    return message.as_bytes()
