"""DMARC check: records, policy discovery, alignment, dispositions, From handling, A-R."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import authres as authres_lib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.authresults import format_header
from mailward.checks.dmarc import (
    AlignmentMode,
    Disposition,
    DkimEvidence,
    DmarcEvaluator,
    DmarcOutcome,
    DmarcResult,
    PolicyOverride,
    PolicyTag,
    auth_result,
    domain_exists,
    parse_record,
)
from mailward.checks.spf import SpfIdentity, SpfOutcome, SpfResult
from mailward.config import (
    ConfigError,
    DmarcSettings,
    MissingFromAction,
    MultipleFromAction,
    parse_settings,
)
from mailward.dns import InMemoryResolver
from mailward.fromheader import MAX_FROM_LENGTH, FromProblem, author_domains
from mailward.model import AuthProperty, Header, Transaction
from tests.support.evidence import SpfEvidence

ZONES = {
    "example.com": """
_dmarc          TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com"
@               A   192.0.2.1
mail            A   192.0.2.2
txtonly         TXT "exists, but has no address"
""",
    "strict.test": """
_dmarc          TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
@               A   192.0.2.3
mail            A   192.0.2.4
""",
    "np.test": """
_dmarc          TXT "v=DMARC1; p=reject; sp=none; np=quarantine"
@               A   192.0.2.5
real            A   192.0.2.6
""",
    "nonp.test": """
_dmarc          TXT "v=DMARC1; p=quarantine; sp=none"
@               A   192.0.2.7
""",
    "none.test": """
