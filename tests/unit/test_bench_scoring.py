"""The spam-scoring benchmark's own logic: spam header counting, the message and what
Mailward makes of it, the Rspamd scoring configuration, metric deltas and goals."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

from bench import scoring, world
from bench.goals import MeasuredTarget, goal_lines
from bench.loadgen import LoadResult
from bench.milter_load import spam_tokens
from bench.peers.rspamd import SCORING_MODULES, RspamdSetup
from bench.run import Measurement, TargetReport
from bench.sockets import SocketSpec
from bench.stats import LatencySummary
from mailward.checks.registry import build_checks
from mailward.config import load_settings
from mailward.dns import InMemoryResolver
from mailward.messagefile import transaction_from_bytes
from mailward.model import AppendHeader, Connection
from mailward.pipeline import Pipeline

# --------------------------------------------------------------------------- counting


def test_mailward_status_gives_verdict_and_its_folded_tests_list() -> None:
    value = (" Yes, score=13.3 required=6.0 tests=ARC_NONE,DATE_IN_PAST,DKIM_NONE,\n"
             "\tDMARC_FAIL,RBL_SBL,\n\tURIBL_LISTED forced=GTUBE")
    assert spam_tokens("X-Spam-Status", value) == [
        "x-spam-status=yes", "symbol=ARC_NONE", "symbol=DATE_IN_PAST", "symbol=DKIM_NONE",
        "symbol=DMARC_FAIL", "symbol=RBL_SBL", "symbol=URIBL_LISTED"]
    assert spam_tokens("x-spam-status", " No, score=0.0 required=6.0 tests=none") == [
        "x-spam-status=no"]


def test_rspamd_result_gives_each_symbol_and_status_only_the_verdict() -> None:
    value = (" default: False [12.60 / 15.00];\n\tRBL_SBL(4.00)[203.0.113.66:from];\n"
             "\tURIBL_LISTED(4.00)[example.com:url]; R_SPF_SOFTFAIL(0.00)[~all]")
    assert spam_tokens("X-Spamd-Result", value) == [
        "symbol=RBL_SBL", "symbol=URIBL_LISTED", "symbol=R_SPF_SOFTFAIL"]
    assert spam_tokens("X-Spam-Status", " Yes, score=12.60") == ["x-spam-status=yes"]
    assert spam_tokens("X-Spam-Level", " ************") == []


# --------------------------------------------------------------------------- the message


def _bench_zones() -> dict[str, str]:
    return {zone: "\n".join(records) for zone, records in world.zones(None).items()}


def test_the_spam_is_scored_with_both_lists_by_mailward(tmp_path: Path) -> None:
    """The configuration the bench writes gives the verdicts the target expects (here
    with the bench's zones in memory; the bench checks the real service the same way)."""
    checks = scoring.mailward_checks(None)  # type: ignore[arg-type]  # ctx is not read
    config = tmp_path / "mailward.toml"
    config.write_text(f'[general]\nauthserv_id = "{world.RECEIVER_HOST}"\n'
                      f'[state]\npath = "{tmp_path / "state.db"}"\n{checks}')
    settings = load_settings(config)
    resolver = InMemoryResolver.from_zones(_bench_zones())
    pipeline = Pipeline(settings=settings, resolver=resolver,
                        inbound=build_checks(settings, resolver))
    connection = Connection(client_ip=ipaddress.ip_address(scoring.CLIENT_IP),
                            helo=scoring.CLIENT_NAME)
    transaction = transaction_from_bytes(scoring.generate_spam(), mail_from=scoring.SENDER,
                                         recipients=(scoring.RECIPIENT,), queue_id="Q1")
    verdict = pipeline.evaluate(connection, transaction)
    names = {symbol.name for symbol in verdict.symbols}
    assert {"RBL_SBL", "URIBL_LISTED", "SPF_SOFTFAIL", "DMARC_FAIL", "IPREV_FAIL"} <= names
    status = next(edit.value for edit in verdict.header_edits
                  if isinstance(edit, AppendHeader) and edit.name == "X-Spam-Status")
    found = set(spam_tokens("X-Spam-Status", status))
    assert set(scoring.EXPECT) <= found
    assert verdict.action.value == "accept"  # scored under reject: headers, not a 550


def test_bench_zones_list_the_client_and_the_link_domain() -> None:
    zones = world.zones(None)
    reversed_client = ".".join(reversed(world.LISTED_CLIENT.split(".")))
    assert f"{reversed_client} IN A 127.0.0.2" in zones[world.DNSBL_ZONE]
    assert f"{world.LISTED_LINK_DOMAIN} IN A 127.0.1.2" in zones[world.URIBL_ZONE]
    assert f"deals.{world.LISTED_LINK_DOMAIN}".encode() in scoring.generate_spam()


# --------------------------------------------------------------------------- Rspamd


def test_rspamd_scoring_profile_loads_rules_lists_and_spam_headers(tmp_path: Path) -> None:
    setup = RspamdSetup(tmp_path, SocketSpec("unix", path=str(tmp_path / "m.sock")),
                        "127.0.0.1:5353", profile="scoring", normal_workers=2,
                        dnsbl_zone=world.DNSBL_ZONE, uribl_zone=world.URIBL_ZONE)
    setup.write()
    conf = setup.config.read_text()
    assert 'lua = "$RULESDIR/rspamd.lua"' in conf  # the shipped rules
    assert 'filters = "chartable,dkim,regexp"' in conf
    assert "count = 2;" in conf
    for module in SCORING_MODULES:
        assert f"modules.d/{module}.conf" in conf
    assert "RBL_SBL { weight = 4.0; }" in conf
    rbl = (tmp_path / "override.d" / "rbl.conf").read_text()
    assert f'rbl = "{world.DNSBL_ZONE}"' in rbl and f'rbl = "{world.URIBL_ZONE}"' in rbl
    assert "https://" not in rbl  # no whitelist map from the network
    headers = (tmp_path / "local.d" / "milter_headers.conf").read_text()
    assert '"x-spam-status"' in headers and '"x-spamd-result"' in headers


def test_rspamd_auth_profile_is_unchanged(tmp_path: Path) -> None:
    setup = RspamdSetup(tmp_path, SocketSpec("unix", path=str(tmp_path / "m.sock")),
                        "127.0.0.1:5353")
    setup.write()
    conf = setup.config.read_text()
    assert 'filters = "dkim"' in conf and "rbl.conf" not in conf
    assert "mime = true;\n}" in conf  # the normal worker: Rspamd's default count
    assert not (tmp_path / "override.d" / "rbl.conf").exists()


# --------------------------------------------------------------------------- runs and costs


def _report(target: scoring.ScoringTarget, counts: dict[str, int], messages: int) -> TargetReport:
    result = LoadResult(requests=messages, elapsed=1.0, latency=LatencySummary.of([0.01]),
                        connect_latency=LatencySummary.of([0.001]), outcomes=Counter(
                            {"accept": messages}), errors=Counter(), client_cpu=0.1,
                        sessions=messages)
    result.extra.update({"messages": messages, "spam_results": counts})
    report = TargetReport(target, "unix")
    report.runs.append(Measurement(target.name, "milter", "unix", result, 1.0, 1.0))
    return report


def test_a_run_where_one_message_missed_a_list_fails() -> None:
    full = {"x-spam-status=yes": 10, "symbol=RBL_SBL": 10, "symbol=URIBL_LISTED": 10}
    good = _report(scoring.MailwardScoring(), full, 10)
    scoring.verify_runs(good)
    assert good.status == "ok"
    short = _report(scoring.MailwardScoring(), {**full, "symbol=URIBL_LISTED": 9}, 10)
    scoring.verify_runs(short)
    assert short.status == "failed"
    assert "symbol=URIBL_LISTED on 9 of 10 messages" in short.reason


def test_costs_are_per_message_deltas_of_the_latency_histograms() -> None:
    before = scoring.read_costs(
        'mailward_check_duration_seconds_sum{check="dnsbl"} 0.1\n'
        'mailward_check_duration_seconds_count{check="dnsbl"} 10.0\n'
        "mailward_milter_message_duration_seconds_sum 0.5\n"
        "mailward_milter_message_duration_seconds_count 10.0\n")
    after = scoring.read_costs(
        'mailward_check_duration_seconds_sum{check="dnsbl"} 0.3\n'
        'mailward_check_duration_seconds_bucket{check="dnsbl",le="0.1"} 110.0\n'
        'mailward_check_duration_seconds_count{check="dnsbl"} 110.0\n'
        'mailward_check_duration_seconds_sum{check="spf"} 0.4\n'
        "mailward_milter_message_duration_seconds_sum 1.5\n"
        "mailward_milter_message_duration_seconds_count 110.0\n")
    cost = scoring.cost_between(before, after)
    assert cost.messages == 100
    assert abs(cost.scoring - 0.002) < 1e-9  # dnsbl: 0.2 s over 100 messages
    assert abs(cost.message - 0.01) < 1e-9
    assert "scoring checks 2000 us/msg (dnsbl 2000)" in cost.describe()


def test_w2_goal_is_the_ratio_of_two_ratios_against_one_baseline() -> None:
    lines = goal_lines([
        MeasuredTarget("rspamd-scoring", float("nan"), 0.020),
        MeasuredTarget("mailward-scoring", 1.5, 0.015),
        MeasuredTarget("rspamd-scoring-w2", 1.6, 0.012),
        MeasuredTarget("mailward-scoring-w2", 2.4, 0.012),
    ])
    assert lines == [
        "inbound with spam scoring (issue 10), one process each: mailward-scoring 1.50x "
        "rspamd-scoring (goal >= 1.0x: met); p99 0.75x the reference's (goal <= 1.00x: met)",
        "inbound with spam scoring (issue 10), two processes each: mailward-scoring-w2 1.50x "
        "rspamd-scoring-w2 (goal >= 1.0x: met); p99 1.00x the reference's (goal <= 1.00x: met)",
    ]


def test_rspamd_task_times_read_only_what_was_logged_since(tmp_path: Path) -> None:
    log = tmp_path / "rspamd.log"
    line = ("2026-12-03 13:18:01 #26471(normal) <72254c>; task; rspamd_task_write_log: id: "
            "<x@example>, (default: T (add header): [12.60/15.00] [RBL_SBL(4.00)]), len: 4389, "
            "time: {ms}ms, dns req: 3, digest: <1c>\n")
    log.write_text(line.format(ms="20.000") + "2026-12-03 other line\n")
    times, offset = scoring.rspamd_task_times(log, 0)
    assert times == [0.02]
    with log.open("a") as handle:
        handle.write(line.format(ms="5.500") + line.format(ms="4.500"))
    times, _ = scoring.rspamd_task_times(log, offset)
    assert times == [0.0055, 0.0045]
    assert scoring.rspamd_task_times(tmp_path / "missing.log", 7) == ([], 7)
