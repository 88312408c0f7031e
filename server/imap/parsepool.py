"""Helper processes for the first ENVELOPE or BODYSTRUCTURE of many messages.

Computing them is pure Python (a header parse and the encoding): some 40 microseconds a
message, so a client's first sync of a 100,000-message folder is seconds of it, all under
the one GIL that every IMAP session of the daemon shares.  Dovecot has a process per
session; we keep one, and send this one kind of bulk work to a few helper processes, one
per CPU, started when first needed and stopped after a minute without work.  They only read
message files and return encoded bytes; the index stays the daemon's, which stores them.

The processes come from a forkserver (the daemon has threads: a plain fork could copy a
held lock), preloaded with the parsing modules, so the first batch waits a fraction of a
second for them.  Anything going wrong in the pool (a process killed, a message the parser
chokes on) makes ``compute`` answer None, and the caller computes in its own thread as it
would without a pool, so the answer and any error are exactly those of that path.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger("mailstead.imap")

MIN_BATCH = 64  # fewer are computed by the caller: a trip to the processes costs more
# Starting the processes takes ~0.3 s, the time to parse some 10,000 headers: a FETCH of
# fewer messages (a client's first look at a folder of a few thousand) is parsed faster by
# the caller, unless the processes are running already ([imap] parse_workers_from).
START_AT = 10_000
IDLE_STOP = 60.0  # seconds without work before the processes are stopped


def compute(kind: str, paths: list[str]) -> list[bytes | None]:
    """In a helper process: the encoded ``kind`` of each file, None for a file gone."""
    from server.imap import fetch

    out: list[bytes | None] = []
    header_only = kind == "envelope"
    for path in paths:
        try:
            data = fetch.read_file(path, header_only)
        except FileNotFoundError:
            out.append(None)
            continue
        out.append(fetch.compute_cached(kind, fetch.crlf(data)))
    return out


class ParsePool:
    def __init__(self, workers: int, idle_stop: float = IDLE_STOP,
                 start_at: int = START_AT) -> None:
        self.workers = workers
        self.start_at = start_at
        self.idle_stop = idle_stop
        self._pool: ProcessPoolExecutor | None = None
        self._last_use = 0.0
        self._busy = 0
        self._lock = threading.Lock()
        self._closed = False

    def worth_it(self, messages: int) -> bool:
        """Whether a FETCH of this many messages should use the processes."""
        return self.workers > 0 and (messages >= self.start_at or self._pool is not None)

    def compute(self, kind: str, paths: list[str]) -> list[bytes | None] | None:
        """``compute`` for ``paths``, split over the processes; blocks (call it from a
        worker thread).  None when the pool cannot help: the caller computes them."""
        pending = self.submit(kind, paths)
        return None if pending is None else pending.result()

    def submit(self, kind: str, paths: list[str]) -> Pending | None:
        """Start ``compute`` for ``paths``, split over the processes, and return at once:
        a FETCH asks for the next batch's values before it renders this one's, so the
        helpers parse while the daemon writes.  None when the pool cannot help."""
        if self.workers <= 0 or len(paths) < MIN_BATCH:
            return None
        with self._lock:
            pool = self._acquire()
            if pool is None:
                return None
            self._busy += 1  # held until every future is counted, so no idle stop between
        size = -(-len(paths) // self.workers)
        futures = []
        try:
            for i in range(0, len(paths), size):
                future = pool.submit(compute, kind, paths[i:i + size])
                with self._lock:
                    self._busy += 1
                future.add_done_callback(self._done)
                futures.append(future)
        except Exception as err:  # noqa: BLE001 -- a broken pool: the caller computes
            self._failed(pool, err)
            return None
        finally:
            self._done(None)
        return Pending(self, pool, futures)

    def _done(self, _future) -> None:
        with self._lock:
            self._busy -= 1
            self._last_use = time.monotonic()

    def _failed(self, pool: ProcessPoolExecutor, err: BaseException) -> None:
        """Drop a failed pool (call without the lock: cancelled futures run ``_done``)."""
        log.warning("parse helpers failed (%s: %s); parsing in the daemon",
                    type(err).__name__, err)
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def _acquire(self) -> ProcessPoolExecutor | None:
        """The running pool, started if need be (the caller holds the lock)."""
        if self._closed:
            return None
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["server.imap.parsepool", "server.imap.fetch"])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
            self._last_use = time.monotonic()
            threading.Thread(target=self._stop_when_idle, args=(self._pool,),
                             name="parse-pool-idle", daemon=True).start()
        return self._pool

    def _stop_when_idle(self, pool: ProcessPoolExecutor) -> None:
        while True:
            time.sleep(self.idle_stop / 4)
            with self._lock:
                if self._pool is not pool:
                    return
                if self._busy or time.monotonic() - self._last_use < self.idle_stop:
                    continue
                self._pool = None
            pool.shutdown(wait=True)
            return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class Pending:
    """The values ``ParsePool.submit`` is computing."""

    def __init__(self, owner: ParsePool, pool: ProcessPoolExecutor, futures) -> None:
        self.owner, self.pool, self.futures = owner, pool, futures

    def result(self) -> list[bytes | None] | None:
        """The values, in the order of the paths; blocks.  None if the pool failed: the
        caller computes them itself."""
        out: list[bytes | None] = []
        try:
            for future in self.futures:
                out.extend(future.result())
        except Exception as err:  # noqa: BLE001 -- the caller's own path answers instead
            self.owner._failed(self.pool, err)
            return None
        return out
