"""Backup, verify and restore on a real (not running) instance: the archive's manifest and
layout, byte-identical round trips, UIDs kept, every kind of damage and hostile archive
refused, and messages renamed while the snapshot is taken."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import threading
from pathlib import Path

import pytest

from maildir import Delivery, MailboxIndex, deliver
from server import backupcrypt
from server.accounts import AccountStore
from server.backup import BackupError, backup
from server.backupsnap import STAGING_PREFIX
from server.cli import main
from server.config import load_config
from server.queue.spool import Spool
from server.restore import ArchiveError, RestoreError, restore, set_data_dir, verify

FAST_ARGON2 = "\n[accounts]\nargon2_time_cost = 1\nargon2_memory_kib = 1024\n"
FAST_KDF = {"opslimit": 1, "memlimit": 8192}
PASS = b"a backup passphrase"


def _msg(n: int) -> bytes:
    return f"From: x@remote.test\r\nSubject: message {n}\r\n\r\nbody {n}\r\n".encode()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """An instance with a user, mail in INBOX and a folder, UIDs assigned, a queued message."""
    root = tmp_path_factory.mktemp("template") / "data"
    assert main(["init", "--dev", "--data-dir", str(root), "--domain", "example.test",
                 "--hostname", "mail.example.test"]) == 0
    with open(root / "mailstead.toml", "a") as f:
        f.write(FAST_ARGON2)
    store = AccountStore.from_config(load_config(root / "mailstead.toml"))
    store.add_user("ann@example.test", "a long password")
    store.add_alias("team@example.test", ["ann@example.test"])
    store.close()
    ann = root / "mail/example.test/ann"
    for n in range(6):
        deliver([Delivery(ann if n < 4 else ann / ".Archive", [_msg(n)])])
    with MailboxIndex(ann) as index:
        inbox = index.folder("INBOX")
        inbox.store_flags(inbox.uids()[:2], {"\\Seen"}, "add")
        index.folder("Archive").sync()
    for n in range(6, 8):  # delivered after the last IMAP look: in new/, without a UID yet
        deliver([Delivery(ann, [_msg(n)])])
    Spool(root / "queue").add("ann@example.test", ["bob@remote.test"], (_msg(99),))
    (root / "mailstead.pid").write_text("1\n")
    return root


@pytest.fixture
def inst(template, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    config = root / "mailstead.toml"
    config.write_text(config.read_text().replace(str(template), str(root)))
    return load_config(config)


def _members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive, "r:gz") as tar:
        return tar.getmembers()


def _manifest(archive: Path) -> dict:
    with tarfile.open(archive, "r:gz") as tar:
        return json.load(tar.extractfile("MANIFEST.json"))


def _tree(root: Path, skip=(".sqlite3", "mailstead.toml")) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(skip)}


# --- the archive ----------------------------------------------------------------------------


def test_manifest_first_and_what_is_in_it(inst, tmp_path):
    result = backup(inst, str(tmp_path))
    archive = Path(result.path)
    assert archive.parent == tmp_path
    assert archive.name.startswith("mailstead-backup-mail.example.test-")
    assert archive.name.endswith("Z.tar.gz")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    members = _members(archive)
    assert members[0].name == "MANIFEST.json"
    manifest = _manifest(archive)
    assert manifest["format"] == "mailstead-backup" and manifest["version"] == 1
    assert manifest["hostname"] == "mail.example.test" and manifest["created"]
    files = {f["path"]: f for f in manifest["files"]}
    for name in ("config/mailstead.toml", "data/accounts.sqlite3", "data/tls/cert.pem",
                 "data/tls/key.pem", "data/mail/example.test/ann/mailstead-uidlist",
                 "data/mail/example.test/ann/.Archive/mailstead-uidlist"):
        assert name in files, name
    assert any(n.startswith("data/dkim/example.test/") for n in files)
    assert sum(1 for n in files if n.startswith("data/queue/msg/")) == 1
    assert sum(1 for n in files if n.startswith("data/queue/env/")) == 1
    assert sum(1 for n in files if "/ann/cur/" in n or "/ann/new/" in n) == 6
    # Not state, or a cache that is rebuilt: never in the archive.
    assert not any(n.endswith(("mailstead.pid", "mailstead-index.sqlite3", "-wal", "-shm"))
                   for n in files)
    assert "data/mail/example.test/ann/tmp" in manifest["dirs"]
    assert "data/mailstead.toml" not in files  # stored once, under config/
    assert [m.name for m in members if m.isfile()] == ["MANIFEST.json", *files]
    for m in members[1:]:
        assert m.isdir() or files[m.name]["size"] == m.size
    cert = inst.data_dir / "tls/cert.pem"
    assert files["data/tls/cert.pem"]["sha256"] == hashlib.sha256(cert.read_bytes()).hexdigest()
    assert not list(inst.data_dir.glob(STAGING_PREFIX + "*"))  # staging cleaned up
    assert result.files == len(files)


def test_round_trip_is_byte_identical_and_keeps_uids(inst, tmp_path):
    archive = backup(inst, str(tmp_path / "b.tar.gz")).path
    target = tmp_path / "restored"
    result = restore(archive, target, lambda: pytest.fail("not encrypted"))
    assert result.config_path == target / "mailstead.toml"
    src, dst = inst.data_dir, target
    expected = {k: v for k, v in _tree(src).items() if k != "mailstead.pid"}
    assert _tree(dst) == expected
    msg = next((src / "mail/example.test/ann/cur").iterdir())
    assert (dst / msg.relative_to(src)).stat().st_mtime == int(msg.stat().st_mtime)
    # The databases: the same rows (the files differ: online backup, journal mode).
    for db in ("accounts.sqlite3",):
        with sqlite3.connect(src / db) as a, sqlite3.connect(dst / db) as b:
            assert list(a.iterdump()) == list(b.iterdump())
    assert not (dst / "mail/example.test/ann/mailstead-index.sqlite3").exists()
    # The config: the same apart from data_dir.
    old = (src / "mailstead.toml").read_text().replace(str(src), str(dst))
    assert (dst / "mailstead.toml").read_text() == old
    assert load_config(dst / "mailstead.toml").data_dir == dst
    # The index is rebuilt from the uidlist: same UIDVALIDITY, UIDs and flags.
    for folder in ("INBOX", "Archive"):
        with MailboxIndex(src / "mail/example.test/ann") as a, \
                MailboxIndex(dst / "mail/example.test/ann") as b:
            fa, fb = a.folder(folder), b.folder(folder)
            assert fa.uidvalidity == fb.uidvalidity
            assert [(m.uid, m.flags, m.size) for m in fa.messages()] == \
                [(m.uid, m.flags, m.size) for m in fb.messages()]
            assert fa.uidnext == fb.uidnext
    store = AccountStore.from_config(load_config(dst / "mailstead.toml"))
    assert store.authenticate("ann@example.test", "a long password") is not None
    assert [a.source for a in store.list_aliases()] == ["team@example.test"]
    assert [m.recipients[0].address for m in Spool(dst / "queue").list()] == ["bob@remote.test"]


def test_restored_modes(inst, tmp_path):
    os.chmod(inst.data_dir / "tls/cert.pem", 0o644)  # world-readable at the source
    archive = backup(inst, str(tmp_path / "b.tar.gz")).path
    target = tmp_path / "restored"
    restore(archive, target, lambda: b"")
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    for path in target.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        else:
            assert mode & 0o037 == 0, (path, oct(mode))  # never group-writable or public
    assert stat.S_IMODE((target / "tls/key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "accounts.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "mailstead.toml").stat().st_mode) == 0o640


def test_restore_into_existing_empty_dir_and_config_elsewhere(inst, tmp_path):
    archive = backup(inst, str(tmp_path / "b.tar.gz")).path
    target = tmp_path / "mnt"
    target.mkdir()
    config = tmp_path / "etc" / "mailstead.toml"
    restore(archive, target, lambda: b"", config_out=config)
    assert load_config(config).data_dir == target
    assert not (target / "mailstead.toml").exists()
    assert (target / "accounts.sqlite3").exists()
    assert [p.name for p in target.iterdir() if "partial" in p.name] == []


def test_non_empty_restore_dir_refused(inst, tmp_path):
    archive = backup(inst, str(tmp_path / "b.tar.gz")).path
    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("x")
    with pytest.raises(RestoreError, match="not empty"):
        restore(archive, target, lambda: b"")
    assert [p.name for p in target.iterdir()] == ["something"]


def test_backup_refuses_a_destination_inside_the_data_dir(inst):
    with pytest.raises(BackupError, match="inside the data dir"):
        backup(inst, str(inst.data_dir / "backups.tar.gz"))


def test_stale_staging_of_a_dead_backup_is_removed(inst, tmp_path):
    stale = inst.data_dir / f"{STAGING_PREFIX}dead"
    (stale / "snapshot").mkdir(parents=True)
    (stale / "lock").write_text("")
    backup(inst, str(tmp_path / "b.tar.gz"))
    assert not stale.exists()


def test_queue_envelope_without_its_message_is_left_out(inst, tmp_path):
    env = inst.data_dir / "queue/env"
    orphan = next(env.iterdir()).read_text()
    (env / "0000000000000aaaaaaaaa.json").write_text(orphan)  # its message is gone
    files = {f["path"] for f in _manifest(Path(backup(inst, str(tmp_path / "b")).path))["files"]}
    assert not any("0000000000000aaaaaaaaa" in f for f in files)


# --- verify ---------------------------------------------------------------------------------


def _rewrite(archive: Path, out: Path, change) -> None:
    """Copy a plain archive member by member through ``change(name, data) -> data``."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if data is not None:
                data = change(m.name, data)
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)


