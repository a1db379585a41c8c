"""Fixtures for the integration tests: the real stack on loopback, per test module.

Starting nsd + Dovecot + Postfix takes about half a second (stopping about one: Dovecot
waits for its children), so each test module gets its own stack (`stack`, module scope)
and tests isolate themselves with fresh recipients (`recipient`) and their own zones.
Mailward services are started per test through the `mailward_factory` fixture, which
also points Postfix at them and undoes that afterwards.

Every test collected from this directory is marked `integration`
(`pytest -m "not integration"` skips them).  When a test fails, what every daemon logged
during the test is attached to its report.  At module teardown, fatal/panic lines in the Postfix
or Dovecot logs fail the teardown, so a broken daemon cannot go unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    AuthoritativeDns,
    DovecotInstance,
    HarnessError,
    MailStack,
    MailwardServices,
    PostfixInstance,
    RedisInstance,
)

HERE = Path(__file__).resolve().parent

#: `mailward_factory(config=None, **options) -> MailwardServices`; options as for
#: `MailStack.start_mailward` (services, attach, milter_transport, metrics, command).
MailwardFactory = Callable[..., MailwardServices]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration as `integration`."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


_LOG_MARKS = pytest.StashKey[dict[str, int]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Remember where the logs stood when the test body started (fixtures are set up)."""
    stack = getattr(item, "funcargs", {}).get("stack")
    if isinstance(stack, MailStack):
        item.stash[_LOG_MARKS] = stack.log_marks()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach what the daemons logged during the test: the first thing one
    asks for.  (Setup and teardown failures get the log tails of the whole module.)"""
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        stack = funcargs.get("stack")
        if isinstance(stack, MailStack):
            since = item.stash.get(_LOG_MARKS, None) if report.when == "call" else None
            report.sections.append(("mail stack logs", stack.report(since=since)))
    return report


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[MailStack]:
    """nsd + Dovecot + Postfix for one test module, torn down even if tests fail.

    A module can set `STACK_OPTIONS = {"domains": [...], "postfix_params": {...}}`
    (keyword arguments of MailStack) to start its stack differently.
    """
    options: dict[str, Any] = getattr(request.module, "STACK_OPTIONS", {})
    mail_stack = MailStack(**options)
    mail_stack.start()
    problems: list[str] = []
    try:
        yield mail_stack
    finally:
        problems = mail_stack.postfix.problems() + mail_stack.dovecot.problems()
        # Keep the temp dir (logs, queue, maildirs) when something went wrong.
        mail_stack.stop(remove=False if problems else None)
    if problems:
        raise HarnessError(
            f"daemons logged errors (files kept in {mail_stack.base_dir}):\n"
            + "\n".join(problems)
        )


@pytest.fixture(scope="module")
def nameserver(stack: MailStack) -> AuthoritativeDns:
    """The stack's nsd (`stack.dns`).  Not called `dns`, so tests can use dnspython."""
    return stack.dns


@pytest.fixture(scope="module")
def postfix(stack: MailStack) -> PostfixInstance:
    return stack.postfix


@pytest.fixture(scope="module")
def dovecot(stack: MailStack) -> DovecotInstance:
    return stack.dovecot


@pytest.fixture
def recipient(stack: MailStack) -> str:
    """A fresh address at the stack's first virtual domain (its mailbox starts empty)."""
    return stack.unique_address()


@pytest.fixture
def mailward_factory(stack: MailStack) -> Iterator[MailwardFactory]:
    """Start Mailward services for this test; they are stopped and detached afterwards."""
    started: list[MailwardServices] = []

    def start(config: dict[str, Any] | str | None = None, **options: Any) -> MailwardServices:
        services = stack.start_mailward(config, **options)
        started.append(services)
        return services

    try:
        yield start
    finally:
        for services in reversed(started):
            stack.stop_mailward(services, detach=True)


@pytest.fixture(scope="module")
def redis(stack: MailStack) -> Iterator[RedisInstance]:
    """A private Redis for tests of `[state] backend = "redis"`."""
    instance = RedisInstance(stack.base_dir / "redis")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
