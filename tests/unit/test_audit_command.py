"""`mailward audit` and `mailward explain` as commands: arguments, configuration errors and
exit codes (2 = could not check / could not explain), through the real parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailward.cli import main


def test_audit_refuses_bad_arguments_with_2(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    config = tmp_path / "none.toml"
    config.write_text('[dns]\nnameservers = ["127.0.0.1"]\nport = 1\ntimeout = 0.2\n')
    assert main(["audit", "-c", str(config), "exa mple..com"]) == 2
    assert "is not a domain name" in capsys.readouterr().err
    assert main(["audit", "-c", str(config), "example.org", "--ip", "300.1.1.1"]) == 2
    assert "--ip" in capsys.readouterr().err


def test_audit_reports_a_broken_configuration_with_2(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[dns]\nno_such_key = 1\n")
    assert main(["audit", "-c", str(config), "example.org"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_audit_with_dns_down_is_could_not_check(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    from tests.harness.process import free_port

    config = tmp_path / "dead-dns.toml"
    config.write_text(f'[dns]\nnameservers = ["127.0.0.1"]\nport = {free_port()}\n'
                      "timeout = 0.2\n")
    assert main(["audit", "-c", str(config), "example.org", "--no-connect"]) == 2
    assert "could not check" in capsys.readouterr().out


def test_explain_missing_file_and_missing_client_are_2(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[general]\nauthserv_id = "mx.example.net"\n')
    assert main(["explain", "-c", str(config), str(tmp_path / "nope.eml")]) == 2
    assert "nope.eml" in capsys.readouterr().err
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n")
    assert main(["explain", "-c", str(config), str(message)]) == 2
    assert "--client-ip" in capsys.readouterr().err
    assert main(["explain", "-c", str(config), str(message), "--offline"]) == 2
    assert "no Authentication-Results by mx.example.net" in capsys.readouterr().err
