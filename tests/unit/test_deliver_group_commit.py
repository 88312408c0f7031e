"""The shared fsync of new/ (``safeio.SharedDirSync``, used by ``maildir.deliver``): callers
that ask at the same time share one fsync, none returns before an fsync that began after it
asked has succeeded, and a failed fsync fails every caller it was for."""

from __future__ import annotations

import asyncio
import errno
import importlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from maildir import Delivery, create_maildir, deliver
from maildir.safeio import SharedDirSync
from server.smtp import replies
from server.smtp.commit import commit_or_reply
from server.smtp.replies import SMTPError

# The module (the package's ``deliver`` attribute is the function of that name).
deliver_mod = importlib.import_module("maildir.deliver")

BODY = b"Subject: x\r\n\r\nbody\r\n"


class GatedFsync:
    """An fsync that waits to be let through, and says when each call began and ended."""

    def __init__(self, fail_calls: tuple[int, ...] = ()):
        self.lock = threading.Lock()
        self.calls: list[tuple[float, float]] = []
        self.gates: list[threading.Event] = []
        self.started = threading.Semaphore(0)
        self.fail_calls = fail_calls

    def __call__(self, path) -> None:
        with self.lock:
            number = len(self.gates)
            gate = threading.Event()
            self.gates.append(gate)
        began = time.monotonic()
        self.started.release()
        assert gate.wait(10)
        with self.lock:
            self.calls.append((began, time.monotonic()))
        if number in self.fail_calls:
            raise OSError(errno.EIO, "Input/output error")

    def open_gate(self, number: int) -> None:
        assert self.started.acquire(timeout=10)  # that call has begun
        self.gates[number].set()


def _callers(sync: SharedDirSync, count: int, path) -> tuple[list, list]:
    """Start ``count`` threads calling ``sync.sync(path)``; their (asked, returned, error)."""
    results: list = [None] * count
    threads = []

    def call(i: int) -> None:
        asked = time.monotonic()
        try:
            sync.sync(path)
            results[i] = (asked, time.monotonic(), None)
        except OSError as err:
            results[i] = (asked, time.monotonic(), err)

    for i in range(count):
        threads.append(threading.Thread(target=call, args=(i,)))
        threads[-1].start()
    return results, threads


def test_callers_during_an_fsync_share_the_next_one(tmp_path):
    fsync = GatedFsync()
    sync = SharedDirSync(fsync)
    first, first_threads = _callers(sync, 1, tmp_path)
    assert fsync.started.acquire(timeout=10)  # the first fsync is under way...
    fsync.started.release()
    later, later_threads = _callers(sync, 5, tmp_path)  # ...when five more ask
    time.sleep(0.1)
    assert all(r is None for r in later)  # none may return on the fsync that began before
    fsync.open_gate(0)
    first_threads[0].join(10)
    assert first[0][2] is None
    fsync.open_gate(1)  # one fsync for the five
    for t in later_threads:
        t.join(10)
    assert len(fsync.calls) == 2
    second_began = fsync.calls[1][0]
    for asked, returned, error in later:
        assert error is None and asked <= second_began and returned >= fsync.calls[1][1]


def test_a_failed_fsync_fails_each_caller_it_was_for(tmp_path):
    fsync = GatedFsync(fail_calls=(1,))
    sync = SharedDirSync(fsync)
    first, first_threads = _callers(sync, 1, tmp_path)
    assert fsync.started.acquire(timeout=10)
    fsync.started.release()
    failed, failed_threads = _callers(sync, 4, tmp_path)
    time.sleep(0.1)
    fsync.open_gate(0)
    first_threads[0].join(10)
    fsync.open_gate(1)  # this one fails: all four hear of it
    for t in failed_threads:
        t.join(10)
    assert first[0][2] is None
    assert [r[2].errno for r in failed] == [errno.EIO] * 4
    after, after_threads = _callers(sync, 1, tmp_path)  # a later round starts afresh
    fsync.open_gate(2)
    after_threads[0].join(10)
    assert after[0][2] is None and len(fsync.calls) == 3


def test_concurrent_deliveries_share_directory_fsyncs(tmp_path, monkeypatch):
    root = tmp_path / "box"
    create_maildir(root)
    calls = []

    def slow_fsync(path):
        calls.append(path)
        time.sleep(0.02)

    monkeypatch.setattr(deliver_mod, "NEW_DIR_SYNC", SharedDirSync(slow_fsync))
    with ThreadPoolExecutor(16) as pool:
        paths = list(pool.map(lambda i: deliver([Delivery(root, (BODY,))])[0], range(32)))
    assert len(set(paths)) == 32 and all(p.exists() for p in paths)
    assert len(os.listdir(root / "new")) == 32
    assert len(calls) < 32  # shared: at most one running plus one waiting round at a time


def test_a_failed_shared_fsync_gives_451_to_every_waiting_message(tmp_path, monkeypatch):
    """Each transaction whose rename the failed fsync was to make durable answers 451 and
    leaves nothing behind; the sender retries each of them."""
    root = tmp_path / "box"
    create_maildir(root)
    entered = threading.Barrier(6, timeout=10)

    def failing_fsync(path):
        time.sleep(0.2)  # long enough for every delivery to have asked
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(deliver_mod, "NEW_DIR_SYNC", SharedDirSync(failing_fsync))
    real_sync = deliver_mod.NEW_DIR_SYNC.sync

    def sync_after_all_renamed(path):
        entered.wait()
        real_sync(path)

    monkeypatch.setattr(deliver_mod.NEW_DIR_SYNC, "sync", sync_after_all_renamed)

    async def transactions():
        with ThreadPoolExecutor(6) as pool:
            return await asyncio.gather(*(
                commit_or_reply(pool, [Delivery(root, (BODY,))], [None], None, None,
                                "mx.example.test", "c", f"c.{i}") for i in range(6)),
                return_exceptions=True)

    results = asyncio.run(transactions())
    assert all(isinstance(r, SMTPError) and r.reply == replies.LOCAL_ERROR for r in results)
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []


@pytest.mark.parametrize("fail", [False, True])
def test_deliver_uses_the_shared_sync(tmp_path, monkeypatch, fail):
    root = tmp_path / "box"
    create_maildir(root)
    seen = []

    def fsync(path):
        seen.append(path)
        if fail:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(deliver_mod, "NEW_DIR_SYNC", SharedDirSync(fsync))
    if fail:
        with pytest.raises(OSError):
            deliver([Delivery(root, (BODY,))])
        assert os.listdir(root / "new") == []
    else:
        deliver([Delivery(root, (BODY,))])
        assert len(os.listdir(root / "new")) == 1
    assert seen == [root / "new"]
