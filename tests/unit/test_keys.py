"""Key files and the key lifecycle: validation errors that name the file, DNS records
split into 255-byte strings, `mailward keys generate|show-dns|check`, and a broken key
refusing a reload."""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import dns.rdtypes.ANY.TXT
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mailward import cli
from mailward.commands.keys import KeyStatus, check_key, run_check
from mailward.compose import build_pipeline
from mailward.config import ConfigError, DkimSigningKey, load_settings
from mailward.dns import InMemoryResolver
from mailward.signing.dkim import DkimSigner
from mailward.signing.keys import (
    KeyLoadError,
    LoadedKey,
    load_keys,
    split_txt,
    zone_record,
)

RSA_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_4096 = rsa.generate_private_key(public_exponent=65537, key_size=4096)
ED = ed25519.Ed25519PrivateKey.generate()


def pem(key: Any, encryption: Any = None) -> bytes:
    return bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    ))


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def config_key(path: Path, domain: str = "example.com", selector: str = "sel",
               **options: Any) -> DkimSigningKey:
    return DkimSigningKey(domain, selector, path, **options)


def one_problem(configs: list[DkimSigningKey]) -> str:
    with pytest.raises(KeyLoadError) as raised:
        load_keys(configs)
    assert len(raised.value.problems) == 1
    return str(raised.value.problems[0])


# --------------------------------------------------------------------------- validation


def test_good_keys_load(tmp_path: Path) -> None:
    keys = load_keys([
        config_key(write_key(tmp_path / "r.key", pem(RSA_2048)), selector="r"),
        config_key(write_key(tmp_path / "e.key", pem(ED)), selector="e", active=False),
        # dkimpy's own Ed25519 format: the base64 seed on one line.
        config_key(write_key(tmp_path / "d.key", base64.b64encode(ED.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())) + b"\n"), selector="d"),
        # PKCS#1 "RSA PRIVATE KEY", as opendkim-genkey writes it.
        config_key(write_key(tmp_path / "p1.key", RSA_2048.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())), selector="p1", algorithm="rsa-sha256"),
    ])
    assert [(k.selector, k.algorithm, k.bits, k.active) for k in keys] == [
        ("r", "rsa-sha256", 2048, True), ("e", "ed25519-sha256", 256, False),
        ("d", "ed25519-sha256", 256, True), ("p1", "rsa-sha256", 2048, True),
    ]
    assert keys[1].public_key_b64() == keys[2].public_key_b64()


@pytest.mark.parametrize(("mode", "who"), [(0o644, "others"), (0o640, "its group"),
                                           (0o604, "others"), (0o620, "its group")])
def test_group_or_world_accessible_key_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    path = write_key(tmp_path / "k.key", pem(ED), mode)
    problem = one_problem([config_key(path)])
    assert str(path) in problem and f"mode {mode:04o} lets {who}" in problem
    assert f"chmod 600 {path}" in problem
    assert problem.startswith("dkim.sign.keys[0].key: ")


def test_missing_directory_garbage_empty_encrypted_keys(tmp_path: Path) -> None:
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    cases = {
        tmp_path / "absent.key": "no such file",
        directory: "not a regular file",
        write_key(tmp_path / "garbage.key", b"this is not a key\n"): "not a private key",
        write_key(tmp_path / "empty.key", b""): "empty file",
        write_key(tmp_path / "bad.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"
                  b"-----END PRIVATE KEY-----\n"): "malformed PEM private key",
        write_key(tmp_path / "enc.key", pem(ED, serialization.BestAvailableEncryption(b"pw"))):
            "encrypted private key",
        write_key(tmp_path / "ec.key", pem(ec.generate_private_key(ec.SECP256R1()))):
            "unsupported key type",
        write_key(tmp_path / "big.key", b"x" * 70_000): "larger than",
    }
    configs = [config_key(path, selector=f"s{i}") for i, path in enumerate(cases)]
    with pytest.raises(KeyLoadError) as raised:
        load_keys(configs)
    problems = [str(p) for p in raised.value.problems]
    assert len(problems) == len(cases)  # every broken key reported, not just the first
    for problem, (path, reason) in zip(problems, cases.items(), strict=True):
        assert f"{path}: " in problem and reason in problem, problem
    assert isinstance(raised.value, ConfigError)


