"""Real POP3 clients: getmail6 (POP3S) and fetchmail (STLS) retrieve everything into local
Maildirs, with and without deleting; the same messages read over IMAP before and after."""

from __future__ import annotations

import mailbox
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.support.imap import client, deliver
from tests.support.instance import PASSWORD

pytestmark = pytest.mark.e2e


def imap_subjects(mx, user) -> list[str]:
    c = client(mx, user)
    c.select("INBOX", readonly=True)
    _, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    c.logout()
    return sorted(part[1].decode().split(":", 1)[1].strip() for part in data
                  if isinstance(part, tuple))


def local_subjects(path) -> list[str]:
    box = mailbox.Maildir(path, factory=None, create=False)
    return sorted(box.get_message(k)["Subject"] for k in box.iterkeys())


@pytest.fixture
def nobody_dir():
    """A directory the unprivileged ``nobody`` can reach (pytest's tmp dirs are 0700)."""
    path = tempfile.mkdtemp(prefix="mailstead-getmail-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_getmail_retrieves_then_deletes(mx, nobody_dir):
    tmp_path = nobody_dir
    getmail = require_tool("getmail")
    user = "getmail@example.test"
    mx.add_user(user)
    for n in range(3):
        deliver(mx, user, f"getmail {n}")
    assert imap_subjects(mx, user) == ["getmail 0", "getmail 1", "getmail 2"]
    dest = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (dest / sub).mkdir(parents=True)
    # getmail refuses to deliver as root: the Maildir belongs to nobody.
    nobody = pwd.getpwnam("nobody")
    for path in [tmp_path, dest, *(dest / s for s in ("cur", "new", "tmp"))]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(tmp_path, 0o755)
    cert = tmp_path / "ca.pem"
    shutil.copy(mx.data_dir / "tls" / "cert.pem", cert)
    os.chmod(cert, 0o644)

    def run(delete: bool) -> None:
        rc = tmp_path / "getmailrc"
        rc.write_text(
            "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\n"
            f"port = {mx.ports['pop3s']}\nusername = {user}\npassword = {PASSWORD}\n"
            f"ca_certs = {cert}\n\n[destination]\ntype = Maildir\npath = {dest}/\n"
            "user = nobody\n\n[options]\nread_all = true\n"
            f"delete = {'true' if delete else 'false'}\nverbose = 1\n")
        proc = subprocess.run([getmail, f"--rcfile={rc}", f"--getmaildir={tmp_path}"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    run(delete=False)
    assert local_subjects(dest) == ["getmail 0", "getmail 1", "getmail 2"]
    assert imap_subjects(mx, user) == ["getmail 0", "getmail 1", "getmail 2"]
    run(delete=True)
    assert len(local_subjects(dest)) == 6  # read_all: fetched again, then deleted
    assert imap_subjects(mx, user) == []


def test_fetchmail_over_stls(mx, tmp_path):
    fetchmail = require_tool("fetchmail")
    user = "fetch@example.test"
    mx.add_user(user)
    deliver(mx, user, "fetched by fetchmail", "hello\r\n.dot line\r\nend")
    mda = tmp_path / "to_maildir.py"
    mda.write_text("#!/usr/bin/env python3\nimport mailbox, sys\n"
                   "mailbox.Maildir(sys.argv[1], create=True).add(sys.stdin.buffer.read())\n")
    mda.chmod(0o755)
    dest = tmp_path / "Maildir"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\nset no bouncemail\n"
        f"poll 127.0.0.1 service {mx.ports['pop3']} protocol POP3 auth password timeout 10\n"
        f'  user "{user}" there with password "{PASSWORD}"\n'
        f'  sslproto TLS1.2+ sslcertck sslcertfile "{mx.data_dir / "tls" / "cert.pem"}"\n'
        '  sslcommonname "mail.example.test"\n'
        f'  fetchall\n  mda "{mda} {dest}"\n')
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(tmp_path))
    proc = subprocess.run([fetchmail, "-v", "-f", str(rc), "--nodetach", "--pidfile",
                           str(tmp_path / "pid")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "STLS" in proc.stdout + proc.stderr
    box = mailbox.Maildir(dest, factory=None, create=False)
    [key] = list(box.iterkeys())
    stored = box.get_bytes(key)
    assert b"Subject: fetched by fetchmail" in stored and b"\n.dot line" in stored
    assert imap_subjects(mx, user) == []  # fetchmail deletes what it fetched by default
