"""The disk's limit for durable Maildir deliveries: write 5 KB, fsync, rename, fsync the dir."""

from __future__ import annotations

import os
import tempfile
import threading
import time

PAYLOAD = b"x" * 5000


def _worker(folder: str, stop: float, counts: list[int], index: int) -> None:
    tmp, new = os.path.join(folder, "tmp"), os.path.join(folder, "new")
    n = 0
    while time.monotonic() < stop:
        name = f"{index}.{n}"
        fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, PAYLOAD)
        os.fsync(fd)
        os.close(fd)
        os.rename(os.path.join(tmp, name), os.path.join(new, name))
        dfd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        n += 1
    counts[index] = n


def measure(threads: int = 1, seconds: float = 3.0, where: str | None = None) -> float:
    with tempfile.TemporaryDirectory(dir=where or os.getcwd(), prefix=".bench-fsync-") as d:
        for sub in ("tmp", "new"):
            os.mkdir(os.path.join(d, sub))
        counts = [0] * threads
        stop = time.monotonic() + seconds
        started = time.monotonic()
        workers = [threading.Thread(target=_worker, args=(d, stop, counts, i))
                   for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(counts) / (time.monotonic() - started)
