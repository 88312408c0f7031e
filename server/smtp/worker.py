"""An MX worker process: SMTP sessions on connections the daemon accepted and handed over.

``[smtp] workers`` > 0 starts this many ``python -m server.smtp.worker`` processes (see
``dispatch.py``). Each one runs the same ``MXHandler`` as the daemon itself, with its own event
loop, account-store connections, thread pool and DNS cache, so inbound mail uses more than one
core. What only the daemon may do stays there: the abuse guard (bans, per-IP limits) admits
each connection before it is handed over, IDLE sessions are told of new mail and the outbound
queue of new entries through the channel, and the daemon decides when to reload and stop.

The channel is a SOCK_SEQPACKET socket pair, one JSON object per packet; a connection arrives
as ``{"op": "conn", "id": ...}`` with its file descriptor attached (SCM_RIGHTS).

daemon -> worker: conn (+fd), reload (config, certificate), tls (certificate), stop (grace)
worker -> daemon: ready, closed (id), delivered (addresses, folder), queued (id)

If the daemon dies, even by SIGKILL, the kernel kills its workers too (PR_SET_PDEATHSIG): a
worker never outlives the process that owns the data directory's lock.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from server.accounts import AccountStore
from server.acme.manager import tls_files
from server.config import Config, ConfigError, load_config
from server.malloctune import tune_malloc
from server.queue.spool import Spool
from server.runner import load_tls, setup_logging, tune_tls_buffers
from server.smtp import replies
from server.smtp.dispatch import MAX_PACKET, Outbox
from server.smtp.handoff import Handoff
from server.smtp.listener import SMTPListener, refuse_socket
from server.smtp.mx import MXHandler
from server.spam import SpamFilter
from server.tlscert import reload_certificate

log = logging.getLogger("mailstead.worker")

PR_SET_PDEATHSIG = 1


class _LineFormatter(logging.Formatter):
    """The daemon's log line, saying which worker wrote it; the date formatted once a second.

    Three lines per message: the date's strftime was a fifth of their cost."""

    _second, _date = -1, ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._date = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._date, record.msecs)


def setup_worker_logging(level: str, index: int) -> None:
    setup_logging(level)
    # The workers share the daemon's stderr (the journal): each line says whose it is.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_LineFormatter(
            f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s"))
    # What no line shows need not be looked up for every record (the logging HOWTO's
    # "Optimization"): the caller's frame, thread, process id and process name.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before the prctl: nobody would kill us
        os._exit(1)


def batch_scheduling() -> None:
    """Run this process, and every thread it starts after this call, as SCHED_BATCH.

    A worker is busy when the CPUs are: a flood of inbound mail. Then, under SCHED_OTHER, the
    tasks its own work wakes (a store thread whose O_SYNC write or fsync is done, the client
    it just answered) preempted its event loop in the middle of the next command: 6.6-6.8
    involuntary context switches of the loop per message at 10 sessions. Under SCHED_BATCH
    (sched(7)) a woken thread of the worker waits for the running one's turn to end instead:
    2.4 per message. Its share of the CPU is unchanged, and with a CPU to spare a woken
    thread runs at once as before. Measured with 2 workers on 2 CPUs: 6-13% more messages/s
    at 10 and 50 sessions and 7-10% less CPU per message. The daemon, which serves IMAP,
    keeps the default policy: there a client waits on each reply. Threads inherit the
    policy, so this runs before any is started. Not fatal where the policy is missing.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as err:
        log.info("SCHED_BATCH not available (%s); the worker runs with the default policy", err)


class _RemoteSlot:
    """The daemon's guard slot for a connection: given back by telling the daemon."""

    def __init__(self, worker: WorkerProcess, conn_id: str):
        self.worker, self.conn_id = worker, conn_id

    def release(self) -> None:
        if self.worker is not None:
            self.worker.tell({"op": "closed", "id": self.conn_id})
            self.worker = None


