"""A second private Postfix on the sending side: it relays everything to the stack's Postfix.

Greylisting is only proven when a real MTA retries: the receiving Postfix defers the
first attempt (450 at RCPT), and the message must arrive later through the sender's own
queue and retry schedule.  This instance is that sender: mail submitted to it (with
`sendmail` or SMTP) goes to `relayhost = [127.0.0.1]:PORT`, and a deferred message is
retried within about a second.

It reuses PostfixInstance (its own config, queue and log in a temp dir), with no local
or virtual domains, no LMTP, and the smtp client pointed at the receiver.  It connects
from 127.0.0.1, so the receiver sees client_address=127.0.0.1: a test that greylists
this sender must keep 127.0.0.1 out of Mailward's general.trusted_networks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tests.harness.postfix import PostfixInstance

#: Retry a deferred message about every second (Postfix's minimum unit).
FAST_RETRY = {
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
}


def sending_postfix(
    base_dir: Path,
    relay_port: int,
    hostname: str = "relay.example.org",
    params: Mapping[str, str] | None = None,
) -> PostfixInstance:
    """A Postfix that sends all mail to 127.0.0.1:`relay_port` (not started yet)."""
    settings = {
        "relayhost": f"[127.0.0.1]:{relay_port}",
        "default_transport": "smtp",
        "relay_transport": "smtp",
        "virtual_transport": "error:no local delivery on the sending side",
        "smtp_tls_security_level": "none",
        "smtp_connect_timeout": "5s",
        "smtp_helo_timeout": "10s",
        "smtp_rcpt_timeout": "10s",
        "smtp_data_done_timeout": "30s",
        **FAST_RETRY,
        **(params or {}),
    }
    return PostfixInstance(
        base_dir,
        lmtp_port=0,  # unused: no virtual domains, no capture
        domains=(),
        mynetworks="127.0.0.0/8",
        params=settings,
        capture_outbound=False,
        hostname=hostname,
    )
