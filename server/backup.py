"""``mailstead backup``: a consistent snapshot of a running instance, as one tar archive.

The server keeps running.  The snapshot is first made in a staging directory inside the data
dir (same filesystem, so messages can be hard-linked: backupsnap.py says how and why that is
consistent).  Then the archive is written from the staging tree, which nothing else
touches, so the manifest's checksums, in the first member, are right for what follows.
A staging tree left by a backup that died is removed by the next one.

Archive layout (``tar``, PAX headers, gzip; optionally encrypted by backupcrypt.py)::

    MANIFEST.json            format, version, created, hostname, every file with size + SHA-256
    config/mailstead.toml    the config file, wherever it lived (e.g. /etc/mailstead)
    data/...                 the data dir, minus the config file if it lives there
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import stat
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from maildir.safeio import fsync_dir, unlink_quiet
from server.backupcrypt import EncryptingWriter
from server.backupsnap import STAGING_PREFIX, Snapshot

FORMAT = "mailstead-backup"
VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
CONFIG_NAME = "config/mailstead.toml"
_READ = 1024 * 1024
GZIP_LEVEL = 6  # 9 is several times slower for a few per cent on mail


class BackupError(Exception):
    pass


@dataclass
class BackupResult:
    path: str
    files: int
    data_bytes: int
    archive_bytes: int
    encrypted: bool
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)

# --- the archive -----------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
    return h.hexdigest()


def _staged_entries(staging: Path) -> tuple[list[str], list[str]]:
    """Directories and files of the staging tree as archive names, parents first."""
    dirs, files = [], []
    for top, subdirs, names in os.walk(staging):
        subdirs.sort()
        rel = Path(top).relative_to(staging).as_posix()
        if rel != ".":
            dirs.append(rel)
        files += [f"{rel}/{n}" if rel != "." else n for n in sorted(names)]
    return dirs, files


def build_manifest(staging: Path, hostname: str, data_dir: Path, config_path: Path,
                   skipped: list[tuple[str, str]]) -> dict:
    dirs, files = _staged_entries(staging)
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": hostname,
        "data_dir": str(data_dir),
        "config_path": str(config_path),
        "dirs": dirs,
        "files": [{"path": name, "size": (staging / name).stat().st_size,
                   "sha256": _sha256(staging / name),
                   **({"sqlite": True} if name.endswith(".sqlite3") else {})}
                  for name in files],
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }


def write_archive(out, staging: Path, manifest: dict, passphrase: bytes | None = None,
                  kdf: dict | None = None) -> None:
    """Write the tar.gz (encrypted when ``passphrase``) of ``staging`` to the file ``out``."""
    sink = EncryptingWriter(out, passphrase, **(kdf or {})) if passphrase else out
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest, indent=1).encode("utf-8")
        tar.addfile(_info(MANIFEST_NAME, tarfile.REGTYPE, len(data), 0o600, int(time.time())),
                    io.BytesIO(data))
        for name in manifest["dirs"]:
            st = os.stat(staging / name)
            tar.addfile(_info(name, tarfile.DIRTYPE, 0, 0o700, st.st_mtime))
        for item in manifest["files"]:
            path = staging / item["path"]
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                # Our own addfile, not tar.add: add() would store a second hard link to one
                # inode (IMAP COPY makes those) as a link member, which restore refuses.
                tar.addfile(_info(item["path"], tarfile.REGTYPE, st.st_size,
                                  stat.S_IMODE(st.st_mode), st.st_mtime), f)
    if passphrase:
        sink.close()


def _info(name: str, kind: bytes, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    # Whole seconds: IMAP's INTERNALDATE (the file's mtime) has no more, and a fraction
    # would cost every member an extra PAX header block.
    info.type, info.size, info.mode, info.mtime = kind, size, mode, int(mtime)
    return info


# --- the command ----------------------------------------------------------------------------


def default_name(hostname: str, encrypted: bool, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"mailstead-backup-{hostname}-{stamp}.tar.gz" + (".enc" if encrypted else "")


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _clean_stale_staging(data_dir: Path) -> None:
    """Remove staging trees of backups that died (their lock is free): links, not mail."""
    for path in data_dir.glob(STAGING_PREFIX + "*"):
        try:
            fd = os.open(path / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = None
            with contextlib.suppress(OSError):
                if time.time() - path.lstat().st_mtime < 60:
                    continue  # a backup that is just starting, before it made its lock
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(path)  # refuses a symbolic link
        except OSError:
            pass  # another backup is running (BlockingIOError), or not ours to remove
        finally:
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def _staging(data_dir: Path):
    _clean_stale_staging(data_dir)
    path = data_dir / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
    path.mkdir(mode=0o700)
    try:
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path / "snapshot"
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def backup(config, dest: str, passphrase: bytes | None = None, kdf: dict | None = None,
           listdir=os.listdir) -> BackupResult:
    """Back up the instance of ``config`` to ``dest`` (a file, a directory, or ``-``)."""
    started = time.monotonic()
    data_dir = config.data_dir
    if not data_dir.is_dir():
        raise BackupError(f"no data dir at {data_dir}")
    hostname = config.server.hostname
    if dest == "-":
        target = None
    else:
        target = Path(dest).absolute()
        if target.is_dir():
            target = target / default_name(hostname, bool(passphrase))
        if _inside(target.parent, data_dir):
            raise BackupError(f"{dest} is inside the data dir {data_dir}; "
                              "write the backup somewhere else")
        if not target.parent.is_dir():
            raise BackupError(f"no directory {target.parent} to write the backup into")
    exclude = set()
    if _inside(config.path, data_dir):
        exclude.add(config.path.resolve().relative_to(data_dir.resolve()).as_posix())
    with _staging(data_dir) as staging:
        staging.mkdir(mode=0o700)
        snap = Snapshot(data_dir, staging, exclude, listdir=listdir)
        snap.take()
        (staging / "config").mkdir(mode=0o700)
        shutil.copy2(config.path, staging / CONFIG_NAME)
        skipped = snap.skipped + [
            (str(p), "outside the data dir") for p in (config.cert_file, config.key_file)
            if not _inside(p, data_dir)]
        manifest = build_manifest(staging, hostname, data_dir, config.path, skipped)
        size = sum(f["size"] for f in manifest["files"])
        if target is None:
            write_archive(sys.stdout.buffer, staging, manifest, passphrase, kdf)
            sys.stdout.buffer.flush()
            written, path = 0, "-"
        else:
            written = _write_atomically(target, staging, manifest, passphrase, kdf)
            path = str(target)
    return BackupResult(path, len(manifest["files"]), size, written, bool(passphrase),
                        time.monotonic() - started, skipped)


def _write_atomically(target: Path, staging: Path, manifest: dict, passphrase, kdf) -> int:
    """Write beside ``target`` (0600: password hashes, keys), fsync, rename: never half."""
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as out:
            write_archive(out, staging, manifest, passphrase, kdf)
            out.flush()
            os.fsync(out.fileno())
            written = out.tell()
        os.rename(tmp, target)
    except BaseException:
        unlink_quiet(tmp)
        raise
    fsync_dir(target.parent)
    return written
