"""The order that makes a delivery durable before the 250: the file written to disk (O_SYNC,
an fsync in the same system call), then its rename into new/, then new/'s fsync (Postfix's
pattern plus the directory); a failed fsync of new/ leaves nothing and answers 451 to every
transaction that waited on it."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import importlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maildir import Delivery, create_maildir, deliver
from server.smtp import replies
from server.smtp.commit import commit_or_reply
from server.smtp.handoff import Handoff
from server.smtp.replies import SMTPError

# The module (the package's ``deliver`` attribute is the function of that name).
deliver_mod = importlib.import_module("maildir.deliver")

BODY = b"Subject: x\r\n\r\nbody\r\n"


def test_synced_write_then_rename_then_directory_fsync(tmp_path, monkeypatch):
    boxes = [tmp_path / "a", tmp_path / "b"]
    for box in boxes:
        create_maildir(box)
    events = []
    real_writev, real_rename, real_fsync_dir = os.writev, os.rename, deliver_mod.fsync_dir

    def writev(fd, buffers):
        # O_SYNC: the write returns once data and inode are on disk, as after an fsync.
        synced = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_SYNC == os.O_SYNC
        box = Path(os.readlink(f"/proc/self/fd/{fd}")).parent.parent.name
        events.append(("synced write" if synced else "write", box))
        return real_writev(fd, buffers)

    def rename(src, dst):
        events.append(("rename", Path(dst).parent.parent.name))
        real_rename(src, dst)

    def fsync_dir(path):
        events.append(("fsync new/", Path(path).parent.name))
        real_fsync_dir(path)

    monkeypatch.setattr(os, "writev", writev)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(deliver_mod, "fsync_dir", fsync_dir)
    deliver([Delivery(box, (b"Delivered-To: x\r\n", BODY)) for box in boxes])
    # Every copy's data is on disk before any rename (all or nothing), and every rename
    # before the directories' fsyncs that make them durable.
    assert events == [("synced write", "a"), ("synced write", "b"), ("rename", "a"),
                      ("rename", "b"), ("fsync new/", "a"), ("fsync new/", "b")]
    for box in boxes:
        [name] = os.listdir(box / "new")
        assert (box / "new" / name).read_bytes() == b"Delivered-To: x\r\n" + BODY


@pytest.mark.parametrize("threads", ["executor", "handoff"])
def test_failed_directory_fsync_gives_451_to_each_waiting_message(tmp_path, monkeypatch,
                                                                  threads):
    """Transactions whose renames a failing fsync of new/ was to make durable each answer
    451 (the sender retries) and leave nothing behind; the same through an MX worker's
    Handoff as through an executor."""
    root = tmp_path / "box"
    create_maildir(root)
    all_renamed = threading.Barrier(6, timeout=10)

    def failing_fsync_dir(path):
        all_renamed.wait()  # every transaction is waiting on new/ at the same time
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(deliver_mod, "fsync_dir", failing_fsync_dir)

    async def transactions(pool):
        return await asyncio.gather(*(
            commit_or_reply(pool, [Delivery(root, (BODY,))], [None], None, None,
                            "mx.example.test", "c", f"c.{i}") for i in range(6)),
            return_exceptions=True)

    if threads == "executor":
        with ThreadPoolExecutor(6) as pool:
            results = asyncio.run(transactions(pool))
    else:
        handoff = Handoff(6)
        results = asyncio.run(transactions(handoff))
        handoff.close()
    assert all(isinstance(r, SMTPError) and r.reply == replies.LOCAL_ERROR for r in results)
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []


def test_short_synced_write_is_finished(tmp_path, monkeypatch):
    root = tmp_path / "box"
    create_maildir(root)
    real_writev = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, buffers: real_writev(fd, [bytes(buffers[0][:3])]))
    deliver([Delivery(root, (b"Delivered-To: x\r\n", BODY))])
    [name] = os.listdir(root / "new")
    assert (root / "new" / name).read_bytes() == b"Delivered-To: x\r\n" + BODY
    assert name.endswith(f",S={len(BODY) + 17},W={len(BODY) + 17}")


def test_handoff_commit_returns_only_after_the_directory_fsync(tmp_path, monkeypatch):
    """The 250 follows ``commit_or_reply``: through an MX worker's Handoff it must not come
    back before the fsync of new/ has returned."""
    root = tmp_path / "box"
    create_maildir(root)
    events = []
    real_fsync_dir = deliver_mod.fsync_dir

    def slow_fsync_dir(path):
        events.append("fsync started")
        threading.Event().wait(0.2)
        real_fsync_dir(path)
        events.append("fsync done")

    monkeypatch.setattr(deliver_mod, "fsync_dir", slow_fsync_dir)
    handoff = Handoff(2)

    async def transaction():
        await commit_or_reply(handoff, [Delivery(root, (BODY,))], [None], None, None,
                              "mx.example.test", "c", "c.1")
        events.append("acknowledged")

    asyncio.run(transaction())
    handoff.close()
    assert events == ["fsync started", "fsync done", "acknowledged"]
    assert len(os.listdir(root / "new")) == 1
