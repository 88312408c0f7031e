"""The IMAP index on one big folder: ``python -m bench.imap_index [--messages N ...]``.

Builds a Maildir of N 5-KB messages in new/ (written directly, without fsync: this measures
the index, not the disk) and times what an IMAP server does to it: the first sync (which
builds the index and moves new/ to cur/, as Dovecot does), a sync with nothing changed,
listing all messages, a STORE on every message, picking up one delivery, reopening in a
new process, and rebuilding after the SQLite file is deleted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from maildir import Delivery, create_maildir, deliver
from maildir.index import MailboxIndex
from maildir.index_sql import DB_NAME

BODY = (
    b"From: bench@remote.test\r\nTo: bench@example.test\r\nSubject: bench\r\n\r\n"
    + (b"x" * 76 + b"\r\n") * 64
)  # ~5 KB


def build_maildir(root: Path, n: int) -> None:
    create_maildir(root, folders=())
    new = root / "new"
    start = int(time.time()) - n
    for i in range(n):
        # Deliver-style names; one second apart so that internal dates differ.
        name = f"{start + i}.M{i % 1000000}P1Q{i}R{i:016x}.bench,S={len(BODY)},W={len(BODY)}"
        path = new / name
        with open(path, "wb") as f:
            f.write(BODY)
        os.utime(path, (start + i, start + i))


def _once(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _median(fn: Callable[[], object], runs: int) -> float:
    return statistics.median(_once(fn) for _ in range(runs))


def measure(n: int, where: str | None = None) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    tmp = tempfile.mkdtemp(prefix=".bench-imap-", dir=where)
    try:
        root = Path(tmp) / "user"
        build_maildir(root, n)
        holder: dict[str, object] = {}

        def first_open() -> None:
            holder["mi"] = mi = MailboxIndex(root)
            holder["fi"] = mi.folder("INBOX")

        rows.append(("first sync: index build + move new/ -> cur/", _once(first_open)))
        mi, fi = holder["mi"], holder["fi"]
        assert fi.count == n, fi.count
        fi.sync(full=True)
        rows.append(("sync(), nothing changed, within 2 s of a change", _median(fi.sync, 200)))
        time.sleep(2.1)  # past the dirty window: one more listing, then mtimes are proof
        fi.sync()
        rows.append(("sync(), nothing changed, folder quiet", _median(fi.sync, 200)))
        # What a sync costs when a directory must be listed although nothing changed (once
        # per dirty window after our own changes, or after another program's).
        rows.append(
            (
                "sync(full=True): list new/ and cur/, nothing changed",
                _median(lambda: fi.sync(full=True), 5),
            )
        )
        rows.append(("messages()", _median(fi.messages, 5)))
        rows.append(("uids()", _median(fi.uids, 5)))
        rows.append(("status() (count, unseen, size)", _median(fi.status, 20)))
        modseq = fi.highestmodseq
        rows.append(
            (
                "changes_since(highestmodseq): idle poll",
                _median(lambda: fi.changes_since(modseq), 200),
            )
        )
        rows.append(
            (
                "store_flags(all, +\\Seen)",
                _once(lambda: fi.store_flags(range(1, n + 1), {"\\Seen"}, "add")),
            )
        )
        rows.append(("sync() after our own STORE", _median(fi.sync, 20)))
        deliver([Delivery(root, [BODY])])
        rows.append(("sync() after 1 new delivery", _once(fi.sync)))
        rows.append(("read(uid) of one 5-KB message", _median(lambda: fi.read(n // 2), 50)))
        mi.close()

        def reopen() -> None:
            with MailboxIndex(root) as again:
                again.folder("INBOX")

        rows.append(("reopen in a new process (index intact)", _once(reopen)))
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(root / (DB_NAME + suffix))
            except FileNotFoundError:
                pass
        rows.append(("sync() after deleting the SQLite file: rebuild", _once(reopen)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.imap_index")
    p.add_argument("--messages", default="10000,100000", help="folder sizes to try")
    p.add_argument("--where", default=None, help="directory for the temporary Maildir")
    args = p.parse_args()
    for n in (int(s) for s in args.messages.split(",")):
        rows = measure(n, args.where)
        width = max(len(name) for name, _ in rows)
        print(f"\n{n} messages")
        for name, seconds in rows:
            print(f"  {name:<{width}}  {seconds * 1000:>10.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
