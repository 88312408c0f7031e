"""``mailstead backup --verify`` and ``mailstead restore``: read an archive, trusting nothing.

Both read the whole archive as a stream (decrypting when it starts with backupcrypt's magic)
and check every member against the manifest, the first member: the name must be listed,
the size and SHA-256 must match, every listed file must turn up, and each SQLite database
must pass ``PRAGMA integrity_check``.  Only regular files and directories with plain
relative names under ``data/`` or ``config/`` are accepted: an absolute name, ``..``, a
link or a device is refused (our checks, plus tarfile's ``data`` filter), so a crafted
archive cannot write outside the target.  The gzip stream is read to its end, which is
where its CRC and the encryption's FINAL chunk are checked.

Restore extracts into a partial directory beside (or, when the target is an existing empty
directory such as a mount point, inside) the target and moves it into place only after
everything checked out: a damaged archive leaves nothing behind.  The config file is written
with ``[server] data_dir`` pointing at the new data dir.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import tomllib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from maildir.safeio import atomic_write, fsync_dir, write_all
from server.backup import CONFIG_NAME, FORMAT, MANIFEST_NAME, VERSION
from server.backupcrypt import BackupCryptError, DecryptingReader, is_encrypted
from server.backupsnap import DATA
from server.config import ConfigError, parse_config

_READ = 1024 * 1024
_MAX_MANIFEST = 256 * 1024 * 1024
_MAX_CONFIG = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MEMBER_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


class ArchiveError(Exception):
    """The archive is not a readable, intact mailstead backup; the message names the file."""


class RestoreError(Exception):
    """The restore was refused before anything was written (non-empty target, ...)."""


@dataclass
class ReadResult:
    manifest: dict
    files: int = 0
    bytes: int = 0
    encrypted: bool = False
    config: bytes | None = None
    warnings: list[str] = field(default_factory=list)
    config_path: Path | None = None


# --- reading ---------------------------------------------------------------------------------


class _Prefixed:
    """A stream with its first bytes (already read to look at the magic) put back."""

    def __init__(self, head: bytes, raw):
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(size)
        if size < 0:
            data, self.head = self.head + self.raw.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data


@contextlib.contextmanager
def _raw(path: str):
    if path == "-":
        yield sys.stdin.buffer
    else:
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
        except OSError as err:
            raise ArchiveError(f"cannot read {path}: {err.strerror}") from None
        with f:
            yield f


def read_archive(path: str, passphrase: Callable[[], bytes], sink) -> ReadResult:
    """Stream the archive at ``path`` into ``sink``, checking everything; ArchiveError if not.

    ``passphrase`` is called only when the archive is encrypted.
    """
    with _raw(path) as raw:
        head = raw.read(len(b"MSTDENC\x00"))
        stream = _Prefixed(head, raw)
        encrypted = is_encrypted(head)
        try:
            if encrypted:
                stream = DecryptingReader(stream, passphrase())
            elif head[:2] != b"\x1f\x8b":
                raise ArchiveError(f"{path} is not a mailstead backup (neither gzip nor "
                                   "encrypted)")
            gz = gzip.GzipFile(fileobj=stream, mode="rb")
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                result = _read_tar(tar, sink)
            while gz.read(_READ):
                pass  # the gzip CRC, and the encryption's FINAL chunk, come at the end
        except BackupCryptError as err:
            raise ArchiveError(str(err)) from None
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise ArchiveError(f"the archive is damaged or truncated ({err})") from None
    result.encrypted = encrypted
    return result


def _read_tar(tar: tarfile.TarFile, sink) -> ReadResult:
    members = iter(tar)
    first = next(members, None)
    if first is None or first.name != MANIFEST_NAME or first.type not in _MEMBER_TYPES[:2]:
        raise ArchiveError(f"the archive does not start with {MANIFEST_NAME}: "
                           "not a mailstead backup")
    result = ReadResult(_load_manifest(tar.extractfile(first).read(_MAX_MANIFEST + 1)))
    files = {f["path"]: f for f in result.manifest["files"]}
    dirs = set(result.manifest["dirs"])
    seen: set[str] = set()
    for member in members:
        name = _check_member(member)
        if name in seen:
            raise ArchiveError(f"{name}: appears twice in the archive")
        seen.add(name)
        if member.type == tarfile.DIRTYPE:
            if name not in dirs:
                raise ArchiveError(f"{name}: directory not listed in the manifest")
            sink.directory(name, member)
            continue
        item = files.get(name)
        if item is None:
            raise ArchiveError(f"{name}: file not listed in the manifest")
        if member.size != item["size"]:
            raise ArchiveError(f"{name}: size {member.size}, the manifest says {item['size']}")
        digest = hashlib.sha256()
        sink.file(name, member, _chunks(tar.extractfile(member), digest))
        if digest.hexdigest() != item["sha256"]:
            raise ArchiveError(f"{name}: SHA-256 mismatch: the archive is damaged")
        if item.get("sqlite") and not sink.sqlite_ok(name):
            raise ArchiveError(f"{name}: the database fails PRAGMA integrity_check")
        result.files += 1
        result.bytes += member.size
        if name == CONFIG_NAME:
            result.config = sink.config
    missing = sorted((files.keys() | dirs) - seen)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ArchiveError(f"{missing[0]}{more}: in the manifest but not in the archive; "
                           "it is truncated")
    return result


def _chunks(src, digest) -> Iterator[bytes]:
    while chunk := src.read(_READ):
        digest.update(chunk)
        yield chunk


def _safe_name(name: object) -> bool:
    if not isinstance(name, str) or not name or name.startswith("/") or "\0" in name:
        return False
    parts = name.split("/")
    return parts[0] in (DATA, "config") and not any(p in ("", ".", "..") for p in parts)


def _check_member(member: tarfile.TarInfo) -> str:
    name = member.name
    if member.type not in _MEMBER_TYPES:
        raise ArchiveError(f"{name!r}: links, devices and other special members are refused")
    if not _safe_name(name):
        raise ArchiveError(f"{name!r}: unsafe or unexpected path in the archive")
    if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: tarfile's own idea of safe
        try:
            tarfile.data_filter(member, "/nonexistent-restore-root")
        except tarfile.FilterError as err:
            raise ArchiveError(f"{name!r}: refused ({err})") from None
    return name


def _load_manifest(data: bytes) -> dict:
    if len(data) > _MAX_MANIFEST:
        raise ArchiveError("the manifest is too large")
    try:
        manifest = json.loads(data)
    except ValueError:
        raise ArchiveError("the manifest is not valid JSON: the archive is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError("not a mailstead backup (unknown manifest format)")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ArchiveError(f"backup format version {version!r} is newer than this mailstead "
                           f"reads ({VERSION}); restore with a newer mailstead")
    files, dirs = manifest.get("files"), manifest.get("dirs")
    ok = isinstance(files, list) and isinstance(dirs, list)
    ok = ok and all(isinstance(d, str) and _safe_name(d) for d in dirs)
    ok = ok and all(isinstance(f, dict) and _safe_name(f.get("path"))
                    and isinstance(f.get("size"), int) and f["size"] >= 0
                    and isinstance(f.get("sha256"), str) and _SHA256.fullmatch(f["sha256"])
                    for f in files)
    if not ok:
        raise ArchiveError("the manifest's file list is malformed")
    return manifest


def sqlite_ok(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        try:
            return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


# --- verify ----------------------------------------------------------------------------------


class _Checker:
    """Verify's sink: reads everything, keeps nothing but the config and a database at a time."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.config: bytes | None = None

    def directory(self, name, member) -> None:
        pass

    def file(self, name, member, chunks) -> None:
        if name == CONFIG_NAME:
            self.config = b"".join(chunks)[:_MAX_CONFIG]
        elif name.endswith(".sqlite3"):
            with open(self.scratch / "db.sqlite3", "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
        else:
            for _ in chunks:
                pass

    def sqlite_ok(self, name) -> bool:
        path = self.scratch / "db.sqlite3"
        try:
            return sqlite_ok(path)
        finally:
            path.unlink()


def verify(path: str, passphrase: Callable[[], bytes]) -> ReadResult:
    with tempfile.TemporaryDirectory(prefix="mailstead-verify-") as scratch:
        return read_archive(path, passphrase, _Checker(Path(scratch)))


# --- restore ---------------------------------------------------------------------------------


class _Extractor:
    """Restore's sink: writes ``data/...`` under ``root``; never follows a link (it makes
    none, and creates every file with O_EXCL | O_NOFOLLOW in directories it made)."""

    def __init__(self, root: Path):
        self.root = root
        self.config: bytes | None = None

    def _path(self, name: str) -> Path | None:
        parts = name.split("/")
        return self.root.joinpath(*parts[1:]) if parts[0] == DATA else None

    def directory(self, name, member) -> None:
        path = self._path(name)
        if path is not None:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)

    def file(self, name, member, chunks) -> None:
        path = self._path(name)
        if path is None:
            if name != CONFIG_NAME:
                raise ArchiveError(f"{name}: unexpected file outside data/")
            self.config = b"".join(chunks)
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except (FileExistsError, IsADirectoryError):
            raise ArchiveError(f"{name}: appears twice in the archive") from None
        try:
            write_all(fd, chunks)
            # Never group-writable or readable by others, whatever the archive says.
            os.fchmod(fd, member.mode & 0o640)
        finally:
            os.close(fd)
        # The mtime matters: it is the message's IMAP INTERNALDATE.
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def sqlite_ok(self, name) -> bool:
        return sqlite_ok(self._path(name))


