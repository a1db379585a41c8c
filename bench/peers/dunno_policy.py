"""A policy server that answers ``action=DUNNO`` to everything.

It exists to validate bench.policy_load and to show what the protocol costs on its
own in Python (asyncio streams, one task per connection): the ceiling for any Python
policy service, the way the empty pymilter milter is for milters.

Usage: ``python -m bench.peers.dunno_policy --socket inet:127.0.0.1:10040``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from bench.sockets import SocketSpec, remove_stale_unix_socket

ANSWER = b"action=DUNNO\n\n"
MAX_REQUEST = 64 * 1024  # Postfix requests are a few hundred bytes


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request on a persistent connection until the client closes it."""
    try:
        while True:
            try:
                await reader.readuntil(b"\n\n")
            except asyncio.IncompleteReadError:
                return  # client closed between requests (or mid-request)
            except asyncio.LimitOverrunError:
                return  # not a policy client: drop it
            writer.write(ANSWER)
            await writer.drain()
    except ConnectionError:
        return
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(spec: SocketSpec) -> None:
    if spec.kind == "unix":
        remove_stale_unix_socket(spec)
        server = await asyncio.start_unix_server(handle, spec.path, limit=MAX_REQUEST)
    else:
        server = await asyncio.start_server(
            handle, spec.host, spec.port, limit=MAX_REQUEST, reuse_address=True
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
    if spec.kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.dunno_policy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--socket", required=True, help="inet:HOST:PORT or unix:/path")
    args = parser.parse_args(argv)
    print(f"DUNNO policy server on {args.socket}", file=sys.stderr, flush=True)
    asyncio.run(serve(SocketSpec.parse(args.socket)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
