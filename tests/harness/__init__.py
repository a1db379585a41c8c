"""Integration-test harness: the real Postfix, Dovecot, nsd (and Redis, Mailward) on loopback.

Plain Python, no pytest dependency, so a demo script can start the same stack the tests
use.  `MailStack` composes the parts; each part is usable on its own.
"""

from tests.harness.dovecot import DovecotInstance
from tests.harness.nameserver import AuthoritativeDns, txt, zone_text
from tests.harness.postfix import PostfixInstance
from tests.harness.process import (
    HarnessError,
    detach_from_test_process,
    free_port,
    stop_pid,
    wait_until,
)
from tests.harness.redis import RedisInstance
from tests.harness.services import (
    CHECKS_OFF,
    MailwardServices,
    fake_service_command,
    mailward_command,
)
from tests.harness.smtp import (
    SmtpResult,
    SwaksResult,
    build_message,
    send_smtp,
    send_with_swaks,
)
from tests.harness.stack import MailStack

__all__ = [
    "CHECKS_OFF",
    "AuthoritativeDns",
    "DovecotInstance",
    "HarnessError",
    "MailStack",
    "MailwardServices",
    "PostfixInstance",
    "RedisInstance",
    "SmtpResult",
    "SwaksResult",
    "build_message",
    "detach_from_test_process",
    "fake_service_command",
    "free_port",
    "mailward_command",
    "send_smtp",
    "send_with_swaks",
    "stop_pid",
    "txt",
    "wait_until",
    "zone_text",
]
