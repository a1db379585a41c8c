"""Services that `bench.run` measures next to Mailward.

Each module is runnable with ``python -m bench.peers.NAME`` and follows the same
contract as the Mailward services: foreground, logs to stderr, exits on SIGTERM,
listens on a socket given in Postfix syntax.
"""
