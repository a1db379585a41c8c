"""GTUBE: the Generic Test for Unsolicited Bulk Email, a string that must always be spam.

SpamAssassin's `sample-spam.txt` carries it; an admin sends it to see the filter act
end to end.  Like Rspamd, its symbol forces an action whatever the other rules say
(mailward/scoring.py FORCED_ACTIONS), and a variant of the string exists per action:

- `XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X`: reject (GTUBE)
- the same with `YJS` for `XJS`: add header (GTUBE_ADD_HEADER), as Rspamd's
- the same with `ZJS` for `XJS`: quarantine (GTUBE_QUARANTINE; Rspamd's rewrite-subject
  string, here the action between header and reject)

Searched in the raw body as received (already capped by milter.max_body_size): the test
string is ASCII in a plain part, so no MIME parse is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailward.checks.base import BuildContext, Check, CheckInput, CheckSpec, ResultKey, Symbol

GTUBE_TAIL = b"JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

_VARIANTS = {
    ord("X"): "GTUBE",
    ord("Y"): "GTUBE_ADD_HEADER",
    ord("Z"): "GTUBE_QUARANTINE",
}

RESULT: ResultKey[str] = ResultKey("gtube")


def find_gtube(body: bytes) -> str:
    """The symbol name of the strongest GTUBE variant in `body`, or "" if none."""
    found = ""
    start = body.find(GTUBE_TAIL)
    while start != -1:
        if start > 0 and body[start - 1] in _VARIANTS:
            name = _VARIANTS[body[start - 1]]
            if name == "GTUBE":
                return name
            if not found or name == "GTUBE_QUARANTINE":
                found = name
        start = body.find(GTUBE_TAIL, start + 1)
    return found


class GtubeCheck(Check[str]):
    """Emits GTUBE / GTUBE_QUARANTINE / GTUBE_ADD_HEADER when the body carries the string."""

    name = "gtube"
    produces = RESULT

    def evaluate(self, check_input: CheckInput) -> str:
        return find_gtube(check_input.transaction.body)

    def symbols(self, result: str) -> Sequence[Symbol]:
        return (Symbol(result),) if result else ()

    def metric_result(self, result: str) -> str:
        return result.lower() if result else "none"


def _build(context: BuildContext[None]) -> GtubeCheck:
    return GtubeCheck()


SPEC: CheckSpec[None] = CheckSpec("gtube", _build)
