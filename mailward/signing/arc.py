"""ARC sealing (RFC 8617): add our ARC Set to mail we pass on as an intermediary.

An ARC Set is three header fields with the same instance number i=N+1:

- ARC-Authentication-Results (AAR): `i=N; authserv-id; resinfo; resinfo...`, what we
  established about the message (our own inbound results, the chain status first);
- ARC-Message-Signature (AMS): a DKIM-like signature over the message as we pass it on
  (relaxed/relaxed, h= the configured header fields, never ARC-Seal);
- ARC-Seal (AS): a signature over every ARC Set so far, 1..N+1, each in AAR, AMS, AS
  order, relaxed, with `cv=` the chain validation status we found: `none` for the first
  set, `pass` or `fail` after.  For `cv=fail` the seal covers only our own set (RFC 8617
  5.1.1 and dkimpy do the same), so a broken chain is recorded as broken, never
  extended as if it were valid.

Not sealed at all (and counted): a chain whose newest seal already says cv=fail (it
ended there, RFC 8617 5.1.2), a chain at the 50-instance limit, a chain we could not
validate (temperror: sealing it either way would be a claim we cannot make), and a
body the milter did not keep whole (the AMS body hash would be wrong).

Fields are folded as DKIM-Signature is (i= first, b= last); with `fold=False` they are
written in the ARC test suite's standardized form (tags alphabetical, one line), which
reproduces the suite's expected signatures bit for bit.

How the inbound pipeline calls it, after its own checks:

    sealer = build_sealer(settings)            # None unless [arc] seal = true
    if sealer is not None and sealer.applies(connection, transaction):
        edits += sealer.seal(transaction, results, arc_outcome.result)

with `results` the AuthResults of our A-R (spf, dkim, dmarc, ...; an `arc` result is
added from `chain_status` if missing) and `chain_status` the verifier's ArcResult.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailward import authresults, metrics
from mailward.config import ConfigProblem, DkimSigningKey, Settings
from mailward.dkimcore import arcset
from mailward.dkimcore.canon import (
    Canon,
    canonical_headers,
    canonicalize_body,
    relaxed_header,
    signature_header_data,
)
from mailward.message import header_name_bytes, header_value_bytes
from mailward.model import AuthResult, Connection, InsertHeader, Transaction
from mailward.signing.dkim import fold_b64, fold_tags, sign_digest
from mailward.signing.keys import KeyFileProblem, KeyLoadError, LoadedKey, load_key

log = logging.getLogger(__name__)

AAR = arcset.DISPLAY[arcset.AAR]
AMS = arcset.DISPLAY[arcset.AMS]
AS = arcset.DISPLAY[arcset.AS]

#: Header fields the AMS signs by default (bottom-up, as present; none oversigned:
#: an intermediary's signature is about what it saw, not a lock on the message).
DEFAULT_AMS_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
    "dkim-signature", "list-id", "list-unsubscribe", "list-post", "sender",
)

@dataclass(frozen=True)
class ArcSet:
    """The three values (after the colon, no leading space) of one new ARC Set."""

    instance: int
    aar: str
    ams: str
    seal: str
    cv: str

    def edits(self) -> tuple[InsertHeader, ...]:
        # Each inserted at the top: the seal ends up first, as RFC 8617 shows the set.
        return (InsertHeader(AAR, self.aar, 0), InsertHeader(AMS, self.ams, 0),
                InsertHeader(AS, self.seal, 0))


class NotSealed(Exception):
    """The message gets no ARC Set; `result` is the metric label, str() the reason."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result


# --------------------------------------------------------------------------- existing chain


def _unfold(value: bytes) -> str:
    return re.sub(r"\r?\n", "", value.decode("ascii", "replace"))


def existing_sets(
    headers: Sequence[tuple[bytes, bytes]],
) -> tuple[dict[int, dict[str, list[tuple[bytes, bytes]]]], int]:
    """ARC fields by instance and kind, and the highest instance (0: none)."""
    sets: dict[int, dict[str, list[tuple[bytes, bytes]]]] = {}
    for name, value in headers:
        kind = arcset.kind_of(name.decode("ascii", "replace"))
        if kind is None:
            continue
        instance = arcset.lenient_instance(kind, value)
        sets.setdefault(instance, {}).setdefault(arcset.DISPLAY[kind], []).append((name, value))
    return sets, max(sets, default=0)


def _structurally_sound(sets: dict[int, dict[str, list[tuple[bytes, bytes]]]], top: int) -> bool:
    """Instances 1..top, each with exactly one AAR, AMS and AS (RFC 8617 5.2 step 2)."""
    if len(sets) != top or set(sets) != set(range(1, top + 1)):
        return False
    return all(len(sets[i].get(kind, [])) == 1 for i in sets for kind in (AAR, AMS, AS))


