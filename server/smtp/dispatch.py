"""The MX listener with ``[smtp] workers`` > 0: accept here, serve in worker processes.

One Python process delivers at most what one core can parse and log (docs/flow.md); a busy MX
needs more. The daemon keeps the listening socket and, per connection, does what must be
decided in one place -- the connection limit and the abuse guard's bans and per-IP limits --
then hands the socket to the worker with the fewest open connections (``worker.py``). Workers
report back when a connection ends (its guard slot is released), when mail was delivered (IDLE
sessions hear of it) and when a message was queued (the outbound queue wakes).

A worker that is not ready (starting, restarting after a crash, its channel full) is skipped;
with none ready, the daemon serves the connection itself, so the MX never stops answering. A
dead worker is restarted after a pause that doubles up to a minute.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time

from server.abuse import BANNED, RATE, Guard, Refused
from server.config import Config, Listen
from server.smtp import replies
from server.smtp.listener import SMTPListener, greeting, refuse_socket
from server.smtp.protocol import new_conn_id

log = logging.getLogger("mailstead.smtp")

ACCEPT_BATCH = 64
RESTART_DELAY = (1.0, 60.0)
MAX_PACKET = 64 * 1024


def send(channel: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    """One message on a worker channel: a JSON object per packet, descriptors attached."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(channel, [data], fds)
    else:
        channel.send(data)


# Reports from a worker wait this long to go to the daemon together, in one packet: each
# packet wakes the daemon, two per message otherwise ("delivered", "closed"). Nothing in them
# is urgent to a few milliseconds: a guard slot given back, IDLE sessions told of new mail.
REPORT_DELAY = 0.002
# Reports are packed up to this size (one bigger report goes alone); far under any socket
# buffer, so a packet never fails for its size.
PACK_SIZE = 4096


def messages(data: bytes) -> list[dict]:
    """The messages in one packet: a JSON object, or a list of them (``Outbox``)."""
    decoded = json.loads(data)
    return decoded if isinstance(decoded, list) else [decoded]


