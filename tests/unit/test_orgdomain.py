"""Organizational domains: the RFC 9989 DNS Tree Walk and the PSL fallback."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from publicsuffixlist import PublicSuffixList

from mailward.dns import InMemoryResolver
from mailward.orgdomain import (
    MAX_WALK_QUERIES,
    OrgDomain,
    OrgDomainSource,
    PublicSuffixes,
    StepOutcome,
    TreeWalk,
    ascii_domain,
    find_org_domain,
    is_dmarc_record,
    psd_flag,
    query_dmarc,
    select_org_domain,
    split_tags,
    walk_targets,
)

PSL = PublicSuffixes.bundled()


def resolver(records: dict[str, str | list[str]]) -> InMemoryResolver:
    """Zone "test-root" style helper: {"example.com": 'TXT record text', ...} puts a
    TXT at _dmarc.<name>; names in one in-memory zone per top-level domain."""
    zones: dict[str, list[str]] = {}
    for name, texts in records.items():
        tld = name.rsplit(".", 1)[-1]
        owner = f"_dmarc.{name}."
        for text in [texts] if isinstance(texts, str) else texts:
            zones.setdefault(tld, []).append(f'{owner} 300 IN TXT "{text}"')
    return InMemoryResolver.from_zones({tld: "\n".join(lines) for tld, lines in zones.items()})


def queried(res: InMemoryResolver) -> list[str]:
    return [name for name, rdtype in res.queries if rdtype == "TXT"]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("com", "com"),
        ("b\u00fccher.de", "xn--bcher-kva.de"),
        ("XN--BCHER-KVA.DE", "xn--bcher-kva.de"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("", None),
        (".", None),
        (".example.com", None),
        ("a..example.com", None),
        ("a" * 64 + ".com", None),
        (("a" * 60 + ".") * 5 + "com", None),  # over 253 octets
        ("exa mple.com", None),
        ("[192.0.2.1]", None),
        ("example.com\udcff", None),  # an undecodable byte
        ("-bad.com", None),
    ],
)
def test_ascii_domain(name: str, expected: str | None):
    assert ascii_domain(name) == expected


def test_walk_targets_remove_one_label_at_a_time():
    assert walk_targets("a.b.c.example.com") == (
        "a.b.c.example.com", "b.c.example.com", "c.example.com", "example.com", "com",
    )
    assert walk_targets("com") == ("com",)


def test_walk_targets_shorten_long_names_to_seven_labels():
    # RFC 9989 4.10: with eight or more labels, go straight to the last seven.
    name = "a.b.c.d.e.f.g.h.i.example.com"  # 11 labels
    targets = walk_targets(name)
    assert targets == (
        name,
        "e.f.g.h.i.example.com",
        "f.g.h.i.example.com",
        "g.h.i.example.com",
        "h.i.example.com",
        "i.example.com",
        "example.com",
        "com",
    )
    assert len(targets) == MAX_WALK_QUERIES == 8
    eight = "b.c.d.e.f.g.example.com"
    assert walk_targets(eight)[1] == "c.d.e.f.g.example.com"
    assert len(walk_targets(eight)) == 8


@given(st.lists(st.sampled_from(["a", "b", "xn--p1ai", "_x", "c-d"]), min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_walk_never_exceeds_eight_queries(labels: list[str]):
    name = ".".join(labels)
    targets = walk_targets(name)
    assert len(targets) <= MAX_WALK_QUERIES
    assert targets[0] == name and targets[-1] == labels[-1]
    assert all(name.endswith("." + t) for t in targets[1:])


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=DMARC1; p=reject", True),
        ("v=DMARC1", True),
        ("V = DMARC1 ;p=none", True),
        ("  v=DMARC1;", True),
        ("v=dmarc1; p=reject", False),  # the value is case-sensitive
        ("v=DMARC10; p=reject", False),
        ("p=reject; v=DMARC1", False),
        ("v=spf1 -all", False),
        ("", False),
    ],
)
def test_is_dmarc_record(text: str, expected: bool):
    assert is_dmarc_record(text) is expected


def test_split_tags_keeps_junk_apart():
    tags = split_tags("v=DMARC1;  P = Reject ; junk ;; x y=z; rua=mailto:a@b.c,mailto:d@e.f ;")
    assert tags.tags == (("v", "DMARC1"), ("p", "Reject"), ("rua", "mailto:a@b.c,mailto:d@e.f"))
    assert tags.junk == ("junk", "x y=z")
    assert tags.first("p") == "Reject"
    assert tags.first("sp") is None


@pytest.mark.parametrize(
    ("text", "flag"),
    [("v=DMARC1; psd=y", "y"), ("v=DMARC1; PSD=N", "n"), ("v=DMARC1; psd=u", "u"),
     ("v=DMARC1; psd=maybe", "u"), ("v=DMARC1; p=none", "u")],
)
def test_psd_flag(text: str, flag: str):
    assert psd_flag(text) == flag


def test_query_dmarc_outcomes():
    res = InMemoryResolver.from_zones({"example.com": """