def set_data_dir(text: str, data_dir: Path) -> str:
    """``text`` with ``[server] data_dir`` set to ``data_dir``, comments and order kept."""
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    value = json.dumps(str(data_dir), ensure_ascii=False)
    lines = text.splitlines(keepends=True)
    section, header, done = None, None, False
    for i, line in enumerate(lines):
        table = re.match(r"\s*\[\s*([^\]\s]+)\s*\]\s*(#.*)?$", line)
        if table:
            section = table.group(1)
            if section == "server" and header is None:
                header = i
        elif section == "server" and re.match(r"\s*data_dir\s*=", line):
            lines[i] = f"data_dir = {value}\n"
            done = True
    if not done:
        if header is None:
            raise ArchiveError("the archived config has no [server] table; restore it with "
                               "--config-out and set data_dir by hand")
        lines.insert(header + 1, f"data_dir = {value}\n")
    new = "".join(lines)
    try:
        ok = tomllib.loads(new).get("server", {}).get("data_dir") == str(data_dir)
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise ArchiveError("could not set [server] data_dir in the archived config; restore "
                           "with --config-out and set it by hand")
    return new


def _empty_target(target: Path) -> bool:
    """True if ``target`` exists (and is empty); RestoreError if it cannot be restored into."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise RestoreError(f"{target} exists and is not a directory")
    if not target.exists():
        return False
    if any(target.iterdir()):
        raise RestoreError(f"{target} is not empty; restore into a new or empty directory")
    return True


def restore(path: str, target: Path, passphrase: Callable[[], bytes],
            config_out: Path | None = None) -> ReadResult:
    """Restore the archive at ``path`` into the new data dir ``target`` (see the module doc)."""
    target = Path(target).absolute()
    exists = _empty_target(target)
    config_path = Path(config_out).absolute() if config_out else target / "mailstead.toml"
    if config_out and config_path.exists():
        raise RestoreError(f"{config_path} already exists; refusing to overwrite a config")
    if exists:
        work = target / f".restore-partial-{secrets.token_hex(6)}"
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = target.parent / f".{target.name}.restore-partial-{secrets.token_hex(6)}"
    work.mkdir(mode=0o700)
    try:
        result = read_archive(path, passphrase, _Extractor(work))
        if result.config is None:
            raise ArchiveError(f"{CONFIG_NAME}: missing from the archive")
        try:
            text = set_data_dir(result.config.decode("utf-8"), target)
        except UnicodeDecodeError:
            raise ArchiveError(f"{CONFIG_NAME}: not UTF-8 text") from None
        try:
            parse_config(text, config_path)
        except ConfigError as err:
            result.warnings.append(f"the restored config does not load as it is:\n{err}")
        if not config_out:
            atomic_write(work / "mailstead.toml", text, mode=0o640)
        os.chmod(work, 0o700)
        # One sync for the whole tree instead of an fsync per message file.
        os.sync()
        if exists:
            for child in work.iterdir():
                os.rename(child, target / child.name)
            work.rmdir()
        else:
            os.rename(work, target)
        fsync_dir(target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if config_out:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(config_path, text, mode=0o640)
    result.config_path = config_path
    return result
