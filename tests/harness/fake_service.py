"""A stand-in for `mailward milter|policyd`, to test the harness without the real services.

It honours the same contract as the real CLI (DESIGN.md): `fake_service SERVICE -c FILE`,
runs in the foreground, logs to stderr, reloads on SIGHUP, exits on SIGTERM, serves
Prometheus text on the metrics listener.  It reads only the socket and metrics keys of
the config file.

* milter: speaks just enough of the milter protocol (version 6) to accept every message
  and add `X-Harness-Milter: seen`, so a test can prove Postfix really calls the milter.
* policyd: answers `action=DUNNO`, except `action=REJECT` for recipients whose local part
  starts with "policy-reject", so a test can prove Postfix asks for every recipient.

Run: `python -m tests.harness.fake_service milter -c mailward.toml`.
"""

from __future__ import annotations

import argparse
import grp
import http.server
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

VERSION = "fake-0"

_counts = {"requests": 0, "reloads": 0}
_lock = threading.Lock()


def _log(message: str) -> None:
    print(f"fake-{_SERVICE}: {message}", file=sys.stderr, flush=True)


_SERVICE = "?"


def _count(key: str) -> None:
    with _lock:
        _counts[key] += 1


# --------------------------------------------------------------------------- milter


def _read_exact(stream: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _send(stream: socket.socket, command: bytes, payload: bytes = b"") -> None:
    stream.sendall(struct.pack("!I", len(payload) + 1) + command + payload)


class MilterHandler(socketserver.BaseRequestHandler):
    """One MTA connection: answer every command with "continue", add a header at the end."""

    def handle(self) -> None:
        stream: socket.socket = self.request
        try:
            while True:
                (length,) = struct.unpack("!I", _read_exact(stream, 4))
                packet = _read_exact(stream, length)
                command, payload = packet[:1], packet[1:]
                if command == b"O":  # option negotiation
                    _version, _actions, _protocol = struct.unpack("!III", payload[:12])
                    # version 6, may add headers (SMFIF_ADDHDRS), wants every step
                    _send(stream, b"O", struct.pack("!III", 6, 0x01, 0))
                elif command in (b"D", b"A", b"K"):  # macros, abort, quit+new: no reply
                    continue
                elif command == b"Q":
                    return
                elif command == b"E":  # end of body
                    _send(stream, b"h", b"X-Harness-Milter\0seen\0")
                    _send(stream, b"a")
                    _count("requests")
                else:  # connect, helo, mail, rcpt, data, header, eoh, body, unknown
                    _send(stream, b"c")
        except (ConnectionError, struct.error):
            return


# --------------------------------------------------------------------------- policyd


class PolicyHandler(socketserver.StreamRequestHandler):
    """Postfix policy delegation: name=value lines, an empty line, answer, repeat."""

    def handle(self) -> None:
        attributes: dict[str, str] = {}
        for raw in self.rfile:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line:
                name, _, value = line.partition("=")
                attributes[name] = value
                continue
            _count("requests")
            recipient = attributes.get("recipient", "")
            if recipient.lower().startswith("policy-reject"):
                answer = "action=REJECT 5.7.1 harness policy says no"
            else:
                answer = "action=DUNNO"
            _log(f"request client={attributes.get('client_address')} rcpt={recipient} "
                 f"-> {answer}")
            self.wfile.write(f"{answer}\n\n".encode())
            self.wfile.flush()
            attributes = {}


# --------------------------------------------------------------------------- plumbing


class MetricsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        with _lock:
            body = (
                "# TYPE harness_fake_requests_total counter\n"
                f'harness_fake_requests_total{{service="{_SERVICE}"}} {_counts["requests"]}\n'
                "# TYPE harness_fake_reloads_total counter\n"
                f'harness_fake_reloads_total{{service="{_SERVICE}"}} {_counts["reloads"]}\n'
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


# block_on_close = False: server_close() must not wait for connections Postfix keeps
# open (policy connections idle for minutes); the process is exiting anyway.


class _ThreadingUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False


class _ThreadingTcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


def _server(spec: str, handler: type[socketserver.BaseRequestHandler],
            section: dict[str, Any]) -> socketserver.BaseServer:
    kind, _, address = spec.partition(":")
    if kind == "unix":
        Path(address).unlink(missing_ok=True)
        server = _ThreadingUnixServer(address, handler)
        # As the real services do: socket_mode and socket_group let Postfix connect.
        if section.get("socket_group"):
            os.chown(address, -1, grp.getgrnam(section["socket_group"]).gr_gid)
        os.chmod(address, int(section.get("socket_mode", "0660"), 8))
        return server
    host, _, port = address.rpartition(":")
    return _ThreadingTcpServer((host.strip("[]"), int(port)), handler)


def main(argv: list[str] | None = None) -> int:
    global _SERVICE
    parser = argparse.ArgumentParser(prog="fake_service")
    parser.add_argument("--version", action="version", version=VERSION)
    parser.add_argument("service", choices=["milter", "policyd"])
    parser.add_argument("-c", "--config", required=True, type=Path)
    args = parser.parse_args(argv)
    _SERVICE = args.service
    config = tomllib.loads(args.config.read_text())
    if args.service == "milter":
        server = _server(config["milter"]["socket"], MilterHandler, config["milter"])
        listen = config.get("metrics", {}).get("listen", "")
    else:
        server = _server(config["policyd"]["socket"], PolicyHandler, config["policyd"])
        listen = config.get("metrics", {}).get("policyd_listen", "")
    servers: list[socketserver.BaseServer] = [server]
    if listen:
        host, _, port = listen.rpartition(":")
        metrics = http.server.ThreadingHTTPServer((host, int(port)), MetricsHandler)
        metrics.block_on_close = False
        servers.append(metrics)
    # Signals are taken synchronously with sigwait, never in a handler: a handler that
    # sets a threading.Event can deadlock on the Event's own lock.  Block them before
    # the threads start, so that only sigwait receives them.
    handled = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    for each in servers:
        threading.Thread(target=each.serve_forever, args=(0.05,), daemon=True).start()
    _log(f"ready, pid {os.getpid()}")
    while signal.sigwait(handled) == signal.SIGHUP:
        _count("reloads")
        _log("reloaded configuration")
    _log("shutting down")
    for each in servers:
        each.shutdown()
        each.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
