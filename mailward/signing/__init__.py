"""Outbound signing: DKIM signatures (RFC 6376, RFC 8463), ARC sealing (RFC 8617), keys.

Canonicalization and the tag-list syntax are shared with verification: `mailward.dkimcore`.

- `keys`: load and validate key files; DNS records for them.
- `table`: which keys sign which From address.
- `dkim`: the DkimSigner the pipeline calls for outbound mail.
- `arc`: the ArcSealer for mail we pass on as an intermediary.
"""