_dmarc          TXT "v=DMARC1; p=none"
@               A   192.0.2.8
""",
    "other.com": "@ A 192.0.2.9\n",
}

FROM = " Joe <joe@example.com>"


def make_resolver(extra: dict[str, str] | None = None) -> InMemoryResolver:
    return InMemoryResolver.from_zones({**ZONES, **(extra or {})})


def evaluator(
    resolver: InMemoryResolver | None = None,
    random_source: Callable[[], float] | None = None,
    **options: object,
) -> DmarcEvaluator:
    return DmarcEvaluator(
        resolver or make_resolver(), DmarcSettings(**options),  # type: ignore[arg-type]
        random=random_source,
    )


def spf(domain: str, result: str = "pass") -> SpfEvidence:
    return SpfEvidence(domain, result)


def dkim(domain: str, result: str = "pass") -> DkimEvidence:
    return DkimEvidence(domain, result, "s1")


class NoRandom:
    """A random source that must not be consulted."""

    calls = 0

    def __call__(self) -> float:
        self.calls += 1
        raise AssertionError("pct sampling consulted the random source")


# --------------------------------------------------------------------------- records


def test_parse_full_record():
    record = parse_record(
        "v=DMARC1; p=Reject; sp=quarantine; np=REJECT; adkim=s; aspf=r; pct=50; t=n; psd=n; "
        "rua=mailto:a@example.com, mailto:b@example.net; ruf=mailto:f@example.com; fo=1"
    )
    assert record.usable and record.problems == ()
    assert (record.p, record.sp, record.np) == (
        Disposition.REJECT, Disposition.QUARANTINE, Disposition.REJECT
    )
    assert (record.adkim, record.aspf) == (AlignmentMode.STRICT, AlignmentMode.RELAXED)
    assert (record.pct, record.t, record.psd) == (50, False, "n")
    assert record.rua == ("mailto:a@example.com", "mailto:b@example.net")
    assert record.ruf == ("mailto:f@example.com",)


def test_defaults_and_inheritance():
    record = parse_record("v=DMARC1; p=quarantine")
    assert (record.adkim, record.aspf, record.pct, record.t, record.psd) == (
        AlignmentMode.RELAXED, AlignmentMode.RELAXED, None, None, "u"
    )
    assert record.policy(PolicyTag.SP) is Disposition.QUARANTINE
    assert record.policy(PolicyTag.NP) is Disposition.QUARANTINE
    with_sp = parse_record("v=DMARC1; p=reject; sp=none")
    assert with_sp.policy(PolicyTag.NP) is Disposition.NONE  # np falls back to sp first


def test_missing_p_is_none():
    record = parse_record("v=DMARC1; rua=mailto:a@example.com")
    assert record.usable and record.p is Disposition.NONE


def test_unknown_tags_and_junk_are_ignored_and_noted():
    record = parse_record("v=DMARC1; p=reject; foo=bar; this is junk; p=none; x=; =y")
    assert record.usable and record.p is Disposition.REJECT  # the first p wins
    joined = " | ".join(record.problems)
    assert "unknown tag foo=" in joined and "'this is junk'" in joined
    assert "duplicate p=" in joined and "unknown tag x=" in joined and "'=y'" in joined


def test_invalid_p_without_rua_makes_the_record_unusable():
    record = parse_record("v=DMARC1; p=rejectt")
    assert not record.usable
    assert "record unusable" in record.problems[-1]


@pytest.mark.parametrize(
    "text",
    ["v=DMARC1; p=bogus; rua=mailto:a@example.com",
     "v=DMARC1; p=reject; sp=quarantin; rua=mailto:a@example.com",
     "v=DMARC1; p=reject; np=x; rua=mailto:a@example.com!10m"],
)
def test_invalid_policy_with_rua_is_p_none(text: str):
    record = parse_record(text)
    assert record.usable
    assert (record.p, record.sp, record.np) == (Disposition.NONE, None, None)
    assert "treated as p=none" in record.problems[-1]


def test_invalid_optional_values_fall_back_to_defaults():
    record = parse_record("v=DMARC1; p=reject; adkim=x; aspf=strict; pct=101; t=maybe; psd=q")
    assert record.usable
    assert (record.adkim, record.aspf, record.pct, record.t, record.psd) == (
        AlignmentMode.RELAXED, AlignmentMode.RELAXED, None, None, "u"
    )
    assert len(record.problems) == 5


def test_problem_list_is_bounded():
    record = parse_record("v=DMARC1; p=none; " + "; ".join(f"x{i}=1" for i in range(50)))
    assert len(record.problems) == 9 and record.problems[-1] == "and 42 more"


def test_not_a_dmarc_record():
    assert not parse_record("v=spf1 -all").usable


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_parse_record_never_raises(text: str):
    for candidate in (text, "v=DMARC1;" + text, "v=DMARC1; p=reject;" + text):
        record = parse_record(candidate)
        assert record.text == candidate
        assert len(record.problems) <= 9


# --------------------------------------------------------------------------- discovery


def test_record_at_the_author_domain_applies_p():
    outcome = evaluator().evaluate([FROM], spf("other.com"))
    assert outcome.result is DmarcResult.FAIL
    assert (outcome.policy_domain, outcome.applied_policy) == ("example.com", PolicyTag.P)
    assert outcome.requested_disposition is Disposition.REJECT
    assert not outcome.rests_on_temperror and outcome.from_problem is None
    assert outcome.from_domains == ("example.com",)


def test_organizational_record_applies_sp_to_a_subdomain():
    res = make_resolver()
    outcome = evaluator(res).evaluate([" joe@mail.example.com"], spf("other.com"))
    assert (outcome.result, outcome.policy_domain, outcome.org_domain) == (
        DmarcResult.FAIL, "example.com", "example.com"
    )
    assert outcome.applied_policy is PolicyTag.SP
    assert outcome.requested_disposition is Disposition.QUARANTINE
    # np is not set, so existence was never checked.
    assert not [q for q in res.queries if q[1] in ("A", "AAAA", "MX")]


def test_deep_subdomain_walks_up_to_the_organizational_record():
    res = make_resolver()
    outcome = evaluator(res).evaluate([" joe@a.b.c.example.com"], spf("other.com"))
    assert outcome.policy_domain == "example.com" and outcome.applied_policy is PolicyTag.SP
    assert [q[0] for q in res.queries if q[1] == "TXT"] == [
        "_dmarc.a.b.c.example.com", "_dmarc.b.c.example.com", "_dmarc.c.example.com",
        "_dmarc.example.com", "_dmarc.com",
    ]


def test_intermediate_record_is_not_the_policy_of_a_deeper_domain():
    # RFC 9989 4.10.1: the author domain's record, else the Organizational Domain's.
    res = make_resolver({"b.example.com": '_dmarc TXT "v=DMARC1; p=none"\n'})
    outcome = evaluator(res).evaluate([" joe@a.b.example.com"], spf("other.com"))
    assert outcome.policy_domain == "example.com"
    assert outcome.requested_disposition is Disposition.QUARANTINE


def test_psd_n_makes_a_subdomain_its_own_organization():
    res = make_resolver({"c.example.com": '_dmarc TXT "v=DMARC1; p=none; sp=reject; psd=n"\n'})
    outcome = evaluator(res).evaluate([" joe@a.c.example.com"], spf("other.com"))
    assert (outcome.policy_domain, outcome.org_domain) == ("c.example.com", "c.example.com")
    assert outcome.requested_disposition is Disposition.REJECT
    # and mail signed by the parent does not align with it
    aligned = evaluator(res).evaluate([" joe@a.c.example.com"], None, [dkim("example.com")])
    assert aligned.result is DmarcResult.FAIL


def test_public_suffix_operator_policy_applies_when_the_organization_has_none():
    res = make_resolver({"psd": '_dmarc TXT "v=DMARC1; p=none; sp=reject; psd=y"\n'
                                'org A 192.0.2.10\nsub.org A 192.0.2.11\n'})
    outcome = evaluator(res).evaluate([" joe@sub.org.psd"], spf("sub.org.psd", "fail"))
    assert (outcome.result, outcome.policy_domain, outcome.org_domain) == (
        DmarcResult.FAIL, "psd", "org.psd"
    )
    assert outcome.requested_disposition is Disposition.REJECT
    # the organization's own subdomains align with each other under the PSD
    passed = evaluator(res).evaluate([" joe@sub.org.psd"], spf("bounce.org.psd"))
    assert passed.result is DmarcResult.PASS


def test_no_record_anywhere_is_none():
    res = make_resolver()
    outcome = evaluator(res).evaluate([" joe@other.com"], spf("other.com", "fail"))
    assert outcome.result is DmarcResult.NONE
    assert outcome.record is None and outcome.requested_disposition is Disposition.NONE
    assert outcome.org_domain == "other.com" and outcome.reason == "no DMARC record"


def test_multiple_records_at_the_author_domain_are_discarded():
    res = make_resolver({"multi.example.com": '_dmarc TXT "v=DMARC1; p=none"\n'
                                              '_dmarc TXT "v=DMARC1; p=reject"\n'})
    outcome = evaluator(res).evaluate([" joe@multi.example.com"], spf("other.com"))
    # Walk on to the Organizational Domain, whose sp applies.
    assert outcome.policy_domain == "example.com"
    assert outcome.requested_disposition is Disposition.QUARANTINE


def test_multiple_records_and_nothing_else_is_none():
    res = InMemoryResolver.from_zones({"multi.test": '_dmarc TXT "v=DMARC1; p=none"\n'
                                                     '_dmarc TXT "v=DMARC1; p=reject"\n'})
    outcome = evaluator(res).evaluate([" joe@multi.test"], spf("other.com"))
    assert outcome.result is DmarcResult.NONE
    assert "multiple DMARC records at _dmarc.multi.test discarded" in outcome.reason


def test_txt_split_oddly_is_joined():
    res = InMemoryResolver.from_zones({"split.test": (
        '_dmarc TXT "v=DM" "ARC1; p" "=rej" "ect; a" "dkim=s"\n'
        '_dmarc TXT "some other text"\n'
    )})
    outcome = evaluator(res).evaluate([" joe@split.test"], None, [dkim("mail.split.test")])
    assert outcome.result is DmarcResult.FAIL
    assert outcome.record is not None and outcome.record.adkim is AlignmentMode.STRICT
    assert outcome.requested_disposition is Disposition.REJECT


def test_unusable_record_is_permerror_without_a_disposition():
    res = InMemoryResolver.from_zones({"junk.test": '_dmarc TXT "v=DMARC1; p=always; x=1"\n'})
    outcome = evaluator(res).evaluate([" joe@junk.test"], spf("other.com"))
    assert outcome.result is DmarcResult.PERMERROR
    assert outcome.requested_disposition is Disposition.NONE
    assert outcome.reason == "unusable DMARC record at _dmarc.junk.test"
    assert not outcome.rests_on_temperror


def test_junk_record_with_rua_is_enforced_as_none(caplog: pytest.LogCaptureFixture):
    res = InMemoryResolver.from_zones({"junk.test": (
        '_dmarc TXT "v=DMARC1; p=always; rua=mailto:r@junk.test; nonsense; z=1"\n'
    )})
    with caplog.at_level("INFO", logger="mailward.dmarc"):
        outcome = evaluator(res).evaluate([" joe@junk.test"], spf("other.com"))
    assert outcome.result is DmarcResult.FAIL
    assert outcome.requested_disposition is Disposition.NONE
    assert "record at _dmarc.junk.test" in caplog.text and "nonsense" in caplog.text


# --------------------------------------------------------------------------- np


def test_np_applies_to_a_non_existent_subdomain():
    res = make_resolver()
    outcome = evaluator(res).evaluate([" joe@ghost.np.test"], spf("other.com"))
    assert outcome.applied_policy is PolicyTag.NP
    assert outcome.requested_disposition is Disposition.QUARANTINE
    assert [q for q in res.queries if q[0] == "ghost.np.test"] == [
        ("ghost.np.test", "A"), ("ghost.np.test", "AAAA"), ("ghost.np.test", "MX")
    ]


def test_sp_applies_to_an_existing_subdomain():
    outcome = evaluator().evaluate([" joe@real.np.test"], spf("other.com"))
    assert outcome.applied_policy is PolicyTag.SP
    assert outcome.requested_disposition is Disposition.NONE


def test_a_name_with_only_other_records_exists():
    res = make_resolver({"np2.test": '_dmarc TXT "v=DMARC1; p=reject; sp=none; np=reject"\n'
                                     'txt TXT "hello"\n'})
    outcome = evaluator(res).evaluate([" joe@txt.np2.test"], spf("other.com"))
    assert outcome.applied_policy is PolicyTag.SP  # NODATA for A: the name exists


def test_np_is_not_checked_for_the_author_domains_own_record():
    res = make_resolver()
    outcome = evaluator(res).evaluate([" joe@np.test"], spf("other.com"))
    assert outcome.applied_policy is PolicyTag.P
    assert not [q for q in res.queries if q[1] != "TXT"]


def test_np_without_np_tag_uses_sp_for_non_existent_domains():
    outcome = evaluator().evaluate([" joe@ghost.nonp.test"], spf("other.com"))
    assert outcome.applied_policy is PolicyTag.SP
    assert outcome.requested_disposition is Disposition.NONE


def test_existence_unknown_asks_for_the_stricter_policy_and_rests_on_temperror():
    res = make_resolver()
    res.fail("ghost.np.test")
    outcome = evaluator(res).evaluate([" joe@ghost.np.test"], spf("other.com"))
    assert outcome.result is DmarcResult.FAIL
    assert outcome.applied_policy is PolicyTag.NP
    assert outcome.requested_disposition is Disposition.QUARANTINE
    assert outcome.rests_on_temperror
    assert "DNS error checking whether ghost.np.test exists" in outcome.reason


def test_domain_exists():
    res = make_resolver()
    assert domain_exists(res, "mail.example.com") is True
    assert domain_exists(res, "txtonly.example.com") is True
    assert domain_exists(res, "ghost.example.com") is False
    res.fail("broken.example.com")
    assert domain_exists(res, "broken.example.com") is None
    res.fail("half.example.com", "AAAA")
    assert domain_exists(res, "half.example.com") is False  # NXDOMAIN settles it


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize(
    ("from_value", "spf_domain", "result"),
    [
        (FROM, "example.com", DmarcResult.PASS),
        (FROM, "bounce.example.com", DmarcResult.PASS),  # relaxed
        (" joe@mail.example.com", "example.com", DmarcResult.PASS),
        (FROM, "example.com.evil.test", DmarcResult.FAIL),
        (FROM, "other.com", DmarcResult.FAIL),
        (" joe@strict.test", "strict.test", DmarcResult.PASS),
        (" joe@strict.test", "mail.strict.test", DmarcResult.FAIL),  # aspf=s
        (" joe@mail.strict.test", "strict.test", DmarcResult.FAIL),
    ],
)
def test_spf_alignment(from_value: str, spf_domain: str, result: DmarcResult):
    outcome = evaluator().evaluate([from_value], spf(spf_domain))
    assert outcome.result is result
    assert outcome.spf_aligned is (result is DmarcResult.PASS)
    assert not outcome.dkim_aligned


@pytest.mark.parametrize(
    ("from_value", "dkim_domain", "result"),
    [
        (FROM, "example.com", DmarcResult.PASS),
        (FROM, "Mail.Example.COM", DmarcResult.PASS),
        (FROM, "example.net", DmarcResult.FAIL),
        (" joe@strict.test", "strict.test", DmarcResult.PASS),
        (" joe@strict.test", "mail.strict.test", DmarcResult.FAIL),  # adkim=s
    ],
)
def test_dkim_alignment(from_value: str, dkim_domain: str, result: DmarcResult):
    outcome = evaluator().evaluate([from_value], None, [dkim(dkim_domain)])
    assert outcome.result is result
    assert outcome.dkim_aligned is (result is DmarcResult.PASS)


def test_only_passing_identifiers_count():
    outcome = evaluator().evaluate(
        [FROM], spf("example.com", "softfail"),
        [dkim("example.com", "fail"), dkim("example.com", "neutral"),
         dkim("example.com", "policy")],
    )
    assert outcome.result is DmarcResult.FAIL
    assert outcome.reason == "SPF and DKIM did not pass"
    assert [a.aligned for a in outcome.alignments] == [False] * 4


def test_one_aligned_signature_among_others_passes():
    outcome = evaluator().evaluate(
        [FROM], spf("other.com"), [dkim("sender.net"), dkim("mail.example.com")]
    )
    assert outcome.result is DmarcResult.PASS
    assert outcome.aligned_by == ("dkim:mail.example.com",)
    assert [a.selector for a in outcome.alignments if a.method == "dkim"] == ["s1", "s1"]


def test_failure_reason_names_the_unaligned_passes():
    outcome = evaluator().evaluate([FROM], spf("other.com"), [dkim("sender.net")])
    assert outcome.reason == "not aligned: spf pass for other.com, dkim pass for sender.net"
    assert evaluator().evaluate([FROM]).reason == "no SPF or DKIM result to align"


def test_unrelated_domains_are_decided_without_walking_them():
    res = make_resolver()
    evaluator(res).evaluate([FROM], spf("bounce.sender.net"), [dkim("other.com")])
    txt = [q[0] for q in res.queries if q[1] == "TXT"]
    assert "_dmarc.bounce.sender.net" not in txt  # another top-level domain
    assert "_dmarc.other.com" not in txt  # not under the From's organizational domain


def test_spf_outcome_from_the_spf_check_is_accepted():
    outcome_spf = SpfOutcome(
        SpfResult.PASS, SpfIdentity.MAILFROM, "bounce.example.com",
        "bounce@bounce.example.com", ipaddress.ip_address("192.0.2.1"), "mx.example.com",
    )
    outcome = evaluator().evaluate([FROM], outcome_spf)
    assert outcome.result is DmarcResult.PASS and outcome.spf_aligned
    none_domain = SpfOutcome(
        SpfResult.NONE, SpfIdentity.MAILFROM, "", "x@[1.2.3.4]",
        ipaddress.ip_address("192.0.2.1"), "mx",
    )
    assert evaluator().evaluate([FROM], none_domain).result is DmarcResult.FAIL


# --------------------------------------------------------------------------- temperror


def test_temperror_on_the_record_lookup():
    res = make_resolver()
    res.fail("_dmarc.example.com")
    outcome = evaluator(res).evaluate([FROM], spf("other.com"))
    assert outcome.result is DmarcResult.TEMPERROR and outcome.rests_on_temperror
    assert outcome.record is None and outcome.requested_disposition is Disposition.NONE
    assert "_dmarc.example.com" in outcome.reason


def test_temperror_during_the_policy_walk():
    res = make_resolver()
    res.fail("_dmarc.example.com")
    outcome = evaluator(res).evaluate([" joe@mail.example.com"], spf("other.com"))
    assert outcome.result is DmarcResult.TEMPERROR and outcome.rests_on_temperror
    assert "tree walk" in outcome.reason


def test_aligned_dkim_temperror_makes_the_failure_temporary():
    outcome = evaluator().evaluate([FROM], spf("other.com"), [dkim("example.com", "temperror")])
    assert outcome.result is DmarcResult.TEMPERROR and outcome.rests_on_temperror
    # What a failure would ask for, so the pipeline answers 451 rather than 550.
    assert outcome.requested_disposition is Disposition.REJECT
    assert "dkim temperror for example.com" in outcome.reason


def test_aligned_spf_temperror_makes_the_failure_temporary():
    outcome = evaluator().evaluate([FROM], spf("bounce.example.com", "temperror"))
    assert outcome.result is DmarcResult.TEMPERROR and outcome.rests_on_temperror


def test_unaligned_temperror_cannot_change_a_failure():
    outcome = evaluator().evaluate(
        [FROM], spf("other.com", "temperror"), [dkim("x.net", "temperror")]
    )
    assert outcome.result is DmarcResult.FAIL and not outcome.rests_on_temperror
    assert outcome.requested_disposition is Disposition.REJECT


def test_temperror_does_not_spoil_a_pass():
    outcome = evaluator().evaluate(
        [FROM], spf("example.com", "temperror"), [dkim("example.com")]
    )
    assert outcome.result is DmarcResult.PASS and not outcome.rests_on_temperror


def test_temperror_in_an_organizational_domain_walk():
    res = make_resolver()
    res.fail("_dmarc.com")
    ev = evaluator(res)
    # From example.com (record at the author domain); its org walk fails at _dmarc.com.
    # A DKIM domain under it still aligns by the PSL, flagged uncertain.
    passed = ev.evaluate([FROM], None, [dkim("mail.example.com")])
    assert passed.result is DmarcResult.PASS
    assert passed.alignments[0].uncertain
    # A domain the PSL puts elsewhere might have aligned had the walk finished.
    failed = ev.evaluate([FROM], None, [dkim("other.com")])
    assert failed.result is DmarcResult.TEMPERROR and failed.rests_on_temperror
    assert failed.requested_disposition is Disposition.REJECT


# --------------------------------------------------------------------------- pct, t


def test_pct_100_and_absent_never_sample():
    no_random = NoRandom()
    res = make_resolver({"full.test": '_dmarc TXT "v=DMARC1; p=reject; pct=100"\n'})
    ev = evaluator(res, no_random)
    assert ev.evaluate([" a@full.test"]).requested_disposition is Disposition.REJECT
    assert ev.evaluate([FROM]).requested_disposition is Disposition.REJECT
    assert no_random.calls == 0


def test_pct_0_samples_every_message_out():
    res = make_resolver({"zero.test": '_dmarc TXT "v=DMARC1; p=reject; pct=0"\n'})
    outcome = evaluator(res, random.Random(1).random).evaluate([" a@zero.test"])
    assert outcome.result is DmarcResult.FAIL
    assert outcome.requested_disposition is Disposition.QUARANTINE
    assert outcome.override is PolicyOverride.SAMPLED_OUT
    assert outcome.published_disposition is Disposition.REJECT


def test_pct_50_applies_to_about_half_with_a_seeded_random():
    res = make_resolver({"half.test": '_dmarc TXT "v=DMARC1; p=quarantine; pct=50"\n'})
    ev = evaluator(res, random.Random(7).random)
    outcomes = [ev.evaluate([" a@half.test"]) for _ in range(1000)]
    applied = sum(o.requested_disposition is Disposition.QUARANTINE for o in outcomes)
    assert 440 <= applied <= 560
    sampled = [o for o in outcomes if o.requested_disposition is Disposition.NONE]
    assert all(o.override is PolicyOverride.SAMPLED_OUT for o in sampled)
    assert len(sampled) == 1000 - applied


@pytest.mark.parametrize(("draw", "applied"), [(0.0, True), (0.4999, True), (0.5, False)])
def test_pct_threshold(draw: float, applied: bool):
    res = make_resolver({"half.test": '_dmarc TXT "v=DMARC1; p=reject; pct=50"\n'})
    outcome = evaluator(res, lambda: draw).evaluate([" a@half.test"])
    expected = Disposition.REJECT if applied else Disposition.QUARANTINE
    assert outcome.requested_disposition is expected


def test_p_none_failure_does_not_sample():
    no_random = NoRandom()
    res = make_resolver({"nopct.test": '_dmarc TXT "v=DMARC1; p=none; pct=10"\n'})
    outcome = evaluator(res, no_random).evaluate([" a@nopct.test"])
    assert outcome.result is DmarcResult.FAIL and outcome.requested_disposition is Disposition.NONE
    assert outcome.override is None


@pytest.mark.parametrize(
    ("record", "expected"),
    [("v=DMARC1; p=reject; t=y", Disposition.QUARANTINE),
     ("v=DMARC1; p=quarantine; t=y", Disposition.NONE),
     ("v=DMARC1; p=reject; t=y; pct=100", Disposition.QUARANTINE)],
)
def test_testing_mode_lowers_the_policy_one_step(record: str, expected: Disposition):
    res = make_resolver({"t.test": f'_dmarc TXT "{record}"\n'})
    outcome = evaluator(res, NoRandom()).evaluate([" a@t.test"])
    assert outcome.requested_disposition is expected
    assert outcome.override is PolicyOverride.TESTING


def test_t_tag_makes_pct_irrelevant():
    res = make_resolver({"t.test": '_dmarc TXT "v=DMARC1; p=reject; t=n; pct=0"\n'})
    outcome = evaluator(res, NoRandom()).evaluate([" a@t.test"])
    assert outcome.requested_disposition is Disposition.REJECT and outcome.override is None


def test_reject_downgrade_is_a_local_policy_override():
    ev = evaluator(reject_downgrade=True)
    outcome = ev.evaluate([FROM])
    assert outcome.requested_disposition is Disposition.QUARANTINE
    assert outcome.override is PolicyOverride.LOCAL_POLICY
    sub = ev.evaluate([" joe@mail.example.com"])  # sp=quarantine: unchanged
    assert sub.requested_disposition is Disposition.QUARANTINE and sub.override is None


def test_pass_requests_nothing():
    outcome = evaluator(random_source=NoRandom()).evaluate([FROM], spf("example.com"))
    assert outcome.result is DmarcResult.PASS
    assert outcome.requested_disposition is Disposition.NONE and outcome.override is None


# --------------------------------------------------------------------------- From


def test_no_from_header_is_rejected_by_default():
    outcome = evaluator().evaluate([], spf("example.com"))
    assert outcome.result is DmarcResult.PERMERROR
    assert outcome.from_problem is FromProblem.MISSING
    assert outcome.requested_disposition is Disposition.REJECT
    assert outcome.reason == "no From header" and outcome.from_domain == ""


def test_no_from_header_accepted_by_configuration():
    outcome = evaluator(missing_from=MissingFromAction.ACCEPT).evaluate([])
    assert outcome.result is DmarcResult.NONE
    assert outcome.from_problem is FromProblem.MISSING
    assert outcome.requested_disposition is Disposition.NONE


def test_message_without_headers():
    transaction = Transaction(None, "a@example.com", ("b@example.net",), headers=())
    outcome = evaluator().evaluate_transaction(transaction, spf("example.com"))
    assert outcome.from_problem is FromProblem.MISSING


def test_from_is_read_from_the_transaction():
    transaction = Transaction(
        None, "a@example.com", ("b@example.net",),
        headers=(Header("Subject", " hi"), Header("FROM", " Joe\r\n <joe@example.com>")),
    )
    outcome = evaluator().evaluate_transaction(transaction, None, [dkim("example.com")])
    assert outcome.result is DmarcResult.PASS and outcome.from_domain == "example.com"


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("", "From header has no address"),
        (" undisclosed-recipients:;", "From header has no address"),
        (" joe", "malformed From header: addr-spec local part with no domain"),
        (" <>", "malformed From header"),
        (" joe@", "unparseable From header (IndexError)"),
        (" joe@[192.0.2.1]", "From address without a usable domain: [192.0.2.1]"),
        (" joe@localhost", "From address without a usable domain: localhost"),
        (" joe@192.0.2.1", "From address without a usable domain: 192.0.2.1"),
        (" joe@example.com\udcff", "From address without a usable domain: example.com?"),
        (" joe@example.com; evil@evil.test", "malformed From header"),
        (" joe@example.com <evil@evil.test>", "malformed From header"),
        (" Smith, Joe <joe@example.com>", "malformed From header"),
        (" <joe@example.com", "malformed From header"),
        (" joe@exa\x00mple.com", "malformed From header"),
        (" " + "(" * 1500 + "joe@example.com", "unparseable From header (RecursionError)"),
        (" " + "a" * MAX_FROM_LENGTH + "@example.com", "From header longer than"),
    ],
)
def test_unusable_from_is_invalid(value: str, detail: str, caplog: pytest.LogCaptureFixture):
    with caplog.at_level("INFO", logger="mailward.dmarc"):
        outcome = evaluator().evaluate([value], spf("example.com"))
    assert outcome.from_problem is FromProblem.INVALID
    assert outcome.reason.startswith(detail)
    assert outcome.result is DmarcResult.PERMERROR
    assert outcome.requested_disposition is Disposition.REJECT
    assert "invalid From" in caplog.text


def test_invalid_from_accepted_by_configuration():
    outcome = evaluator(missing_from=MissingFromAction.ACCEPT).evaluate([" joe@"])
    assert (outcome.result, outcome.requested_disposition) == (DmarcResult.NONE, Disposition.NONE)
    assert outcome.from_problem is FromProblem.INVALID


@pytest.mark.parametrize(
    "value",
    [
        ' "Joe Q. Public" <joe@example.com>',
        " Joe Q. Public <joe@example.com>",  # obsolete but unambiguous
        " joe@example.com (Joe)",
        " Pete(A nice \\) chap) <joe(his account)@example.com(his host)>",
        " =?utf-8?q?J=C3=B6e?= <joe@example.com>",
        " =?utf-8?b?ZXZpbEBldmlsLnRlc3Q=?= <joe@example.com>",  # an address-like name
        " Team: joe@example.com, ann@example.com;",
        " joe@example.com, ann@EXAMPLE.com",  # one domain: evaluated once
        " Joe\r\n\t<joe@example.com>",
        " J\udcf6e <joe@example.com>",  # a raw Latin-1 byte in the display name
        " <@relay.test:joe@example.com>",  # an obsolete route
    ],
)
def test_unusual_but_unambiguous_from_is_evaluated(value: str):
    outcome = evaluator().evaluate([value], None, [dkim("example.com")])
    assert outcome.from_problem is None
    assert (outcome.result, outcome.from_domain) == (DmarcResult.PASS, "example.com")


def test_encoded_word_display_name_without_space_is_evaluated():
    """Issue 9, finding 3: this valid From was a permerror, and so a 550."""
    value = " =?UTF-8?B?QmVkIEJhdGggJiBCZXlvbmQ=?=<BdBth&Byond@example.com>"
    outcome = evaluator().evaluate([value], spf("example.com"))
    assert outcome.from_problem is None, outcome.reason
    assert (outcome.result, outcome.from_domain) == (DmarcResult.PASS, "example.com")
    assert outcome.requested_disposition is Disposition.NONE


def test_non_ascii_from_domain_is_evaluated_in_a_labels(caplog: pytest.LogCaptureFixture):
    res = make_resolver({"xn--exmple-cua.test": '_dmarc TXT "v=DMARC1; p=reject"\n'})
    with caplog.at_level("INFO", logger="mailward.dmarc"):
        outcome = evaluator(res).evaluate(
            [" J\u00f6e <j\u00f6e@ex\u00e4mple.test>"], None, [dkim("ex\u00e4mple.test")]
        )
    assert outcome.result is DmarcResult.PASS
    assert outcome.from_domain == "xn--exmple-cua.test"
    assert "non-ASCII From domain evaluated as xn--exmple-cua.test" in caplog.text
    failed = evaluator(res).evaluate([" j\u00f6e@EX\u00c4MPLE.test"], spf("other.com"))
    assert failed.result is DmarcResult.FAIL and failed.policy_domain == "xn--exmple-cua.test"


def test_multiple_from_headers_are_rejected_by_default():
    outcome = evaluator().evaluate([FROM, FROM], None, [dkim("example.com")])
    assert outcome.from_problem is FromProblem.MULTIPLE
    assert outcome.result is DmarcResult.PERMERROR
    assert outcome.requested_disposition is Disposition.REJECT
    assert outcome.reason == "2 From headers" and outcome.from_domains == ("example.com",)


def test_one_from_with_two_domains_is_multiple():
    outcome = evaluator().evaluate([" joe@example.com, ann@other.com"])
    assert outcome.from_problem is FromProblem.MULTIPLE
    assert outcome.reason == "From has addresses in 2 domains"
    assert outcome.from_domains == ("example.com", "other.com")


def test_multiple_from_accepted_by_configuration():
    outcome = evaluator(multiple_from=MultipleFromAction.ACCEPT).evaluate([FROM, " a@other.com"])
    assert (outcome.result, outcome.requested_disposition) == (DmarcResult.NONE, Disposition.NONE)
    assert outcome.from_problem is FromProblem.MULTIPLE


def test_evaluate_each_takes_the_strictest_domain():
    ev = evaluator(multiple_from=MultipleFromAction.EVALUATE_EACH)
    outcome = ev.evaluate([" joe@none.test", " ann@example.com"], spf("other.com"))
    assert outcome.from_problem is FromProblem.MULTIPLE
    assert [p.from_domain for p in outcome.parts] == ["none.test", "example.com"]
    assert (outcome.result, outcome.from_domain, outcome.requested_disposition) == (
        DmarcResult.FAIL, "example.com", Disposition.REJECT
    )
    assert outcome.reason == "2 From headers; example.com: not aligned: spf pass for other.com"


def test_evaluate_each_passes_only_when_every_domain_passes():
    ev = evaluator(multiple_from=MultipleFromAction.EVALUATE_EACH)
    both = ev.evaluate([" joe@example.com, ann@none.test"], None,
                       [dkim("example.com"), dkim("none.test")])
    assert both.result is DmarcResult.PASS and len(both.parts) == 2
    one = ev.evaluate([" joe@example.com, ann@other.com"], None, [dkim("example.com")])
    assert one.result is DmarcResult.NONE and one.from_domain == "other.com"


def test_evaluate_each_prefers_a_certain_failure_to_an_uncertain_one():
    ev = evaluator(multiple_from=MultipleFromAction.EVALUATE_EACH)
    outcome = ev.evaluate(
        [" joe@example.com, ann@strict.test"], None,
        [dkim("example.com", "temperror"), dkim("x.net")],
    )
    assert [p.result for p in outcome.parts] == [DmarcResult.TEMPERROR, DmarcResult.FAIL]
    assert outcome.result is DmarcResult.FAIL and not outcome.rests_on_temperror


def test_evaluate_each_has_a_bound():
    ev = evaluator(multiple_from=MultipleFromAction.EVALUATE_EACH)
    many = [f" a@d{i}.example.com" for i in range(9)]
    outcome = ev.evaluate(many)
    assert outcome.result is DmarcResult.PERMERROR
    assert outcome.requested_disposition is Disposition.REJECT
    assert "too many to evaluate" in outcome.reason
    assert author_domains([FROM] * 17).domains == ()


@given(st.lists(st.text(max_size=120), max_size=3))
@settings(max_examples=300, deadline=None)
def test_any_from_values_give_a_defined_outcome(values: list[str]):
    outcome = evaluator(InMemoryResolver()).evaluate(values, spf("example.com"))
    assert isinstance(outcome, DmarcOutcome)
    if outcome.from_problem is None:
        assert outcome.from_domain.isascii() and outcome.result is DmarcResult.NONE
    auth_result(outcome)  # always reportable


@given(st.from_regex(r" [a-z]{1,5}@[a-z\u00e0-\u00ff.\-]{1,20}", fullmatch=True))
@settings(max_examples=200, deadline=None)
def test_domain_like_from_values_give_a_defined_outcome(value: str):
    outcome = evaluator(InMemoryResolver()).evaluate([value])
    assert outcome.result in (DmarcResult.NONE, DmarcResult.PERMERROR)


# --------------------------------------------------------------------------- A-R


def _parsed(outcome: DmarcOutcome) -> tuple[str, str | None, dict[str, str]]:
    value = format_header("mx.example.net", [auth_result(outcome)])
    header = authres_lib.AuthenticationResultsHeader.parse_value(value.replace("\n\t", " "))
    (result,) = header.results
    properties = {f"{p.type}.{p.name}": p.value for p in result.properties}
    return result.result, result.reason, properties


def test_auth_result_for_a_pass():
    outcome = evaluator().evaluate([FROM], spf("example.com"))
    assert auth_result(outcome).properties == (
        AuthProperty("header", "from", "example.com"), AuthProperty("policy", "dmarc", "none"),
    )
    assert _parsed(outcome) == (
        "pass", None, {"header.from": "example.com", "policy.dmarc": "none"}
    )


def test_auth_result_for_a_failure():
    outcome = evaluator().evaluate([" joe@mail.example.com"], spf("other.com"))
    result, reason, properties = _parsed(outcome)
    assert result == "fail" and reason is not None and "not aligned" in reason
    assert properties == {"header.from": "mail.example.com", "policy.dmarc": "quarantine"}


def test_auth_result_for_a_temperror_has_no_policy():
    outcome = evaluator().evaluate([FROM], None, [dkim("example.com", "temperror")])
    result, _reason, properties = _parsed(outcome)
    assert result == "temperror" and properties == {"header.from": "example.com"}


def test_auth_result_for_a_from_problem():
    outcome = evaluator().evaluate([FROM, FROM])
    result, reason, properties = _parsed(outcome)
    assert (result, reason, properties) == ("permerror", "2 From headers", {})


def test_auth_result_for_no_policy():
    outcome = evaluator().evaluate([" joe@other.com"])
    assert _parsed(outcome) == ("none", "no DMARC record", {"header.from": "other.com"})


# --------------------------------------------------------------------------- config


def test_dmarc_settings_are_read_and_validated():
    settings_ = parse_settings(
        '[dmarc]\nmultiple_from = "evaluate_each"\nmissing_from = "accept"\n'
        "reject_downgrade = true\n"
    )
    assert settings_.dmarc.multiple_from is MultipleFromAction.EVALUATE_EACH
    assert settings_.dmarc.missing_from is MissingFromAction.ACCEPT
    assert settings_.dmarc.reject_downgrade is True
    defaults = parse_settings("").dmarc
    assert (defaults.multiple_from, defaults.missing_from, defaults.reject_downgrade) == (
        MultipleFromAction.REJECT, MissingFromAction.REJECT, False
    )
    with pytest.raises(ConfigError, match=r"dmarc\.multiple_from: must be one of"):
        parse_settings('[dmarc]\nmultiple_from = "first"\n')
    with pytest.raises(ConfigError, match=r"dmarc\.reject_downgrade: expected a boolean"):
        parse_settings('[dmarc]\nreject_downgrade = "yes"\n')
