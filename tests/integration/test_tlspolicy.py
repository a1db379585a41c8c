"""`mailward tlspolicy` for real: Postfix's own socketmap client (`postmap -q`) asks the
running service; nsd serves `_mta-sts` TXT and `mta-sts.DOMAIN` addresses; an HTTPS
server on loopback, with a certificate from a private CA made here, serves the policies.
"""

from __future__ import annotations

import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import AuthoritativeDns, free_port, mailward_command, wait_until
from tests.harness.process import ManagedProcess, unix_accepts
from tests.harness.toml import dumps
from tests.support.mtasts import Site, TestCa, https_server

#: Names the HTTPS server's certificate covers; mta-sts.badcert.example is served too,
#: but the certificate does not name it.
CERT_NAMES = ["mta-sts.example.org", "mta-sts.testing.example", "mta-sts.moved.example",
              "mta-sts.html.example", "mta-sts.huge.example", "mta-sts.change.example"]

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.example.org\nmx: *.mail.example.org\n" \
          "max_age: 86400\n"


# --------------------------------------------------------------------------- fixtures


@dataclass
class World:
    nsd: AuthoritativeDns
    site: Site
    socket_path: Path
    metrics_port: int
    service: ManagedProcess
    postfix_dir: Path

    def publish(self, domain: str, policy_id: str, policy: str | None = None) -> None:
        """The TXT record (TTL 0: no resolver cache hides a change) and the address."""
        self.nsd.set_zone(domain, [("_mta-sts", 0, "TXT", f"v=STSv1; id={policy_id}"),
                                   ("mta-sts", "A", "127.0.0.1"),
                                   ("@", "MX", f"10 mx1.{domain}.")])
        if policy is not None:
            self.site.policy(domain, policy)

    def postmap(self, key: str) -> subprocess.CompletedProcess[str]:
        """Postfix's own socketmap client: exit 0 found, 1 not found."""
        return subprocess.run(
            ["postmap", "-c", str(self.postfix_dir), "-q", key,
             f"socketmap:unix:{self.socket_path}:postfix"],
            capture_output=True, text=True, timeout=30, check=False)

    def metric(self, name: str, labels: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("tlspolicy")
    ca = TestCa(base)
    site = Site()
    server = https_server(ca.issue("policy-host", CERT_NAMES), site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    nsd = AuthoritativeDns(base / "nsd")
    nsd.start()
    socket_path = base / "run" / "tlspolicy.sock"
    metrics_port = free_port()
    config = base / "mailward.toml"
    config.write_text(dumps({
        "dns": {"nameservers": ["127.0.0.1"], "port": nsd.port, "timeout": 2.0},
        "tlspolicy": {
            "socket": f"unix:{socket_path}",
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "ca_file": str(ca.ca_file),
            "policy_port": server.server_address[1],
            "fetch_timeout": 5.0,
            "max_policy_size": 4096,
            "cache_path": str(base / "state" / "tlspolicy.db"),
            "overrides": {"override.example": "dane-only"},
        },
    }))
    service = ManagedProcess("mailward-tlspolicy", mailward_command("tlspolicy", config),
                             base / "tlspolicy.log")
    postfix_dir = base / "postfix"
    postfix_dir.mkdir()
    (postfix_dir / "main.cf").write_text("compatibility_level = 3.6\n")
    service.start()
    try:
        wait_until(lambda: unix_accepts(socket_path), 20.0, "mailward tlspolicy socket",
                   diagnostics=service.output)
        yield World(nsd, site, socket_path, metrics_port, service, postfix_dir)
    finally:
        service.stop()
        nsd.close()
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- tests


def test_enforce_policy_becomes_a_secure_answer(world: World) -> None:
    world.publish("example.org", "20260101", ENFORCE)
    result = world.postmap("example.org")
    assert result.returncode == 0, result.stderr + world.service.output()
    assert result.stdout.strip() == \
        "secure match=mx1.example.org:.mail.example.org servername=hostname"
    assert "example.org: OK secure match=" in world.service.output()


def test_cached_policy_is_used_while_the_id_is_unchanged(world: World) -> None:
    world.publish("change.example", "1", ENFORCE.replace("mx1.example.org", "mx.change.example"))
    assert "match=mx.change.example:" in world.postmap("change.example").stdout
    fetched = sum(r.startswith("mta-sts.change.example") for r in world.site.requests)
    # The policy file changes, the id does not: the cached policy stays in use.
    world.site.policy("change.example", ENFORCE.replace("mx1.example.org", "new.change.example"))
    assert "match=mx.change.example:" in world.postmap("change.example").stdout
    assert sum(r.startswith("mta-sts.change.example") for r in world.site.requests) == fetched
    # A new id: fetched again, and the new policy answers.
    world.publish("change.example", "2")
    assert "match=new.change.example:" in world.postmap("change.example").stdout
    assert sum(r.startswith("mta-sts.change.example") for r in world.site.requests) == \
        fetched + 1


def test_enforce_survives_a_dns_outage_and_a_failed_fetch(world: World) -> None:
    world.publish("example.org", "20260101", ENFORCE)
    assert world.postmap("example.org").returncode == 0
    with world.nsd.outage():
        result = world.postmap("example.org")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("secure match=mx1.example.org")
    # New id, but the policy server now fails: the cached enforce policy still holds.
    world.publish("example.org", "20260102")
    world.site.pages["mta-sts.example.org"] = (500, "text/plain", b"broken")
    result = world.postmap("example.org")
    assert result.stdout.startswith("secure match=mx1.example.org"), result.stderr
    assert world.metric("mailward_tlspolicy_policy_fetches_total", 'outcome="http_status"') >= 1
    world.site.policy("example.org", ENFORCE)


def test_testing_mode_is_not_enforced_but_logged(world: World) -> None:
    world.publish("testing.example", "t1", ENFORCE.replace("enforce", "testing"))
    result = world.postmap("testing.example")
    assert result.returncode == 1 and result.stdout == ""
    assert "testing.example: NOTFOUND  (MTA-STS testing, not enforced" in world.service.output()
    assert world.metric("mailward_tlspolicy_answers_total", 'kind="testing"') >= 1


@pytest.mark.parametrize(("domain", "page", "outcome"), [
    ("badcert.example", (200, "text/plain", ENFORCE.encode()), "certificate_error"),
    ("moved.example", (301, "text/plain", b""), "redirect"),
    ("html.example", (200, "text/html", ENFORCE.encode()), "content_type"),
    ("huge.example", (200, "text/plain", ENFORCE.encode() + b"#" * 5000), "too_large"),
])
def test_unusable_policies_are_no_enforcement(world: World, domain: str,
                                              page: tuple[int, str, bytes],
                                              outcome: str) -> None:
    before = world.metric("mailward_tlspolicy_policy_fetches_total", f'outcome="{outcome}"')
    world.publish(domain, "x1")
    world.site.pages[f"mta-sts.{domain}"] = page
    result = world.postmap(domain)
    assert result.returncode == 1 and result.stdout == "", result.stdout
    assert world.metric("mailward_tlspolicy_policy_fetches_total",
                        f'outcome="{outcome}"') == before + 1


def test_no_record_and_other_keys_are_notfound(world: World) -> None:
    world.nsd.set_zone("plain.example", [("@", "MX", "10 mx.plain.example.")])
    assert world.postmap("plain.example").returncode == 1
    assert world.postmap("[127.0.0.1]:25").returncode == 1
    result = world.postmap("override.example")
    assert result.returncode == 0 and result.stdout.strip() == "dane-only"


def test_learnt_enforce_policy_survives_a_restart_during_a_dns_outage(world: World) -> None:
    world.publish("example.org", "20260101", ENFORCE)
    assert world.postmap("example.org").returncode == 0
    world.service.stop()
    world.service.start()
    wait_until(lambda: unix_accepts(world.socket_path), 20.0, "mailward tlspolicy socket",
               diagnostics=world.service.output)
    with world.nsd.outage():
        result = world.postmap("example.org")
    assert result.returncode == 0, result.stderr + world.service.output()
    assert result.stdout.startswith("secure match=mx1.example.org")
