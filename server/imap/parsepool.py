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
    def __init__(self, workers: int, idle_stop: float = IDLE_STOP) -> None:
        self.workers = workers
        self.idle_stop = idle_stop
        self._pool: ProcessPoolExecutor | None = None
        self._last_use = 0.0
        self._busy = 0
        self._lock = threading.Lock()
        self._closed = False

    def compute(self, kind: str, paths: list[str]) -> list[bytes | None] | None:
        """``compute`` for ``paths``, split over the processes; blocks (call it from a
        worker thread).  None when the pool cannot help: the caller computes them."""
        if self.workers <= 0 or len(paths) < MIN_BATCH:
            return None
        pool = self._acquire()
        if pool is None:
            return None
        try:
            size = -(-len(paths) // self.workers)
            futures = [pool.submit(compute, kind, paths[i:i + size])
                       for i in range(0, len(paths), size)]
            out: list[bytes | None] = []
            for future in futures:
                out.extend(future.result())
            return out
        except Exception as err:  # noqa: BLE001 -- the caller's own path answers instead
            log.warning("parse helpers failed (%s: %s); parsing in the daemon",
                        type(err).__name__, err)
            self._discard(pool)
            return None
        finally:
            with self._lock:
                self._busy -= 1
                self._last_use = time.monotonic()

    def _acquire(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._closed:
                return None
            if self._pool is None:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["server.imap.parsepool", "server.imap.fetch"])
                self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
                threading.Thread(target=self._stop_when_idle, args=(self._pool,),
                                 name="parse-pool-idle", daemon=True).start()
            self._busy += 1
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

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
