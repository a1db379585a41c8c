"""`make demo`: a private Postfix + Dovecot + DNS + Mailward on loopback, and some mail.

Starts every daemon from its own configuration under one directory (nothing in /etc is
touched, nothing listens beyond 127.0.0.1), sends a few sample messages through Postfix,
and shows for each what Dovecot stored: the Authentication-Results headers and the
folder.  Everything keeps running so you can look around (send more with swaks, read
the metrics); `make demo-stop` ends exactly what this started.

The daemons are started with the same harness the integration tests use
(tests/harness), so the demo and the tests exercise one stack.
"""

from __future__ import annotations

import argparse
import email.message
import json
import os
import shutil
import sys
import textwrap
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.harness import MailStack, build_message  # noqa: E402
from tests.harness.process import (  # noqa: E402
    HarnessError,
    detach_from_test_process,
    stop_pid,
    wait_until,
)

DEMO_DIR = Path(os.environ.get("MAILWARD_DEMO_DIR", "/tmp/mailward-demo"))
STATE_FILE = DEMO_DIR / "demo.json"
AUTHSERV_ID = "mx.example.net"
EXTERNAL_CLIENT = "192.0.2.10"

# The senders' side of the demo: example.org publishes SPF and DMARC; its mail host
# 192.0.2.10 has matching reverse DNS; 203.0.113.0/24 is somebody else.
DEMO_ZONES = {
    "example.org": """\
@            IN MX  10 mail
mail         IN A   192.0.2.10
@            IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc       IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@example.org"
""",
    "2.0.192.in-addr.arpa": "10 IN PTR mail.example.org.\n",
}
OTHER_CLIENT = "203.0.113.5"


@dataclass(frozen=True)
class Sample:
    """One demo message: what it shows, who sends it, which extra headers it carries."""

    title: str
    explanation: str
    client: str | None  # None: the demo's own host, 127.0.0.1 (a trusted network)
    headers: tuple[tuple[str, str], ...] = ()
    author: str = "news@example.org"  # the From header
    envelope_sender: str = ""  # MAIL FROM; "" means the author
    body: str = "Hello from the Mailward demo.\r\n"


SAMPLES = (
    Sample(
        "Plain inbound message",
        "example.org's own mail host (XCLIENT makes Postfix see 192.0.2.10). Mailward "
        "adds one Authentication-Results header under its authserv-id: reverse DNS "
        "confirmed (iprev), SPF passes for the sender (the HELO name has no SPF), so "
        "DMARC passes through aligned SPF.",
        EXTERNAL_CLIENT,
    ),
    Sample(
        "Forged From of a p=reject domain",
        "203.0.113.5 sends From: ceo@example.org with an envelope sender of its own "
        "(bounce@forger.example, which has no SPF record). Neither SPF nor DKIM "
        "vouches for example.org, so DMARC fails, and example.org publishes p=reject: "
        "Mailward rejects the message at the end of DATA and nothing is stored.",
        OTHER_CLIENT,
        author="ceo@example.org",
        envelope_sender="bounce@forger.example",
    ),
    Sample(
        "Forged Authentication-Results",
        "The sender wrote 'mx.example.net; dmarc=pass' into the message itself. "
        "Mailward removes it: only our own header may claim our authserv-id.",
        EXTERNAL_CLIENT,
        (("Authentication-Results", f"{AUTHSERV_ID}; dmarc=pass header.from=bank.example"),),
    ),
    Sample(
        "Authentication-Results from another server",
        "A header from relay.example.org is not ours to judge: it stays.",
        EXTERNAL_CLIENT,
        (("Authentication-Results", "relay.example.org; spf=pass smtp.mailfrom=example.org"),),
    ),
    Sample(
        "Spam-flagged message",
        "The body carries the GTUBE test string's add-header variant: Mailward scores it as\n"
        "  spam and writes X-Spam-Flag: YES (after removing the X-Spam-Flag: NO the sender\n"
        "  wrote), and the global Sieve script (sieve/) files it into Junk.",
        EXTERNAL_CLIENT,
        (("X-Spam-Flag", "NO"),),
        body="YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n",
    ),
    Sample(
        "Message from a trusted network",
        "127.0.0.1 is in general.trusted_networks: outbound path, its own "
        "Authentication-Results are kept.",
        None,
        (("Authentication-Results", f"{AUTHSERV_ID}; auth=pass smtp.auth=alice"),),
        author="alice@example.net",
    ),
)


