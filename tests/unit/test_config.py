"""Configuration: defaults, a full file, and every kind of error with key path and line."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

import mailward
from mailward import cli
from mailward.config import (
    ConfigError,
    ConfigProblem,
    InternalErrorAction,
    ListenAddress,
    LogLevel,
    Settings,
    SocketAddress,
    SocketKind,
    StateBackend,
    load_settings,
    parse_settings,
)

REPO = Path(__file__).resolve().parents[2]


def problems_of(text: str) -> list[str]:
    """Every problem of a config text, as check-config prints them."""
    with pytest.raises(ConfigError) as info:
        parse_settings(textwrap.dedent(text), "test.toml")
    return [str(problem) for problem in info.value.problems]


def only_problem(text: str) -> ConfigProblem:
    with pytest.raises(ConfigError) as info:
        parse_settings(textwrap.dedent(text), "test.toml")
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


# --------------------------------------------------------------------------- valid files


def test_empty_file_gives_defaults(tmp_path: Path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    settings = load_settings(path)
    assert settings == Settings(source=str(path))
    assert settings.general.authserv_id == "localhost"
    assert settings.general.trusted_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.general.on_internal_error is InternalErrorAction.TEMPFAIL
    assert settings.dns.nameservers == ()
    assert settings.dns.port == 53
    assert settings.dns.timeout == 2.0
    assert str(settings.milter.socket) == "unix:/run/mailward/milter.sock"
    assert settings.milter.workers == 1
    assert settings.milter.pin_cpus is True
    assert str(settings.policyd.socket) == "inet:127.0.0.1:10040"
    assert settings.metrics.listen == ListenAddress("127.0.0.1", 9317)
    assert settings.state.backend is StateBackend.SQLITE
    assert settings.state.path == Path("/var/lib/mailward/state.db")


def test_comment_only_file_gives_defaults():
    assert parse_settings("# nothing here\n\n", "x") == Settings(source="x")


FULL = """\
[general]
authserv_id = "mx.example.net"
trusted_networks = ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]
on_internal_error = "accept"
log_level = "debug"

[dns]
nameservers = ["127.0.0.1", "::1"]
port = 5353
timeout = 1          # an integer is fine for a float
cache_entries = 100
negative_ttl_max = 60

[milter]
socket = "inet:127.0.0.1:8891"
socket_mode = "0600"
socket_group = "postfix"
workers = 4
pin_cpus = false
max_body_size = 1048576
shutdown_timeout = 5.5
mta_timeout = 120

[policyd]
socket = "unix:/run/mailward/policyd.sock"
idle_timeout = 60.0
max_connections = 50
max_request_size = 8192

[metrics]
listen = "[::1]:9400"
policyd_listen = "127.0.0.1:9401"

