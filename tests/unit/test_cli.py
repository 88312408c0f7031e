"""The mailstead CLI, run in-process: init (config, database, DKIM key, certificate), config,
users, aliases and domains, and its error handling."""

from __future__ import annotations

import argparse
import datetime
import io
import ipaddress
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from server import dkimkeys
from server.accounts import AccountStore
from server.cli import main, parse_size
from server.config import DEV_PORTS, PRODUCTION_PORTS, SECTIONS, Listen, describe, load_config

PASSWORD = "correct horse battery"
FAST_ARGON2 = ("\n[accounts]\nargon2_time_cost = 1\nargon2_memory_kib = 1024\n"
               "argon2_parallelism = 1\n")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    def run(*argv: str, stdin: str | None = None) -> Result:
        capsys.readouterr()  # drop output of earlier calls
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin if stdin is not None else ""))
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Result(code, out, err)

    return run


def _init(data_dir: Path, *extra: str) -> int:
    return main(["init", "--data-dir", str(data_dir), "--domain", "Example.COM",
                 "--hostname", "Mail.Example.COM", *extra])


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One ``init --dev`` instance; tests get copies of it (key generation is the slow part)."""
    root = tmp_path_factory.mktemp("template") / "data"
    assert _init(root, "--dev") == 0
    return root


@pytest.fixture
def inst(template, tmp_path) -> Path:
    """A private copy of the template instance, with cheap password hashing; its config path."""
    root = tmp_path / "data"
    shutil.copytree(template, root)
    config = root / "mailstead.toml"
    text = config.read_text()
    assert f'data_dir = "{template}"' in text
    config.write_text(text.replace(f'data_dir = "{template}"', f'data_dir = "{root}"')
                      + FAST_ARGON2)
    return config


def _store(config_path: Path) -> AccountStore:
    return AccountStore.from_config(load_config(config_path))


def _one_line_error(result: Result, *fragments: str) -> None:
    assert result.code == 1
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("mailstead: ")
    for fragment in fragments:
        assert fragment in lines[0]


# --- init ---


def test_init_dev_config(template):
    config = load_config(template / "mailstead.toml")
    assert config.server.hostname == "mail.example.com"
    assert config.data_dir == template
    assert config.listeners() == {svc: Listen("127.0.0.1", port)
                                  for svc, port in DEV_PORTS.items()}
    assert config.listeners()["mx"] == Listen("127.0.0.1", 2525)
    assert config.listeners()["admin"] == Listen("127.0.0.1", 8443)
    assert config.dns.nameservers == ()
    assert stat.S_IMODE((template / "mailstead.toml").stat().st_mode) == 0o640
    assert stat.S_IMODE(template.stat().st_mode) == 0o700


def test_init_creates_account_database(inst):
    store = _store(inst)
    assert store.list_domains() == ["example.com"]
    assert store.list_users() == []


def test_init_dkim_key(template):
    keys = dkimkeys.keys_for(template / "dkim", "example.com")
    assert len(keys) == 1
    key = keys[0]
    assert key.selector == f"ms{datetime.date.today():%Y%m}"
    assert key.record_name == f"{key.selector}._domainkey.example.com"
    assert stat.S_IMODE(key.key_file.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key.key_file.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    # RFC 1035 §3.3.14: a TXT character-string is at most 255 octets
    strings = key.txt_strings()
    assert len(strings) == 2
    assert all(0 < len(s.encode()) <= 255 for s in strings)
    assert "".join(strings) == key.txt_value()
    assert key.txt_value().startswith("v=DKIM1; k=rsa; p=")


def test_init_certificate(template):
    cert = x509.load_pem_x509_certificate((template / "tls" / "cert.pem").read_bytes())
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca is False
    assert basic.critical
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in list(eku)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName)[:2] == ["mail.example.com", "localhost"]
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        days=365)
    key_file = template / "tls" / "key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_init_production_listeners(tmp_path, cli):
    result = cli("init", "--data-dir", str(tmp_path / "d"), "--domain", "example.com",
                 "--hostname", "mail.example.com")
    assert result.code == 0, result.err
    assert "initialised" in result.out
    config = load_config(tmp_path / "d" / "mailstead.toml")
    assert config.listeners() == {svc: Listen(None, port)
                                  for svc, port in PRODUCTION_PORTS.items()}
    assert str(config.listen.mx) == "*:25"
    assert str(config.listen.imaps) == "*:993"


def test_init_listen_override_and_nameserver(tmp_path, cli):
    result = cli("init", "--data-dir", str(tmp_path / "d"), "--domain", "example.com",
                 "--hostname", "mail.example.com", "--dev", "--listen", "mx=",
                 "--listen", "imap=[::1]:1143", "--nameserver", "127.0.0.1:5353",
                 "--nameserver", "::1")
    assert result.code == 0, result.err
    config = load_config(tmp_path / "d" / "mailstead.toml")
    assert "mx" not in config.listeners()
    assert config.listen.mx is None
    assert config.listeners()["imap"] == Listen("::1", 1143)
    assert config.listeners()["submission"] == Listen("127.0.0.1", 2587)
    assert config.dns.nameservers == ("127.0.0.1:5353", "[::1]:53")


def test_init_refuses_existing_instance(template, cli):
    before = (template / "mailstead.toml").read_bytes()
    result = cli("init", "--data-dir", str(template), "--domain", "other.example",
                 "--hostname", "mail.other.example")
    _one_line_error(result, "already exists", "refusing to overwrite")
    assert (template / "mailstead.toml").read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--listen", "bogus=127.0.0.1:25"], "unknown service 'bogus'"),
        (["--listen", "mx=localhost:25"], 'host must be an IP address or "*"'),
        (["--listen", "mx=127.0.0.1:0"], "port must be 1-65535"),
        (["--nameserver", "dns.example"], "not an IP address"),
        (["--domain", "bad..example"], "invalid domain"),
    ],
)
def test_init_refuses_bad_arguments(tmp_path, cli, extra, fragment):
    argv = ["init", "--data-dir", str(tmp_path / "d"), "--domain", "example.com",
            "--hostname", "mail.example.com", "--dev", *extra]
    _one_line_error(cli(*argv), fragment)
    assert not (tmp_path / "d" / "mailstead.toml").exists()


def test_init_refuses_clashing_listeners(tmp_path, cli):
    result = cli("init", "--data-dir", str(tmp_path / "d"), "--domain", "example.com",
                 "--hostname", "mail.example.com", "--dev", "--listen", "submission=*:2525")
    assert result.code == 1
    assert "[listen] submission: *:2525 clashes with [listen] mx" in result.err
    assert not (tmp_path / "d" / "mailstead.toml").exists()


# --- config ---


def test_config_check_ok(inst, cli):
    result = cli("-c", str(inst), "config", "check")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == f"{inst}: ok"
    assert "  mx           127.0.0.1:2525" in lines
    assert len(lines) == 1 + len(DEV_PORTS)


def test_config_check_bad_value(inst, cli):
    with inst.open("a") as f:
        f.write("\n[smtp]\nmax_recipients = 0\nfrobnicate = 1\n")
    result = cli("-c", str(inst), "config", "check")
    assert result.code == 1
    assert result.out == ""
    assert "[smtp] max_recipients: must be between 1 and 10000, got 0" in result.err
    assert "[smtp] frobnicate: unknown key" in result.err


def test_config_check_missing_file(tmp_path, cli):
    result = cli("-c", str(tmp_path / "none.toml"), "config", "check")
    assert result.code == 1
    assert "cannot read: No such file or directory" in result.err


def test_config_check_missing_certificate(inst, cli):
    (inst.parent / "tls" / "cert.pem").unlink()
    _one_line_error(cli("-c", str(inst), "config", "check"), "[tls] cert_file/key_file",
                    "cert.pem")


def test_config_describe(cli):
    result = cli("config", "describe")
    assert result.code == 0
    for name in SECTIONS:
        assert f"[{name}]" in result.out.splitlines()
    assert result.out == describe()
    result = cli("config", "describe", "--markdown")
    assert result.out == describe(markdown=True)
    assert all(f"## [{name}]" in result.out for name in SECTIONS)


# --- users ---


def test_user_add_and_list(inst, cli):
    c = str(inst)
    result = cli("-c", c, "user", "add", "Alice@Example.com", "--password-stdin",
                 stdin=PASSWORD + "\n")
    assert result.code == 0, result.err
    assert result.out.startswith("created alice@example.com; Maildir ")
    result = cli("-c", c, "user", "add", "bob@example.com", "--admin", "--quota", "2G",
                 "--password-stdin", stdin=PASSWORD)  # no final newline is fine too
    assert result.code == 0, result.err
    assert "created bob@example.com (admin)" in result.out
    store = _store(inst)
    assert store.authenticate("alice@example.com", PASSWORD) is not None
    bob = store.authenticate("bob@example.com", PASSWORD)
    assert bob is not None and bob.is_admin and bob.quota_bytes == 2 * 1024**3
    assert (inst.parent / "mail" / "example.com" / "alice" / ".Sent" / "cur").is_dir()

    result = cli("-c", c, "user", "list")
    assert result.code == 0
    lines = result.out.splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["alice@example.com", "no", "quota"]
    assert lines[1].split() == ["bob@example.com", "quota", str(2 * 1024**3), "admin"]
    assert cli("-c", c, "user", "list", "example.com").out == result.out
    assert cli("-c", c, "user", "list", "other.example").out == ""


def test_user_passwd(inst, cli):
    c = str(inst)
    assert cli("-c", c, "user", "add", "alice@example.com", "--password-stdin",
               stdin=PASSWORD + "\n").code == 0
    result = cli("-c", c, "user", "passwd", "alice@example.com", "--password-stdin",
                 stdin="a new long password\n")
    assert result.code == 0, result.err
    assert result.out == "password changed for alice@example.com\n"
    store = _store(inst)
    assert store.authenticate("alice@example.com", PASSWORD) is None
    assert store.authenticate("alice@example.com", "a new long password") is not None


def test_user_set(inst, cli):
    c = str(inst)
    assert cli("-c", c, "user", "add", "alice@example.com", "--password-stdin",
               stdin=PASSWORD + "\n").code == 0
    result = cli("-c", c, "user", "set", "alice@example.com", "--quota", "1M", "--disabled")
    assert result.code == 0, result.err
    assert result.out.split() == ["alice@example.com", "quota", "1048576", "disabled"]
    user = _store(inst).get_user("alice@example.com")
    assert user.quota_bytes == 1048576 and user.disabled and not user.is_admin
    assert _store(inst).authenticate("alice@example.com", PASSWORD) is None

    result = cli("-c", c, "user", "set", "alice@example.com", "--no-disabled", "--admin")
    assert result.out.split() == ["alice@example.com", "quota", "1048576", "admin"]
    result = cli("-c", c, "user", "set", "alice@example.com", "--quota", "0")
    assert result.out.split() == ["alice@example.com", "no", "quota", "admin"]
    assert _store(inst).authenticate("alice@example.com", PASSWORD) is not None


def test_user_delete(inst, cli):
    c = str(inst)
    for name in ("alice", "bob"):
        assert cli("-c", c, "user", "add", f"{name}@example.com", "--password-stdin",
                   stdin=PASSWORD + "\n").code == 0
    maildir = inst.parent / "mail" / "example.com" / "alice"
    result = cli("-c", c, "user", "delete", "alice@example.com")
    assert result.code == 0, result.err
    assert result.out.startswith("deleted alice@example.com; its mail was moved to ")
    moved = Path(result.out.strip().rsplit(" ", 1)[1])
    assert moved.parent == inst.parent / "deleted" / "example.com"
    assert (moved / "cur").is_dir()
    assert not maildir.exists()

    result = cli("-c", c, "user", "delete", "bob@example.com", "--purge")
    assert result.out == "deleted bob@example.com\n"
    assert not (inst.parent / "mail" / "example.com" / "bob").exists()
    assert _store(inst).list_users() == []


@pytest.mark.parametrize(
    ("argv", "stdin", "fragments"),
    [
        (["user", "add", "carol@other.example", "--password-stdin"], PASSWORD,
         ["other.example is not a local domain"]),
        (["user", "add", "a+b@example.com", "--password-stdin"], PASSWORD,
         ["invalid mailbox name 'a+b'"]),
        (["user", "add", "../x@example.com", "--password-stdin"], PASSWORD,
         ["invalid address"]),
        (["user", "add", "carol@example.com", "--password-stdin"], "short\n",
         ["password too short"]),
        (["user", "add", "carol@example.com"], PASSWORD, ["use --password-stdin"]),
        (["user", "add", "alice@example.com", "--password-stdin"], PASSWORD,
         ["mailbox alice@example.com already exists"]),
        (["user", "passwd", "nobody@example.com", "--password-stdin"], PASSWORD,
         ["no mailbox nobody@example.com"]),
        (["user", "set", "nobody@example.com", "--admin"], None, ["no mailbox"]),
        (["user", "delete", "nobody@example.com"], None, ["no mailbox nobody@example.com"]),
        (["user", "list", "bad..example"], None, ["invalid domain"]),
        (["alias", "add", "alice@example.com", "x@elsewhere.example"], None, ["is a mailbox"]),
        (["alias", "add", "team@example.com", "not-an-address"], None,
         ["invalid destination"]),
        (["alias", "delete", "nobody@example.com"], None, ["no such alias"]),
        (["domain", "add", "example.com"], None, ["domain example.com already exists"]),
        (["domain", "add", "bad..example"], None, ["invalid domain"]),
        (["domain", "delete", "example.com"], None, ["still has 1 mailbox"]),
        (["domain", "delete", "other.example"], None, ["no domain other.example"]),
    ],
)
def test_refusals_are_one_line(inst, cli, argv, stdin, fragments):
    assert cli("-c", str(inst), "user", "add", "alice@example.com", "--password-stdin",
               stdin=PASSWORD).code == 0
    _one_line_error(cli("-c", str(inst), *argv, stdin=stdin), *fragments)
    assert [u.address for u in _store(inst).list_users()] == ["alice@example.com"]


@pytest.mark.parametrize("command", ["add", "set"])
def test_huge_quota_refused_cleanly(inst, cli, command):
    # parse_size accepts any number of digits; SQLite integers stop at 2**63 - 1.
    c = str(inst)
    if command == "set":
        assert cli("-c", c, "user", "add", "alice@example.com", "--password-stdin",
                   stdin=PASSWORD).code == 0
    argv = ["-c", c, "user", command, "alice@example.com", "--quota", "99999999T"]
    if command == "add":
        argv.append("--password-stdin")
    try:
        code = cli(*argv, stdin=PASSWORD).code
    except SystemExit as exit_:  # refusing it as a usage error is fine too
        code = exit_.code
    assert code in (1, 2)
    user = _store(inst).get_user("alice@example.com")
    assert user is None if command == "add" else user.quota_bytes == 0


def test_no_database_yet(tmp_path, cli):
    config = tmp_path / "m.toml"
    config.write_text(f'[server]\nhostname = "mail.example.com"\ndata_dir = "{tmp_path}"\n')
    _one_line_error(cli("-c", str(config), "user", "list"), "no account database",
                    "mailstead init")


def test_usage_error_exits_2(cli):
    with pytest.raises(SystemExit) as info:
        cli("user")
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli("user", "set", "a@example.com", "--quota", "lots")
    assert info.value.code == 2


# --- aliases ---


def test_alias_add_list_delete(inst, cli):
    c = str(inst)
    assert cli("-c", c, "user", "add", "alice@example.com", "--password-stdin",
               stdin=PASSWORD).code == 0
    result = cli("-c", c, "alias", "add", "Team@example.com", "alice@example.com",
                 "Friend@Elsewhere.example")
    assert result.code == 0, result.err
    assert result.out == "team@example.com -> alice@example.com, Friend@elsewhere.example\n"
    result = cli("-c", c, "alias", "add", "@example.com", "alice@example.com")
    assert result.out == "@example.com -> alice@example.com\n"
    assert cli("-c", c, "alias", "list").out == (
        "@example.com -> alice@example.com\n"
        "team@example.com -> alice@example.com, Friend@elsewhere.example\n")

    result = cli("-c", c, "alias", "delete", "team@example.com", "Friend@elsewhere.example")
    assert result.code == 0, result.err
    assert result.out == "deleted alias team@example.com -> Friend@elsewhere.example\n"
    result = cli("-c", c, "alias", "delete", "@example.com")
    assert result.out == "deleted alias @example.com\n"
    assert cli("-c", c, "alias", "list").out == "team@example.com -> alice@example.com\n"


# --- domains ---


def test_domain_add_list_delete(inst, cli):
    c = str(inst)
    result = cli("-c", c, "domain", "add", "Other.Example")
    assert result.code == 0, result.err
    selector = f"ms{datetime.date.today():%Y%m}"
    assert result.out == f"added other.example; DKIM key {selector}._domainkey.other.example\n"
    keys = dkimkeys.keys_for(inst.parent / "dkim", "other.example")
    assert [k.selector for k in keys] == [selector]
    assert stat.S_IMODE(keys[0].key_file.stat().st_mode) == 0o600
    assert cli("-c", c, "domain", "list").out == "example.com\nother.example\n"

    result = cli("-c", c, "domain", "delete", "other.example")
    assert result.code == 0, result.err
    assert result.out == "deleted other.example\n"
    assert cli("-c", c, "domain", "list").out == "example.com\n"


# --- parse_size ---


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("500", 500), ("1k", 1024), ("1K", 1024), ("1KB", 1024), ("1KiB", 1024),
     ("1kib", 1024), ("1M", 1024**2), ("500M", 500 * 1024**2), ("2G", 2 * 1024**3),
     ("1T", 1024**4), (" 3 G ", 3 * 1024**3), ("10b", 10)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1", "1.5G", "1X", "1 MBB", "one", "1P"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid size"):
        parse_size(text)