def test_unreadable_key_names_the_file(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k.key", pem(ED), 0o600)
    if os.geteuid() == 0:
        # root reads any file: make it unreadable by making it unopenable instead.
        path.unlink()
        path.symlink_to(path)  # a loop: open() fails with ELOOP
        assert "cannot open" in one_problem([config_key(path)])
    else:
        path.chmod(0o000)
        assert "permission denied" in one_problem([config_key(path)])


def test_short_rsa_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    short = tmp_path / "512.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:512", "-out", str(short)], check=True, capture_output=True)
    short.chmod(0o600)
    assert "RSA key too short: 512 bits" in one_problem([config_key(short)])
    weak = write_key(tmp_path / "1024.key", pem(rsa.generate_private_key(65537, 1024)))
    with caplog.at_level(logging.WARNING, logger="mailward.signing.keys"):
        (key,) = load_keys([config_key(weak)])
    assert key.bits == 1024 and "has only 1024 bits" in caplog.text


def test_declared_algorithm_must_match_the_key(tmp_path: Path) -> None:
    path = write_key(tmp_path / "e.key", pem(ED))
    problem = one_problem([config_key(path, algorithm="rsa-sha256")])
    assert "holds a ed25519-sha256 key, but algorithm = 'rsa-sha256'" in problem


# --------------------------------------------------------------------------- DNS records


def test_dns_record_values() -> None:
    ed = LoadedKey("example.com", "e", Path("/k"), ED)
    assert ed.dns_record() == f"v=DKIM1; k=ed25519; p={ed.public_key_b64()}"
    assert len(base64.b64decode(ed.public_key_b64())) == 32
    rsa_key = LoadedKey("example.com", "r", Path("/k"), RSA_2048)
    assert rsa_key.dns_record().startswith("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOC")
    assert rsa_key.record_name == "r._domainkey.example.com"