def test_verify_ok(inst, tmp_path):
    archive = backup(inst, str(tmp_path / "b.tar.gz")).path
    result = verify(archive, lambda: b"")
    assert result.files == len(_manifest(Path(archive))["files"]) and not result.encrypted


def test_verify_catches_a_flipped_byte_in_a_file(inst, tmp_path, capsys):
    archive = Path(backup(inst, str(tmp_path / "b.tar.gz")).path)
    victim = next(f["path"] for f in _manifest(archive)["files"] if "/ann/new/" in f["path"])

    def flip(name, data):
        return data[:5] + bytes([data[5] ^ 1]) + data[6:] if name == victim else data

    _rewrite(archive, tmp_path / "bad.tar.gz", flip)
    assert main(["backup", "--verify", str(tmp_path / "bad.tar.gz")]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and victim in err and "SHA-256" in err


def test_verify_catches_a_damaged_compressed_stream(inst, tmp_path):
    archive = Path(backup(inst, str(tmp_path / "b.tar.gz")).path)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x40
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        verify(str(archive), lambda: b"")


def test_verify_catches_a_truncated_plain_archive(inst, tmp_path):
    archive = Path(backup(inst, str(tmp_path / "b.tar.gz")).path)
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(ArchiveError, match="truncated"):
        verify(str(archive), lambda: b"")


def test_verify_catches_a_corrupt_database(inst, tmp_path):
    archive = Path(backup(inst, str(tmp_path / "b.tar.gz")).path)
    db = "data/accounts.sqlite3"
    bad = {}

    def corrupt(name, data):
        if name == db:
            data = data[:4096] + b"\xff" * 200 + data[4296:]  # garbage inside page 2
            bad["sha"], bad["size"] = hashlib.sha256(data).hexdigest(), len(data)
        return data

    _rewrite(archive, tmp_path / "x.tar.gz", corrupt)

    def fix_manifest(name, data):  # a consistent manifest: only the database check can tell
        if name != "MANIFEST.json":
            return data
        manifest = json.loads(data)
        for f in manifest["files"]:
            if f["path"] == db:
                f["sha256"], f["size"] = bad["sha"], bad["size"]
        return json.dumps(manifest).encode()

    _rewrite(tmp_path / "x.tar.gz", tmp_path / "bad.tar.gz", fix_manifest)
    with pytest.raises(ArchiveError, match="accounts.sqlite3.*integrity_check"):
        verify(str(tmp_path / "bad.tar.gz"), lambda: b"")


def test_not_a_backup(tmp_path):
    (tmp_path / "x").write_bytes(b"hello world")
    with pytest.raises(ArchiveError, match="not a mailstead backup"):
        verify(str(tmp_path / "x"), lambda: b"")
    with tarfile.open(tmp_path / "y.tar.gz", "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("data"), None)
    with pytest.raises(ArchiveError, match="MANIFEST.json"):
        verify(str(tmp_path / "y.tar.gz"), lambda: b"")


# --- encryption -----------------------------------------------------------------------------


def test_encrypted_round_trip(inst, tmp_path):
    result = backup(inst, str(tmp_path), PASS, FAST_KDF)
    archive = Path(result.path)
    assert archive.name.endswith(".tar.gz.enc") and result.encrypted
    raw = archive.read_bytes()
    assert raw.startswith(backupcrypt.MAGIC)
    assert b"PRIVATE KEY" not in raw and b"\x1f\x8b" not in raw[:100]  # not readable as is
    assert verify(str(archive), lambda: PASS).encrypted
    restore(str(archive), tmp_path / "r", lambda: PASS)
    assert _tree(tmp_path / "r") == {k: v for k, v in _tree(inst.data_dir).items()
                                     if k != "mailstead.pid"}


def test_wrong_passphrase_fails_clearly(inst, tmp_path):
    archive = backup(inst, str(tmp_path), PASS, FAST_KDF).path
    with pytest.raises(ArchiveError, match="wrong passphrase"):
        verify(archive, lambda: b"not the passphrase")
    with pytest.raises(ArchiveError, match="wrong passphrase"):
        restore(archive, tmp_path / "r", lambda: b"not the passphrase")
    assert not (tmp_path / "r").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("cut", ["last-byte", "final-chunk", "mid-chunk"])
def test_truncated_encrypted_archive_fails(inst, tmp_path, cut):
    # Some incompressible bulk, so that the archive has several chunks.
    deliver([Delivery(inst.data_dir / "mail/example.test/ann",
                      [b"Subject: big\r\n\r\n" + os.urandom(3 * backupcrypt.CHUNK)])])
    archive = Path(backup(inst, str(tmp_path), PASS, FAST_KDF).path)
    data = archive.read_bytes()
    chunk = 4 + backupcrypt.CHUNK + 17
    header = 62
    full_chunks = (len(data) - header) // chunk
    keep = {"last-byte": len(data) - 1,
            "final-chunk": header + full_chunks * chunk,  # a clean cut at a chunk boundary
            "mid-chunk": header + chunk + 1000}[cut]
    archive.write_bytes(data[:keep])
    with pytest.raises(ArchiveError, match="truncated"):
        verify(str(archive), lambda: PASS)


def test_encrypted_stream_rejects_tampering(tmp_path):
    out = io.BytesIO()
    w = backupcrypt.EncryptingWriter(out, PASS, **FAST_KDF)
    w.write(b"x" * (backupcrypt.CHUNK * 2 + 10))
    w.close()
    data = bytearray(out.getvalue())
    data[62 + 4 + backupcrypt.CHUNK + 17 + 4 + 100] ^= 1  # inside the second chunk
    r = backupcrypt.DecryptingReader(io.BytesIO(bytes(data)), PASS)
    with pytest.raises(backupcrypt.BackupCryptError, match="chunk 2"):
        r.read()
    r = backupcrypt.DecryptingReader(io.BytesIO(out.getvalue() + b"junk"), PASS)
    with pytest.raises(backupcrypt.BackupCryptError, match="after the final chunk"):
        r.read()
    r = backupcrypt.DecryptingReader(io.BytesIO(out.getvalue()), PASS)
    assert r.read(7) + r.read() == b"x" * (backupcrypt.CHUNK * 2 + 10)


# --- hostile archives -----------------------------------------------------------------------


def _hostile(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    """A gzip'd tar with a manifest that lists ``member``, then ``member`` itself."""
    manifest = {"format": "mailstead-backup", "version": 1, "dirs": ["data"],
                "files": [{"path": member.name, "size": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}]}
    body = json.dumps(manifest).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        d = tarfile.TarInfo("data")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


def _member(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o600
    return info


@pytest.mark.parametrize("member", [
    _member("data/../../escaped"),
    _member("/tmp/absolute"),
    _member("data/a/../../escaped"),
    _member("elsewhere/file"),
    _member("data/link", tarfile.SYMTYPE, "/etc/passwd"),
    _member("data/hard", tarfile.LNKTYPE, "data/../../../etc/passwd"),
    _member("data/dev", tarfile.CHRTYPE),
    _member("data/fifo", tarfile.FIFOTYPE),
], ids=lambda m: m.name)
def test_hostile_members_are_refused(tmp_path, member):
    archive = tmp_path / "evil.tar.gz"
    _hostile(archive, member, b"owned\n" if member.isfile() else b"")
    target = tmp_path / "a" / "b" / "restored"
    with pytest.raises(ArchiveError):
        restore(str(archive), target, lambda: b"")
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "evil.tar.gz"]


def test_member_not_in_manifest_is_refused(inst, tmp_path):
    archive = Path(backup(inst, str(tmp_path / "b.tar.gz")).path)

    with tarfile.open(archive, "r:gz") as src, \
            tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        info = _member("data/surprise")
        info.size = 3
        dst.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ArchiveError, match="data/surprise: file not listed"):
        restore(str(tmp_path / "bad.tar.gz"), tmp_path / "r", lambda: b"")
    assert not (tmp_path / "r").exists()


# --- the config -----------------------------------------------------------------------------


def test_set_data_dir():
    text = ('# mine\n[server]\nhostname = "m.example.test" # host\ndata_dir = "/old"\n\n'
            '[listen]\nmx = "*:25"\n')
    assert set_data_dir(text, Path("/new dir")) == text.replace('"/old"', '"/new dir"')
    text = '[server]\nhostname = "m.example.test"\n[acme]\ndata_dir_x = 1\n'
    assert set_data_dir(text, Path("/n")) == text.replace(
        "[server]\n", '[server]\ndata_dir = "/n"\n')
    with pytest.raises(ArchiveError):
        set_data_dir('server.hostname = "m.example.test"\n', Path("/n"))


# --- messages moving while the snapshot is taken --------------------------------------------


def _archived_messages(archive: str) -> list[str]:
    with tarfile.open(archive, "r:gz") as tar:
        return [m.name for m in tar.getmembers()
                if m.isfile() and ("/cur/" in m.name or "/new/" in m.name)]


def test_message_renamed_between_listing_and_linking(inst, tmp_path):
    """The server reads a message (new/ -> cur/) and flags it right after we list new/."""
    inbox = inst.data_dir / "mail/example.test/ann"
    renamed = []

    def racing_listdir(path):
        names = os.listdir(path)
        if Path(path) == inbox / "new" and not renamed:
            for name in names:
                os.rename(path / name, inbox / "cur" / f"{name}:2,S")
                renamed.append(name)
        return names

    before = len(list((inbox / "new").iterdir())) + len(list((inbox / "cur").iterdir()))
    archive = backup(inst, str(tmp_path / "b.tar.gz"), listdir=racing_listdir).path
    names = [n for n in _archived_messages(archive) if "/ann/cur/" in n or "/ann/new/" in n]
    assert renamed and len(names) == before
    bases = [n.rsplit("/", 1)[1].split(":")[0] for n in names]
    assert sorted(bases) == sorted(set(bases))
    assert all(f"/ann/cur/{r}:2,S" in "\n".join(names) for r in renamed)


def test_message_renamed_at_every_listing_is_reported_not_dropped_silently(inst, tmp_path):
    """A listing that always names a file gone by the time we link it: after the relisting
    rounds give up, the backup says which message it could not take."""
    inbox = inst.data_dir / "mail/example.test/ann"
    ghost = "1700000000.M1P1Q1.ghost,S=10:2,S"
    listings = []

    def stale_listdir(path):
        names = os.listdir(path)
        if Path(path) == inbox / "cur":
            listings.append(path)
            names.append(ghost)
        return names

    result = backup(inst, str(tmp_path / "b.tar.gz"), listdir=stale_listdir)
    assert len(listings) > 5  # looked again, more than the old five rounds
    assert ("mail/example.test/ann/cur/" + ghost, "renamed during every listing") \
        in result.skipped
    assert not any("ghost" in n for n in _archived_messages(result.path))


def test_messages_moving_concurrently_are_neither_lost_nor_doubled(inst, tmp_path):
    inbox = inst.data_dir / "mail/example.test/ann"
    for n in range(200):
        deliver([Delivery(inbox, [_msg(n)])])
    expected = sorted(p.name.split(":")[0] for d in ("new", "cur")
                      for p in (inbox / d).iterdir())
    stop = threading.Event()

    def flip_flags():  # what IMAP STORE and a POP3 download do: renames only
        flag = 0
        while not stop.is_set():
            for d in ("new", "cur"):
                for p in list((inbox / d).iterdir()):
                    base = p.name.split(":")[0]
                    with contextlib.suppress(FileNotFoundError):  # renamed by us, meanwhile
                        os.rename(p, inbox / "cur" / f"{base}:2,{'S' if flag else 'F'}")
            flag ^= 1

    worker = threading.Thread(target=flip_flags)
    worker.start()
    try:
        for i in range(5):
            archive = backup(inst, str(tmp_path / f"b{i}.tar.gz")).path
            names = [n.rsplit("/", 1)[1].split(":")[0] for n in _archived_messages(archive)
                     if "/ann/cur/" in n or "/ann/new/" in n]
            assert sorted(names) == expected
    finally:
        stop.set()
        worker.join()


# --- the command line -----------------------------------------------------------------------


def test_cli_backup_verify_restore(inst, tmp_path, capsys, monkeypatch):
    pw = tmp_path / "pass"
    pw.write_text("a passphrase\n")
    c = str(inst.path)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["-c", c, "backup", str(out), "--passphrase-file", str(pw)]) == 1
    assert "--encrypt" in capsys.readouterr().err
    monkeypatch.delenv("MAILSTEAD_BACKUP_PASSPHRASE", raising=False)
    assert main(["-c", c, "backup", str(out), "--encrypt"]) == 1
    assert "MAILSTEAD_BACKUP_PASSPHRASE" in capsys.readouterr().err
    assert main(["-c", c, "backup", str(out), "--encrypt", "--passphrase-file", str(pw)]) == 0
    assert "backed up" in capsys.readouterr().out
    (archive,) = out.iterdir()
    assert main(["backup", "--verify", str(archive)]) == 1
    assert "MAILSTEAD_BACKUP_PASSPHRASE" in capsys.readouterr().err
    monkeypatch.setenv("MAILSTEAD_BACKUP_PASSPHRASE", "a passphrase")
    assert main(["backup", "--verify", str(archive)]) == 0
    assert ": ok: " in capsys.readouterr().out
    target = tmp_path / "restored"
    assert main(["restore", str(archive), "--data-dir", str(target)]) == 0
    printed = capsys.readouterr().out
    assert "restored" in printed and "next:" in printed
    assert main(["restore", str(archive), "--data-dir", str(target)]) == 1
    assert "not empty" in capsys.readouterr().err