class WorkerProcess:
    def __init__(self, config: Config, channel: socket.socket, index: int):
        self.config = config
        self.channel = channel
        self.index = index
        self.accounts = AccountStore.from_config(config)
        self.tls = load_tls(config)
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"w{index}-io")
        self.spam = SpamFilter(config, self.executor)
        self.handler = MXHandler(config, self.accounts, self.executor, Spool(config.queue_dir),
                                 on_queued=self._queued, on_delivered=self._delivered)
        self.handler.spam = self.spam
        # Every message is stored in a thread: the cheap trip (handoff.py), not the executor.
        self.handler.committer = Handoff(16, f"w{index}-store")
        self.listener = SMTPListener("mx", config.listeners()["mx"], self.handler, config,
                                     self.tls)
        self.stopping: asyncio.Future | None = None
        self.closing = False  # stop asked: connections handed over late are given back
        self.outbox = Outbox(channel)

    def tell(self, message: dict) -> None:
        self.outbox.send(message)

    def _queued(self, queue_id: str) -> None:
        self.tell({"op": "queued", "id": queue_id})

    def _delivered(self, addresses: list[str], folder: str = "INBOX") -> None:
        self.tell({"op": "delivered", "addresses": addresses, "folder": folder})

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, MAX_PACKET, 4)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:  # the daemon closed the channel: finish what is under way and go
                asyncio.get_running_loop().remove_reader(self.channel)
                self.stop(self.config.smtp.shutdown_grace)
                return
            try:
                self._handle(json.loads(data), fds)
            except Exception:
                log.exception("worker %d: bad message from the daemon", self.index)
                for fd in fds:
                    os.close(fd)

    def _handle(self, message: dict, fds: list[int]) -> None:
        op = message.get("op")
        if op == "conn":
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            conn_id = str(message["id"])
            if self.closing:  # stopping: the client may have its 220 already, so say why
                refuse_socket(sock, replies.SHUTTING_DOWN)
                _RemoteSlot(self, conn_id).release()
                return
            asyncio.ensure_future(self.listener.adopt(sock, conn_id, _RemoteSlot(self, conn_id),
                                                      greeted=bool(message.get("greeted"))))
        elif op == "reload":
            self.reload()
        elif op == "tls":
            self.reload_tls(self.config)
        elif op == "stop":
            self.stop(float(message.get("grace", self.config.smtp.shutdown_grace)))
        for fd in fds[1 if op == "conn" else 0:]:
            os.close(fd)

    def reload_tls(self, config: Config) -> None:
        cert, key = tls_files(config)
        try:
            reload_certificate(self.tls, cert, key)
        except (OSError, ssl.SSLError) as err:
            log.error("worker %d: cannot load certificate %s: %s", self.index, cert, err)

    def reload(self) -> None:
        try:
            new = load_config(self.config.path)
        except ConfigError as err:
            log.error("worker %d: reload refused: %s", self.index, err)
            return
        self.reload_tls(new)
        self.accounts.apply_config(new)
        self.handler.update_config(new)
        self.listener.update_config(new)
        self.spam.update_config(new)
        self.config = new
        logging.getLogger().setLevel(getattr(logging, new.log.level.upper()))

    def stop(self, grace: float) -> None:
        if self.stopping is not None and not self.stopping.done():
            self.stopping.set_result(grace)

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = loop.create_future()
        self.channel.setblocking(False)
        loop.add_reader(self.channel, self._readable)
        # The daemon coordinates shutdown: a terminal's Ctrl-C reaches the whole group.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGTERM, self.stop, self.config.smtp.shutdown_grace)
        gc.freeze()  # as the daemon does (runner.py)
        self.tell({"op": "ready", "pid": os.getpid()})
        grace = await self.stopping
        self.closing = True
        await self.listener.drain(grace)
        self.outbox.drain()
        await self.spam.close()
        await loop.run_in_executor(None, self.executor.shutdown, True)
        await loop.run_in_executor(None, self.handler.committer.close)
        self.accounts.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.smtp.worker")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--channel", type=int, required=True, help="inherited socket descriptor")
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--index", type=int, default=0)
    args = p.parse_args(argv)
    die_with_parent(args.parent)
    config = load_config(args.config)
    setup_worker_logging(config.log.level, args.index)
    batch_scheduling()
    tune_tls_buffers()
    tune_malloc()
    channel = socket.socket(fileno=args.channel)
    # uvloop: a fifth less CPU per message than asyncio's own loop here (bench: 50 sessions,
    # 2 workers, 667 -> 822 msg/s). The worker runs nothing but aiosmtpd and the handler.
    return uvloop.run(WorkerProcess(config, channel, args.index).serve())


if __name__ == "__main__":
    sys.exit(main())