class Outbox:
    """Messages to the daemon over a non-blocking channel, none dropped: gathered for
    ``delay`` seconds and sent as one packet; what the channel cannot take now waits in
    order and goes when it can (a lost "queued" would leave a message in the spool unseen
    until the next restart, a lost "closed" a guard slot taken). Loop thread only."""

    def __init__(self, channel: socket.socket, delay: float = REPORT_DELAY):
        self.channel = channel
        self.delay = delay
        self.pending: list[bytes] = []  # encoded, not yet packed
        self.timer: asyncio.TimerHandle | None = None
        self.waiting: collections.deque[bytes] = collections.deque()  # packed, not yet sent

    def send(self, message: dict) -> None:
        self.pending.append(json.dumps(message, separators=(",", ":")).encode())
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.delay, self._pack)

    def drain(self, timeout: float = 2.0) -> None:
        """Before the worker exits: what still waits goes now (blocking, bounded)."""
        self._pack()
        if not self.waiting:
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_writer(self.channel)
        self.channel.settimeout(timeout)
        with contextlib.suppress(OSError):
            while self.waiting:
                self.channel.send(self.waiting.popleft())

    def _pack(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.pending = self.pending, []
        packet: list[bytes] = []
        size = 0
        for item in batch:
            if packet and size + len(item) + 1 > PACK_SIZE:
                self._put(b"[" + b",".join(packet) + b"]")
                packet, size = [], 0
            packet.append(item)
            size += len(item) + 1
        if packet:
            self._put(b"[" + b",".join(packet) + b"]")

    def _put(self, data: bytes) -> None:
        if not self.waiting:
            try:
                self.channel.send(data)
                return
            except BlockingIOError:
                asyncio.get_running_loop().add_writer(self.channel, self._flush)
            except OSError as err:  # the daemon is gone: nobody to tell
                log.debug("worker channel: %s", err)
                return
        self.waiting.append(data)

    def _flush(self) -> None:
        while self.waiting:
            try:
                self.channel.send(self.waiting[0])
            except BlockingIOError:
                return
            except OSError:
                self.waiting.clear()
                break
            self.waiting.popleft()
        asyncio.get_running_loop().remove_writer(self.channel)


class Worker:
    """One worker process and its end of the channel, as the daemon sees them."""

    def __init__(self, index: int, dispatcher: MXDispatcher):
        self.index = index
        self.dispatcher = dispatcher
        self.proc: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self.ready = False
        self.open: set[str] = set()
        self.started = 0.0
        self.delay = RESTART_DELAY[0]
        self.exited = asyncio.Event()

    def spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = self.dispatcher.config
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.smtp.worker", "--config", str(config.path),
             "--channel", str(theirs.fileno()), "--parent", str(os.getpid()),
             "--index", str(self.index)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        ours.setblocking(False)
        self.channel, self.ready, self.started = ours, False, time.monotonic()
        self.exited.clear()
        asyncio.get_running_loop().add_reader(ours, self._readable)
        log.info("mx worker %d started (pid %d)", self.index, self.proc.pid)

    def tell(self, message: dict, fds: list[int] | None = None) -> bool:
        if self.channel is None:
            return False
        try:
            send(self.channel, message, fds)
            return True
        except OSError:  # full (BlockingIOError) or gone: the next worker, or the daemon
            return False

    def _readable(self) -> None:
        while self.channel is not None:
            try:
                data = self.channel.recv(MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            try:
                for message in messages(data):
                    self.dispatcher.message(self, message)
            except Exception:
                log.exception("mx worker %d: bad message", self.index)

    def _lost(self) -> None:
        """The channel closed: the worker exited (or was killed). Its connections are gone."""
        asyncio.get_running_loop().remove_reader(self.channel)
        self.channel.close()
        self.channel, self.ready = None, False
        for conn_id in list(self.open):
            self.dispatcher.closed(self, conn_id)
        asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        code = await asyncio.get_running_loop().run_in_executor(None, self.proc.wait)
        self.exited.set()
        if self.dispatcher.stopping:
            return
        lived = time.monotonic() - self.started
        self.delay = RESTART_DELAY[0] if lived > RESTART_DELAY[1] else \
            min(self.delay * 2, RESTART_DELAY[1])
        log.error("mx worker %d (pid %d) exited with %s; restarting in %.0f s", self.index,
                  self.proc.pid, code, self.delay)
        await asyncio.sleep(self.delay)
        if not self.dispatcher.stopping:
            self.spawn()


class MXDispatcher:
    """Looks like a listener to the daemon (start, stop_accepting, drain, update_config)."""

    def __init__(self, name: str, listen: Listen, local: SMTPListener, config: Config,
                 workers: int, guard: Guard | None, on_delivered, on_queued):
        self.name = name
        self.listen = listen
        self.local = local  # serves connections while no worker is ready
        self.config = config
        self.guard = guard
        self.on_delivered = on_delivered
        self.on_queued = on_queued
        self.workers = [Worker(i, self) for i in range(workers)]
        self.slots: dict[str, object] = {}
        self.sock: socket.socket | None = None
        self.stopping = False
        self.turn = 0

    async def start(self) -> None:
        host = self.listen.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, self.listen.port), family=family, backlog=512)
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock, self._accept)
        for worker in self.workers:
            worker.spawn()
        log.info("%s listening on %s (%d worker processes)", self.name, self.listen,
                 len(self.workers))

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and friends: try again at the next wakeup
                log.error("%s: accept failed: %s", self.name, err)
                return
            self._dispatch(conn, peer[0] if isinstance(peer, tuple) else "unknown")

    def _dispatch(self, conn: socket.socket, ip: str) -> None:
        conn.setblocking(False)
        conn_id = new_conn_id()
        if len(self.slots) >= self.config.smtp.max_connections:  # workers' and local ones
            log.warning("%s: connection limit reached, refusing %s", self.name, ip)
            refuse_socket(conn, replies.TOO_MANY_CONNECTIONS)
            return
        slot = _NoSlot()
        if self.guard is not None:
            try:
                slot = self.guard.admit(ip, self.name, conn_id)
            except Refused as refusal:
                refuse_socket(conn, {BANNED: replies.BANNED, RATE: replies.CONNECTION_RATE}.get(
                    refusal.reason, replies.TOO_MANY_CONNECTIONS))
                return
        # The greeting goes out now, not after the hop to a worker: the client's EHLO is on
        # its way while the worker takes the connection over (a few 40-byte writes into an
        # empty socket buffer: never blocks, never short).
        try:
            conn.send(greeting(self.config.server.hostname))
        except OSError:  # gone already
            conn.close()
            slot.release()
            return
        # Fewest open connections first; among equals, take turns.
        self.turn = (self.turn + 1) % len(self.workers)
        n = len(self.workers)
        for worker in sorted((w for w in self.workers if w.ready),
                             key=lambda w: (len(w.open), (w.index - self.turn) % n)):
            if worker.tell({"op": "conn", "id": conn_id, "greeted": True}, [conn.fileno()]):
                worker.open.add(conn_id)
                self.slots[conn_id] = slot
                conn.close()  # the worker has its own descriptor now
                return
        # Counted from now, as a worker's are: the client, greeted, may open its next
        # connection before this one is in the local listener's registry.
        self.slots[conn_id] = slot
        asyncio.ensure_future(self.local.adopt(conn, conn_id, _LocalSlot(self, conn_id),
                                               greeted=True))

    def message(self, worker: Worker, message: dict) -> None:
        op = message.get("op")
        if op == "closed":
            self.closed(worker, str(message.get("id")))
        elif op == "delivered":
            self.on_delivered(list(message["addresses"]), str(message.get("folder", "INBOX")))
        elif op == "queued":
            self.on_queued(str(message["id"]))
        elif op == "ready":
            worker.ready = True
            log.info("mx worker %d ready (pid %s)", worker.index, message.get("pid"))

    def closed(self, worker: Worker, conn_id: str) -> None:
        worker.open.discard(conn_id)
        slot = self.slots.pop(conn_id, None)
        if slot is not None:
            slot.release()

    def update_config(self, config: Config) -> None:
        self.config = config
        self.local.update_config(config)
        for worker in self.workers:
            worker.tell({"op": "reload"})

    def reload_tls(self) -> None:
        """A new certificate was installed in the daemon's context: the workers load it too."""
        for worker in self.workers:
            worker.tell({"op": "tls"})

    def stop_accepting(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock)
            self.sock.close()
            self.sock = None
        self.local.stop_accepting()

    async def drain(self, grace: float) -> None:
        """Workers finish their transactions as the in-process listener does (421 to idle
        clients, ``grace`` seconds for the rest); one that does not exit in time is killed."""
        self.stopping = True
        running = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for worker in running:
            if not worker.tell({"op": "stop", "grace": grace}):
                worker.proc.terminate()
        await self.local.drain(grace)
        for worker in running:
            try:
                await asyncio.wait_for(worker.exited.wait(), grace + 15)
            except TimeoutError:
                log.error("mx worker %d did not stop; killing it", worker.index)
                worker.proc.kill()
                await asyncio.get_running_loop().run_in_executor(None, worker.proc.wait)


class _NoSlot:
    def release(self) -> None:
        pass


class _LocalSlot:
    """The slot of a connection the daemon serves itself: given back (once) when it ends."""

    def __init__(self, dispatcher: MXDispatcher, conn_id: str):
        self.dispatcher, self.conn_id = dispatcher, conn_id

    def release(self) -> None:
        slot = self.dispatcher.slots.pop(self.conn_id, None)
        if slot is not None:
            slot.release()