def consolidate_results(headers: Sequence[tuple[bytes, bytes]], authserv_id: str) -> list[str]:
    """The resinfos of every Authentication-Results header of `authserv_id`, in order.

    Comments are kept as written; what the ARC test suite calls AR consolidation.
    """
    wanted = authserv_id.lower()
    results = []
    for name, value in headers:
        if name.strip().lower() != authresults.HEADER_NAME.lower().encode():
            continue
        text = " ".join(_unfold(value).split())
        if authresults.authserv_id_of(text) != wanted:
            continue
        parts = authresults.split_resinfo(text)
        results += [part for part in parts[1:] if part and part.lower() != "none"]
    return results


# --------------------------------------------------------------------------- sealing


#: Tag order of folded (production) fields: i= first, so that it follows the field's
#: leading space (dkimpy finds an AMS by " i=N;"), b= last on lines of its own.
_FOLDED_ORDER = ("i", "a", "cv", "c", "d", "s", "t", "h", "bh")


def _sign_field(
    key: LoadedKey, data: bytes, name: str, tags: Sequence[tuple[str, str]], fold: bool
) -> str:
    """Sign `data` + this field (b= empty) and return the field's value.

    Unfolded, the tags stay in the given (the suite's alphabetical) order on one line;
    folded, they are reordered and folded as DKIM-Signature is.
    """
    if fold:
        ordered = sorted((tag for tag in tags if tag[0] != "b"),
                         key=lambda tag: _FOLDED_ORDER.index(tag[0]))
        unsigned = fold_tags(ordered, len(name) + 2)
        template = unsigned + "{b}"
    else:
        template = "; ".join("b={b}" if tag == "b" else f"{tag}={value}" for tag, value in tags)
        unsigned = template.replace("{b}", "")
    state = hashlib.sha256(data)
    state.update(signature_header_data(Canon.RELAXED, name.encode(), b" " + unsigned.encode()))
    signature = base64.b64encode(sign_digest(key.private_key, state.digest())).decode()
    return template.replace("{b}", fold_b64(signature) if fold else signature)


def seal_message(
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    key: LoadedKey,
    authserv_id: str,
    results: Sequence[str],
    chain_status: str,
    signed_headers: Sequence[str] = DEFAULT_AMS_HEADERS,
    timestamp: int | None = None,
    fold: bool = True,
) -> ArcSet:
    """The next ARC Set for a message (headers as (name, raw value) bytes), or NotSealed.

    `results` are resinfo strings for the AAR (`spf=pass smtp.mailfrom=...`), the
    chain's own `arc=` first; `chain_status` is none, pass, fail or temperror.
    """
    if key.algorithm != "rsa-sha256":
        raise ValueError(f"ARC signs with rsa-sha256 only (RFC 8617), not {key.algorithm}")
    status = chain_status.lower()
    sets, top = existing_sets(headers)
    if top >= arcset.MAX_INSTANCES:
        raise NotSealed(
            "limit", f"the chain has {top} sets, the limit is {arcset.MAX_INSTANCES}")
    if top:
        seals = sets.get(top, {}).get(AS, [])
        if seals and arcset.seal_cv(seals[-1][1]) == "fail":
            raise NotSealed("chain_failed", f"ARC-Seal i={top} says cv=fail: the chain ended")
    if status == "temperror":
        raise NotSealed("temperror", "the chain could not be validated (temperror)")
    if top == 0:
        cv_value = "none"
    elif status == "pass" and _structurally_sound(sets, top):
        cv_value = "pass"
    else:
        cv_value = "fail"  # includes "none" with sets present: inconsistent, never "pass"
    instance = top + 1
    stamp = str(int(time.time()) if timestamp is None else timestamp)

    aar = "; ".join([f"i={instance}", authserv_id, *results])
    if fold:
        aar = f"i={instance}; {authserv_id};" + ";".join(f"\n\t{r}" for r in results)
        if not results:
            aar = f"i={instance}; {authserv_id}; none"
    elif not results:
        aar += "; none"

    body_hash = base64.b64encode(
        hashlib.sha256(canonicalize_body(body, Canon.RELAXED)).digest()).decode()
    # Each listed field once per instance present (absent ones are not listed: later
    # hops may add them, and only the newest AMS has to verify).  Never ARC-Seal.
    present: dict[str, int] = {}
    for name, _ in headers:
        field = name.strip(b" \t").lower().decode("ascii", "replace")
        present[field] = present.get(field, 0) + 1
    names = [field for field in dict.fromkeys(n.lower() for n in signed_headers)
             if field != AS.lower() for _ in range(present.get(field, 0))]
    with_aar = [*headers, (AAR.encode(), b" " + aar.encode())]
    ams = _sign_field(key, canonical_headers(Canon.RELAXED, headers, names), AMS, [
        ("a", "rsa-sha256"), ("b", ""), ("bh", body_hash), ("c", "relaxed/relaxed"),
        ("d", key.domain), ("h", ":".join(names)), ("i", str(instance)),
        ("s", key.selector), ("t", stamp),
    ], fold)

    chain: list[tuple[bytes, bytes]] = []
    if cv_value != "fail":
        for number in range(1, instance):
            chain += [sets[number][kind][0] for kind in (AAR, AMS, AS)]
    chain += [with_aar[-1], (AMS.encode(), b" " + ams.encode())]
    seal_data = b"".join(relaxed_header(name, value) for name, value in chain)
    seal = _sign_field(key, seal_data, AS, [
        ("a", "rsa-sha256"), ("b", ""), ("cv", cv_value), ("d", key.domain),
        ("i", str(instance)), ("s", key.selector), ("t", stamp),
    ], fold)
    return ArcSet(instance, aar, ams, seal, cv_value)