[state]
backend = "redis"
path = "/tmp/state.db"
url = "redis://127.0.0.1:6379/2"
"""


def test_full_valid_file():
    settings = parse_settings(FULL, "full.toml")
    assert settings.source == "full.toml"
    general = settings.general
    assert general.authserv_id == "mx.example.net"
    assert general.trusted_networks[2] == ipaddress.ip_network("192.0.2.0/24")
    assert general.on_internal_error is InternalErrorAction.ACCEPT
    assert general.log_level is LogLevel.DEBUG
    assert general.is_trusted(ipaddress.ip_address("192.0.2.77"))
    assert not general.is_trusted(ipaddress.ip_address("198.51.100.1"))
    assert settings.dns.nameservers == ("127.0.0.1", "::1")
    assert settings.dns.port == 5353
    assert settings.dns.timeout == 1.0
    assert isinstance(settings.dns.timeout, float)
    assert settings.dns.cache_entries == 100
    assert settings.dns.negative_ttl_max == 60
    milter = settings.milter
    assert milter.socket == SocketAddress(SocketKind.INET, host="127.0.0.1", port=8891)
    assert milter.socket_permissions.mode == 0o600
    assert milter.socket_permissions.group == "postfix"
    assert milter.workers == 4
    assert milter.pin_cpus is False
    assert milter.max_body_size == 1048576
    assert milter.shutdown_timeout == 5.5
    assert milter.mta_timeout == 120
    policyd = settings.policyd
    assert policyd.socket == SocketAddress(SocketKind.UNIX, path="/run/mailward/policyd.sock")
    assert policyd.idle_timeout == 60.0
    assert policyd.max_connections == 50
    assert policyd.max_request_size == 8192
    assert settings.metrics.listen == ListenAddress("::1", 9400)
    assert str(settings.metrics.listen) == "[::1]:9400"
    assert settings.metrics.policyd_listen == ListenAddress("127.0.0.1", 9401)
    assert settings.state.backend is StateBackend.REDIS
    assert settings.state.path == Path("/tmp/state.db")
    assert settings.state.url == "redis://127.0.0.1:6379/2"


def test_settings_are_frozen():
    settings = parse_settings(FULL)
    with pytest.raises(AttributeError):
        settings.milter.workers = 2  # type: ignore[misc]


def test_dotted_keys_and_inline_tables_are_read():
    settings = parse_settings('milter.workers = 3\npolicyd = { idle_timeout = 9.0 }\n')
    assert settings.milter.workers == 3
    assert settings.policyd.idle_timeout == 9.0


# --------------------------------------------------------------------------- errors


def test_wrong_type_names_key_path_and_line():
    text = FULL.replace("workers = 4", 'workers = "two"')
    assert problems_of(text) == [
        "milter.workers: expected an integer, got str 'two' (line 18)"
    ]


def test_unknown_key():
    problem = only_problem(
        """\
        [general]
        authserv_id = "mx.example.net"
        trusted_network = ["10.0.0.0/8"]
        """
    )
    assert (problem.path, problem.message, problem.line) == (
        "general.trusted_network", "unknown key", 3,
    )
    assert str(problem) == "general.trusted_network: unknown key (line 3)"


def test_unknown_top_level_key():
    assert problems_of('\n\nworkers = 3\n') == ["workers: unknown key (line 3)"]


def test_unknown_section():
    assert problems_of(
        """\
        [general]
        authserv_id = "mx.example.net"

        [milterr]
        workers = 2
        """
    ) == ["milterr: unknown section (line 4)"]


def test_unknown_subsection():
    assert problems_of(
        """\
        [milter]
        workers = 2
        [milter.extra]
        x = 1
        """
    ) == ["milter.extra: unknown section (line 3)"]


def test_section_that_is_not_a_table():
    assert problems_of('general = "yes"\n') == ["general: expected a table, got str 'yes' (line 1)"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[milter]\nworkers = true",
         "milter.workers: expected an integer, got boolean true (line 2)"),
        ("[dns]\ntimeout = false",
         "dns.timeout: expected a number, got boolean false (line 2)"),
        ("[dns]\nport = 53.0",
         "dns.port: expected an integer, got float 53.0 (line 2)"),
        ('[general]\ntrusted_networks = "127.0.0.0/8"',
         "general.trusted_networks: expected a list of strings, got str '127.0.0.0/8' (line 2)"),
        ("[general]\ntrusted_networks = [1, 2]",
         "general.trusted_networks: expected a list of strings, got a list (line 2)"),
        ("[general]\nauthserv_id = 5",
         "general.authserv_id: expected a string, got int 5 (line 2)"),
        ("[general]\non_internal_error = 1",
         "general.on_internal_error: expected a string, got int 1 (line 2)"),
        ("[milter]\nsocket = 8891",
         "milter.socket: expected a string, got int 8891 (line 2)"),
        ("[state]\npath = 5",
         "state.path: expected a string, got int 5 (line 2)"),
        ("[metrics]\nlisten = { host = 'x' }",
         "metrics.listen: expected a string, got a table (line 2)"),
    ],
)
def test_wrong_types(line: str, expected: str):
    assert problems_of(line + "\n") == [expected]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[milter]\nworkers = 0", "milter.workers: must be between 1 and 64, got 0 (line 2)"),
        ("[milter]\nworkers = 65", "milter.workers: must be between 1 and 64, got 65 (line 2)"),
        ("[dns]\nport = 0", "dns.port: must be between 1 and 65535, got 0 (line 2)"),
        ("[dns]\nport = 70000", "dns.port: must be between 1 and 65535, got 70000 (line 2)"),
        ("[dns]\ntimeout = 0.01", "dns.timeout: must be between 0.05 and 60, got 0.01 (line 2)"),
        ("[dns]\ntimeout = nan", "dns.timeout: must be between 0.05 and 60, got nan (line 2)"),
        ("[dns]\ncache_entries = -1",
         "dns.cache_entries: must be between 0 and 1e+07, got -1 (line 2)"),
        ("[policyd]\nidle_timeout = 0.5",
         "policyd.idle_timeout: must be between 1 and 86400, got 0.5 (line 2)"),
        ("[policyd]\nmax_request_size = 10",
         "policyd.max_request_size: must be between 1024 and 1.67772e+07, got 10 (line 2)"),
    ],
)
def test_out_of_range_numbers(line: str, expected: str):
    assert problems_of(line + "\n") == [expected]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('[general]\non_internal_error = "reject"',
         "general.on_internal_error: must be one of 'tempfail', 'accept', got 'reject' (line 2)"),
        ('[state]\nbackend = "mysql"',
         "state.backend: must be one of 'sqlite', 'redis', got 'mysql' (line 2)"),
        ('[general]\nauthserv_id = "mx example"',
         "general.authserv_id: 'mx example' is not a host name (line 2)"),
        ('[dns]\nnameservers = ["ns1.example.net"]',
         "dns.nameservers[0]: 'ns1.example.net' is not an IP address (line 2)"),
        ('[milter]\nsocket_mode = "rw"',
         "milter.socket_mode: expected an octal file mode such as \"0660\", got 'rw' (line 2)"),
        ('[state]\npath = "state.db"',
         "state.path: must be an absolute path, got 'state.db' (line 2)"),
        ('[state]\nurl = "http://x"',
         "state.url: must be a redis://, rediss:// or unix:// URL, got 'http://x' (line 2)"),
    ],
)
def test_bad_values(line: str, expected: str):
    assert problems_of(line + "\n") == [expected]


def test_bad_networks_name_list_index():
    problems = problems_of(
        """\
        # comment
        [general]
        trusted_networks = [
            "127.0.0.0/8",
            "10.0.0.1/8",
            "::1/128",
            "not-a-net",
        ]
        """
    )
    assert len(problems) == 2
    assert problems[0].startswith("general.trusted_networks[1]: '10.0.0.1/8' is not a network")
    assert "has host bits set" in problems[0]
    assert problems[0].endswith("(line 3)")
    assert problems[1].startswith("general.trusted_networks[3]: 'not-a-net' is not a network")
    assert problems[1].endswith("(line 3)")


@pytest.mark.parametrize(
    ("socket", "fragment"),
    [
        ("inet:8891", "expected HOST:PORT"),
        ("unix:relative/x.sock", "must be absolute"),
        ("inet:[::1]8891", "expected [ADDRESS]:PORT"),
        ("tcp:1.2.3.4:1", "unknown socket type 'tcp'"),
        ("inet6:127.0.0.1:1", "inet6 socket needs an IPv6 address"),
        ("inet:127.0.0.1:0", "port must be 1-65535, got '0'"),
        ("inet:127.0.0.1:70000", "port must be 1-65535, got '70000'"),
        ("inet:127.0.0.1:", "port must be 1-65535, got ''"),
        ("inet:127.0.0.1:\u0668\u0668\u0669\u0661", "port must be 1-65535"),  # Arabic-Indic 8891
        ("inet:127.0.0.1:+88", "port must be 1-65535"),
        ("inet:::1:8891", "write IPv6 addresses in brackets"),
        ("inet:[not-v6]:8891", "not-v6"),
        ("unix:", "is not a socket"),
        ("/run/x.sock", "is not a socket"),
    ],
)
def test_bad_socket_strings(socket: str, fragment: str):
    with pytest.raises(ValueError) as info:
        SocketAddress.parse(socket)
    assert fragment in str(info.value)
    problem = only_problem(f'[general]\nauthserv_id = "a.b"\n\n[milter]\nsocket = "{socket}"\n')
    assert problem.path == "milter.socket"
    assert problem.line == 5
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("text", "canonical", "libmilter", "kind"),
    [
        ("unix:/run/x.sock", "unix:/run/x.sock", "unix:/run/x.sock", SocketKind.UNIX),
        ("inet:127.0.0.1:8891", "inet:127.0.0.1:8891", "inet:8891@127.0.0.1", SocketKind.INET),
        ("inet:localhost:8891", "inet:localhost:8891", "inet:8891@localhost", SocketKind.INET),
        ("inet:[::1]:8891", "inet6:[::1]:8891", "inet6:8891@::1", SocketKind.INET6),
        ("inet6:[::1]:8891", "inet6:[::1]:8891", "inet6:8891@::1", SocketKind.INET6),
        ("INET:127.0.0.1:1", "inet:127.0.0.1:1", "inet:1@127.0.0.1", SocketKind.INET),
        ("inet:127.0.0.1:65535", "inet:127.0.0.1:65535", "inet:65535@127.0.0.1",
         SocketKind.INET),
    ],
)
def test_good_socket_strings(text: str, canonical: str, libmilter: str, kind: SocketKind):
    address = SocketAddress.parse(text)
    assert address.kind is kind
    assert str(address) == canonical
    assert address.libmilter_spec() == libmilter
    assert SocketAddress.parse(str(address)) == address


def test_socket_fields():
    assert SocketAddress.parse("inet6:[::1]:8891") == SocketAddress(
        SocketKind.INET6, host="::1", port=8891
    )
    assert SocketAddress.parse("unix:/run/x.sock").path == "/run/x.sock"


def test_metrics_listen_empty_disables():
    settings = parse_settings('[metrics]\nlisten = ""\npolicyd_listen = ""\n')
    assert settings.metrics.listen is None
    assert settings.metrics.policyd_listen is None
    settings = parse_settings('[metrics]\nlisten = ""\n')
    assert settings.metrics.listen is None
    assert settings.metrics.policyd_listen == ListenAddress("127.0.0.1", 9318)


def test_metrics_bad_listen():
    assert problems_of('[metrics]\nlisten = "9317"\n') == [
        "metrics.listen: '9317': expected HOST:PORT (line 2)"
    ]


def test_policyd_listen_equal_to_listen_is_an_error():
    problems = problems_of(
        '[metrics]\nlisten = "127.0.0.1:9400"\npolicyd_listen = "127.0.0.1:9400"\n'
    )
    assert problems == [
        "metrics.policyd_listen: must differ from metrics.listen (two services, two ports)"
        " (line 3)"
    ]


def test_policyd_listen_default_collides_with_listen():
    # Moving only `listen` onto the policy service's default port is caught too.
    problems = problems_of('[metrics]\nlisten = "127.0.0.1:9318"\n')
    assert len(problems) == 1
    assert problems[0].startswith("metrics.policyd_listen: must differ")


def test_invalid_toml_reports_a_line():
    with pytest.raises(ConfigError) as info:
        parse_settings('[general]\nauthserv_id = "mx.example.net"\nworkers = = 3\n', "bad.toml")
    assert len(info.value.problems) == 1
    text = str(info.value.problems[0])
    assert "not valid TOML" in text
    assert "line 3" in text
    assert str(info.value).startswith("bad.toml: 1 configuration error(s):")


def test_unreadable_file(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "missing.toml")
    assert "cannot read" in str(info.value.problems[0])


MANY_ERRORS = """\
[general]
authserv_id = "mx.example.net"
trusted_networks = ["127.0.0.0/8", "300.0.0.0/8"]
bogus = 1

