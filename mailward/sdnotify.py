"""systemd's readiness protocol (sd_notify), without libsystemd.

A `Type=notify` unit is "started" only when the service says READY=1, so Postfix (ordered
after the milter) never meets a socket that is not listening yet; RELOADING=1/READY=1
around a SIGHUP lets `systemctl reload` wait for the reload to finish, and STOPPING=1
tells systemd that the shutdown it sees is wanted.  The protocol is one datagram to the
unix socket named in $NOTIFY_SOCKET (a leading "@" means the abstract namespace).
Outside systemd the variable is unset and every call is a no-op, so the services run the
same in the harness, the demo and a terminal.

Only the process systemd started may notify (NotifyAccess=main): a supervisor removes
$NOTIFY_SOCKET from the environment of the workers it spawns.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The address to send to, or None when not run by systemd (or run oddly)."""
    value = (os.environ if environ is None else environ).get(NOTIFY_SOCKET_ENV, "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # unset, empty, or a vsock address we do not speak


def format_message(fields: Mapping[str, str]) -> bytes:
    """`KEY=value` lines, the datagram's whole content."""
    for key, value in fields.items():
        if not key or "=" in key or "\n" in key or "\n" in value:
            raise ValueError(f"not a notify field: {key!r}={value!r}")
    return "".join(f"{key}={value}\n" for key, value in fields.items()).encode()


def notify(fields: Mapping[str, str], environ: Mapping[str, str] | None = None) -> bool:
    """Send one datagram; True if sent.  A failure is logged, never raised: the
    service keeps serving mail whether or not systemd heard it."""
    address = notify_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(format_message(fields), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %r: %s", address, exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """The service accepts connections."""
    fields = {"READY": "1"}
    if status:
        fields["STATUS"] = status
    return notify(fields)


def reloading() -> bool:
    """A reload has begun (MONOTONIC_USEC lets systemd >= 253 match it to the signal)."""
    return notify({"RELOADING": "1",
                   "MONOTONIC_USEC": str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)})


def stopping() -> bool:
    """The service is shutting down on purpose."""
    return notify({"STOPPING": "1"})


def reload_with(action: Callable[[], None]) -> Callable[[], None]:
    """`action` (a SIGHUP handler) bracketed by RELOADING=1 and READY=1; READY follows
    a refused reload too, since the running configuration keeps serving."""

    def bracketed() -> None:
        reloading()
        try:
            action()
        finally:
            ready()

    return bracketed
