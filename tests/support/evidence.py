"""Inputs for the DMARC evaluator that tests give without running SPF."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpfEvidence:
    """An SPF outcome as DMARC needs it (the `dmarc.Evidence` shape): domain and result."""

    domain: str
    result: str
