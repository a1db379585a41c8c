"""The TLS policy benchmark's pure parts: the reply framer of its load client, the
peer's configuration, the answers the warm-up insists on, and its goal line."""

from __future__ import annotations

import json

import pytest

from bench import world
from bench.goals import MeasuredTarget, goal_lines
from bench.peers import mta_sts_resolver
from bench.tlspolicy_bench import expected
from bench.tlspolicy_load import ReplyFramer
from mailward.tlspolicy.socketmap import Reply, ReplyStatus


def test_framer_splits_replies_across_reads() -> None:
    framer = ReplyFramer()
    stream = b"9:NOTFOUND ,28:OK secure match=mx.a.example,"
    replies = []
    for byte in stream:
        framer.feed(bytes([byte]))
        while (reply := framer.take(1)) is not None:
            replies.append(reply)
    assert replies == [Reply(ReplyStatus.NOTFOUND), Reply(ReplyStatus.OK,
                                                          "secure match=mx.a.example")]


def test_framer_refuses_a_broken_stream() -> None:
    framer = ReplyFramer()
    framer.feed(b"3:OK x;")
    with pytest.raises(ValueError, match="terminated"):
        framer.take(1)


def test_peer_config_listens_where_told_with_its_own_cache() -> None:
    unix = json.loads(mta_sts_resolver.config_yaml("/run/x.sock", "", 0))
    assert unix["path"] == "/run/x.sock" and "port" not in unix
    assert unix["cache"]["type"] == "internal"
    assert unix["default_zone"]["require_sni"] is True  # servername=hostname, as ours
    tcp = json.loads(mta_sts_resolver.config_yaml(None, "127.0.0.1", 8461))
    assert (tcp["host"], tcp["port"], tcp["reuse_port"]) == ("127.0.0.1", 8461, True)


def test_every_bench_domain_has_an_expected_answer_and_dns() -> None:
    zones = world.zones(None)
    for domain in world.STS_DOMAINS:
        assert any("_mta-sts IN TXT" in line for line in zones[domain])
        assert f"mta-sts IN A {world.STS_POLICY_ADDRESS}" in zones[domain]
    assert expected("sts1.example") == "OK secure match=mx.sts1.example servername=hostname"
    assert expected(world.STS_TESTING_DOMAINS[0]) == "NOTFOUND "


def test_goal_line_for_the_tls_policy_service() -> None:
    lines = goal_lines([MeasuredTarget("mta-sts-resolver", float("nan"), 0.010),
                        MeasuredTarget("mailward-tlspolicy", 2.5, 0.005)])
    assert lines == ["TLS policy socketmap, warm cache: mailward-tlspolicy 2.50x "
                     "mta-sts-resolver (goal >= 2.0x: met); p99 0.50x the reference's "
                     "(goal <= 1.00x: met)"]
