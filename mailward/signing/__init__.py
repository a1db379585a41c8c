"""Outbound signing: DKIM signatures (RFC 6376, RFC 8463), ARC sealing (RFC 8617), keys.

- `canon`: canonicalization over raw bytes (RFC 6376 3.4).
- `keys`: load and validate key files; DNS records for them.
- `table`: which keys sign which From address.
- `dkim`: the DkimSigner the pipeline calls for outbound mail.
- `arc`: the ArcSealer for mail we pass on as an intermediary.
"""