# --------------------------------------------------------------------------- the sealer


class ArcSealer:
    """Seals inbound mail as configured in [arc] (seal, seal_domain, seal_selector,
    seal_key, seal_recipients, seal_relays).  The key is loaded and validated here, so a
    reload re-reads it and a broken key fails the reload."""

    def __init__(
        self,
        settings: Settings,
        key: LoadedKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        arc = settings.arc
        if key is None:
            if arc.seal_key is None:
                raise ValueError("[arc] seal_key is not set")
            try:
                key = load_key(DkimSigningKey(arc.seal_domain, arc.seal_selector, arc.seal_key))
            except KeyFileProblem as exc:
                raise KeyLoadError([ConfigProblem("arc.seal_key", str(exc))]) from None
        if key.algorithm != "rsa-sha256":
            raise KeyLoadError([ConfigProblem(
                "arc.seal_key", f"{key.path}: ARC seals with RSA only (RFC 8617), "
                f"this is an {key.algorithm} key")])
        self.key = key
        self.authserv_id = settings.general.authserv_id
        self._recipients = frozenset(arc.seal_recipients)
        self._relays = arc.seal_relays
        self._clock = clock

    def applies(self, connection: Connection, transaction: Transaction) -> bool:
        """Whether this inbound message gets an ARC Set (seal_recipients / seal_relays)."""
        if not self._recipients and not self._relays:
            return True
        ip = connection.client_ip
        if ip is not None and any(ip in network for network in self._relays):
            return True
        for recipient in transaction.recipients:
            address = recipient.lower()
            if address in self._recipients or address.rpartition("@")[2] in self._recipients:
                return True
        return False

    def seal(
        self, transaction: Transaction, aar_results: Sequence[AuthResult], chain_status: str
    ) -> tuple[InsertHeader, ...]:
        """The header edits of our ARC Set, or () when the message is not sealed."""
        status = str(chain_status).lower()
        if transaction.body_truncated:
            return self._not_sealed(transaction, NotSealed(
                "oversized", "body exceeds milter.max_body_size: cannot be sealed"))
        results = list(aar_results)
        if not any(result.method == "arc" for result in results):
            results.insert(0, AuthResult("arc", "none" if status == "temperror" else status))
        headers = [(header_name_bytes(h), header_value_bytes(h)) for h in transaction.headers]
        try:
            arc_set = seal_message(
                headers, transaction.body, self.key, self.authserv_id,
                [authresults.format_result(result) for result in results], status,
                timestamp=int(self._clock()),
            )
        except NotSealed as exc:
            return self._not_sealed(transaction, exc)
        metrics.ARC_SEALS.labels(arc_set.cv).inc()
        log.info("%s: ARC-sealed i=%d cv=%s d=%s s=%s", transaction.log_id, arc_set.instance,
                 arc_set.cv, self.key.domain, self.key.selector)
        return arc_set.edits()

    def _not_sealed(self, transaction: Transaction, exc: NotSealed) -> tuple[InsertHeader, ...]:
        metrics.ARC_SEALS.labels(exc.result).inc()
        log.info("%s: not ARC-sealed: %s", transaction.log_id, exc)
        return ()


def build_sealer(settings: Settings) -> ArcSealer | None:
    """The sealer for `settings`, or None when [arc] seal is false."""
    return ArcSealer(settings) if settings.arc.seal else None
