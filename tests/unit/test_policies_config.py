"""[policyd] order/on_state_error/threads and [policyd.spf|greylist|ratelimit] in TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailward.config import (
    ConfigError,
    PolicydGreylistSettings,
    PolicydRateLimitSettings,
    PolicydSpfSettings,
    RateLimitCount,
    RateLimitIdentity,
    RateLimitOverride,
    RateLimitScope,
    RateLimitWindow,
    StateErrorAction,
    load_settings,
    parse_settings,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "mailward.example.toml"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text)
    return [str(problem) for problem in caught.value.problems]


def test_defaults():
    settings = parse_settings("")
    assert settings.policyd.order == ("spf", "greylist", "ratelimit")
    assert settings.policyd.on_state_error is StateErrorAction.DUNNO
    assert settings.policyd.threads == 32 and settings.policyd.workers == 1
    assert settings.policyd_spf == PolicydSpfSettings()
    assert settings.policyd_spf.enabled and settings.policyd_spf.received_spf
    assert not settings.policyd_greylist.enabled and not settings.policyd_ratelimit.enabled


def test_every_key():
    settings = parse_settings("""
[policyd]
order = ["ratelimit", "spf"]
on_state_error = "defer"
threads = 8
workers = 4

[policyd.spf]
enabled = true
reject_fail = false
protocol_state = "mail"
helo = false
defer_temperror = true
reject_permerror = true
received_spf = false

[policyd.greylist]
enabled = true
delay = 120
retry_window = 7200
expiry = 86400
auto_allow_after = 0
ipv4_prefix = 32
ipv6_prefix = 56
spf_pass_domains = ["Google.COM.", "outlook.com"]

[policyd.ratelimit]
enabled = true
by = "sender"
count = "messages"
applies_to = "all"
protocol_state = "END-OF-MESSAGE"
windows = [{ seconds = 60, limit = 10 }, { seconds = 86400, limit = 500 }]

[[policyd.ratelimit.overrides]]
identity = "news@example.com"
windows = [{ seconds = 86400, limit = 50000 }]

[[policyd.ratelimit.overrides]]
identity = "backup@example.com"
windows = []
""")
    assert settings.policyd.order == ("ratelimit", "spf", "greylist")
    assert settings.policyd.on_state_error is StateErrorAction.DEFER
    assert settings.policyd.threads == 8 and settings.policyd.workers == 4
    assert settings.policyd_spf == PolicydSpfSettings(
        enabled=True, reject_fail=False, protocol_state="MAIL", helo=False,
        defer_temperror=True, reject_permerror=True, received_spf=False,
    )
    assert settings.policyd_greylist == PolicydGreylistSettings(
        enabled=True, delay=120.0, retry_window=7200.0, expiry=86400.0, auto_allow_after=0,
        ipv4_prefix=32, ipv6_prefix=56, spf_pass_domains=("google.com", "outlook.com"),
    )
    assert settings.policyd_ratelimit == PolicydRateLimitSettings(
        enabled=True, by=RateLimitIdentity.SENDER, count=RateLimitCount.MESSAGES,
        applies_to=RateLimitScope.ALL, protocol_state="END-OF-MESSAGE",
        windows=(RateLimitWindow(60, 10), RateLimitWindow(86400, 500)),
        overrides=(
            RateLimitOverride("news@example.com", (RateLimitWindow(86400, 50000),)),
            RateLimitOverride("backup@example.com", ()),
        ),
    )


def test_mistakes_are_reported_with_their_key_path():
    found = errors("""
[policyd]
order = ["spf", "grelist", "spf"]
on_state_error = "reject"
threads = 0
workers = 100

[policyd.spf]
protocol_state = "data"
reject_softfail = true

[policyd.greylist]
delay = 600
retry_window = 300
ipv4_prefix = 33
spf_pass_domains = ["not a domain"]

[policyd.ratelimit]
by = "user"
count = "bytes"
windows = [{ seconds = 60 }, { seconds = 0, limit = 1 }, { seconds = 60, limit = 2 },
           { seconds = 60, limit = 3 }, 5, { seconds = 30, limit = 1, per = "x" }]

[[policyd.ratelimit.overrides]]
windows = []

[policyd.dkim]
enabled = true
""")
    expected = [
        "policyd.order[1]: unknown policy 'grelist'; known: spf, greylist, ratelimit",
        "policyd.order[2]: policy 'spf' is listed twice",
        "policyd.on_state_error: must be one of 'dunno', 'defer', got 'reject'",
        "policyd.threads: must be between 1 and 1024, got 0",
        "policyd.workers: must be between 1 and 64, got 100",
        "policyd.spf.protocol_state: must be one of 'rcpt', 'mail', got 'DATA'",
        "policyd.spf.reject_softfail: unknown key",
        "policyd.greylist.retry_window: must be longer than delay (600 s), got 300",
        "policyd.greylist.ipv4_prefix: must be between 8 and 32, got 33",
        "policyd.greylist.spf_pass_domains[0]: 'not a domain' is not a domain name",
        "policyd.ratelimit.by: must be one of 'sasl_username', 'sender', 'client_address', "
        "got 'user'",
        "policyd.ratelimit.count: must be one of 'messages', 'recipients', got 'bytes'",
        "policyd.ratelimit.windows[0].limit: is required",
        "policyd.ratelimit.windows[1].seconds: must be between 1 and 31622400, got 0",
        "policyd.ratelimit.windows[3]: two windows of 60 seconds",
        "policyd.ratelimit.windows[4]: expected a table, got int 5",
        "policyd.ratelimit.windows[5].per: unknown key",
        "policyd.ratelimit.overrides[0].identity: is required",
        "policyd.dkim: unknown section",
    ]
    for message in expected:
        assert any(problem.startswith(message) for problem in found), (message, found)


def test_rate_limits_need_a_window():
    assert any(p.startswith("policyd.ratelimit.windows: needs at least one")
               for p in errors("[policyd.ratelimit]\nwindows = []\n"))


def test_duplicate_override_is_an_error():
    found = errors("""
[[policyd.ratelimit.overrides]]
identity = "a"
[[policyd.ratelimit.overrides]]
identity = "a"
""")
    assert any("identity 'a' is listed twice" in problem for problem in found)


def test_example_configuration_documents_every_policy_key():
    text = EXAMPLE.read_text()
    settings = load_settings(EXAMPLE)
    assert settings.policyd.order == ("spf", "greylist", "ratelimit")
    for key in ("order", "on_state_error", "threads", "workers = 1", "[policyd.spf]", "reject_fail",
                "defer_temperror", "reject_permerror", "received_spf", "[policyd.greylist]",
                "retry_window", "auto_allow_after", "ipv4_prefix", "ipv6_prefix",
                "spf_pass_domains", "[policyd.ratelimit]", "applies_to", "windows",
                "[[policyd.ratelimit.overrides]]", "identity"):
        assert key in text, key
    # The example's values are the defaults.
    assert settings.policyd_spf == PolicydSpfSettings()
    assert settings.policyd_greylist == PolicydGreylistSettings()
    assert settings.policyd_ratelimit == PolicydRateLimitSettings()
