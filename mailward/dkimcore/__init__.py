"""DKIM and ARC primitives shared by verifying (mailward.checks) and signing (mailward.signing).

A signer and a verifier must agree to the octet on what is hashed, so the rules that
decide it exist once, here:

- `taglist`: the tag=value list syntax (RFC 6376 3.2) of DKIM-Signature, key records,
  ARC-Message-Signature and ARC-Seal, and of DMARC records (RFC 7489 6.4 uses it too);
- `canon`: header and body canonicalization (RFC 6376 3.4), header selection (5.4.2),
  the signature field as hashed (3.7);
- `view`: one message as a verifier sees it, canonical forms computed once;
- `arcset`: which header fields make up an ARC Set and which instance each belongs to
  (RFC 8617 4.1, 4.2.1);
- `text`: tag values made fit for logs and Authentication-Results.

Pure functions over bytes and strings: no DNS, no keys, no configuration.
"""
