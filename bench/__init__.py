"""Mailward benchmark tools.

Load clients that speak the MTA side of the milter protocol and the Postfix
policy-delegation protocol themselves (so that no Postfix instance sits between the
load and the service and becomes the thing being measured), the reference peers
they are calibrated against, and `bench.run`, the entry point of `make bench`.

Nothing in here is imported by the services: bench/ depends on the standard library,
plus pymilter for the reference milter and dkimpy for signing the test message.
"""
