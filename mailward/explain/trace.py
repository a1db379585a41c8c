"""One message in, one decision trace out: inputs, what the message carries, our verdict.

`explain` takes the Connection the milter would have seen (from the options, else from
the newest Received header with a client address) and asks the Pipeline for its Verdict;
everything else here describes the Verdict and the message, it decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailward.config import Settings
from mailward.explain import causes
from mailward.explain.headers import (
    ArcSeal,
    DkimSignature,
    ForeignResults,
    Hop,
    arc_seals,
    dkim_signatures,
    foreign_results,
    helo_of,
    hops,
)
from mailward.fromheader import author_domain
from mailward.model import (
    AuthResult,
    Connection,
    Direction,
    IPAddress,
    Symbol,
    Transaction,
    Verdict,
)
from mailward.pipeline import Pipeline


class ExplainError(ValueError):
    """The message gives no client to evaluate, and none was given."""


@dataclass(frozen=True)
class Inputs:
    client_ip: IPAddress | None  # None only for --offline on a message without one
    helo: str | None
    mail_from: str
    source: str  # where the client came from: "options" or the Received header used


def derive_inputs(transaction: Transaction, client_ip: IPAddress | None, helo: str | None,
                  mail_from: str | None,
                  is_trusted: Callable[[IPAddress], bool] = lambda _: False,
                  required: bool = True) -> Inputs:
    """The SMTP facts the milter had: given ones win, the rest from the message.

    The client is the newest hop whose client is not trusted (`general.trusted_networks`):
    the hops after it (local delivery, our own relays) are ours, and the milter saw the
    message arrive from that client.
    """
    source = "options"
    if client_ip is None or helo is None:
        newest = next((hop for hop in hops(transaction)[::-1]
                       if hop.client_ip is not None and not is_trusted(hop.client_ip)), None)
        if newest is None and client_ip is None and required:
            raise ExplainError("no Received header names a client address: give --client-ip")
        if newest is not None:
            if client_ip is None:
                client_ip = newest.client_ip
                source = f"Received by {newest.by or '?'} from {newest.from_name or '?'}"
            if helo is None:
                helo = helo_of(newest)
    if mail_from is None:
        return_path = next((h.value for _, h in transaction.headers_named("Return-Path")), "")
        mail_from = return_path.strip()
    return Inputs(client_ip, helo, mail_from, source)


@dataclass(frozen=True)
class SignatureTrace:
    signature: DkimSignature | None
    result: str
    reason: str
    cause: str


@dataclass(frozen=True)
class Alignment:
    identifier: str  # "spf" or "dkim"
    domain: str
    passed: bool
    aligned: bool


@dataclass(frozen=True)
class Explanation:
    inputs: Inputs
    hops: tuple[Hop, ...]
    found_results: tuple[ForeignResults, ...]
    arc_seals: tuple[ArcSeal, ...]
    verdict: Verdict | None  # None: --offline, the results are the recorded ones
    results: tuple[AuthResult, ...]
    spf: tuple[AuthResult, ...]
    spf_cause: str
    signatures: tuple[SignatureTrace, ...]
    arc: AuthResult | None
    dmarc: AuthResult | None
    alignments: tuple[Alignment, ...]
    dmarc_cause: str
    symbols: tuple[Symbol, ...]
    deciding_key: str
    from_domain: str | None = None
    notes: tuple[str, ...] = field(default=())


def explain(pipeline: Pipeline, settings: Settings, transaction: Transaction,
            inputs: Inputs) -> Explanation:
    """Re-evaluate with the milter's engine: the decision it would make now."""
    if inputs.client_ip is None:
        raise ExplainError("no client address to evaluate: give --client-ip")
    recipients = transaction.recipients or ("postmaster@localhost",)
    transaction = Transaction(transaction.queue_id, inputs.mail_from, recipients,
                              transaction.headers, transaction.body, transaction.body_size,
                              transaction.body_truncated, transaction.mail_params)
    connection = Connection(inputs.client_ip, helo=inputs.helo)
    notes: list[str] = []
    if pipeline.direction(connection) is Direction.OUTBOUND:
        notes.append(f"{inputs.client_ip} is in general.trusted_networks: the message takes "
                     "the outbound path (signed, not verified)")
    verdict = pipeline.evaluate(connection, transaction)
    return _assemble(settings, transaction, inputs, verdict.results, verdict, notes)


