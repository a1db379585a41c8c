"""A message file as a Transaction, the way Postfix would hand the message to the milter.

For the commands that start from a file (`mailward explain`, `mailward learn`), and for
tests and conformance suites.  What the milter builds from callbacks and what this
builds from bytes must be the same value, so that a message explained or learned from a
file is the message the milter saw.
"""

from __future__ import annotations

import re

from mailward.model import Header, Transaction

_HEADER_LINE = re.compile(rb"([!-9;-~]+)[ \t]*:")


def transaction_from_bytes(
    raw: bytes,
    *,
    mail_from: str = "",
    recipients: tuple[str, ...] = (),
    queue_id: str | None = None,
) -> Transaction:
    """A Transaction holding `raw` the way Postfix hands a message to the milter.

    For tests and conformance suites that start from a file.  LF or
    CRLF line ends; a leading mbox "From " line is dropped.  Header values keep their
    leading white space and join folded lines with a bare LF, as Postfix sends them
    (with SMFIP_HDR_LEADSPC); the body gets CRLF line ends.  As in Postfix, the header
    section ends at the empty line or at the first line that is neither a header nor a
    continuation, which then starts the body.
    """
    text = raw.replace(b"\r\n", b"\n")
    if text.startswith(b"From "):
        text = text.partition(b"\n")[2]
    headers: list[Header] = []
    lines = text.split(b"\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if line[:1] in (b" ", b"\t") and headers:
            last = headers[-1]
            continuation = line.decode("utf-8", "surrogateescape")
            headers[-1] = Header(last.name, f"{last.value}\n{continuation}")
        else:
            match = _HEADER_LINE.match(line)
            if match is None:
                if not line:
                    index += 1  # the empty line that ends the header section
                break
            name = match.group(1).decode("ascii")
            value = line[match.end():].decode("utf-8", "surrogateescape")
            headers.append(Header(name, value))
        index += 1
    body = b"\r\n".join(lines[index:])
    return Transaction(
        queue_id=queue_id,
        mail_from=mail_from,
        recipients=recipients,
        headers=tuple(headers),
        body=body,
        body_size=len(body),
    )
