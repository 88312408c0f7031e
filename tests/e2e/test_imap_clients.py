"""Real IMAP clients against mailstead: mbsync (isync) syncs both ways, offlineimap reads all,
and an IDLE session hears of mail delivered through the MX."""

from __future__ import annotations

import mailbox
import subprocess
import time

import pytest

from tests.conftest import require_tool
from tests.support.imap import PASSWORD, Raw, client, deliver

pytestmark = pytest.mark.e2e


def mbsync_config(inst, local, user: str, sync: str = "All") -> str:
    return (
        f"IMAPAccount acct\nHost localhost\nPort {inst.ports['imaps']}\nUser {user}\n"
        f'Pass "{PASSWORD}"\nSSLType IMAPS\n'
        f"CertificateFile {inst.data_dir / 'tls' / 'cert.pem'}\nAuthMechs PLAIN\n\n"
        "IMAPStore remote\nAccount acct\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n"
        f"Sync {sync}\nSyncState *\nExpunge Both\n"
    )


def mbsync(inst, tmp_path, user: str) -> subprocess.CompletedProcess:
    rc = tmp_path / "mbsyncrc"
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    rc.write_text(mbsync_config(inst, local, user))
    proc = subprocess.run([require_tool("mbsync"), "-c", str(rc), "-a"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_mbsync_both_ways(mx, tmp_path):
    user = "sync@example.test"
    mx.add_user(user)
    for n in range(3):
        deliver(mx, user, f"synced {n}")
    mbsync(mx, tmp_path, user)
    local = tmp_path / "local"
    inbox = mailbox.Maildir(local / "INBOX", factory=None, create=False)
    subjects = sorted(inbox.get_message(k)["Subject"] for k in inbox.iterkeys())
    assert subjects == ["synced 0", "synced 1", "synced 2"]
    assert (local / "Sent").is_dir() and (local / "Trash").is_dir()

    # Local changes go up: a flag (seen), and a new message in Drafts.
    key = next(k for k in inbox.iterkeys() if inbox.get_message(k)["Subject"] == "synced 1")
    message = inbox.get_message(key)
    message.set_flags("S")
    inbox[key] = message
    drafts = mailbox.Maildir(local / "Drafts", factory=None, create=False)
    drafts.add(b"From: sync@example.test\r\nSubject: written offline\r\n\r\ndraft\r\n")
    mbsync(mx, tmp_path, user)
    c = client(mx, user)
    c.select("INBOX", readonly=True)
    typ, data = c.search(None, "SEEN")
    assert data[0] == b"2"
    c.select("Drafts", readonly=True)
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: written offline" in data[0][1]

    # Server changes come down: a new delivery and a deletion.
    c.select("INBOX")
    c.store("1", "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.logout()
    deliver(mx, user, "synced 3")
    mbsync(mx, tmp_path, user)
    inbox = mailbox.Maildir(local / "INBOX", factory=None, create=False)
    subjects = sorted(inbox.get_message(k)["Subject"] for k in inbox.iterkeys())
    assert subjects == ["synced 1", "synced 2", "synced 3"]


def test_offlineimap_reads_everything(mx, tmp_path):
    user = "offline@example.test"
    mx.add_user(user)
    deliver(mx, user, "for offlineimap")
    local = tmp_path / "mail"
    rc = tmp_path / "offlineimaprc"
    rc.write_text(
        "[general]\naccounts = a\nmetadata = " + str(tmp_path / "meta") + "\n\n"
        "[Account a]\nlocalrepository = l\nremoterepository = r\n\n"
        f"[Repository l]\ntype = Maildir\nlocalfolders = {local}\n\n"
        "[Repository r]\ntype = IMAP\nremotehost = localhost\n"
        f"remoteport = {mx.ports['imaps']}\nremoteuser = {user}\nremotepass = {PASSWORD}\n"
        f"ssl = yes\nsslcacertfile = {mx.data_dir / 'tls' / 'cert.pem'}\n"
        "readonly = True\n")
    proc = subprocess.run([require_tool("offlineimap"), "-c", str(rc), "-o", "-u", "basic"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inbox = mailbox.Maildir(local / "INBOX", factory=None, create=False)
    assert [inbox.get_message(k)["Subject"] for k in inbox.iterkeys()] == ["for offlineimap"]


def test_idle_client_hears_mx_delivery(mx):
    user = "push@example.test"
    mx.add_user(user)
    with Raw(mx, implicit_tls=False) as r:
        r.send("t STARTTLS\r\n")
        r.until("t")
        r.sock = mx.tls_context().wrap_socket(r.sock, server_hostname="localhost")
        r.login(user)
        r.cmd("s", "SELECT INBOX")
        r.send("i IDLE\r\n")
        assert r.line() == b"+ idling"
        started = time.monotonic()
        swaks = require_tool("swaks")
        subprocess.run([swaks, "--server", "127.0.0.1", "--port", str(mx.mx_port), "--to", user,
                        "--from", "bob@remote.test", "--header", "Subject: via swaks"],
                       capture_output=True, check=True, timeout=60)
        assert r.line() == b"* 1 EXISTS"
        assert time.monotonic() - started < 5
        r.send("DONE\r\n")
        r.until("i")
