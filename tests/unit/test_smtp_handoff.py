"""server.smtp.handoff: jobs run in threads, results and errors reach the awaiting coroutine."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.smtp.handoff import Handoff


def _run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 20))


def test_result_error_and_thread():
    handoff = Handoff(4, "t")
    loop_thread = threading.current_thread()

    async def scenario():
        assert await handoff.run(lambda a, b: a + b, 2, 3) == 5
        assert await handoff.run(threading.current_thread) is not loop_thread
        with pytest.raises(OSError, match="disk"):
            await handoff.run(_fail, OSError(28, "disk full"))

    _run(scenario)
    handoff.close()
    assert not handoff.threads


def _fail(error):
    raise error


def test_jobs_overlap_up_to_max_threads_and_close_waits_for_them():
    """Concurrent jobs get threads of their own (the fsyncs of concurrent transactions
    overlap), at most ``max_threads``; close lets queued jobs finish."""
    handoff = Handoff(3, "t")
    running, peak, done = [0], [0], []
    lock = threading.Lock()

    def job(n):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        done.append(n)
        return n

    async def scenario():
        assert sorted(await asyncio.gather(*(handoff.run(job, n) for n in range(8)))) == \
            list(range(8))

    _run(scenario)
    assert peak[0] == 3 and len(handoff.threads) == 3
    handoff.close()
    assert sorted(done) == list(range(8))
    with pytest.raises(RuntimeError):
        _run(lambda: _closed_run(handoff))


async def _closed_run(handoff):
    return await handoff.run(int)


def test_a_cancelled_caller_does_not_stop_the_job():
    """The client went away while its message was being stored: the job still finishes (a
    message half stored is worse), and settling the cancelled future is no error."""
    handoff = Handoff(2, "t")
    finished = threading.Event()

    def slow():
        time.sleep(0.1)
        finished.set()
        return 1

    async def scenario():
        future = handoff.run(slow)
        future.cancel()
        await asyncio.sleep(0.3)
        assert finished.is_set()

    _run(scenario)
    handoff.close()
