"""Outbound TLS policy for Postfix (`smtp_tls_policy_maps = socketmap:...`).

socketmap.py is the pure wire codec, mtasts.py the RFC 8461 logic (parsing, cache,
decision), fetch.py the HTTPS fetch, service.py the asyncio server that joins them.
"""
