"""sd_notify: one datagram on a real unix socket, and the policy service saying READY=1
only once its socket listens, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mailward import sdnotify


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def fields_of(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_ready_is_one_datagram_with_status(notify_socket):
    assert sdnotify.ready("serving") is True
    assert fields_of(notify_socket.recv(4096)) == {"READY": "1", "STATUS": "serving"}


def test_reloading_carries_a_monotonic_timestamp(notify_socket):
    assert sdnotify.reloading() is True
    fields = fields_of(notify_socket.recv(4096))
    assert fields["RELOADING"] == "1"
    assert int(fields["MONOTONIC_USEC"]) > 0


def test_reload_with_brackets_even_a_failing_reload(notify_socket):
    def refused() -> None:
        raise RuntimeError("bad config")

    with pytest.raises(RuntimeError):
        sdnotify.reload_with(refused)()
    assert "RELOADING" in fields_of(notify_socket.recv(4096))
    assert fields_of(notify_socket.recv(4096)) == {"READY": "1"}


def test_abstract_namespace_address():
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "@sd/notify"}) == b"\0sd/notify"


def test_no_socket_means_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.stopping() is False
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "vsock:2:1"}) is None


def test_a_vanished_socket_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.ready() is False
    assert "cannot notify systemd" in caplog.text


def test_fields_that_would_break_the_protocol_are_refused():
    with pytest.raises(ValueError):
        sdnotify.format_message({"STATUS": "two\nlines"})


def test_policy_service_notifies_ready_reloading_stopping(tmp_path: Path, notify_socket):
    policy_socket = tmp_path / "policy.sock"
    config = tmp_path / "mailward.toml"
    config.write_text(
        "[general]\nauthserv_id = \"mx.example.test\"\n"
        f"[policyd]\nsocket = \"unix:{policy_socket}\"\n"
        "[metrics]\nlisten = \"\"\npolicyd_listen = \"\"\n"
        f"[state]\npath = \"{tmp_path / 'state.db'}\"\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "mailward", "policyd", "-c", str(config)],
        env=dict(os.environ), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert fields_of(notify_socket.recv(4096)) == {"READY": "1"}
        # READY came after the socket listens: a client connects at once.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(policy_socket))
        process.send_signal(signal.SIGHUP)
        assert "RELOADING" in fields_of(notify_socket.recv(4096))
        assert fields_of(notify_socket.recv(4096)) == {"READY": "1"}
        process.send_signal(signal.SIGTERM)
        assert fields_of(notify_socket.recv(4096)) == {"STOPPING": "1"}
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_milter_notifies_ready_reloading_stopping(tmp_path: Path, notify_socket):
    milter_socket = tmp_path / "milter.sock"
    config = tmp_path / "mailward.toml"
    config.write_text(
        "[general]\nauthserv_id = \"mx.example.test\"\n"
        f"[milter]\nsocket = \"unix:{milter_socket}\"\nworkers = 1\nshutdown_timeout = 5.0\n"
        "[metrics]\nlisten = \"\"\npolicyd_listen = \"\"\n"
        f"[state]\npath = \"{tmp_path / 'state.db'}\"\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "mailward", "milter", "-c", str(config)],
        env=dict(os.environ), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert fields_of(notify_socket.recv(4096)) == {"READY": "1"}
        assert milter_socket.is_socket()  # READY came after libmilter bound the socket
        process.send_signal(signal.SIGHUP)
        assert "RELOADING" in fields_of(notify_socket.recv(4096))
        assert fields_of(notify_socket.recv(4096)) == {"READY": "1"}
        process.send_signal(signal.SIGTERM)
        assert fields_of(notify_socket.recv(4096)) == {"STOPPING": "1"}
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
