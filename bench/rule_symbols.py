"""Every rule check's symbols, with their details, for each corpus message: a change
that must not change results is checked by diffing two dumps.

    python -m bench.rule_symbols OUT.txt [--parts spam-1,hard-ham-1]

`bench.rules_accuracy` prints totals per part; two versions of a rule can agree on those
and still differ on single messages or on a symbol's detail.  This writes one line per
message (part, index, the sorted (check, symbol) pairs) and prints the CPU time per
message of each part and of each check (`time.process_time`), for before/after work on
the scoring checks' cost (bench/README.md, "Issue 10, scoring cost").
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from bench.bayes.accuracy import corpus_dir, messages
from bench.rules_accuracy import PARTS, RULE_CHECKS
from mailward.checks.base import CheckInput, Results
from mailward.checks.registry import build_checks
from mailward.config import settings_from_mapping
from mailward.dns import InMemoryResolver
from mailward.messagefile import transaction_from_bytes
from mailward.model import Connection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the dump to write")
    parser.add_argument("--parts", default=",".join(part for part, _, _ in PARTS))
    parser.add_argument("--corpus", type=Path, help="the package's data directory")
    args = parser.parse_args(argv)
    corpus = args.corpus or corpus_dir()
    settings = settings_from_mapping({"scoring": {"enabled": True}})
    checks = [check for check in build_checks(settings, InMemoryResolver())
              if check.name in RULE_CHECKS]
    connection = Connection(client_ip=None)
    with args.out.open("w", encoding="utf-8") as out:
        for part in args.parts.split(","):
            raws = messages(corpus, part)
            cost: dict[str, float] = collections.defaultdict(float)
            started = time.process_time()
            for index, raw in enumerate(raws):
                transaction = transaction_from_bytes(raw, mail_from="bench@corpus.invalid",
                                                     recipients=("user@example.net",))
                results = Results()
                found: list[tuple[str, str]] = []
                for check in checks:
                    check_input = CheckInput(connection, transaction, results)
                    check_started = time.process_time()
                    if not check.applies(check_input):
                        continue
                    result = check.evaluate(check_input)
                    results = results.with_result(check.produces, result)
                    found.extend((check.name, repr(symbol)) for symbol in check.symbols(result))
                    cost[check.name] += time.process_time() - check_started
                out.write(f"{part} {index} {sorted(found)!r}\n")
            count = max(1, len(raws))
            per_check = ", ".join(f"{check.name} {1000 * cost[check.name] / count:.2f}"
                                  for check in checks)
            print(f"{part}: {len(raws)} messages, "
                  f"{1000 * (time.process_time() - started) / count:.2f} ms/msg CPU; "
                  f"per check (ms): {per_check}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
