"""The signing table: which keys sign a message, decided by its From address.

Entries come from two places:

- every active [[dkim.sign.keys]] key signs mail From its own domain, and with
  `subdomains = true` also From any subdomain of it;
- [[dkim.sign.table]] entries add patterns or replace those defaults: a full address
  ("ceo@example.com"), a domain ("example.com"), a subdomain wildcard
  ("*.example.com", which does not match example.com itself) or "*" (any From).

Lookup takes the most specific match: the address, then the exact domain, then the
wildcard of the nearest parent domain, then "*".  All keys of the matching entry sign
(two keys = dual signing, e.g. RSA + Ed25519).  Inactive keys (rotation: published and
checked, not yet in use) never sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mailward.config import DkimSigningRule
from mailward.signing.keys import LoadedKey


@dataclass(frozen=True)
class SigningTable:
    addresses: dict[str, tuple[LoadedKey, ...]] = field(default_factory=dict)
    domains: dict[str, tuple[LoadedKey, ...]] = field(default_factory=dict)
    wildcards: dict[str, tuple[LoadedKey, ...]] = field(default_factory=dict)
    fallback: tuple[LoadedKey, ...] = ()

    @classmethod
    def build(
        cls, keys: Sequence[LoadedKey], rules: Sequence[DkimSigningRule] = ()
    ) -> SigningTable:
        by_name = {(key.domain, key.selector): key for key in keys}
        domains: dict[str, list[LoadedKey]] = {}
        wildcards: dict[str, list[LoadedKey]] = {}
        for key in keys:
            if not key.active:
                continue
            domains.setdefault(key.domain, []).append(key)
            if key.subdomains:
                wildcards.setdefault(key.domain, []).append(key)
        explicit: dict[str, list[LoadedKey]] = {}
        for rule in rules:
            chosen = explicit.setdefault(rule.pattern, [])
            for reference in rule.keys:
                key = by_name[reference]  # config validation guarantees it exists
                if key.active and key not in chosen:
                    chosen.append(key)
        addresses: dict[str, list[LoadedKey]] = {}
        fallback: list[LoadedKey] = []
        for pattern, chosen in explicit.items():
            if pattern == "*":
                fallback = chosen
            elif "@" in pattern:
                addresses[pattern] = chosen
            elif pattern.startswith("*."):
                wildcards[pattern[2:]] = chosen
            else:
                domains[pattern] = chosen
        return cls(
            addresses={k: tuple(v) for k, v in addresses.items() if v},
            domains={k: tuple(v) for k, v in domains.items() if v},
            wildcards={k: tuple(v) for k, v in wildcards.items() if v},
            fallback=tuple(fallback),
        )

    def keys_for(self, address: str) -> tuple[LoadedKey, ...]:
        """The keys that sign mail From `address` (local@domain), or () if none."""
        local, _, domain = address.rpartition("@")
        domain = domain.rstrip(".").lower()
        found = self.addresses.get(f"{local.lower()}@{domain}")
        if found:
            return found
        found = self.domains.get(domain)
        if found:
            return found
        labels = domain.split(".")
        for start in range(1, len(labels)):
            found = self.wildcards.get(".".join(labels[start:]))
            if found:
                return found
        return self.fallback

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains or self.wildcards or self.fallback)
