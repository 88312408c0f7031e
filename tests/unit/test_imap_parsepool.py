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
