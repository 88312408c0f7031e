"""The ceiling of the stack: bare aiosmtpd storing each message the way mailstead does.

``python -m bench.ceiling --port P --maildir DIR`` accepts any recipient and, before its 250,
writes the message to ``DIR/tmp``, fsyncs it, renames it into ``DIR/new`` and fsyncs
``new/`` -- the pattern of ``maildir/deliver.py`` -- in a pool of 16 threads (as
``server/runner.py`` does), so the fsyncs of concurrent sessions overlap. No trace headers,
no accounts, no quota, no logging: whatever mailstead's MX does beyond this shows up as the
gap between the two figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from aiosmtpd.controller import Controller

_seq = itertools.count()


def store(maildir: str, data: bytes) -> None:
    name = f"{os.getpid()}.{next(_seq)}.{socket.gethostname()}"
    tmp = os.path.join(maildir, "tmp", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    new = os.path.join(maildir, "new")
    os.rename(tmp, os.path.join(new, f"{name},S={len(data)}"))
    dfd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Handler:
    def __init__(self, maildir: str):
        self.maildir = maildir
        self.pool = ThreadPoolExecutor(max_workers=16)

    async def handle_DATA(self, server, session, envelope):
        await asyncio.get_running_loop().run_in_executor(
            self.pool, store, self.maildir, envelope.original_content)
        return "250 2.0.0 Ok: stored"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ceiling")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--maildir", required=True)
    args = p.parse_args()
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(args.maildir, sub), exist_ok=True)
    controller = Controller(Handler(args.maildir), hostname="127.0.0.1", port=args.port,
                            server_hostname="ceiling.example.test", decode_data=False)
    controller.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
