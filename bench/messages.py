"""Test messages: a realistic ~6 KB message, and DKIM signing of it.

DESIGN.md's reference numbers were measured with a 6 KB message; the generated one
has what inbound mail has (Received trail, Message-ID, MIME alternative with text and
HTML parts, a List-Unsubscribe header) so that header parsing, body hashing and
content checks get the kind of input they get in production.  It is deterministic
(seeded), so two runs measure the same bytes.
"""

from __future__ import annotations

import base64
import random
import subprocess
import textwrap
from pathlib import Path

_WORDS = (  # noqa: SIM905 - a paragraph of words reads better than a 150-line list
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "if so no what up out about who get them me some could him into its then two more "
    "time these only new over also after other know did people any made like first may "
    "quarterly report meeting schedule invoice delivery update project review budget "
    "customer account service support team office request attached please thanks regards "
    "tomorrow monday friday next week contract proposal draft final version numbers"
).split()


def _paragraphs(rng: random.Random, size: int) -> list[str]:
    paras: list[str] = []
    total = 0
    while total < size:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(40, 90))]
        text = " ".join(words).capitalize() + "."
        paras.append(text)
        total += len(text) + 2
    return paras


def generate_message(
    *,
    sender: str = "alice@example.org",
    recipient: str = "bob@example.net",
    size: int = 6144,
    seed: int = 2026,
) -> bytes:
    """A multipart/alternative message of about `size` bytes, CRLF line ends."""
    rng = random.Random(seed)
    sender_domain = sender.rpartition("@")[2]
    head = [
        f"Received: from mail1.{sender_domain} (mail1.{sender_domain} [192.0.2.10])",
        f"\tby mail1.{sender_domain} (Postfix) with ESMTPSA id 4Xq1bC2kLmz9",
        f"\tfor <{recipient}>; Tue, 03 Mar 2026 09:14:07 +0100 (CET)",
        f"From: Alice Example <{sender}>",
        f"To: Bob Example <{recipient}>",
        "Subject: Quarterly report: numbers for the review meeting",
        "Date: Tue, 03 Mar 2026 09:14:06 +0100",
        f"Message-ID: <20260303081406.GA4711@mail1.{sender_domain}>",
        "MIME-Version: 1.0",
        f"List-Unsubscribe: <mailto:unsubscribe@{sender_domain}?subject=unsubscribe>",
        'Content-Type: multipart/alternative; boundary="=_bench_boundary_2026"',
    ]
    paras = _paragraphs(rng, max(size - 1500, 200) // 2)
    plain = "\r\n\r\n".join("\r\n".join(textwrap.wrap(p, 76)) for p in paras)
    html = "\r\n".join("<p>" + "\r\n".join(textwrap.wrap(p, 76)) + "</p>" for p in paras)
    body = "\r\n".join(
        [
            "This is a multi-part message in MIME format.",
            "",
            "--=_bench_boundary_2026",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 7bit",
            "",
            plain,
            "",
            "--=_bench_boundary_2026",
            "Content-Type: text/html; charset=utf-8",
            "Content-Transfer-Encoding: 7bit",
            "",
            "<html><body>",
            html,
            "</body></html>",
            "",
            "--=_bench_boundary_2026--",
            "",
        ]
    )
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("utf-8")


def load_message(path: str | Path) -> bytes:
    """Read a message file as bytes; line ends are normalised later by the client."""
    return Path(path).read_bytes()


def generate_rsa_key(path: Path, bits: int = 2048) -> Path:
    """Write a PEM RSA private key with openssl (fast, unlike a pure-Python keygen)."""
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), str(bits)],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    return path


def dkim_public_key_b64(private_key: Path) -> str:
    """The p= value of the DKIM key record for `private_key`."""
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(private_key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return base64.b64encode(der).decode("ascii")


def dkim_sign(raw: bytes, domain: str, selector: str, private_key: Path) -> bytes:
    """Prepend a DKIM-Signature (rsa-sha256, relaxed/relaxed) made with dkimpy.

    Signing happens once per benchmark run, so dkimpy's pure-Python RSA is fast enough.
    """
    import dkim  # dkimpy: only needed when a signed message is wanted

    signature = dkim.sign(
        raw,
        selector.encode(),
        domain.encode(),
        private_key.read_bytes(),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[
            b"from",
            b"to",
            b"subject",
            b"date",
            b"message-id",
            b"mime-version",
            b"content-type",
            b"list-unsubscribe",
        ],
    )
    sig: bytes = signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return sig + raw