def start() -> int:
    if STATE_FILE.exists():
        print(f"A demo is already running (state in {STATE_FILE}); `make demo-stop` first.")
        return 1
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    detach_from_test_process()
    stack = MailStack(base_dir=DEMO_DIR / "stack")
    print("Starting a private nsd, Dovecot and Postfix on 127.0.0.1 ...")
    try:
        stack.start()
        stack.dns.set_zones(DEMO_ZONES)
        services = stack.start_mailward({"general": {"authserv_id": AUTHSERV_ID}},
                                        milter_transport="unix")
    except (HarnessError, OSError) as exc:
        print(f"demo failed to start: {exc}", file=sys.stderr)
        stop_processes(stack.process_ids())
        return 1
    save_state(stack, services.metrics_listen("milter"), services.metrics_listen("policyd"))

    mailbox = "demo@example.net"
    for sample in SAMPLES:
        show(stack, sample, mailbox)

    milter_metrics = services.metrics_listen("milter")
    policyd_metrics = services.metrics_listen("policyd")
    print(section("Metrics"))
    print(f"  milter:  http://{milter_metrics}/metrics")
    print(f"  policyd: http://{policyd_metrics}/metrics")
    for line in fetch_metrics(milter_metrics, policyd_metrics):
        print(f"    {line}")

    print(section("Still running (started by this demo)"))
    for name, pid in stack.process_ids().items():
        print(f"  {name:<22} pid {pid}")
    print(textwrap.dedent(f"""
      Postfix SMTP:  127.0.0.1:{stack.postfix.smtp_port}   (try: swaks --server 127.0.0.1 \
--port {stack.postfix.smtp_port} --to {mailbox})
      IMAP:          127.0.0.1:{stack.dovecot.imap_port}   (user {mailbox}, password \
{stack.dovecot.password})
      DNS (nsd):     127.0.0.1:{stack.dns.port}
      Logs:          {stack.postfix.log_path}
                     {services.base_dir}/milter.log, {services.base_dir}/policyd.log
      Configuration: {services.config_path}

    Stop everything with: make demo-stop
    """))
    return 0


def show(stack: MailStack, sample: Sample, mailbox: str) -> None:
    subject = f"{sample.title} [{uuid.uuid4().hex[:8]}]"
    message = build_message(sample.author, mailbox, subject=subject, body=sample.body,
                            headers=list(sample.headers))
    result = stack.send(sample.envelope_sender or sample.author, mailbox, message,
                        xclient_addr=sample.client, helo="mail.example.org")
    print(section(sample.title))
    print(textwrap.fill(sample.explanation, width=78, initial_indent="  ",
                        subsequent_indent="  "))
    print(f"  SMTP: {result.final[0]} {result.final[1]}")
    if not result.accepted:
        return
    def delivered() -> tuple[str, list[email.message.Message]] | None:
        # Sieve may file it into Junk: look in both, until delivery (it is asynchronous).
        for folder in ("INBOX", "Junk"):
            found = [m for m in stack.dovecot.messages(mailbox, folder)
                     if m.get("Subject") == subject]
            if found:
                return folder, found
        return None

    wait_until(lambda: delivered() is not None, 30, f"{subject!r} in INBOX or Junk")
    folder, found = delivered() or ("", [])
    print(f"  Stored in: {folder}")
    for value in found[0].get_all("Authentication-Results", []):
        print(f"  Authentication-Results: {' '.join(str(value).split())}")


def section(title: str) -> str:
    return f"\n== {title} " + "=" * max(0, 74 - len(title))


def fetch_metrics(milter: str | None, policyd: str | None) -> list[str]:
    """A few counters from each service's own endpoint, as Prometheus would scrape them."""
    wanted = {
        milter: ("mailward_milter_messages_total{",
                 "mailward_milter_forged_authentication_results_removed_total "),
        policyd: ("mailward_policyd_requests_total{",),
    }
    lines = []
    for listen, prefixes in wanted.items():
        if not listen:
            continue
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
            text = response.read().decode()
        lines += [line for line in text.splitlines() if line.startswith(prefixes)]
    return lines


def save_state(stack: MailStack, *metrics: str | None) -> None:
    STATE_FILE.write_text(json.dumps({"pids": stack.process_ids(), "metrics": metrics}))


def stop_processes(pids: dict[str, int]) -> None:
    # Mailward first (Postfix would otherwise defer mail to a vanished milter), then the rest.
    for name, pid in sorted(pids.items(), key=lambda item: not item[0].startswith("mailward")):
        try:
            stop_pid(pid)
            print(f"  stopped {name} (pid {pid})")
        except ProcessLookupError:
            print(f"  {name} (pid {pid}) was not running")
        except HarnessError as exc:
            print(f"  {name}: {exc}")


def stop() -> int:
    if not STATE_FILE.exists():
        print("No demo is running.")
        return 0
    state = json.loads(STATE_FILE.read_text())
    print("Stopping the demo:")
    stop_processes({name: int(pid) for name, pid in state["pids"].items()})
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    print(f"Removed {DEMO_DIR}.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("The demo runs Postfix and Dovecot instances: run it as root.", file=sys.stderr)
        return 1
    return start() if args.action == "start" else stop()


if __name__ == "__main__":
    sys.exit(main())