def explain_recorded(settings: Settings, transaction: Transaction,
                     inputs: Inputs) -> Explanation:
    """--offline: explain the results we recorded at delivery; no DNS, no decision."""
    from mailward.explain.headers import recorded_results

    recorded = recorded_results(transaction, settings.general.authserv_id)
    if recorded is None:
        raise ExplainError(f"no Authentication-Results by {settings.general.authserv_id} "
                           "in the message: run without --offline to re-evaluate it")
    note = (f"offline: the results {settings.general.authserv_id} recorded at delivery, "
            "not re-evaluated")
    return _assemble(settings, transaction, inputs, recorded, None, [note])


def _assemble(settings: Settings, transaction: Transaction, inputs: Inputs,
              results: tuple[AuthResult, ...], verdict: Verdict | None,
              notes: list[str]) -> Explanation:
    spf = tuple(r for r in results if r.method == "spf")
    mailfrom_spf = next((r for r in spf if _prop(r, "smtp", "mailfrom")), spf[0] if spf else None)
    signatures = dkim_signatures(transaction)
    dkim_traces = tuple(_signature_trace(r, signatures) for r in results if r.method == "dkim")
    dmarc = next((r for r in results if r.method == "dmarc"), None)
    author = author_domain(transaction)
    alignments = _alignments(settings, author, mailfrom_spf,
                             [r for r in results if r.method == "dkim"])
    return Explanation(
        inputs=inputs,
        hops=hops(transaction),
        found_results=foreign_results(transaction, settings.general.authserv_id),
        arc_seals=arc_seals(transaction, tuple(settings.arc.trusted_sealers)),
        verdict=verdict,
        results=results,
        spf=spf,
        spf_cause=causes.spf_cause(mailfrom_spf.result) if mailfrom_spf else "",
        signatures=dkim_traces,
        arc=next((r for r in results if r.method == "arc"), None),
        dmarc=dmarc,
        alignments=alignments,
        dmarc_cause=causes.dmarc_cause(
            dmarc.result, any(a.identifier == "spf" and a.passed and a.aligned
                              for a in alignments),
            any(a.identifier == "dkim" and a.passed and a.aligned for a in alignments),
        ) if dmarc else "",
        symbols=verdict.symbols if verdict is not None else (),
        deciding_key=causes.deciding_key(verdict.action, verdict.reason) if verdict else "",
        from_domain=author,
        notes=tuple(notes),
    )


def _prop(result: AuthResult, ptype: str, name: str) -> str:
    return next((p.value for p in result.properties if p.ptype == ptype and p.name == name), "")


def _signature_trace(result: AuthResult, signatures: Sequence[DkimSignature]) -> SignatureTrace:
    domain, b_prefix = _prop(result, "header", "d"), _prop(result, "header", "b")
    signature = next((s for s in signatures if (b_prefix and s.b_prefix.startswith(b_prefix))
                      or (not b_prefix and s.domain == domain)), None)
    reason = result.reason or ""
    return SignatureTrace(signature, result.result, reason,
                          causes.dkim_cause(result.result, reason, signature))


def _alignments(settings: Settings, author: str | None, spf: AuthResult | None,
                dkim: Sequence[AuthResult]) -> tuple[Alignment, ...]:
    """Relaxed/strict alignment of each identifier with the From domain (RFC 7489 3.1),
    compared by organizational domain from the bundled Public Suffix List."""
    if not author:
        return ()
    from mailward.orgdomain import PublicSuffixes

    psl = PublicSuffixes.bundled()

    def org(name: str) -> str:
        return psl.registrable_domain(name) or name

    found: list[Alignment] = []
    if spf is not None:
        mailfrom = _prop(spf, "smtp", "mailfrom").rpartition("@")[2].lower()
        if mailfrom:
            found.append(Alignment("spf", mailfrom, spf.result == "pass",
                                   org(mailfrom) == org(author)))
    for result in dkim:
        domain = _prop(result, "header", "d").lower()
        if domain:
            found.append(Alignment("dkim", domain, result.result == "pass",
                                   org(domain) == org(author)))
    return tuple(found)
