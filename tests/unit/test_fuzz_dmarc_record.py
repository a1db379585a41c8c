"""Fuzzing the DMARC record parser (issue 9): any TXT string gives a `DmarcRecord` (never
an exception), with problems bounded and values from their enums; a record built from
valid tags parses back to them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.checks.dmarc import AlignmentMode, Disposition, parse_record
from mailward.orgdomain import is_dmarc_record, psd_flag, split_tags

FUZZ = settings(max_examples=300, deadline=None)

_PIECES = st.sampled_from(
    ["v=DMARC1", ";", "=", " ", "\t", "p", "sp", "np", "reject", "quarantine", "none",
     "pct", "100", "1000", "adkim", "s", "r", "t", "y", "psd", "rua", "mailto:a@b.c", ",",
     "!10m", "\x00", "\u00e9", "9" * 5000]
)
_HOSTILE = st.one_of(st.text(max_size=300), st.lists(_PIECES, max_size=40).map("".join))


@FUZZ
@given(_HOSTILE)
def test_any_txt_string_gives_a_record(text: str) -> None:
    tag_list = split_tags(text)
    assert all(name == name.lower() for name, _ in tag_list.tags)
    assert psd_flag(text) in ("y", "n", "u")
    record = parse_record(text)
    assert record.usable is False if not is_dmarc_record(text) else True
    assert isinstance(record.p, Disposition) and isinstance(record.adkim, AlignmentMode)
    assert record.pct is None or 0 <= record.pct <= 100
    assert record.psd in ("y", "n", "u")
    assert len(record.problems) <= 65


_POLICY = st.sampled_from(list(Disposition))
_MODE = st.sampled_from(list(AlignmentMode))


@FUZZ
@given(_POLICY, st.none() | _POLICY, _MODE, _MODE, st.none() | st.integers(0, 100),
       st.sampled_from(["y", "n", "u"]), st.sampled_from([" ", "", "\t"]))
def test_built_record_round_trips(
    p: Disposition, sp: Disposition | None, adkim: AlignmentMode, aspf: AlignmentMode,
    pct: int | None, psd: str, space: str,
) -> None:
    tags = ["v=DMARC1", f"p={p.value}", f"adkim={adkim.value}", f"aspf={aspf.value}",
            f"psd={psd}"]
    if sp is not None:
        tags.append(f"sp={sp.value}")
    if pct is not None:
        tags.append(f"pct={pct}")
    record = parse_record(f";{space}".join(tags))
    assert record.usable and record.problems == ()
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct, record.psd) == (
        p, sp, adkim, aspf, pct, psd
    )
