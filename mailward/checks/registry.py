"""The one list of inbound checks, and the order they run in.

Adding a check: write mailward/checks/NAME.py with a `SPEC` (see mailward/checks/base.py),
add it to `SPECS` below, document its section in deploy/mailward.example.toml, and give
it a test module.  Nothing else changes: config reads its section through the spec, the
pipeline orders it by what it requires, metrics are counted per check by the pipeline.

The position in SPECS only breaks ties: the pipeline runs a check after everything it
requires or uses, and otherwise in this order (which is also the order of the entries
in Authentication-Results: iprev, spf, dkim, arc, dmarc, as RFC 8601's examples do).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mailward.checks import (
    advertising,
    arc,
    bayes,
    content,
    dkim,
    dmarc,
    dnsbl,
    gtube,
    headerforms,
    headers,
    htmlstyle,
    iprev,
    mime,
    mimeform,
    phrases,
    received,
    rhsbl,
    spamd,
    spf,
    urilist,
    urlforms,
)
from mailward.checks.base import BuildContext, Check, CheckSpec
from mailward.configreader import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from mailward.config import Settings
    from mailward.configreader import Table
    from mailward.dns import Resolver

SPECS: tuple[CheckSpec[Any], ...] = (
    iprev.SPEC,
    spf.SPEC,
    dkim.SPEC,
    arc.SPEC,
    dmarc.SPEC,
    mime.SPEC,
    bayes.SPEC,
    gtube.SPEC,
    dnsbl.SPEC,
    rhsbl.SPEC,
    urilist.SPEC,
    headers.SPEC,
    content.SPEC,
    spamd.SPEC,
    # rule heuristics added for rules-only accuracy (bench/rules_accuracy.py)
    received.SPEC,
    headerforms.SPEC,
    mimeform.SPEC,
    htmlstyle.SPEC,
    urlforms.SPEC,
    phrases.SPEC,
    advertising.SPEC,
)


def check_sections() -> tuple[str, ...]:
    """The top-level TOML sections the checks read themselves."""
    return tuple(spec.section for spec in SPECS if spec.section is not None)


def read_check_sections(root: Table) -> dict[str, object]:
    """Each check's own settings, by check name (config.py calls this while loading)."""
    sections: dict[str, object] = {}
    for spec in SPECS:
        if spec.section is not None and spec.read_settings is not None:
            sections[spec.name] = spec.read_settings(root.table(spec.section))
    return sections


def declared_symbols(sections: Mapping[str, object]) -> set[str]:
    """Symbol names the checks' own settings declare (a DNS list's codes): scoring
    accepts weights for them."""
    names: set[str] = set()
    for section in sections.values():
        symbol_names = getattr(section, "symbol_names", None)
        if callable(symbol_names):
            names.update(symbol_names())
    return names


def build_checks(settings: Settings, resolver: Resolver,
                 specs: Sequence[CheckSpec[Any]] = SPECS) -> tuple[Check[Any], ...]:
    """The configured checks, in the order they must run.

    Raises ConfigError when a check requires a result no configured check produces, or
    when requirements form a cycle: both are mistakes an admin must see at start.
    """
    shared: dict[str, object] = {}
    built: list[Check[Any]] = []
    for spec in specs:
        context: BuildContext[Any] = BuildContext(
            settings=settings, section=settings.checks.get(spec.name), resolver=resolver,
            _shared=shared)
        check = spec.build(context)
        if check is not None:
            built.append(check)
    return order_checks(built, settings.source)


def order_checks(checks: Iterable[Check[Any]], source: str = "<settings>"
                 ) -> tuple[Check[Any], ...]:
    """Checks sorted so that each runs after the checks whose results it reads.

    Stable: among checks free to run, the one listed first goes first.
    """
    pending = list(checks)
    producers: Mapping[str, Check[Any]] = {check.produces.name: check for check in pending}
    problems = [
        ConfigProblem(check.name, f"requires {key.name}, which is not enabled")
        for check in pending for key in check.requires if key.name not in producers
    ]
    if problems:
        raise ConfigError(source, problems)
    ordered: list[Check[Any]] = []
    done: set[str] = set()
    while pending:
        for check in pending:
            needed = {key.name for key in (*check.requires, *check.uses)} & producers.keys()
            if needed <= done:
                ordered.append(check)
                done.add(check.produces.name)
                pending.remove(check)
                break
        else:
            names = ", ".join(sorted(check.name for check in pending))
            raise ConfigError(source, [ConfigProblem("", f"checks require each other: {names}")])
    return tuple(ordered)
