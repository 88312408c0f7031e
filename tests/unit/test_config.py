"""server.config: defaults, validation messages, listeners, paths, rendering, the generated doc."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from server.config import (
    DEV_PORTS,
    PRODUCTION_PORTS,
    SECTIONS,
    SERVICES,
    ConfigError,
    Listen,
    describe,
    load_config,
    parse_config,
    parse_host_port,
    parse_listen,
    parse_nameservers,
    render_config,
)

REPO = Path(__file__).resolve().parents[2]
MINIMAL = '[server]\nhostname = "mail.example.com"\n'


def _parse(extra: str = "", base: str = MINIMAL, path: Path = Path("/etc/m/mailstead.toml")):
    return parse_config(base + extra, path)


def _problems(extra: str, base: str = MINIMAL) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _parse(extra, base)
    return info.value.problems


def _only_problem(extra: str, base: str = MINIMAL) -> str:
    problems = _problems(extra, base)
    assert len(problems) == 1, problems
    return problems[0]


# --- defaults ---


def test_defaults():
    config = _parse()
    assert config.server.hostname == "mail.example.com"
    assert config.data_dir == Path("/etc/m")  # "." taken from the config file's directory
    assert config.listeners() == {}
    assert config.dns.nameservers == ()
    assert config.dns.timeout == 5.0
    assert config.outbound.mx_port == 25
    assert config.smtp.max_message_size == 50 * 1024 * 1024
    assert config.smtp.max_recipients == 100
    assert config.smtp.idle_timeout == 300.0
    assert config.smtp.max_errors == 10
    assert config.accounts.recipient_delimiter == "+"
    assert config.accounts.min_password_length == 10
    assert config.log.level == "info"
    assert config.cert_file == Path("/etc/m/tls/cert.pem")
    assert config.key_file == Path("/etc/m/tls/key.pem")
    assert config.db_path == Path("/etc/m/accounts.sqlite3")
    assert config.mail_root == Path("/etc/m/mail")
    assert config.dkim_dir == Path("/etc/m/dkim")


def test_hostname_is_required():
    assert _only_problem("", base="") == "[server] hostname: required"


def test_hostname_normalised():
    config = _parse(base='[server]\nhostname = "Mail.Example.COM."\n')
    assert config.server.hostname == "mail.example.com"


@pytest.mark.parametrize(
    "value", ['"localhost"', '"bad..name.example"', '"-x.example"', "5", '"mail\\n.example.com"'])
def test_bad_hostname(value):
    problem = _only_problem("", base=f"[server]\nhostname = {value}\n")
    assert problem.startswith("[server] hostname: must be")


def test_config_is_frozen():
    config = _parse()
    with pytest.raises(AttributeError):
        config.smtp.max_recipients = 5  # type: ignore[misc]


# --- bad values: each names [section] key and says why ---


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[smtp]\nmax_recipients = 0\n",
         "[smtp] max_recipients: must be between 1 and 10000, got 0"),
        ("[smtp]\nmax_recipients = 10001\n",
         "[smtp] max_recipients: must be between 1 and 10000, got 10001"),
        ("[smtp]\nmax_message_size = 1023\n",
         "[smtp] max_message_size: must be at least 1024, got 1023"),
        ("[outbound]\nmx_port = 65536\n",
         "[outbound] mx_port: must be between 1 and 65535, got 65536"),
        ("[smtp]\nmax_recipients = true\n",
         "[smtp] max_recipients: must be an integer, got True"),
        ("[smtp]\nmax_recipients = 1.5\n",
         "[smtp] max_recipients: must be an integer, got 1.5"),
        ('[smtp]\nmax_recipients = "100"\n',
         "[smtp] max_recipients: must be an integer, got '100'"),
        ("[smtp]\nidle_timeout = 0\n",
         "[smtp] idle_timeout: must be a positive number of seconds, got 0"),
        ("[dns]\ntimeout = -1.5\n",
         "[dns] timeout: must be a positive number of seconds, got -1.5"),
        ("[dns]\ntimeout = false\n",
         "[dns] timeout: must be a positive number of seconds, got False"),
        ('[log]\nlevel = "verbose"\n',
         "[log] level: must be one of debug, info, warning, error; got 'verbose'"),
        ("[tls]\ncert_file = 5\n", "[tls] cert_file: must be a string, got 5"),
        ('[accounts]\nrecipient_delimiter = "a"\n',
         "[accounts] recipient_delimiter: must be one punctuation character such as '+', "
         "or empty; got 'a'"),
        ('[accounts]\nrecipient_delimiter = "++"\n',
         "[accounts] recipient_delimiter: must be one punctuation character such as '+', "
         "or empty; got '++'"),
        ('[dns]\nnameservers = "127.0.0.1"\n',
         "[dns] nameservers: must be a list of \"ip\" or \"ip:port\" strings, got '127.0.0.1'"),
        ('[dns]\nnameservers = ["dns.example"]\n',
         "[dns] nameservers: 'dns.example' is not an IP address (with optional :port)"),
        ("[dns]\nnameservers = [53]\n", "[dns] nameservers: must be a string, got 53"),
    ],
)
def test_bad_value_names_key_and_reason(extra, expected):
    assert _only_problem(extra) == expected


def test_empty_data_dir():
    problem = _only_problem("", base=MINIMAL + 'data_dir = ""\n')
    assert problem == "[server] data_dir: must not be empty"


@pytest.mark.parametrize(
    ("section", "key"), [("smtp", "idle_timeout"), ("smtp", "shutdown_grace"), ("dns", "timeout")])
def test_timeout_nan_rejected(section, key):
    # TOML allows nan, and "nan <= 0" is False, so a bare comparison lets it through; a NaN
    # number of seconds is no timeout at all.
    problem = _only_problem(f"[{section}]\n{key} = nan\n")
    assert problem.startswith(f"[{section}] {key}: must be a positive number of seconds")


def test_empty_delimiter_turns_plus_addressing_off():
    assert _parse('[accounts]\nrecipient_delimiter = ""\n').accounts.recipient_delimiter == ""


def test_float_where_integer_given_is_accepted():
    assert _parse("[smtp]\nidle_timeout = 60\n").smtp.idle_timeout == 60.0


# --- listen ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", Listen("127.0.0.1", 25)),
        ("[::1]:25", Listen("::1", 25)),
        ("*:25", Listen(None, 25)),
        ("0.0.0.0:65535", Listen("0.0.0.0", 65535)),
        ("  127.0.0.1:1  ", Listen("127.0.0.1", 1)),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1:0", "port must be 1-65535"),
        ("127.0.0.1:65536", "port must be 1-65535"),
        ("*:-1", "port must be 1-65535"),
        ("127.0.0.1:smtp", "port must be 1-65535"),
        ("127.0.0.1", "missing :port"),
        ("[::1]", "missing :port"),
        ("::1", "missing :port"),
        ("[::1", "unterminated IPv6 address"),
        ("[::1]25", "expected :port after ]"),
        ("localhost:25", 'host must be an IP address or "*"'),
        ("mail.example.com:25", 'host must be an IP address or "*"'),
    ],
)
def test_parse_listen_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_listen(text)


def test_listen_in_config():
    config = _parse('[listen]\nmx = "*:25"\nimaps = "[::1]:993"\nsubmission = ""\n')
    assert config.listeners() == {"mx": Listen(None, 25), "imaps": Listen("::1", 993)}
    assert str(config.listen.mx) == "*:25"
    assert str(config.listen.imaps) == "[::1]:993"
    assert config.listen.submission is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"127.0.0.1:0"', "port must be 1-65535"),
        ('"127.0.0.1:65536"', "port must be 1-65535"),
        ('"127.0.0.1"', "missing :port"),
        ('"mail.example.com:25"', 'host must be an IP address or "*"'),
        ("25", "must be a string, got 25"),
    ],
)
def test_bad_listen_in_config(value, reason):
    problem = _only_problem(f"[listen]\nmx = {value}\n")
    assert problem.startswith("[listen] mx: ")
    assert reason in problem


@pytest.mark.parametrize(
    ("first", "second"),
    [("*:25", "127.0.0.1:25"), ("127.0.0.1:25", "*:25"), ("127.0.0.1:25", "127.0.0.1:25"),
     ("*:25", "*:25")],
)
def test_listen_clash(first, second):
    problem = _only_problem(f'[listen]\nmx = "{first}"\nsubmission = "{second}"\n')
    assert problem.startswith("[listen] submission: ")
    assert "clashes with [listen] mx" in problem


@pytest.mark.parametrize(
    ("wildcard", "specific"), [("0.0.0.0:25", "127.0.0.1:25"), ("[::]:25", "[::1]:25")])
def test_listen_clash_with_explicit_wildcard(wildcard, specific):
    # 0.0.0.0 and :: are the wildcard written out: binding 127.0.0.1:25 after 0.0.0.0:25
    # fails with EADDRINUSE, so the config must say so at load, like it does for "*".
    problem = _only_problem(f'[listen]\nmx = "{wildcard}"\nsubmission = "{specific}"\n')
    assert problem.startswith("[listen] submission: ")
    assert "clashes with [listen] mx" in problem


def test_same_port_on_different_addresses_is_fine():
    config = _parse('[listen]\nmx = "127.0.0.1:25"\nsubmission = "127.0.0.2:25"\n')
    assert set(config.listeners()) == {"mx", "submission"}


def test_parse_host_port_default_port():
    assert parse_host_port("192.0.2.1", default_port=53) == ("192.0.2.1", 53)
    assert parse_host_port("::1", default_port=53) == ("::1", 53)
    assert parse_host_port("[::1]:5353", default_port=53) == ("::1", 5353)
    with pytest.raises(ValueError, match="missing :port"):
        parse_host_port("192.0.2.1")


# --- unknown keys and sections, several problems ---


def test_unknown_key():
    problem = _only_problem("[smtp]\nmax_recipient = 5\n")
    assert problem.startswith("[smtp] max_recipient: unknown key")


def test_unknown_section():
    problem = _only_problem("[smpt]\nmax_recipients = 5\n")
    assert problem.startswith("[smpt]: unknown section")


def test_section_that_is_not_a_table():
    assert _only_problem("", base="smtp = 5\n" + MINIMAL) == "[smtp]: must be a table"


def test_every_problem_reported_together():
    problems = _problems(
        "[smtp]\nmax_recipients = 0\nbogus = 1\n"
        '[listen]\nmx = "localhost:25"\n'
        '[log]\nlevel = "loud"\n'
        "[nonsense]\n",
        base="",
    )
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == sorted([
        "[server] hostname", "[smtp] max_recipients", "[smtp] bogus", "[listen] mx",
        "[log] level", "[nonsense]",
    ])


def test_config_error_str_lists_problems():
    with pytest.raises(ConfigError) as info:
        _parse("[smtp]\nmax_recipients = 0\nmax_errors = 0\n")
    text = str(info.value)
    assert text.splitlines()[0] == "invalid configuration in /etc/m/mailstead.toml:"
    assert "  [smtp] max_recipients: must be between 1 and 10000, got 0" in text.splitlines()
    assert "  [smtp] max_errors: must be between 1 and 1000, got 0" in text.splitlines()


def test_invalid_toml():
    problems = _problems("[smtp\nmax_recipients = 1\n")
    assert len(problems) == 1
    assert problems[0].startswith("not valid TOML: ")


# --- files and paths ---


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.problems == ["cannot read: No such file or directory"]
    assert info.value.path == str(tmp_path / "nope.toml")


def test_load_config_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems == ["cannot read: Is a directory"]


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "m.toml"
    path.write_bytes(MINIMAL.encode() + b"# \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["not UTF-8 text"]


def test_relative_data_dir_is_taken_from_config_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "mailstead.toml"
    path.write_text('[server]\nhostname = "mail.example.com"\ndata_dir = "../var/data"\n')
    monkeypatch.chdir(tmp_path / "etc")  # not the cwd: a relative -c path must work too
    config = load_config("mailstead.toml")
    assert config.path == path
    assert config.data_dir == (tmp_path / "var" / "data").resolve()
    assert config.db_path == (tmp_path / "var" / "data" / "accounts.sqlite3").resolve()


def test_absolute_data_dir_is_kept(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(f'[server]\nhostname = "mail.example.com"\ndata_dir = "{tmp_path}/d"\n')
    config = load_config(path)
    assert config.data_dir == tmp_path / "d"
    assert config.cert_file == tmp_path / "d" / "tls" / "cert.pem"


# --- nameservers ---


def test_nameservers_normalised():
    config = _parse('[dns]\nnameservers = ["127.0.0.1", "::1", "[::1]:5353", "192.0.2.1:5300"]\n')
    assert config.dns.nameservers == ("127.0.0.1:53", "[::1]:53", "[::1]:5353", "192.0.2.1:5300")


def test_parse_nameservers():
    assert parse_nameservers([]) == ()
    assert parse_nameservers(["127.0.0.1"]) == ("127.0.0.1:53",)
    with pytest.raises(ValueError, match="port must be 1-65535"):
        parse_nameservers(["127.0.0.1:0"])


# --- render_config ---


def test_render_config_round_trip(tmp_path):
    listen = {"mx": "*:25", "submission": "127.0.0.1:587", "imaps": "[::1]:993", "pop3": ""}
    data_dir = tmp_path / 'odd "dir" \\ name'
    text = render_config("mail.example.com", data_dir, listen,
                         {"dns": {"nameservers": ["127.0.0.1:5353"], "timeout": 2.5},
                          "smtp": {"max_recipients": 50}})
    config = parse_config(text, tmp_path / "mailstead.toml")
    assert config.server.hostname == "mail.example.com"
    assert config.data_dir == data_dir
    assert config.listeners() == {
        "mx": Listen(None, 25), "submission": Listen("127.0.0.1", 587),
        "imaps": Listen("::1", 993),
    }
    assert {svc: str(addr) for svc, addr in config.listeners().items()} == {
        svc: addr for svc, addr in listen.items() if addr}
    assert config.dns.nameservers == ("127.0.0.1:5353",)
    assert config.dns.timeout == 2.5
    assert config.smtp.max_recipients == 50


@pytest.mark.parametrize("ports", [PRODUCTION_PORTS, DEV_PORTS])
def test_render_config_every_service(tmp_path, ports):
    listen = {svc: f"127.0.0.1:{port}" for svc, port in ports.items()}
    config = parse_config(render_config("m.example", tmp_path, listen), tmp_path / "m.toml")
    assert config.listeners() == {svc: Listen("127.0.0.1", port) for svc, port in ports.items()}
    assert set(tomllib.loads(render_config("m.example", tmp_path, {}))["listen"]) == set(SERVICES)


# --- describe and the generated doc ---


def test_describe_lists_every_section_and_key():
    text = describe()
    for name, cls in SECTIONS.items():
        assert f"[{name}]" in text.splitlines()
        for key in cls.__dataclass_fields__:
            assert any(line.startswith(f"  {key} = ") for line in text.splitlines()), key
    assert "  hostname = (required)    # string" in text.splitlines()
    assert "  mx = \"\"    # host:port" in text.splitlines()
    assert "  nameservers = []    # list of strings" in text.splitlines()


def test_describe_markdown_has_a_row_per_key():
    text = describe(markdown=True)
    for name, cls in SECTIONS.items():
        assert f"## [{name}]" in text.splitlines()
        for key in cls.__dataclass_fields__:
            assert any(line.startswith(f"| `{key}` |") for line in text.splitlines()), key


def test_docs_config_md_is_generated_from_the_config():
    doc = REPO / "docs" / "config.md"
    assert doc.read_text(encoding="utf-8") == describe(markdown=True), (
        "docs/config.md is stale: mailstead config describe --markdown > docs/config.md")


# --- [smtp] workers ---


def test_smtp_workers_auto_by_default_and_counted_from_the_cpus(monkeypatch):
    import os

    from server.config import worker_count

    assert _parse().smtp.workers == "auto"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert worker_count("auto") == 0  # one CPU: a worker would only add a process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    assert worker_count("auto") == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert worker_count("auto") == 8
    assert worker_count(_parse("[smtp]\nworkers = 3\n").smtp.workers) == 3
    assert worker_count(_parse("[smtp]\nworkers = 0\n").smtp.workers) == 0


@pytest.mark.parametrize("value", ['"many"', "-1", "65", "true", "1.5"])
def test_smtp_workers_bad_values(value):
    assert _only_problem(f"[smtp]\nworkers = {value}\n").startswith("[smtp] workers: must be")
