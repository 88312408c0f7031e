"""glibc malloc settings for a long-running server that handles large buffers in many threads.

The soak test (tests/stress/soak.py, with ``--memtrace``) showed the bytes malloc had handed
out staying flat while the process's heap kept growing: the difference was free memory kept
in malloc's arenas (9 MiB after a minute, 39 MiB after four and a half). Two glibc defaults
cause it:

* the mmap threshold is dynamic: once a 200 KB message buffer that went to mmap is freed, the
  threshold rises above it and the next ones are carved out of the arenas, where whatever is
  allocated after them keeps the pages from ever being returned. A fixed threshold keeps each
  large buffer in its own mapping, returned to the kernel when it is freed (two system calls
  per large message: nothing next to the message's fsyncs);
* free pages in the middle of an arena (there is one per busy thread) are only returned by
  ``malloc_trim``, which nothing calls. We call it once a minute from a thread of its own
  (a few milliseconds).

Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time

log = logging.getLogger("mailstead")

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept from then on
TRIM_EVERY = 60.0  # seconds


def tune_malloc() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return  # not glibc
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        log.warning("mallopt(M_MMAP_THRESHOLD) failed; the heap may grow with fragmentation")

    def trim_forever() -> None:
        while True:
            time.sleep(TRIM_EVERY)
            malloc_trim(0)

    threading.Thread(target=trim_forever, name="malloc-trim", daemon=True).start()