[milter]
workers = "two"
socket = "inet:8891"

[dns]
port = 0

[whatever]
x = 1
"""


def test_several_errors_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_settings(MANY_ERRORS, "many.toml")
    problems = info.value.problems
    by_path = {problem.path: problem for problem in problems}
    assert set(by_path) == {
        "general.trusted_networks[1]",
        "general.bogus",
        "milter.workers",
        "milter.socket",
        "dns.port",
        "whatever",
    }
    assert {path: problem.line for path, problem in by_path.items()} == {
        "general.trusted_networks[1]": 3,
        "general.bogus": 4,
        "milter.workers": 7,
        "milter.socket": 8,
        "dns.port": 11,
        "whatever": 13,
    }
    assert str(by_path["milter.workers"]) == (
        "milter.workers: expected an integer, got str 'two' (line 7)"
    )
    message = str(info.value)
    assert message.startswith("many.toml: 6 configuration error(s):")
    for problem in problems:
        assert f"  {problem}" in message


# --------------------------------------------------------------------------- CLI


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "good.toml"
    path.write_text(FULL)
    assert cli.main(["check-config", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK\n"
    assert err == ""


def test_check_config_lists_each_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "bad.toml"
    path.write_text(MANY_ERRORS)
    assert cli.main(["check-config", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: 6 configuration error(s)" in err
    for expected in [
        "general.trusted_networks[1]: '300.0.0.0/8' is not a network",
        "general.bogus: unknown key (line 4)",
        "milter.workers: expected an integer, got str 'two' (line 7)",
        "milter.socket: '8891': expected HOST:PORT (line 8)",
        "dns.port: must be between 1 and 65535, got 0 (line 11)",
        "whatever: unknown section (line 13)",
    ]:
        assert expected in err, (expected, err)


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["check-config", "-c", str(tmp_path / "nope.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mailward {mailward.__version__}"


def test_example_configuration_passes_check_config(capsys: pytest.CaptureFixture[str]):
    example = REPO / "deploy" / "mailward.example.toml"
    status = cli.main(["check-config", "-c", str(example)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out == f"{example}: OK\n"


def test_check_config_also_loads_the_key_files_it_names(tmp_path, capsys):
    config = tmp_path / "mailward.toml"
    missing = tmp_path / "keys" / "example.com.s1.key"
    config.write_text(
        f'[[dkim.sign.keys]]\ndomain = "example.com"\nselector = "s1"\nkey = "{missing}"\n'
    )
    assert cli.main(["check-config", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"dkim.sign.keys[0].key: {missing}: no such file" in err