_dmarc          TXT "v=DMARC1; p=none; psd=n"
_dmarc.two      TXT "v=DMARC1; p=none"
_dmarc.two      TXT "v=DMARC1; p=reject"
_dmarc.spf      TXT "v=spf1 -all"
_dmarc.mixed    TXT "v=spf1 -all"
_dmarc.mixed    TXT "v=DMARC1; p=quarantine"
_dmarc.split    TXT "v=DMAR" "C1; p=rej" "ect"
"""})
    res.fail("_dmarc.broken.example.com")
    one = query_dmarc(res, "example.com")
    assert (one.outcome, one.psd) == (StepOutcome.RECORD, "n")
    assert one.record == "v=DMARC1; p=none; psd=n"
    assert query_dmarc(res, "two.example.com").outcome is StepOutcome.MULTIPLE
    assert query_dmarc(res, "spf.example.com").outcome is StepOutcome.NO_RECORD
    assert query_dmarc(res, "mixed.example.com").record == "v=DMARC1; p=quarantine"
    assert query_dmarc(res, "split.example.com").record == "v=DMARC1; p=reject"
    assert query_dmarc(res, "nothing.example.com").outcome is StepOutcome.NO_RECORD
    broken = query_dmarc(res, "broken.example.com")
    assert broken.outcome is StepOutcome.TEMPERROR and broken.error


# --------------------------------------------------------------------------- the walk


def test_walk_finds_organizational_domain_above_the_start():
    res = resolver({"example.com": "v=DMARC1; p=reject"})
    org = find_org_domain(res, "a.b.c.example.com")
    assert org == OrgDomain("a.b.c.example.com", "example.com", OrgDomainSource.TREE_WALK)
    # Every label down to the top-level domain was asked once.
    assert queried(res) == [
        "_dmarc.a.b.c.example.com", "_dmarc.b.c.example.com", "_dmarc.c.example.com",
        "_dmarc.example.com", "_dmarc.com",
    ]


def test_record_with_fewest_labels_is_the_organizational_domain():
    res = resolver({"c.example.com": "v=DMARC1; p=none", "example.com": "v=DMARC1; p=reject"})
    assert find_org_domain(res, "a.b.c.example.com").domain == "example.com"  # type: ignore[union-attr]
    assert find_org_domain(res, "c.example.com").domain == "example.com"  # type: ignore[union-attr]


def test_psd_n_marks_the_organizational_domain_and_stops_the_walk():
    res = resolver({
        "c.example.com": "v=DMARC1; p=none; psd=n",
        "example.com": "v=DMARC1; p=reject",
    })
    org = find_org_domain(res, "a.b.c.example.com")
    assert org is not None and org.domain == "c.example.com"
    assert "_dmarc.example.com" not in queried(res)


def test_psd_y_makes_the_domain_one_label_below_organizational():
    # A public suffix operator's record: its customers are the organizations.
    res = resolver({"example.com": "v=DMARC1; p=reject; psd=y"})
    org = find_org_domain(res, "a.b.c.example.com")
    assert org is not None and org.domain == "c.example.com"
    assert "_dmarc.com" not in queried(res)


def test_psd_y_wins_over_an_intermediate_record_without_psd():
    res = resolver({"b.example.com": "v=DMARC1; p=none", "com": "v=DMARC1; p=reject; psd=y"})
    org = find_org_domain(res, "a.b.example.com")
    assert org is not None and org.domain == "example.com"


def test_psd_y_at_the_start_domain_makes_it_its_own_organizational_domain():
    res = resolver({"example.com": "v=DMARC1; p=reject; psd=y"})
    org = find_org_domain(res, "example.com")
    assert org is not None and org.domain == "example.com"
    assert queried(res) == ["_dmarc.example.com"]


def test_multiple_records_at_one_name_are_discarded():
    res = resolver({
        "b.example.com": ["v=DMARC1; p=none; psd=n", "v=DMARC1; p=reject"],
        "example.com": "v=DMARC1; p=quarantine",
    })
    org = find_org_domain(res, "a.b.example.com")
    assert org is not None and org.domain == "example.com"


def test_long_names_take_the_shortcut_and_stop_at_eight_queries():
    res = resolver({})
    name = "l1.l2.l3.l4.l5.l6.l7.l8.l9.l10.example.com"
    org = find_org_domain(res, name)
    assert len(queried(res)) == 8
    assert queried(res)[1] == "_dmarc.l6.l7.l8.l9.l10.example.com"
    assert org is not None and org.source is OrgDomainSource.PSL and org.domain == "example.com"


def test_psd_y_found_after_the_shortcut_keeps_one_more_label_of_the_start():
    res = resolver({"example.com": "v=DMARC1; psd=y"})
    org = find_org_domain(res, "l1.l2.l3.l4.l5.l6.l7.l8.l9.example.com")
    assert org is not None and org.domain == "l9.example.com"


def test_no_record_falls_back_to_the_public_suffix_list():
    res = resolver({})
    assert find_org_domain(res, "mail.example.co.uk") == OrgDomain(
        "mail.example.co.uk", "example.co.uk", OrgDomainSource.PSL
    )
    # A public suffix itself has no registrable part: it is its own.
    assert find_org_domain(res, "co.uk").domain == "co.uk"  # type: ignore[union-attr]
    # The private section counts: each blogspot customer is an organization.
    assert find_org_domain(res, "x.alice.blogspot.com").domain == "alice.blogspot.com"  # type: ignore[union-attr]


def test_dns_error_falls_back_to_the_psl_and_says_so():
    res = resolver({"example.com": "v=DMARC1; p=reject"})
    res.fail("_dmarc.b.example.com")
    org = find_org_domain(res, "a.b.example.com")
    assert org is not None
    assert (org.domain, org.source, org.uncertain) == ("example.com", OrgDomainSource.PSL, True)
    assert "_dmarc.b.example.com" in org.error
    # The walk stopped at the error: nothing above it was asked.
    assert "_dmarc.example.com" not in queried(res)


def test_tree_walk_is_lazy_and_queries_each_name_once():
    res = resolver({"example.com": "v=DMARC1; p=reject"})
    walk = TreeWalk(res, "mail.example.com")
    assert walk.first().outcome is StepOutcome.NO_RECORD
    assert queried(res) == ["_dmarc.mail.example.com"]
    assert not walk.finished
    steps = walk.complete()
    assert [s.domain for s in steps] == ["mail.example.com", "example.com", "com"]
    walk.complete()
    walk.first()
    assert len(queried(res)) == 3 and walk.finished and walk.temperror is None


def test_select_org_domain_without_records_is_none():
    walk = TreeWalk(resolver({}), "a.example.com")
    assert select_org_domain("a.example.com", walk.complete()) is None


def test_unusable_names_have_no_org_domain():
    assert find_org_domain(resolver({}), "exa mple.com") is None


# --------------------------------------------------------------------------- PSL


def test_registrable_domain_takes_unicode_and_a_labels():
    assert PSL.registrable_domain("www.\u98df\u72ee.\u516c\u53f8.cn") == "xn--85x722f.xn--55qx5d.cn"
    assert PSL.registrable_domain("WWW.Example.COM") == "example.com"
    assert PSL.registrable_domain("com") is None
    assert PSL.registrable_domain("") is None
    assert PSL.is_public_suffix("co.uk") and not PSL.is_public_suffix("example.co.uk")


def test_a_custom_list_can_be_injected():
    psl = PublicSuffixes(PublicSuffixList(["example", "*.wild.example"]))
    assert psl.registrable_domain("a.b.c.example") == "c.example"
    assert psl.registrable_domain("a.b.wild.example") == "a.b.wild.example"
