#!/usr/bin/env python3
"""Pack the mailstead source tree into a reproducible source archive.

Runs on the Ansible controller (with the Python that runs Ansible, stdlib only).
The archive contains only the listed top-level entries of the checkout, below a
single ``mailstead/`` directory, so ``pip install ARCHIVE`` builds it like an
sdist. Caches and build leftovers are skipped; ``.git``, ``.venv`` and
``dev-data`` are never included because only the listed entries are packed.

The output is byte-for-byte identical for identical file contents: members are
sorted, and mtimes, owners and modes are normalised, and the gzip header
carries no name or time. Ansible's ``copy`` of the archive therefore reports a
change only when the source really changed.

Usage: pack_source.py SRC_DIR OUT_FILE ENTRY [ENTRY ...]
Entries that do not exist are skipped, except ``pyproject.toml``.
Prints one JSON line with the packed file count and the archive's SHA-256.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

PREFIX = "mailstead"
# 2020-01-01T00:00:00Z: fixed, and after 1980 so wheel builds accept it.
MTIME = 1577836800
EXCLUDED_DIRS = {
    "__pycache__",
    ".git",
    ".venv",
    "venv",
    "dev-data",
    "build",
    "dist",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    ".tox",
    ".vagrant",
}
EXCLUDED_PATTERNS = ("*.egg-info", "*.pyc", "*.pyo", "*~", "*.swp", ".DS_Store")


def excluded(name: str) -> bool:
    return name in EXCLUDED_DIRS or any(fnmatch.fnmatch(name, p) for p in EXCLUDED_PATTERNS)


def collect(src: str, entries: list[str]) -> list[str]:
    """Return the sorted relative paths (files and directories) to pack."""
    paths: set[str] = set()
    for entry in entries:
        entry = os.path.normpath(entry)
        if entry.startswith("..") or os.path.isabs(entry):
            raise SystemExit(f"entry outside the source tree: {entry}")
        full = os.path.join(src, entry)
        if os.path.islink(full) or not os.path.exists(full):
            if entry == "pyproject.toml":
                raise SystemExit(f"{full} not found: is mailstead_src the repository root?")
            continue
        if os.path.isfile(full):
            paths.add(entry)
            continue
        paths.add(entry)
        for root, dirs, files in os.walk(full):
            dirs[:] = sorted(d for d in dirs if not excluded(d))
            rel_root = os.path.relpath(root, src)
            for d in dirs:
                if not os.path.islink(os.path.join(root, d)):
                    paths.add(os.path.join(rel_root, d))
            for f in files:
                path = os.path.join(root, f)
                if not excluded(f) and os.path.isfile(path) and not os.path.islink(path):
                    paths.add(os.path.join(rel_root, f))
    # Drop anything below a skipped (symlinked) directory.
    return sorted(p for p in paths if not _under_symlink(src, p))


def _under_symlink(src: str, rel: str) -> bool:
    parts = rel.split(os.sep)
    return any(os.path.islink(os.path.join(src, *parts[:i])) for i in range(1, len(parts) + 1))


def tar_info(src: str, rel: str) -> tarfile.TarInfo:
    full = os.path.join(src, rel)
    info = tarfile.TarInfo(f"{PREFIX}/{rel.replace(os.sep, '/')}")
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if os.path.isdir(full):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if os.stat(full).st_mode & 0o111 else 0o644
        info.size = os.path.getsize(full)
    return info


def pack(src: str, out: str, entries: list[str]) -> dict[str, object]:
    paths = collect(src, entries)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        top = tarfile.TarInfo(PREFIX)
        top.type, top.mode, top.mtime, top.uname, top.gname = tarfile.DIRTYPE, 0o755, MTIME, "", ""
        tar.addfile(top)
        for rel in paths:
            info = tar_info(src, rel)
            if info.isdir():
                tar.addfile(info)
            else:
                with open(os.path.join(src, rel), "rb") as fh:
                    tar.addfile(info, fh)
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0) as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    tmp = f"{out}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, out)
    files = sum(1 for p in paths if not os.path.isdir(os.path.join(src, p)))
    return {"archive": out, "files": files, "sha256": hashlib.sha256(data).hexdigest()}


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    src, out, entries = os.path.abspath(argv[1]), argv[2], argv[3:]
    print(json.dumps(pack(src, out, entries)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
