"""The helper processes for a first FETCH ENVELOPE/BODYSTRUCTURE of many messages give what
the daemon's own thread would, and step aside (None) whenever they cannot."""

from __future__ import annotations

import os
import signal
import time

import pytest

from server.imap import fetch, parsepool
from server.imap.parsepool import ParsePool

N = parsepool.MIN_BATCH + 6


def _message(i: int) -> bytes:
    extra = "".join(f"X-Pad-{j}: {'p' * 70}\r\n" for j in range(260)) if i == 3 else ""
    return (f"From: Sender {i} <s{i}@remote.test>\r\nTo: a@b.test, \"C, D\" <c@d.test>\r\n"
            f"Subject: message {i}\r\n{extra}Message-ID: <{i}@remote.test>\r\n"
            "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain"
            f"\r\n\r\nbody {i}\n--x--\r\n").encode()


@pytest.fixture
def paths(tmp_path):
    out = []
    for i in range(N):
        path = tmp_path / f"m{i}"
        path.write_bytes(_message(i))
        out.append(str(path))
    return out


@pytest.fixture
def pool():
    p = ParsePool(2)
    yield p
    p.close()


def local(kind: str, path: str) -> bytes:
    with open(path, "rb") as f:
        return fetch.compute_cached(kind, fetch.crlf(f.read()))


@pytest.mark.parametrize("kind", ["envelope", "bodystructure", "body"])
def test_same_values_as_the_daemon_would_compute(pool, paths, kind):
    os.unlink(paths[5])  # gone meanwhile: None, the caller looks for it again
    got = pool.compute(kind, paths)
    assert got[5] is None
    assert got[:5] + got[6:] == [local(kind, p) for p in paths[:5] + paths[6:]]
    assert b'"message 3"' in got[3] if kind == "envelope" else True  # header > first read


def test_too_few_or_no_workers_leave_it_to_the_caller(paths):
    with_pool, without = ParsePool(2), ParsePool(0)
    try:
        assert with_pool.compute("envelope", paths[:parsepool.MIN_BATCH - 1]) is None
        assert without.compute("envelope", paths) is None
        assert with_pool._pool is None  # nothing was started for that
    finally:
        with_pool.close()


def test_a_killed_helper_falls_back_then_a_new_pool_serves(pool, paths):
    assert pool.compute("envelope", paths) is not None
    for pid in list(pool._pool._processes):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert pool.compute("envelope", paths) is None  # broken: the caller computes
    assert pool.compute("envelope", paths) == [local("envelope", p) for p in paths]


def test_stops_when_idle_and_after_close(paths):
    p = ParsePool(2, idle_stop=0.4)
    try:
        assert p.compute("envelope", paths) is not None
        pids = list(p._pool._processes)
        deadline = time.monotonic() + 10
        while p._pool is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p._pool is None
        assert p.compute("envelope", paths) is not None  # started again on demand
    finally:
        p.close()
    assert p._pool is None and p.compute("envelope", paths) is None
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_fetch_asks_for_the_next_batch_while_it_renders_this_one(tmp_path, pool):
    from maildir import Delivery, create_maildir, deliver
    from maildir.index import MailboxIndex
    from server.imap.fetching import _pooled

    root = tmp_path / "u"
    create_maildir(root, folders=())
    n = 2 * parsepool.MIN_BATCH + 10
    deliver([Delivery(root, [_message(i)]) for i in range(n)])
    with MailboxIndex(root) as mi:
        folder = mi.folder("INBOX")
        uids = folder.uids()
        first, second = uids[:n // 2], uids[n // 2:]
        ahead: dict = {}
        cache, new = {"envelope": {}}, {"envelope": []}
        _pooled(folder, pool, {"envelope"}, first, cache, new, ahead, second)
        assert set(cache["envelope"]) == set(first) and set(ahead) == {"envelope"}
        asked, _ = ahead["envelope"]
        assert asked == second  # the next batch is being parsed already
        cache2, new2 = {"envelope": {}}, {"envelope": []}
        _pooled(folder, pool, {"envelope"}, second, cache2, new2, ahead, [])
        assert not ahead and set(cache2["envelope"]) == set(second)
        for uid in second:
            with open(folder.paths([uid])[uid], "rb") as f:
                assert cache2["envelope"][uid] == fetch.compute_cached(
                    "envelope", fetch.crlf(f.read()))


def test_a_failure_with_work_still_queued_neither_hangs_nor_loses_the_pool(pool, paths):
    # A helper's error drops the pool, cancelling what is queued: no hang, every batch
    # either computed or handed back to the caller, and the next one gets a new pool.
    import threading

    got = []

    unreadable = os.path.dirname(paths[0])  # a directory: the helper's read raises

    def scenario():
        first = pool.submit("envelope", [unreadable, *paths])
        later = [pool.submit("envelope", paths * 100) for _ in range(3)]  # some still queued
        got.extend([first.result(), *(p.result() for p in later)])

    runner = threading.Thread(target=scenario, daemon=True)  # a hang must not hang pytest
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    everything = [local("envelope", p) for p in paths] * 100
    assert got[0] is None and all(r is None or r == everything for r in got[1:])
    # Futures run their done callbacks after waking result(): the count drops a moment later.
    deadline = time.monotonic() + 5
    while pool._busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool._busy == 0
    assert pool.compute("envelope", paths) == [local("envelope", p) for p in paths]


def test_the_processes_start_only_for_a_big_fetch_and_then_serve_smaller_ones(paths):
    p = ParsePool(2, start_at=1000)
    try:
        assert not p.worth_it(999) and p.worth_it(1000)
        assert not ParsePool(0, start_at=1).worth_it(10**6)  # no processes configured
        assert p.compute("envelope", paths) is not None  # now they run...
        assert p.worth_it(parsepool.MIN_BATCH)  # ...and serve a FETCH of a few dozen
    finally:
        p.close()
