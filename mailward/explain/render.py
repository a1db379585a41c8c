"""A decision trace as text for people and as JSON for tools."""

from __future__ import annotations

import json
from typing import Any

from mailward.authresults import format_result
from mailward.explain.trace import Explanation


def as_text(trace: Explanation) -> str:
    verdict = trace.verdict
    out: list[str] = []
    add = out.append
    inputs = trace.inputs
    add(f"client {inputs.client_ip} helo {inputs.helo or '-'} mail from "
        f"<{inputs.mail_from}>   (client from: {inputs.source})")
    for note in trace.notes:
        add(f"note: {note}")
    add("\nhops (oldest first):")
    for number, hop in enumerate(trace.hops, 1):
        delay = f" +{hop.delay_seconds:.0f}s" if hop.delay_seconds is not None else ""
        client = f" [{hop.client_ip}]" if hop.client_ip else ""
        add(f"  {number}. {hop.from_name or '?'}{client} -> {hop.by or '?'}{delay}")
    if not trace.hops:
        add("  (no Received headers)")
    add("\nresults found in the message:")
    for found in trace.found_results:
        whose = "ours (replaced by our own)" if found.ours else "not ours: informational"
        instance = f" i={found.instance}" if found.instance is not None else ""
        add(f"  {found.header}{instance} by {found.authserv_id} [{whose}]")
    for seal in trace.arc_seals:
        trust = "trusted sealer (arc.trusted_sealers)" if seal.trusted else "not a trusted sealer"
        add(f"  ARC set i={seal.instance} sealed by {seal.domain} cv={seal.cv} [{trust}]")
    if not trace.found_results and not trace.arc_seals:
        add("  (none)")
    add("\nour checks:")
    for result in trace.spf:
        add(f"  {format_result(result)}")
    if trace.spf_cause:
        add(f"    -> {trace.spf_cause}")
    if not trace.signatures:
        add("  dkim=none: no DKIM signature")
    for signature in trace.signatures:
        sig = signature.signature
        where = f"d={sig.domain} s={sig.selector}" if sig else "?"
        add(f"  dkim={signature.result} {where}"
            + (f" ({signature.reason})" if signature.reason else ""))
        if sig is not None:
            length = f" l={sig.body_length}" if sig.body_length is not None else ""
            add(f"    signed: h={':'.join(sig.signed_headers)} c={sig.canonicalization}{length}")
        add(f"    -> {signature.cause}")
    if trace.arc is not None:
        add(f"  {format_result(trace.arc)}")
    if trace.dmarc is not None:
        add(f"  {format_result(trace.dmarc)}")
        for alignment in trace.alignments:
            add(f"    {alignment.identifier} {alignment.domain}: "
                f"{'pass' if alignment.passed else 'not pass'}, "
                f"{'aligned' if alignment.aligned else 'not aligned'} with From "
                f"{trace.from_domain} (relaxed)")
        add(f"    -> {trace.dmarc_cause}")
    for result in trace.results:
        if result.method not in ("spf", "dkim", "arc", "dmarc"):
            add(f"  {format_result(result)}")
    add("\nsymbols: " + (" ".join(str(s) for s in trace.symbols) or "(none)"))
    if verdict is None:
        add("\ndecision: not re-evaluated (--offline); the results above are as recorded")
        return "\n".join(out) + "\n"
    add(f"\ndecision: {verdict.action}" + (f" ({verdict.reason})" if verdict.reason else ""))
    if verdict.reply is not None:
        add(f"  reply: {verdict.reply}")
    if trace.deciding_key:
        add(f"  decided by: {trace.deciding_key}")
    return "\n".join(out) + "\n"


def as_json(trace: Explanation) -> str:
    verdict = trace.verdict
    document: dict[str, Any] = {
        "inputs": {"client_ip": str(trace.inputs.client_ip) if trace.inputs.client_ip
                   else None, "helo": trace.inputs.helo,
                   "mail_from": trace.inputs.mail_from, "source": trace.inputs.source},
        "notes": list(trace.notes),
        "hops": [{"from": hop.from_name, "client_ip": str(hop.client_ip) if hop.client_ip
                  else None, "by": hop.by,
                  "received_at": hop.received_at.isoformat() if hop.received_at else None,
                  "delay_seconds": hop.delay_seconds} for hop in trace.hops],
        "found_results": [{"header": f.header, "authserv_id": f.authserv_id, "ours": f.ours,
                           "instance": f.instance, "value": f.value}
                          for f in trace.found_results],
        "arc_seals": [{"instance": s.instance, "domain": s.domain, "cv": s.cv,
                       "trusted": s.trusted} for s in trace.arc_seals],
        "offline": verdict is None,
        "results": [format_result(result) for result in trace.results],
        "spf": {"results": [format_result(r) for r in trace.spf], "cause": trace.spf_cause},
        "dkim": [{"result": s.result, "reason": s.reason, "cause": s.cause,
                  "domain": s.signature.domain if s.signature else None,
                  "selector": s.signature.selector if s.signature else None,
                  "signed_headers": list(s.signature.signed_headers) if s.signature else [],
                  "body_length": s.signature.body_length if s.signature else None}
                 for s in trace.signatures],
        "arc": format_result(trace.arc) if trace.arc else None,
        "dmarc": {"result": trace.dmarc.result if trace.dmarc else None,
                  "from_domain": trace.from_domain, "cause": trace.dmarc_cause,
                  "alignments": [{"identifier": a.identifier, "domain": a.domain,
                                  "passed": a.passed, "aligned": a.aligned}
                                 for a in trace.alignments]},
        "symbols": [{"name": s.name, "detail": s.detail} for s in trace.symbols],
        "action": str(verdict.action) if verdict else None,
        "reason": verdict.reason if verdict else None,
        "reply": str(verdict.reply) if verdict and verdict.reply else None,
        "decided_by": trace.deciding_key,
    }
    return json.dumps(document, indent=2) + "\n"
