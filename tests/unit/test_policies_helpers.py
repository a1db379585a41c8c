"""Shared pieces of the policy tests (no tests here): zones, settings, requests, a clock."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import REGISTRY

from mailward.config import Settings, settings_from_mapping
from mailward.dns import InMemoryResolver
from mailward.policies.base import AccessRequest, Blocking, Steps
from mailward.policies.engine import PolicyEngine
from mailward.state import (
    GreylistOutcome,
    GreylistParams,
    MemoryStore,
    RateOutcome,
    RateWindow,
    StateUnavailable,
)

#: example.org sends from 192.0.2.0/25 (and says why not, when it fails).
ORG_ZONE = """
@          TXT "v=spf1 ip4:192.0.2.0/25 ip6:2001:db8:1::/48 exp=why.example.org -all"
why        TXT "%{i} is not one of %{d}'s mail servers"
mail1      A   192.0.2.1
mail1      TXT "v=spf1 a -all"
badhelo    TXT "v=spf1 -all"
soft       TXT "v=spf1 ~all"
broken     TXT "v=spf1 moo -all"
plain      TXT "v=spf1 -all"
"""
#: A large sender's domain (greylisting skips it when SPF passes).
BIG_ZONE = """
@          TXT "v=spf1 ip4:198.51.100.0/24 -all"
"""

ORG_SERVER = "192.0.2.1"
OUTSIDER = "203.0.113.9"
BIG_SERVER = "198.51.100.20"

_instances = itertools.count(1)

T = TypeVar("T")


def resolver() -> InMemoryResolver:
    return InMemoryResolver.from_zones({"example.org": ORG_ZONE, "bigmail.example": BIG_ZONE})


def settings(**sections: Mapping[str, Any]) -> Settings:
    """Settings from a mapping; `policyd_spf={...}` stands for [policyd.spf] and so on."""
    data: dict[str, Any] = {"general": {"authserv_id": "mx.example.net"}}
    policyd: dict[str, Any] = {}
    for name, values in sections.items():
        if name.startswith("policyd_"):
            policyd[name.removeprefix("policyd_")] = dict(values)
        elif name == "policyd":
            policyd.update(values)
        else:
            data[name] = dict(values)
    data["policyd"] = policyd
    return settings_from_mapping(data)


def new_instance() -> str:
    return f"{next(_instances):x}.65d2a1b4.c7e8f.0"


def attributes(**values: str) -> dict[str, str]:
    """A RCPT request from an outside client of example.org, as Postfix sends it."""
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "helo_name": "mail1.example.org",
        "queue_id": "",
        "sender": "alice@example.org",
        "recipient": "bob@example.net",
        "recipient_count": "0",
        "client_address": ORG_SERVER,
        "client_name": "mail1.example.org",
        "reverse_client_name": "mail1.example.org",
        "instance": new_instance(),
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "size": "1234",
    }
    base.update(values)
    return base


def request(**values: str) -> AccessRequest:
    return AccessRequest.parse(attributes(**values))


class Clock:
    """A clock the test moves; never the real time."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drive(steps: Steps[T]) -> tuple[T, int]:
    """Run an evaluation inline; return its value and how many blocking steps it yielded
    (0: it decided without waiting for anything)."""
    count = 0
    try:
        step = next(steps)
        while True:
            count += 1
            step.run()
            step = steps.send(None)
    except StopIteration as done:
        value: T = done.value
        return value, count


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def engine(config: Settings, dns: InMemoryResolver | None = None,
           store: Any = None, clock: Clock | None = None) -> PolicyEngine:
    return PolicyEngine.from_settings(
        config, dns if dns is not None else resolver(),
        store=store if store is not None else MemoryStore(), clock=clock or Clock(),
    )


class BrokenStore(MemoryStore):
    """A store whose backend is down."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def greylist(self, triplet: str, client: str, now: float,
                 params: GreylistParams) -> GreylistOutcome:
        self.calls += 1
        raise StateUnavailable("memory", "connection refused")

    def rate_limit(self, key: str, windows: Sequence[RateWindow], amount: int,
                   now: float) -> RateOutcome:
        self.calls += 1
        raise StateUnavailable("memory", "connection refused")


__all__ = [
    "BIG_SERVER", "ORG_SERVER", "OUTSIDER", "Blocking", "BrokenStore", "Clock",
    "attributes", "drive", "engine", "metric", "new_instance", "request", "resolver",
    "settings",
]
