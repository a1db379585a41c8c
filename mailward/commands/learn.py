"""`mailward learn` (bulk and single-message training) and `mailward learner` (the spool
service that IMAPSieve feeds).

    mailward learn -c FILE --spam|--ham [FILE|DIR|-]...   learn (moves a message learned
                                                          under the other class)
    mailward learn -c FILE --forget [FILE|DIR|-]...       undo what learning it counted
    mailward learn -c FILE --stats                        counts, and whether Bayes is on
    mailward learner -c FILE [--once]                     drain [bayes] spool, forever

Sources are single message files, `-` (stdin), Maildir folders (cur/ and new/), other
directories (every file, recursively) and mbox files.  A source that cannot be read is an
error that names it, after the messages before it were learned (exit 1); nothing
half-learned is left behind, each message is one atomic store step.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from mailward.commands import add_config_option

if TYPE_CHECKING:
    from mailward.bayes.settings import BayesSettings
    from mailward.bayes.store import BayesStore
    from mailward.config import Settings

log = logging.getLogger("mailward.learner")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser],
             config_default: Path) -> None:
    learn = commands.add_parser("learn", help="train the Bayes classifier")
    add_config_option(learn, config_default)
    what = learn.add_mutually_exclusive_group(required=True)
    what.add_argument("--spam", dest="mode", action="store_const", const="spam")
    what.add_argument("--ham", dest="mode", action="store_const", const="ham")
    what.add_argument("--forget", dest="mode", action="store_const", const="forget")
    what.add_argument("--stats", dest="mode", action="store_const", const="stats")
    learn.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    learn.add_argument("sources", nargs="*", metavar="FILE|DIR|-",
                       help="messages, Maildir folders, mbox files; - for stdin")
    learn.set_defaults(handler=run_learn)

    learner = commands.add_parser(
        "learner", help="learn what IMAPSieve spools ([bayes] spool), as a service")
    add_config_option(learner, config_default)
    learner.add_argument("--once", action="store_true",
                         help="drain the spool once and exit (cron, tests)")
    learner.set_defaults(handler=run_learner)


def _load(path: Path) -> tuple[Settings, BayesSettings, BayesStore] | None:
    """The settings, the [bayes] section and its store (None after printing errors)."""
    from mailward.bayes.settings import BayesSettings, open_bayes_store
    from mailward.checks.bayes import RESULT
    from mailward.commands.services import load_or_report

    settings = load_or_report(path)
    if settings is None:
        return None
    bayes = settings.checks[RESULT.name]
    assert isinstance(bayes, BayesSettings)
    store = open_bayes_store(bayes, str(settings.state.backend), settings.state.url)
    return settings, bayes, store


def run_learn(args: argparse.Namespace) -> int:
    from mailward.bayes.learning import SourceError, learn_message, read_sources
    from mailward.bayes.store import MessageClass
    from mailward.checks.bayes import activity_line
    from mailward.state.base import StateUnavailable

    loaded = _load(args.config)
    if loaded is None:
        return 1
    _, bayes, store = loaded
    with store:
        if args.mode == "stats":
            if args.sources:
                print("mailward learn: --stats takes no sources", file=sys.stderr)
                return 2
            try:
                totals = store.totals()
                tokens = store.token_rows()
            except StateUnavailable as exc:
                print(f"mailward learn: {exc}", file=sys.stderr)
                return 1
            print(f"spam: {totals.spam}\nham: {totals.ham}")
            if tokens is not None:
                print(f"tokens: {tokens}")
            print(activity_line(totals, bayes))
            return 0
        if not args.sources:
            print("mailward learn: name at least one FILE, DIR or - (stdin)", file=sys.stderr)
            return 2
        message_class = None if args.mode == "forget" else MessageClass(args.mode)
        counts: dict[str, int] = {}
        started = time.monotonic()
        status = 0
        try:
            for message in read_sources(args.sources):
                result = learn_message(store, message.raw, message_class, time.time(),
                                       bayes.tokenizer)
                counts[result.value] = counts.get(result.value, 0) + 1
        except SourceError as exc:
            print(f"mailward learn: {exc}", file=sys.stderr)
            status = 1
        except StateUnavailable as exc:
            print(f"mailward learn: {exc}", file=sys.stderr)
            status = 1
        elapsed = time.monotonic() - started
        if status == 0:
            try:
                # Keep the size bounded even where no learner service runs.
                store.expire(time.time())
            except StateUnavailable as exc:
                print(f"mailward learn: token expiry: {exc}", file=sys.stderr)
        total = sum(counts.values())
        if not args.quiet:
            summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
            rate = f" ({total / elapsed:.0f}/s)" if elapsed > 0 and total else ""
            print(f"{args.mode}: {total} message(s): {summary or 'none'}{rate}")
        return status


def run_learner(args: argparse.Namespace) -> int:
    from mailward import runtime
    from mailward.bayes.learning import learn_message
    from mailward.bayes.spool import drain_spool, ensure_spool
    from mailward.bayes.store import LearnResult, MessageClass
    from mailward.checks.bayes import activity_line
    from mailward.state.base import StateUnavailable

    loaded = _load(args.config)
    if loaded is None:
        return 1
    settings, bayes, store = loaded
    runtime.configure_logging("learner", settings.general.log_level)
    ensure_spool(bayes.spool)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def learn(raw: bytes, message_class: MessageClass) -> LearnResult:
        return learn_message(store, raw, message_class, time.time(), bayes.tokenizer)

    with store:
        try:
            log.info("learner: spool %s; %s", bayes.spool, activity_line(store.totals(), bayes))
        except StateUnavailable as exc:
            log.warning("learner: %s (will retry)", exc)
        next_expiry = 0.0
        while not stop.is_set():
            report = drain_spool(bayes.spool, learn)
            if report.results:
                log.info("learner: %s", ", ".join(
                    f"{count} {name}" for name, count in sorted(report.results.items())))
            if time.monotonic() >= next_expiry:
                try:
                    removed = store.expire(time.time())
                    if removed:
                        log.info("learner: expired %d token(s)", removed)
                except StateUnavailable as exc:
                    log.warning("learner: token expiry: %s", exc)
                next_expiry = time.monotonic() + 3600
            if args.once:
                return 1 if report.deferred else 0
            busy = sum(report.results.values()) > 0
            stop.wait(0 if busy else bayes.learner_interval)
    return 0