@pytest.mark.parametrize("private_key", [ED, RSA_2048, RSA_4096], ids=["ed", "2048", "4096"])
def test_zone_record_splits_into_255_byte_strings_a_zone_parser_accepts(private_key: Any) -> None:
    key = LoadedKey("example.com", "sel", Path("/k"), private_key)
    text = zone_record(key.record_name, key.dns_record())
    zone = dns.zone.from_text("@ 300 IN SOA ns. h. 1 1 1 1 1\n@ 300 IN NS ns.\n"
                              + text.replace("IN\tTXT", "300 IN TXT", 1),
                              origin="example.com.", relativize=False)
    rdata = next(iter(zone.find_rdataset("sel._domainkey.example.com.", "TXT")))
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    assert all(len(s) <= 255 for s in rdata.strings)
    assert b"".join(rdata.strings).decode() == key.dns_record()
    expected_strings = -(-len(key.dns_record()) // 255)
    assert len(rdata.strings) == expected_strings
    if expected_strings == 1:
        assert "(" not in text


def test_split_txt_boundaries() -> None:
    assert split_txt("a" * 255) == ["a" * 255]
    assert split_txt("a" * 256) == ["a" * 255, "a"]
    assert split_txt("") == [""]


# --------------------------------------------------------------------------- keys check


def zone_with(name: str, *records: str) -> InMemoryResolver:
    lines = "\n".join(
        f'{name}. 300 IN TXT ' + " ".join(f'"{chunk}"' for chunk in split_txt(r))
        for r in records
    )
    return InMemoryResolver.from_zones({"example.com": lines})


RSA_LOADED = LoadedKey("example.com", "sel", Path("/k"), RSA_2048)
ED_LOADED = LoadedKey("example.com", "sel", Path("/k"), ED)
NAME = "sel._domainkey.example.com"


@pytest.mark.parametrize(("key", "records", "status", "detail"), [
    (RSA_LOADED, [RSA_LOADED.dns_record()], KeyStatus.MATCHES, ""),
    (ED_LOADED, [ED_LOADED.dns_record()], KeyStatus.MATCHES, ""),
    (RSA_LOADED, [RSA_LOADED.dns_record() + "; t=y"], KeyStatus.MATCHES, "testing mode"),
    (RSA_LOADED, ["v=spf1 -all"], KeyStatus.MISSING, "no DKIM key record"),
    (RSA_LOADED, [LoadedKey("e", "s", Path("/k"), RSA_4096).dns_record()],
     KeyStatus.MISMATCHED, "a different rsa key (4096 bits)"),
    (RSA_LOADED, [ED_LOADED.dns_record()], KeyStatus.MISMATCHED, "k=ed25519 published"),
    (RSA_LOADED, [RSA_LOADED.dns_record(), RSA_LOADED.dns_record() + " "],
     KeyStatus.MISMATCHED, "2 DKIM key records"),
    (RSA_LOADED, [RSA_LOADED.dns_record() + "; h=sha1"], KeyStatus.MISMATCHED, "h=sha1"),
    (RSA_LOADED, ["v=DKIM1; k=rsa; p="], KeyStatus.REVOKED, "empty p="),
    (RSA_LOADED, [RSA_LOADED.dns_record()[:255]], KeyStatus.TOO_SHORT,
     "a string of the TXT record is missing"),
    (RSA_LOADED, ["v=DKIM1; k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBALd/Q6a9mNbcWg8+lcT"
                  "DW9yJoMNJk6Uu1LkWIVRzKbx2RGrqfD4MXMVFm6JcuHPNOHb+94IkA4Dm+oUtZRG0QiECAwEAAQ=="],
     KeyStatus.TOO_SHORT, "512 bits"),
    (RSA_LOADED, ["v=DKIM1; k=rsa; p=!!notbase64"], KeyStatus.MALFORMED, "not base64"),
    (ED_LOADED, ["v=DKIM1; k=ed25519; p=AAAA"], KeyStatus.MALFORMED, "not a ed25519"),
])
def test_check_statuses(key: LoadedKey, records: list[str], status: KeyStatus,
                        detail: str) -> None:
    result = check_key(zone_with(NAME, *records), key)
    assert result.status is status, result
    assert detail in result.detail
    assert result.ok is (status is KeyStatus.MATCHES)


def test_check_missing_and_dns_error() -> None:
    resolver = InMemoryResolver.from_zones({"example.com": "www 300 IN A 192.0.2.1"})
    assert check_key(resolver, RSA_LOADED).status is KeyStatus.MISSING
    resolver.fail(NAME)
    assert check_key(resolver, RSA_LOADED).status is KeyStatus.DNS_ERROR


# --------------------------------------------------------------------------- CLI


def test_generate_writes_0600_key_and_prints_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keydir = tmp_path / "keys"
    status = cli.main(["keys", "generate", "--domain", "Example.COM", "--selector", "s2026r",
                       "--algorithm", "rsa-3072", "--key-dir", str(keydir)])
    out, err = capsys.readouterr()
    assert status == 0
    path = keydir / "example.com.s2026r.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (key,) = load_keys([config_key(path, selector="s2026r")])
    assert key.bits == 3072
    assert out.startswith("s2026r._domainkey.example.com.\tIN\tTXT\t( \"v=DKIM1; k=rsa; p=")
    strings = [line.strip(' \t()"') for line in out.strip().split("\n")]
    strings[0] = strings[0].split('"', 1)[1]
    assert all(len(s) <= 255 for s in strings) and "".join(strings) == key.dns_record()
    assert f'key = "{path}"' in err and "active = false" in err
    # Never overwritten:
    again = cli.main(["keys", "generate", "--domain", "example.com", "--selector", "s2026r",
                      "--key-dir", str(keydir)])
    assert again == 1 and "exists already" in capsys.readouterr().err
    assert load_keys([config_key(path)])[0].public_key_b64() == key.public_key_b64()


def test_generate_hands_the_key_to_the_milter_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pwd

    status = cli.main(["keys", "generate", "--domain", "example.com", "--selector", "o",
                       "--algorithm", "ed25519", "--key-dir", str(tmp_path), "--owner", "nobody"])
    path = tmp_path / "example.com.o.key"
    if os.geteuid() == 0:
        assert status == 0
        assert path.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    else:  # only root may give a file away: refused, and nothing is left behind
        assert status == 1 and "cannot write the key" in capsys.readouterr().err
        assert not path.exists()


def test_generate_uses_the_configured_key_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mailward.toml"
    config.write_text(f'[dkim.sign]\nkey_directory = "{tmp_path / "kd"}"\n')
    assert cli.main(["keys", "generate", "-c", str(config), "--domain", "example.org",
                     "--selector", "e1", "--algorithm", "ed25519"]) == 0
    assert (tmp_path / "kd" / "example.org.e1.key").exists()
    assert 'k=ed25519; p=' in capsys.readouterr().out


def write_config(tmp_path: Path, port: int = 53) -> Path:
    write_key(tmp_path / "example.com.r.key", pem(RSA_2048))
    write_key(tmp_path / "example.com.e.key", pem(ED))
    config = tmp_path / "mailward.toml"
    config.write_text(f"""
[dns]
nameservers = ["127.0.0.1"]
port = {port}
[dkim.sign]
key_directory = "{tmp_path}"
[[dkim.sign.keys]]
domain = "example.com"
selector = "r"
key = "example.com.r.key"
[[dkim.sign.keys]]
domain = "example.com"
selector = "e"
key = "example.com.e.key"
active = false
""")
    return config


def test_show_dns_prints_every_configured_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert cli.main(["keys", "show-dns", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "; example.com:r: rsa-sha256, 2048 bits, active" in out
    assert "; example.com:e: ed25519-sha256, 256 bits, inactive" in out
    assert 'e._domainkey.example.com.\tIN\tTXT\t"v=DKIM1; k=ed25519; p=' in out
    assert cli.main(["keys", "show-dns", "-c", str(config), "--selector", "e"]) == 0
    assert "example.com:r" not in capsys.readouterr().out
    assert cli.main(["keys", "show-dns", "-c", str(config), "--domain", "other.example"]) == 1
    assert "no [[dkim.sign.keys]] table matches" in capsys.readouterr().err


def test_show_dns_reports_a_broken_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    (tmp_path / "example.com.e.key").chmod(0o644)
    assert cli.main(["keys", "show-dns", "-c", str(config)]) == 1
    assert f"{tmp_path / 'example.com.e.key'}: mode 0644" in capsys.readouterr().err


def check_args(config: Path, **options: Any) -> argparse.Namespace:
    return argparse.Namespace(config=config, domain=options.get("domain"),
                              selector=options.get("selector"))


def test_check_reports_each_key_and_exit_status(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config)
    keys = load_keys(settings.dkim.sign.keys)
    resolver = zone_with("r._domainkey.example.com", keys[0].dns_record())
    out, err = io.StringIO(), io.StringIO()
    assert run_check(check_args(config), out, err, resolver=resolver) == 1
    assert out.getvalue().splitlines() == [
        "example.com:r (r._domainkey.example.com): matches",
        "example.com:e [inactive] (e._domainkey.example.com): missing: nxdomain: publish the "
        "record `mailward keys show-dns` prints",
    ]
    # The new (inactive) selector is checked on its own before it is activated.
    resolver.add_zone("e._domainkey.example.com",
                      f'@ 300 IN TXT "{keys[1].dns_record()}"')
    out = io.StringIO()
    assert run_check(check_args(config, selector="e"), out, err, resolver=resolver) == 0
    assert out.getvalue() == "example.com:e [inactive] (e._domainkey.example.com): matches\n"
    assert run_check(check_args(config), io.StringIO(), err, resolver=resolver) == 0


# --------------------------------------------------------------------------- reload


def test_broken_key_refuses_the_reload_and_keeps_the_running_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from milters.service import MilterService, ReloadingPipelineSource, SharedControl

    config = write_config(tmp_path)
    settings = load_settings(config)
    pipeline = build_pipeline(settings)
    assert pipeline.signer is not None
    service = MilterService(config, settings, build_pipeline)
    source = ReloadingPipelineSource(config, SharedControl(), build_pipeline, pipeline)

    (tmp_path / "example.com.r.key").write_bytes(b"garbage after a bad deploy\n")
    with pytest.raises(KeyLoadError, match=r"example\.com\.r\.key: not a private key"):
        build_pipeline(load_settings(config))
    service._reload()  # the supervisor validates before bumping the generation
    assert service.control.get() == 0
    assert "reload refused" in caplog.text and "example.com.r.key" in caplog.text
    source.generation.bump()  # a worker that is told to reload anyway keeps its engine
    assert source.current() is pipeline

    write_key(tmp_path / "example.com.r.key", pem(RSA_4096))
    service._reload()
    assert service.control.get() == 1
    source.generation.bump()
    fresh = source.current()
    assert fresh is not pipeline and isinstance(fresh.signer, DkimSigner)
    assert [k.bits for k in fresh.signer.keys] == [4096, 256]
