"""Backup of a running server (while mail arrives) -> restore into a new data dir -> a new
server on it: every message, user, app password, alias, key and queued message is there,
byte-identical, with the same IMAP UIDs, UIDVALIDITY and flags."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import pytest

from maildir import Delivery, deliver
from tests.support.imap import client
from tests.support.instance import (
    MAILSTEAD,
    PASSWORD,
    RUNNING,
    Instance,
    cli,
    free_port,
    free_ports,
)

pytestmark = pytest.mark.e2e

USERS = ("ann@example.test", "bob@example.test", "cat@second.test")
PASSPHRASE = "correct horse backup staple"


class Restored(Instance):
    """An Instance on a restored data dir: no init, new loopback ports in its config."""

    def __init__(self, root: Path, data_dir: Path, like: Instance):
        self.root, self.data_dir = root, data_dir
        self.domain, self.hostname = like.domain, like.hostname
        self.config_path = data_dir / "mailstead.toml"
        self.ports = dict(zip(RUNNING, free_ports(len(RUNNING)), strict=True))
        self.proc = None
        self.log_path = root / f"{data_dir.name}.log"
        text = self.config_path.read_text()
        head, _, rest = text.partition("\n[listen]\n")
        rest = rest[rest.find("\n[") + 1:]
        listen = "".join(f'{svc} = "127.0.0.1:{port}"\n' for svc, port in self.ports.items())
        self.config_path.write_text(f"{head}\n[listen]\n{listen}\n{rest}")


def _message(n: int, to: str, subject: str) -> bytes:
    return (f"From: Someone <someone@remote.test>\r\nTo: {to}\r\nSubject: {subject} {n}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}-{n}@remote.test>\r\n"
            f"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n\r\nbody {n}\r\n").encode()


def _imap_state(inst: Instance, user: str, password: str = PASSWORD) -> dict:
    """{folder: (UIDVALIDITY, {uid: flags})} over IMAP."""
    c = client(inst)
    c.login(user, password)
    state = {}
    try:
        for folder in ("INBOX", "Archive"):
            assert c.select(folder)[0] == "OK"
            uidvalidity = int(c.response("UIDVALIDITY")[1][0])
            typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
            flags = {}
            for line in data:
                if isinstance(line, bytes) and (m := re.search(
                        rb"UID (\d+) FLAGS \(([^)]*)\)", line)):
                    flags[int(m.group(1))] = frozenset(m.group(2).decode().split())
            state[folder] = (uidvalidity, flags)
    finally:
        c.logout()
    return state


def _files(root: Path, under: str = "") -> dict[str, bytes]:
    base = root / under
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file() and not p.name.startswith("mailstead-index.sqlite3")}


def _messages(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in _files(root, "mail").items() if "/cur/" in k or "/new/" in k}


def _config_without_place(path: Path) -> dict:
    config = tomllib.loads(path.read_text())
    config["server"].pop("data_dir")
    config.pop("listen")
    return config


def _run(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("stdout", subprocess.PIPE)
    proc = subprocess.run([*MAILSTEAD, *args], stderr=subprocess.PIPE, timeout=300,
                          env={**os.environ, **(env or {})}, **kwargs)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def source(tmp_path, dns_server):
    # Outbound mail goes to a closed port: it stays queued (deferred), as on a bad day.
    inst = Instance(tmp_path / "src", dns_server.nameserver,
                    extra_config=f"[outbound]\nmx_port = {free_port()}\n")
    yield inst
    inst.stop()


def test_backup_restore_round_trip(source, tmp_path):
    inst = source
    cli("-c", str(inst.config_path), "domain", "add", "second.test")
    for user in USERS:
        inst.add_user(user)
    inst.add_alias("team@example.test", "ann@example.test", "cat@second.test")
    store = inst.accounts
    _, app_password = store.add_app_password("ann@example.test", "phone")
    store.close()
    inst.start()

    for n in range(5):
        inst.send("ann@example.test", _message(n, "ann@example.test", "inbox"))
    inst.send("team@example.test", _message(0, "team@example.test", "team"))
    inst.send("cat@second.test", _message(0, "cat@second.test", "second"))
    deliver([Delivery(inst.data_dir / "mail/example.test/ann/.Archive",
                      [_message(n, "ann@example.test", "archived")]) for n in range(3)])
    outbound = _message(0, "someone@remote.test", "outbound").replace(
        b"From: Someone <someone@remote.test>", b"From: Ann <ann@example.test>")
    inst.submit("ann@example.test", "someone@remote.test", outbound)
    spool = inst.spool()
    deadline = time.monotonic() + 20
    while not (queued := spool.list()) or queued[0].attempts < 1:
        assert time.monotonic() < deadline, inst.log()
        time.sleep(0.1)
    c = client(inst, "ann@example.test")
    c.select("INBOX")
    c.uid("STORE", "1:2", "+FLAGS", r"(\Seen \Flagged)")
    c.uid("STORE", "3", "+FLAGS", "(\\Answered $Forwarded)")
    c.select("Archive")
    c.uid("STORE", "2", "+FLAGS", r"(\Deleted)")
    c.logout()
    before = {user: _imap_state(inst, user) for user in USERS}
    assert len(before["ann@example.test"]["INBOX"][1]) == 6
    messages_before = _messages(inst.data_dir)

    # Backups while mail keeps arriving.
    sent, errors = [], []

    def keep_delivering():
        try:
            for n in range(40):
                inst.send("bob@example.test", _message(n, "bob@example.test", "during"))
                sent.append(n)
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    out = tmp_path / "backups"
    out.mkdir()
    worker = threading.Thread(target=keep_delivering)
    worker.start()
    started = time.monotonic()
    _run("-c", str(inst.config_path), "backup", str(out))
    plain_seconds = time.monotonic() - started
    worker.join()
    assert not errors and len(sent) == 40
    (plain,) = out.iterdir()
    encrypted = tmp_path / "stdout.tar.gz.enc"
    env = {"MAILSTEAD_BACKUP_PASSPHRASE": PASSPHRASE}
    with open(encrypted, "wb") as f:
        _run("-c", str(inst.config_path), "backup", "-", "--encrypt", env=env, stdout=f)
    assert inst.stop() == 0
    messages_after = _messages(inst.data_dir)

    assert b": ok: " in _run("backup", "--verify", str(plain)).stdout
    assert b"encrypted" in _run("backup", "--verify", str(encrypted), env=env).stdout
    _run("restore", str(plain), "--data-dir", str(tmp_path / "restored"))
    with open(encrypted, "rb") as f:
        _run("restore", "-", "--data-dir", str(tmp_path / "restored-enc"), env=env, stdin=f)
    print(f"\nbackup of the running server: {plain_seconds:.2f} s, {plain.stat().st_size} bytes")

    for name in ("restored", "restored-enc"):
        new = Restored(tmp_path, tmp_path / name, inst)
        # Every message byte-identical: all that was there before the backup, and of those
        # arriving during it, only complete ones.
        restored = _messages(new.data_dir)
        assert messages_before.items() <= restored.items()
        assert restored.items() <= messages_after.items()
        during = [k for k in restored if "/bob/" in k]
        print(f"{name}: {len(during)} of 40 messages sent during the backup are in it")
        # Keys, certificates, secrets: identical bytes.
        for sub in ("dkim", "tls"):
            assert _files(new.data_dir, sub) == _files(inst.data_dir, sub)
        assert len(_files(new.data_dir, "dkim")) == 2
        assert (new.data_dir / "admin-secret.key").read_bytes() == \
            (inst.data_dir / "admin-secret.key").read_bytes()
        assert _config_without_place(new.config_path) == \
            _config_without_place(inst.config_path)
        # The queued message is still queued, the same bytes.
        (queued,) = new.spool().list()
        assert queued.recipients[0].address == "someone@remote.test"
        assert new.spool().read_message(queued.id) == spool.read_message(queued.id)

        new.start()
        try:
            for user in USERS:
                after = _imap_state(new, user)
                for folder, (uidvalidity, flags) in before[user].items():
                    assert after[folder][0] == uidvalidity
                    assert flags.items() <= after[folder][1].items()
                if user != "bob@example.test":  # bob also has some of the mail sent during
                    assert after == before[user]
            ann = _imap_state(new, "ann@example.test", app_password)  # the app password
            assert ann == before["ann@example.test"]
            # The alias still resolves: one message, two mailboxes on two domains.
            new.send("team@example.test", _message(1, "team@example.test", "after"))
            for box in ("example.test/ann/", "second.test/cat/"):
                assert any(b"Subject: after 1" in data for path, data
                           in _messages(new.data_dir).items() if box in path), box
        finally:
            assert new.stop() == 0


def test_backup_and_restore_of_2000_messages(source, tmp_path):
    """Figures for the README: 2,000 small messages, backed up live, verified, restored."""
    inst = source
    inst.add_user("ann@example.test")
    inst.start()
    box = inst.data_dir / "mail/example.test/ann"
    for n in range(2000):
        deliver([Delivery(box if n % 4 else box / ".Archive",
                          [_message(n, "ann@example.test", "bulk") + b"x" * 1500])])
    c = client(inst, "ann@example.test")
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    out = tmp_path / "b.tar.gz"
    timings = {}
    for step, args in (("backup", ("-c", str(inst.config_path), "backup", str(out))),
                       ("verify", ("backup", "--verify", str(out))),
                       ("restore", ("restore", str(out), "--data-dir", str(tmp_path / "r")))):
        started = time.monotonic()
        _run(*args)
        timings[step] = time.monotonic() - started
    inst.stop()
    assert _messages(tmp_path / "r") == _messages(inst.data_dir)
    size = sum(len(v) for v in _messages(inst.data_dir).values())
    print(f"\n2000 messages ({size / 1e6:.1f} MB): archive {out.stat().st_size / 1e6:.2f} MB; "
          + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    assert all(v < 60 for v in timings.values())
