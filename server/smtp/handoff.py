"""Threads that store messages for an event loop, with the cheapest hand-off there is.

Every message an MX worker receives goes to a thread once (``commit``: the O_SYNC writes and
fsyncs must not stop the loop). ``loop.run_in_executor`` makes that trip cost a
``concurrent.futures.Future`` (a Condition and its lock), the executor's shutdown locks and
idle semaphore, and an asyncio future chained to it both ways; under load, the threads waking
for those locks competed with the event loop for the GIL and the two CPUs. Here a job is one
tuple on a ``SimpleQueue`` (a C lock, nothing in Python) and its result goes straight into the
asyncio future with one ``call_soon_threadsafe``: about a third of the CPU per trip.

The threads are started as jobs need them, up to ``max_threads``; ``close`` ends them. A job
whose caller went away (the future cancelled, say the client hung up) still runs to its end,
as it would in an executor: a message half stored is worse than one stored for nobody.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable


def _settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Handoff:
    def __init__(self, max_threads: int = 16, name: str = "handoff"):
        self.max_threads = max_threads
        self.name = name
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0  # threads waiting for a job; read without the lock: a guide
        self._idle_lock = threading.Lock()
        self.closed = False

    def run(self, func: Callable, *args) -> asyncio.Future:
        """``func(*args)`` in one of the threads; the returned future has its result."""
        if self.closed:
            raise RuntimeError("handoff closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.jobs.put((loop, future, func, args))
        if self.idle <= 0 and len(self.threads) < self.max_threads:
            thread = threading.Thread(target=self._serve, daemon=True,
                                      name=f"{self.name}-{len(self.threads)}")
            self.threads.append(thread)
            thread.start()
        return future

    def _serve(self) -> None:
        jobs = self.jobs
        lock = self._idle_lock
        while True:
            with lock:
                self.idle += 1
            job = jobs.get()
            with lock:
                self.idle -= 1
            if job is None:
                return
            loop, future, func, args = job
            try:
                result, error = func(*args), None
            except BaseException as exc:  # handed to the waiting coroutine, as an executor does
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
            del job, future, result, error

    def close(self) -> None:
        """Let the jobs queued so far finish, then end the threads (blocking)."""
        self.closed = True
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()
        self.threads.clear()
